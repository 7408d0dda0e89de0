"""Read lm-eval ``--output_path`` folders back into per-(model, task) calibration data.

Everything is rebuilt from what lm-eval wrote: the results JSON for the reported numbers and the
``--log_samples`` JSONL for the per-document records, so a report never needs the model again. A folder may
hold several results files (several models, or several lm_eval calls into one ``--output_path``); each is
read, and where the same model and task appear twice in one folder the newest file wins.

Records are read by :mod:`lm_eval_calib.records_io` (the one reader, shared with the study): an lm-eval-calib
task's logged records, or those of any plain lm-eval multiple-choice task built from its logged
log-likelihoods, whose calibration metrics the report then computes as the calibration task would have.

A generation calibration task (``calib_gsm8k``, ``calib_facts_gen``, ...) becomes one run per confidence
estimator and filter: the estimator joins the model's label (``SmolLM2 · seqprob``), so the task's overlay
draws the estimators side by side, and a task with several filters gets one section per filter
(``calib_gsm8k (flexible-extract)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_calib.metrics import METRICS, CalibrationData, CalibrationInputError, OptionScores
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE, make_aggregation, mean_stderr
from lm_eval_calib.records import NORM_SUFFIX
from lm_eval_calib.records_io import (
    SamplesError,
    TaskRecords,
    generation_views,
    has_records,
    read_results,
    read_task,
    results_stamp,
    samples_for_results,
)
from lm_eval_calib.report.integrity import option_record_problems, unreported_samples
from lm_eval_calib.report.labels import resolve_label


class ReportInputError(ValueError):
    """A run folder cannot be reported on (missing results, missing samples, ...)."""


@dataclass
class TaskRun:
    """One task of one lm-eval run under one prediction rule, with its records decoded into arrays."""

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
    doc_ids: list[Any] = field(default_factory=list)
    """lm-eval's ``doc_id`` of each logged document, in record order (the rows of ``scores``)."""
    item_record: np.ndarray | None = None
    """Index of the logged document each item came from (tokens of a document share one)."""
    item_category: np.ndarray | None = None
    """Category code per item (-1 = none); names in ``categories``."""
    categories: list[str] = field(default_factory=list)
    bootstrap_iters: int | None = None
    """lm_eval's --bootstrap_iters (its stderrs used min(this, options.max_bootstrap) resamples)."""
    caveats: list[str] = field(default_factory=list)
    """Why this row is not comparable or lacks a number (damaged records, another bin count): the
    leaderboard marks the row with them (:mod:`lm_eval_calib.report.integrity`)."""
    computed: list[str] = field(default_factory=list)
    """The leaderboard keys the report computed from the logged records because lm-eval's run did not (a
    plain task's calibration metrics, a generation task's accuracy): the page says so for this row."""

    def __post_init__(self) -> None:
        self.base_label = self.base_label or self.label
        self.group = self.group or self.task

    @property
    def item_groups(self) -> np.ndarray:
        """Each item's document, what a stderr resamples (one item per document when unknown)."""
        if self.item_record is not None and len(self.item_record) == len(self.data):
            return self.item_record
        return np.arange(len(self.data), dtype=np.int64)

    @property
    def n_records(self) -> int:
        return (
            int(self.item_record.max()) + 1 if self.item_record is not None and len(self.item_record) else 0
        )


ACC_NORM_SUFFIX = " (acc_norm rule)"
"""Appended to a task's name for its rows under lm-eval's ``acc_norm`` prediction rule."""


ESTIMATOR_SEPARATOR = " · "
"""Joins a generation task's confidence estimator to the model's label (``SmolLM2 · seqprob``)."""


def _shown(task: str, records: TaskRecords, found: list[TaskRecords]) -> str:
    """The task's name in the report: ``acc_norm`` rule rows and, for a generation task logged under several
    filters, the filter (``calib_gsm8k (flexible-extract)``)."""
    if records.estimator is not None:
        several = len({r.filter_key for r in found}) > 1
        return f"{task} ({records.filter_key})" if several else task
    return task if records.rule == "acc" else task + ACC_NORM_SUFFIX


def _results_files(folder: Path) -> list[Path]:
    """Every results file under ``folder``, oldest first (by lm-eval's time stamp)."""
    files = folder.rglob("results_*.json")
    return sorted(files, key=lambda p: (results_stamp(p.name) or p.stem, str(p)))


def _bootstrap_iters(results: dict) -> int | None:
    iters = (results.get("config") or {}).get("bootstrap_iters")
    return iters if isinstance(iters, int) and not isinstance(iters, bool) else None


def task_numbers(
    metrics: dict, records: TaskRecords, bootstrap_iters: int | None
) -> tuple[dict[str, Any], list[str]]:
    """The leaderboard numbers of one task under ``records.rule``, and the keys the report computed itself.

    Numbers lm-eval wrote win (under the ``acc_norm`` rule: its ``acc_norm`` and a calibration task's
    ``ece_norm``, ...). For a plain lm-eval task, the keys its run did not compute (every calibration metric,
    and accuracy when documents were left out) are computed here exactly as a calibration task's aggregation
    computes them (:func:`lm_eval_calib.record_metrics.make_aggregation`: the run's ``n_bins``,
    bootstrap seed and ``min(--bootstrap_iters, max_bootstrap)`` resamples; no stderr when
    ``--bootstrap_iters`` was 0), accuracy as lm-eval's mean with its stderr.
    """
    if records.estimator is not None:
        return _generation_numbers(metrics, records, bootstrap_iters)
    suffix = "" if records.rule == "acc" else NORM_SUFFIX
    numbers: dict[str, Any] = dict(metrics) if not suffix else {}
    for key in METRICS:
        for name in (key, f"{key}_stderr"):
            value = metrics.get(f"{name.replace(key, key + suffix, 1)},none")
            if value is not None:
                numbers[f"{name},none"] = value
    computed = [key for key in METRICS if not isinstance(numbers.get(f"{key},none"), int | float)]
    if records.origin != "lm-eval":  # a calibration task's own numbers are shown as it reported them
        return numbers, []
    if records.n_skipped and "acc" not in computed:  # lm-eval's accuracy counts documents left out here
        computed.insert(0, "acc")
    iters = 100000 if bootstrap_iters is None else bootstrap_iters  # lm-eval's default --bootstrap_iters
    warned: set[int] = set()  # one small-sample warning per task, as in the calibration task
    for key in computed:
        if key == "acc":  # lm-eval's own mean and its stderr, as a calibration task reports acc
            numbers["acc,none"], numbers["acc_stderr,none"] = _accuracy(records.data.correct.tolist(), iters)
            continue
        aggregate = make_aggregation(key, records.options, records.task, warned)
        numbers[f"{key},none"] = aggregate(records.records)
        stderr = getattr(aggregate, STDERR_ATTRIBUTE)
        many = iters > 0 and len(records.records) > 1  # lm-eval's rule for reporting a stderr at all
        numbers[f"{key}_stderr,none"] = stderr(records.records, n_resamples=iters) if many else "N/A"
    return numbers, computed


def _accuracy(correct: list, iters: int) -> tuple[float, Any]:
    """lm-eval's mean and its stderr (``N/A`` as lm-eval writes it when there is none)."""
    return float(np.mean(correct)), mean_stderr(correct) if iters > 0 and len(correct) > 1 else "N/A"


def _generation_numbers(
    metrics: dict, records: TaskRecords, bootstrap_iters: int | None
) -> tuple[dict[str, Any], list[str]]:
    """A generation task's numbers for one estimator and filter, under the leaderboard's keys.

    The calibration metrics are lm-eval's ``<metric>_<estimator>,<filter>`` as the run reported them;
    ``acc`` is the share of answers the task's own metric judged correct (the records' ``correct``: the
    task's first metric after this filter, > 0.5), computed here because the task reports that metric
    under its own name (``exact_match``, ...).
    """
    estimator, filter_key = records.estimator, records.filter_key
    numbers: dict[str, Any] = {}
    for key in METRICS:
        for name in (key, f"{key}_stderr"):
            value = metrics.get(f"{name.replace(key, f'{key}_{estimator}', 1)},{filter_key}")
            if value is not None:
                numbers[f"{name},none"] = value
    iters = 100000 if bootstrap_iters is None else bootstrap_iters
    numbers["acc,none"], numbers["acc_stderr,none"] = _accuracy(records.data.correct.tolist(), iters)
    return numbers, []


def _read_generation(
    results_file: Path, task: str, results: dict, views: list[tuple[str, str]]
) -> tuple[list[TaskRecords], list[str]]:
    """One :class:`TaskRecords` per ``(filter, estimator)`` of a generation calibration task."""
    found, notes = [], []
    for filter_key, estimator in views:
        records = read_task(results_file, task, results, estimator=estimator, filter_key=filter_key)
        found.append(records)
        notes += [f"{task} [{estimator}, {filter_key}]: {n}" for n in records.skipped]
    return found, notes


def _read_rules(
    results_file: Path, task: str, results: dict, metrics: dict
) -> tuple[list[TaskRecords], list[str]]:
    """The task's records under the ``acc`` rule and, where the run has them, the ``acc_norm`` rule (a
    generation calibration task: one per estimator and filter)."""
    views = generation_views(samples_for_results(results_file, task))
    if views:
        return _read_generation(results_file, task, results, views)
    first = read_task(results_file, task, results, "acc")
    found, notes = [first], list(first.skipped)
    if first.origin == "record":
        norm = first.source is not None and has_records(first.source, "acc_norm")
    else:
        norm = "acc_norm,none" in metrics
    if norm:
        second = read_task(results_file, task, results, "acc_norm")
        found.append(second)
        notes += [n for n in second.skipped if n not in notes]
    return found, notes


def load_run(
    folder: Path, label: str | None = None, log=lambda message: None
) -> tuple[list[TaskRun], list[str]]:
    """The scorable tasks of every results file under ``folder``, and messages about what was skipped.

    A task is scorable when its samples hold calibration records (an lm-eval-calib task) or it is a plain
    lm-eval multiple-choice task (records built from its logged log-likelihoods); a task whose run reported
    ``acc_norm`` (or logged ``ece_norm`` records) also gets a ``<task> (acc_norm rule)`` run.
    """
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
    readable: dict[Path, dict] = {}
    for results_file in results_files:  # oldest first, so a newer file replaces an older one
        try:
            results = read_results(results_file)
        except SamplesError as exc:
            messages.append(f"skipped: {exc}")
            continue
        readable[results_file] = results
        named = resolve_label(results, label)
        if named.warning:
            messages.append(f"warning: {named.warning}")
        configs = results.get("configs") if isinstance(results.get("configs"), dict) else {}
        for task, metrics in sorted(results["results"].items()):
            if task not in configs or not isinstance(metrics, dict):
                messages.append(
                    f"skipped: {folder}: {task} is a group of tasks, not one task; its tasks are reported "
                    "one by one"
                )
                continue
            key = (named.label, task)
            if key in chosen:
                messages.append(
                    f"note: {folder}: {named.label} / {task} is in {chosen[key][0].name} and the newer "
                    f"{results_file.name}; using the newer one"
                )
            chosen[key] = (results_file, results, {"metrics": metrics, "stage": named.stage})
    messages += unreported_samples(folder, readable)
    runs = []
    for (name, task), (results_file, results, extra) in chosen.items():
        if samples_for_results(results_file, task) is None:
            messages.append(
                f"skipped: {folder}: no samples for {task} ({name}); rerun lm_eval with --log_samples to "
                "report it"
            )
            continue
        try:
            found, notes = _read_rules(results_file, task, results, extra["metrics"])
        except (SamplesError, CalibrationInputError, KeyError, TypeError, ValueError) as exc:
            messages.append(f"skipped: {folder}: {task} ({name}): {exc}")
            continue
        messages += [f"note: {name} / {note}" for note in notes]
        for records in found:
            numbers, computed = task_numbers(extra["metrics"], records, _bootstrap_iters(results))
            shown, run_label = _shown(task, records, found), name
            if records.estimator is not None:
                run_label = f"{name}{ESTIMATOR_SEPARATOR}{records.estimator}"
            if computed:
                opts = records.options
                what = "log-likelihoods" if records.origin == "lm-eval" else "records"
                messages.append(
                    f"note: {name} / {shown}: {', '.join(computed)} computed by the report from the logged "
                    f"{what} (n_bins {opts.n_bins}, bootstrap seed {opts.bootstrap_seed}); lm-eval's run did "
                    "not compute them"
                )
            caveats = option_record_problems(records)
            messages += [f"warning: {run_label} / {shown}: {caveat}" for caveat in caveats]
            runs.append(
                TaskRun(
                    label=run_label,
                    task=shown,
                    results=numbers,
                    data=records.data,
                    source=results_file,
                    folder=folder,
                    stage=extra["stage"],
                    version=(results.get("versions") or {}).get(task),
                    n_shot=(results.get("n-shot") or {}).get(task),
                    options=records.options,
                    bootstrap_iters=_bootstrap_iters(results),
                    scores=None if caveats else records.scores,  # never fitted on damaged loglik/target
                    doc_ids=records.doc_ids,
                    item_record=records.item_document,
                    item_category=records.item_category,
                    categories=records.categories,
                    caveats=caveats,
                    computed=list(computed) if records.estimator is None else ["acc"],
                )
            )
            log(f"  read {run_label} / {shown}: {len(records.data)} items")
    return runs, messages
