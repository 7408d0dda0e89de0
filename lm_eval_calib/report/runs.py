"""Read lm-eval ``--output_path`` folders back into per-(model, task) calibration data.

Everything is rebuilt from what lm-eval wrote: the results JSON for the reported numbers and the
``--log_samples`` JSONL for the per-document records, so a report never needs the model again. A folder may
hold several results files (several models, or several lm_eval calls into one ``--output_path``); each is
read, and where the same model and task appear twice in one folder the newest file wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_calib.harness.options import CalibrationOptions
from lm_eval_calib.metrics import CalibrationData, CalibrationInputError, OptionScores
from lm_eval_calib.records import RECORD_LOG_KEY, records_to_data
from lm_eval_calib.report.labels import resolve_label

TASK_PREFIX = "calib_"


class ReportInputError(ValueError):
    """A run folder cannot be reported on (missing results, missing samples, ...)."""


@dataclass
class TaskRun:
    """One calibration task of one lm-eval run, with its records decoded into arrays."""

    label: str
    task: str
    results: dict
    data: CalibrationData
    source: Path
    folder: Path = Path(".")
    base_label: str = ""
    """The label before duplicates were told apart (used to pair a test run with its val run)."""
    stage: str | None = None
    version: Any = None
    n_shot: Any = None
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    group: str = ""
    """The leaderboard section: the task name, plus the task version when runs disagree on it."""
    scores: OptionScores | None = None
    """Per-option log-likelihoods and gold indices (multiple-choice records), for temperature scaling."""
    item_record: np.ndarray | None = None
    """Index of the logged document each item came from (tokens of a document share one)."""
    item_category: np.ndarray | None = None
    """Category code per item (-1 = none); names in ``categories``."""
    categories: list[str] = field(default_factory=list)
    bootstrap_iters: int | None = None
    """lm_eval's --bootstrap_iters (its stderrs used min(this, options.max_bootstrap) resamples)."""

    def __post_init__(self) -> None:
        self.base_label = self.base_label or self.label
        self.group = self.group or self.task

    @property
    def n_records(self) -> int:
        return (
            int(self.item_record.max()) + 1 if self.item_record is not None and len(self.item_record) else 0
        )


def _samples_file(results_file: Path, task: str) -> Path | None:
    stamp = results_file.stem[len("results_") :]
    exact = results_file.parent / f"samples_{task}_{stamp}.jsonl"
    return exact if exact.is_file() else None


def read_records(path: Path) -> list[dict]:
    """The calibration record of every logged document, in file order."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line).get(RECORD_LOG_KEY)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ReportInputError(f"{path} line {number} is not a JSON object ({exc})") from exc
            if not isinstance(record, dict) or "confidence" not in record:
                raise ReportInputError(
                    f"{path} line {number} has no calibration record under {RECORD_LOG_KEY!r}; was it "
                    "written by an lm-eval-calib task with --log_samples?"
                )
            records.append(record)
    if not records:
        raise ReportInputError(f"{path} holds no logged documents")
    return records


def decode_records(records: list[dict]) -> dict[str, Any]:
    """Arrays behind one task's report: data, per-item document and category, and option scores if any."""
    data = records_to_data(records)
    sizes = np.fromiter(
        (len(r["confidence"]) if isinstance(r["confidence"], list) else 1 for r in records),
        dtype=np.int64,
        count=len(records),
    )
    names = sorted({str(r["category"]) for r in records if r.get("category") is not None})
    code = {name: i for i, name in enumerate(names)}
    per_record = np.array(
        [-1 if r.get("category") is None else code[str(r["category"])] for r in records], dtype=np.int64
    )
    scores = None
    if all(not isinstance(r["confidence"], list) and "loglik" in r and "target" in r for r in records):
        scores = OptionScores.build([r["loglik"] for r in records], [int(r["target"]) for r in records])
    return {
        "data": data,
        "scores": scores,
        "item_record": np.repeat(np.arange(len(records), dtype=np.int64), sizes),
        "item_category": np.repeat(per_record, sizes),
        "categories": names,
    }


def _results_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("results_*.json"), key=lambda p: (p.stem, str(p)))


def load_run(
    folder: Path, label: str | None = None, log=lambda message: None
) -> tuple[list[TaskRun], list[str]]:
    """The calibration tasks of every results file under ``folder``, and messages about what was skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportInputError(f"{folder}: no such folder; pass the folder given to lm_eval --output_path")
    results_files = _results_files(folder)
    if not results_files:
        raise ReportInputError(
            f"{folder}: no results_*.json found; pass the folder given to lm_eval --output_path"
        )
    chosen: dict[tuple[str, str], tuple[Path, dict, dict]] = {}
    messages: list[str] = []
    for results_file in results_files:  # oldest first, so a newer file replaces an older one
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            messages.append(f"skipped: {results_file} is not valid JSON ({exc})")
            continue
        named = resolve_label(results, label)
        if named.warning:
            messages.append(f"warning: {named.warning}")
        for task, metrics in sorted((results.get("results") or {}).items()):
            if not task.startswith(TASK_PREFIX) or task not in (results.get("configs") or {}):
                messages.append(
                    f"skipped: {folder}: task {task} is not an lm-eval-calib calibration task (calib_*); "
                    "report only calibration tasks"
                )
                continue
            key = (named.label, task)
            if key in chosen:
                messages.append(
                    f"note: {folder}: {named.label} / {task} is in {chosen[key][0].name} and the newer "
                    f"{results_file.name}; using the newer one"
                )
            chosen[key] = (results_file, results, {"metrics": metrics, "stage": named.stage})
    runs = []
    for (name, task), (results_file, results, extra) in chosen.items():
        samples = _samples_file(results_file, task)
        if samples is None:
            messages.append(
                f"skipped: {folder}: no samples for {task} ({name}); rerun lm_eval with --log_samples to "
                "report it"
            )
            continue
        try:
            decoded = decode_records(read_records(samples))
        except (ReportInputError, CalibrationInputError, KeyError, TypeError, ValueError) as exc:
            messages.append(f"skipped: {samples}: unreadable calibration records ({exc})")
            continue
        config = (results.get("configs") or {}).get(task) or {}
        try:
            options = CalibrationOptions.from_metadata(config.get("metadata"))
        except ValueError as exc:
            messages.append(f"warning: {results_file}: {exc}; using the default calibration options")
            options = CalibrationOptions()
        runs.append(
            TaskRun(
                label=name,
                task=task,
                results=extra["metrics"],
                source=results_file,
                folder=folder,
                stage=extra["stage"],
                version=(results.get("versions") or {}).get(task),
                n_shot=(results.get("n-shot") or {}).get(task),
                options=options,
                bootstrap_iters=(results.get("config") or {}).get("bootstrap_iters"),
                **decoded,
            )
        )
        log(f"  read {name} / {task}: {len(decoded['data'])} items")
    return runs, messages
