"""P7 benchmark: peak memory and speed of the bundled models on CPU, in float32 and bfloat16.

For each (bundled model, dtype) a fresh Python process loads the model through ``hf-calib`` (the study's
backend) and scores calib_mmlu 0-shot requests: the first ``--per-subject`` test questions of ``--subjects``
subjects spread over the alphabet, four one-token options each, ``--batch-size`` questions a forward. It
reports

* load seconds (joining the GGUF chunks is done once beforehand and not counted; de-quantising is);
* peak resident memory of the process (``ru_maxrss``) after loading and after scoring;
* prompt tokens per second over the scoring (each question's prompt once, as ``hf-calib`` runs it);
* accuracy and, against the float32 run of the same model, the largest log-likelihood difference, so that
  a cheaper dtype is chosen only when it leaves the numbers alone.

Run by hand on a quiet machine (about 10 minutes on 2 CPU cores for both Qwen sizes)::

    python bench/bench_model_footprint.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
DTYPES = ("float32", "bfloat16")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    import torch
    from bench_mmlu_backends import accuracy, mmlu_requests, prompt_token_count

    from lm_eval_calib.bundled_models import get_bundled_model
    from lm_eval_calib.models.hf_calib import HFCalibLM

    requests = mmlu_requests(args.data_dir, args.subjects, args.per_subject, num_fewshot=0)
    bundled = get_bundled_model(args.model)
    folder = bundled.folder()  # joined and verified before the clock starts
    start = time.perf_counter()
    lm = HFCalibLM(
        pretrained=str(folder),
        gguf_file=bundled.gguf_file,
        dtype=args.dtype,
        device="cpu",
        batch_size=args.batch_size,
    )
    load_seconds = time.perf_counter() - start
    rss_loaded = peak_rss_gib()
    start = time.perf_counter()
    results = lm.loglikelihood(requests)
    score_seconds = time.perf_counter() - start
    logliks = [float(ll) for ll, _ in results]
    tokens = prompt_token_count(lm.tokenizer, requests)
    return {
        "load_seconds": load_seconds,
        "rss_loaded_gib": rss_loaded,
        "rss_peak_gib": peak_rss_gib(),
        "score_seconds": score_seconds,
        "prompt_tokens": tokens,
        "questions": len({(r.task_name, r.doc_id) for r in requests}),
        "accuracy": accuracy(requests, logliks),
        "loglikelihoods": logliks,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--per-subject", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", "../shared/data"))
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.json:
        Path(args.json).write_text(json.dumps(run_worker(args)))
        return

    scratch = tempfile.TemporaryDirectory(prefix="bench-footprint-")
    rows = []
    for model in args.models.split(","):
        reference = None
        for dtype in args.dtypes.split(","):
            out = Path(scratch.name) / f"{model}-{dtype}.json"
            cmd = [sys.executable, __file__, "--model", model, "--dtype", dtype, "--json", str(out)]
            cmd += ["--subjects", str(args.subjects), "--per-subject", str(args.per_subject)]
            cmd += ["--batch-size", str(args.batch_size), "--data-dir", args.data_dir]
            print(f"running {model} {dtype} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{model} {dtype} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            run = json.loads(out.read_text())
            if dtype == "float32":
                reference = run["loglikelihoods"]
            diff = (
                max(abs(a - b) for a, b in zip(run["loglikelihoods"], reference, strict=True))
                if reference is not None
                else float("nan")
            )
            rows.append((model, dtype, run, diff))

    first = rows[0][2]
    print(
        f"\ncalib_mmlu 0-shot through hf-calib: {first['questions']} questions ({args.subjects} subjects x "
        f"{args.per_subject}), batch {args.batch_size}, {first['threads']} torch threads"
    )
    print(
        "| model | dtype | load s | peak memory after load (GiB) | peak memory (GiB) | prompt tokens/s "
        "| accuracy | max abs log-lik diff vs float32 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, dtype, run, diff in rows:
        print(
            f"| {model} | {dtype} | {run['load_seconds']:.0f} | {run['rss_loaded_gib']:.2f} | "
            f"{run['rss_peak_gib']:.2f} | {run['prompt_tokens'] / run['score_seconds']:.0f} | "
            f"{run['accuracy']:.3f} | {diff:.3g} |"
        )


if __name__ == "__main__":
    main()
