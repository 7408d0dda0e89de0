"""P2 benchmark: 10-option fact completion scored by lm-eval's ``hf`` vs ``hf-calib`` (shared prompt once).

Builds N questions from the real LAMA T-REx facts (prompt = relation template cut at ``[Y]`` with ``[X]`` =
subject; options = the gold object plus 9 other objects of the same relation, chosen with a seeded RNG), runs
the SAME ``Instance`` requests through ``HFLM.loglikelihood`` and ``HFCalibLM.loglikelihood`` on the real
SmolLM2-135M-Instruct (float32, CPU, same batch size), and prints a Markdown table plus the largest
|difference| of the log-likelihoods. Model loading is not timed. Run by hand::

    python bench/bench_facts_scoring.py --questions 100 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACTS = REPO.parent / "shared" / "data" / "lama_trex" / "lama_trex_facts.jsonl"


def build_questions(facts_path: Path, n_questions: int, n_options: int = 10, seed: int = 0, keep=None):
    """[(context, [continuations], gold_index)], spread round-robin over the relations.

    ``keep(object_label) -> bool`` restricts golds and distractors (e.g. to multi-token objects).
    """
    by_relation: dict[str, list[dict]] = defaultdict(list)
    with open(facts_path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                fact = json.loads(line)
                if not fact["template"].startswith("[Y]") and (keep is None or keep(fact["obj_label"])):
                    by_relation[fact["relation"]].append(fact)
    relations = sorted(by_relation)
    objects = {r: sorted({f["obj_label"] for f in by_relation[r]}) for r in relations}
    questions = []
    k = 0
    while len(questions) < n_questions:
        relation = relations[k % len(relations)]
        facts = by_relation[relation]
        fact = facts[(k // len(relations)) % len(facts)]
        k += 1
        others = [o for o in objects[relation] if o != fact["obj_label"]]
        if len(others) < n_options - 1:
            continue
        rng = random.Random(f"{seed}:{fact['uuid']}")
        options = [fact["obj_label"], *rng.sample(others, n_options - 1)]
        rng.shuffle(options)
        context = fact["template"].split("[Y]")[0].replace("[X]", fact["sub_label"]).rstrip()
        questions.append((context, [" " + o for o in options], options.index(fact["obj_label"])))
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--facts", type=Path, default=DEFAULT_FACTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--multi-token-only",
        action="store_true",
        help="only objects that encode to 2+ tokens (gold and distractors)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per backend; best is kept")
    parser.add_argument(
        "--no-logits-cache-row", action="store_true", help="also time hf with logits_cache=False"
    )
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_calib.bundled_models import get_bundled_model
    from lm_eval_calib.models.hf_calib import HFCalibLM

    model_args = dict(
        kv.split("=", 1) for kv in get_bundled_model("smollm2").model_args().split(",") if "=" in kv
    )
    common = dict(model_args, dtype="float32", device=args.device, batch_size=args.batch_size)
    hf = HFLM(**common)
    calib = HFCalibLM(**common)

    def multi_token(obj: str) -> bool:
        return len(hf.tok_encode(" " + obj, add_special_tokens=False)) > 1

    keep = multi_token if args.multi_token_only else None
    questions = build_questions(args.facts, args.questions, args.options, keep=keep)
    requests = [
        Instance("loglikelihood", {}, (context, option), i, metadata=("calib_facts_bench", q, 1))
        for q, (context, options, _) in enumerate(questions)
        for i, option in enumerate(options)
    ]
    n_tokens = [len(hf._encode_pair(r.args[0], r.args[1])[1]) for r in requests]
    multi = sum(n > 1 for n in n_tokens)

    # the same HFLM object with lm-eval's one-token logits cache switched off: one forward per option
    backends = [("hf", hf, True), ("hf-calib", calib, True)]
    if args.no_logits_cache_row:
        backends.insert(1, ("hf (logits_cache=False)", hf, False))
    for _, lm, _ in backends:
        lm.loglikelihood(requests[: 2 * args.options], disable_tqdm=True)  # warm-up, not timed
    timings: dict[str, float] = {}
    outputs = {}
    for _ in range(args.repeats):  # interleaved repeats, best time kept: this machine's CPUs are shared
        for name, lm, logits_cache in backends:
            lm.logits_cache = logits_cache
            start = time.perf_counter()
            outputs[name] = lm.loglikelihood(requests, disable_tqdm=True)
            elapsed = time.perf_counter() - start
            timings[name] = min(elapsed, timings.get(name, float("inf")))
    hf.logits_cache = True

    diffs = [abs(a[0] - b[0]) for a, b in zip(outputs["hf"], outputs["hf-calib"], strict=True)]
    greedy_same = all(a[1] == b[1] for a, b in zip(outputs["hf"], outputs["hf-calib"], strict=True))
    acc = {
        name: sum(
            max(range(args.options), key=lambda i, q=q: res[q * args.options + i][0]) == gold
            for q, (_, _, gold) in enumerate(questions)
        )
        / len(questions)
        for name, res in outputs.items()
    }

    print(
        f"\nSmolLM2-135M-Instruct (GGUF Q4_1 -> float32), device {args.device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, batch size {args.batch_size}; "
        f"{len(questions)} LAMA T-REx questions x {args.options} options; continuation tokens: "
        f"{sum(n_tokens)} ({multi}/{len(requests)} options are multi-token); best of {args.repeats} runs\n"
    )
    print("| backend | questions | requests | wall seconds | requests/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _, _ in backends:
        t = timings[name]
        print(
            f"| {name} | {len(questions)} | {len(requests)} | {t:.2f} | {len(requests) / t:.1f} | "
            f"{timings['hf'] / t:.2f}x |"
        )
    print(
        f"\nmax |loglikelihood(hf) - loglikelihood(hf-calib)| = {max(diffs):.3g}; is_greedy identical: "
        f"{greedy_same}; accuracy hf {acc['hf']:.3f}, hf-calib {acc['hf-calib']:.3f}"
    )


if __name__ == "__main__":
    main()
