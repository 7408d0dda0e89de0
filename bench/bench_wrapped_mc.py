"""Wrapped multiple choice: ``calib_mmlu_<subject>_continuation`` on hf-calib vs lm-eval's own task on hf.

The same documents of lm-eval's built-in ``mmlu_<subject>_continuation`` (read from the data root's hub
mirror, ``ROOT/hub/cais/mmlu``), the same model and batch size, two runs, each in its own Python process:

* ``hf``: the unwrapped task (lm-eval's ``ConfigurableTask`` with the very config the wrapper gets) on
  lm-eval's ``hf``, which runs every option's full sequence (prompt + option): 4 options, 4 prompts;
* ``hf-calib``: ``calib_mmlu_<subject>_continuation`` (the wrapper: the original metrics plus every
  calibration metric and its ``_norm`` twin, with bootstrap stderrs) on this package's ``hf-calib``, which
  runs each question's shared prompt once and its options against it.

Two times per run, best of ``--repeats``: "model" is ``lm.loglikelihood`` over the task's requests (built
once, untimed; a few requests run first as a warm-up); "evaluate" is ``lm_eval.simple_evaluate`` end to end
on the loaded model and task (requests, model, scoring, aggregation, stderrs). Loading is not timed. The
goal is hf-calib >= 3x hf (multi-token options: the shared-prompt saving is about the option count).

Run by hand on a quiet machine, e.g. (SmolLM2-135M exported to float32 from the bundled GGUF)::

    .venv/bin/python bench/bench_wrapped_mc.py --subject high_school_psychology --limit 200 --shots 5

Smoke test (a random tiny model folder, seconds): ``--model-dir DIR --limit 4 --shots 1``.
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

RUNS = ("hf", "hf-calib")


def build_task(run: str, subject: str, data_dir: str):
    """The wrapped task (hf-calib run) or lm-eval's own task with the same config (hf run)."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    from lm_eval_calib.harness import wrap

    name = f"calib_mmlu_{subject}_continuation"
    manager = TaskManager(metadata={"data_dir": data_dir})
    if run == "hf-calib":
        return manager.load([name])["tasks"][name]
    config = dict(wrap.plan(manager, name).leaves[0].config, task=f"mmlu_{subject}_continuation")
    return ConfigurableTask(config=config)


def make_model(run: str, folder: str, batch_size: int):
    if run == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=batch_size)
    from lm_eval_calib.models.hf_calib import HFCalibLM

    return HFCalibLM(pretrained=folder, dtype="float32", device="cpu", batch_size=batch_size)


def run_worker(args: argparse.Namespace) -> dict:
    import lm_eval

    task = build_task(args.worker, args.subject, args.data_dir)
    model = make_model(args.worker, args.model_dir, args.batch_size)
    task.set_config("num_fewshot", args.shots)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=args.limit, rank=0, world_size=1)
    requests = list(task.instances)
    model.loglikelihood(requests[:4], disable_tqdm=True)  # warm-up
    model_seconds, evaluate_seconds, results, metrics = [], [], [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = model.loglikelihood(requests, disable_tqdm=True)
        model_seconds.append(time.perf_counter() - start)
    for _ in range(args.repeats):
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
        "model_seconds": model_seconds,
        "evaluate_seconds": evaluate_seconds,
        "loglikelihoods": [float(r[0]) for r in results],
        "metrics": metrics,
    }


class _NoIndex:
    """simple_evaluate's task manager for ready-made Task objects: no 14k-file index built per timed call."""

    task_index: dict = {}

    def load(self, tasks):
        return {"tasks": {task.config.task: task for task in tasks}, "groups": {}, "group_map": {}}


def export_model(folder: Path) -> Path:
    from lm_eval_calib.models.vllm_export import export_bundled_model

    if not (folder / "config.json").is_file():
        print(f"exporting SmolLM2 to {folder} (float32) ...", flush=True)
        export_bundled_model(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="high_school_psychology", help="an MMLU subject, lm-eval's name")
    parser.add_argument("--limit", type=int, default=200, help="documents (the first N of the test split)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model-dir", default=None, help="an HF model folder (default: SmolLM2 exported)")
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", "../shared/data"))
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        Path(args.json).write_text(json.dumps(run_worker(args)))
        return

    scratch = tempfile.TemporaryDirectory(prefix="bench-wrapped-")
    model_dir = Path(args.model_dir) if args.model_dir else export_model(Path(scratch.name) / "smollm2")
    runs = {}
    for run in RUNS:
        out = Path(scratch.name) / f"{run}.json"
        cmd = [sys.executable, __file__, "--worker", run, "--json", str(out), "--model-dir", str(model_dir)]
        cmd += ["--subject", args.subject, "--limit", str(args.limit), "--shots", str(args.shots)]
        cmd += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
        cmd += ["--data-dir", str(Path(args.data_dir).resolve())]
        print(f"running {run} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{run} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        runs[run] = json.loads(out.read_text())

    hf, calib = runs["hf"], runs["hf-calib"]
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


if __name__ == "__main__":
    main()
