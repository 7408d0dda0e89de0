"""Run calibration tasks through ``lm_eval.simple_evaluate`` and write what a parity check compares (JSON).

    python tests/compat/run_tasks.py OUT.json --tasks calib_mmlu_anatomy,calib_clm --limit 3 \
        --model hf-calib --model_args pretrained=...

Run by the lm_eval_05 parity tests once with lm-eval 0.4.13's interpreter and once with 0.5's, on the same
model and documents. Writes, per task: the results (every ``metric,filter`` key: value or stderr), the
per-document values (every key a document logs, records included; a reference to a record as its text), and
the seconds lm-eval spent aggregating (0.4.13: ``TaskOutput.calculate_aggregate_metric``; 0.5:
``evaluator_utils._compute_task_aggregations``, both looked up by lm-eval at call time).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import time
from typing import Any

import lm_eval
from lm_eval import evaluator_utils


def _timed(owner: Any, name: str, seconds: dict[str, float], task_of: Any) -> None:
    """Wrap ``owner.name`` so the seconds of each call add up under the task it aggregates."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            task = task_of(args)
            seconds[task] = seconds.get(task, 0.0) + time.perf_counter() - start

    setattr(owner, name, timed)


def _plain(value: Any) -> Any:
    """A per-document value as JSON: records (dicts) as they are, NaN as "nan", anything else as its text."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--model", default="hf-calib")
    parser.add_argument("--model_args", required=True)
    parser.add_argument("--bootstrap_iters", type=int, default=100000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    seconds: dict[str, float] = {}
    if hasattr(evaluator_utils, "TaskOutput"):  # 0.4.13
        _timed(evaluator_utils.TaskOutput, "calculate_aggregate_metric", seconds, lambda a: a[0].task_name)
    else:  # 0.5
        _timed(evaluator_utils, "_compute_task_aggregations", seconds, lambda a: a[0].task_name)

    out = lm_eval.simple_evaluate(
        model=args.model,
        model_args=args.model_args,
        tasks=args.tasks.split(","),
        limit=args.limit,
        log_samples=True,
        bootstrap_iters=args.bootstrap_iters,
        device=args.device,
    )
    tasks: dict[str, Any] = {}
    for task, results in out["results"].items():
        samples = out["samples"].get(task, [])
        tasks[task] = {
            "results": {key: _plain(value) for key, value in results.items() if "," in key},
            "samples": [
                {
                    "doc_id": int(sample["doc_id"]),
                    "filter": sample["filter"],
                    "values": {key: _plain(sample[key]) for key in sample["metrics"] if key in sample},
                }
                for sample in samples
            ],
            "aggregation_seconds": seconds.get(task),
        }
    with open(args.out, "w") as f:
        json.dump({"lm_eval": importlib.metadata.version("lm_eval"), "tasks": tasks}, f, indent=1)


if __name__ == "__main__":
    main()
