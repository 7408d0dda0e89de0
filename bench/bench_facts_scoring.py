"""P2 benchmark: 10-option fact completion scored by lm-eval's ``hf`` vs ``hf-calib`` (shared prompt once).

Builds N questions from the real LAMA T-REx facts as calib_facts loads them (prompt = relation template cut
at ``[Y]`` with ``[X]`` = subject; options = the gold object plus 9 other objects of the same relation), runs
the SAME ``Instance`` requests through ``HFLM.loglikelihood`` and ``HFCalibLM.loglikelihood`` on the real
SmolLM2-135M-Instruct (float32, CPU, same batch size), and prints a Markdown table plus the largest
|difference| of the log-likelihoods. Model loading is not timed. Run by hand::

    python bench/bench_facts_scoring.py --questions 100 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def build_questions(data_dir: str, n_questions: int, n_options: int = 10, keep=None):
    """[(context, [continuations], gold_index)] from calib_facts' own data, round-robin over the relations.

    Uses :func:`lm_eval_calib.data.lama.load_lama` with every object of the relation as a candidate, then
    keeps the first ``n_options - 1`` distractors in its deterministic order; ``keep(object) -> bool``
    restricts golds and distractors (e.g. to multi-token objects).
    """
    from lm_eval_calib.data.lama import load_lama

    facts = load_lama(data_dir, n_distractors="all")["test"]
    by_relation: dict[str, list[int]] = defaultdict(list)
    for index, relation in enumerate(facts["relation"]):
        by_relation[relation].append(index)
    relations = sorted(by_relation)
    questions, k = [], 0
    while len(questions) < n_questions and k < len(facts):
        rows = by_relation[relations[k % len(relations)]]
        fact = facts[rows[(k // len(relations)) % len(rows)]]
        k += 1
        gold = fact["object"]
        others = [o for o in fact["options"] if o != gold and (keep is None or keep(o))]
        if (keep is not None and not keep(gold)) or len(others) < n_options - 1:
            continue
        options = sorted([gold, *others[: n_options - 1]], key=fact["options"].index)
        questions.append((fact["prompt"], [" " + o + fact["suffix"] for o in options], options.index(gold)))
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", str(DEFAULT_DATA)))
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
    questions = build_questions(args.data_dir, args.questions, args.options, keep=keep)
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
