"""Read lm-eval ``--output_path`` folders back into per-(model, task) calibration data.

Everything is rebuilt from what lm-eval wrote: the results JSON for the reported numbers and the
``--log_samples`` JSONL for the per-document records, so a report never needs the model again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lm_eval_calib.harness.records import RECORD_KEY, records_to_data
from lm_eval_calib.metrics import CalibrationData

TASK_PREFIX = "calib_"


class ReportInputError(ValueError):
    """A run folder cannot be reported on (missing results, missing samples, ...)."""


@dataclass(frozen=True)
class TaskRun:
    """One calibration task of one lm-eval run."""

    label: str
    task: str
    results: dict
    data: CalibrationData
    source: Path


def model_label(results: dict) -> str:
    """A short name for the model of a run: the last path component of ``pretrained`` (or lm-eval's name)."""
    args = (results.get("config") or {}).get("model_args") or {}
    name = args.get("pretrained") if isinstance(args, dict) else None
    name = str(name or results.get("model_name") or "model").rstrip("/")
    return name.rsplit("/", 1)[-1]


def _samples_file(results_file: Path, task: str) -> Path | None:
    stamp = results_file.stem[len("results_") :]
    exact = results_file.parent / f"samples_{task}_{stamp}.jsonl"
    return exact if exact.is_file() else None


def load_run(folder: Path, label: str | None = None) -> tuple[list[TaskRun], list[str]]:
    """The calibration tasks of the newest results file under ``folder``, and warnings for the rest."""
    results_files = sorted(Path(folder).rglob("results_*.json"))
    if not results_files:
        raise ReportInputError(
            f"{folder}: no results_*.json found; pass the folder given to lm_eval --output_path"
        )
    results_file = results_files[-1]
    results = json.loads(results_file.read_text())
    name = label or model_label(results)
    runs, warnings = [], []
    for task, metrics in sorted(results.get("results", {}).items()):
        if not task.startswith(TASK_PREFIX):
            warnings.append(f"{folder}: task {task} is not a calibration task; skipped")
            continue
        samples = _samples_file(results_file, task)
        if samples is None:
            warnings.append(f"{folder}: no samples for {task}; rerun lm_eval with --log_samples to plot it")
            continue
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        data = records_to_data([row[RECORD_KEY] for row in rows])
        runs.append(TaskRun(label=name, task=task, results=metrics, data=data, source=results_file))
    return runs, warnings
