"""What a report must say about its inputs that its numbers alone would not show (issue 28).

* **Damaged option records.** Temperature scaling is fitted on a record's ``loglik`` and ``target``; every
  other number of the row comes from its ``confidence`` and ``correct``. A record that lacks ``loglik`` or
  ``target``, or whose ``loglik``/``target`` do not give its ``confidence``/``correct`` (and ``probs``),
  would silently drop temperature scaling or score it on other items than the row: the run gets a warning,
  a caveat in the leaderboard, and no temperature scaling (Platt scaling of confidence/correct remains).
* **Samples without their results entry.** A ``samples_<task>_<stamp>.jsonl`` whose ``results_<stamp>.json``
  is missing, or does not name the task, is not reported; a message says so instead of the task vanishing.
* **Different bin counts side by side.** Binned metrics (ECE, MCE, RMSCE, the diagrams) depend on
  ``n_bins``: runs of one task section computed with different counts are named and marked.

Every function here returns messages and caveats; reading files stays in :mod:`lm_eval_calib.records_io`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lm_eval_calib.records_io import TaskRecords, samples_name

if TYPE_CHECKING:
    from lm_eval_calib.report.runs import TaskRun

RECORD_TOLERANCE = 1e-6
"""How far a logged confidence or probability may lie from the softmax of the logged log-likelihoods
(JSON keeps 17 significant digits: a record written by this package agrees to about 1e-15)."""


def _example(records: TaskRecords, bad: Sequence[int]) -> str:
    return f"{len(bad)} of {len(records.records)} records (e.g. doc_id {records.doc_ids[bad[0]]})"


def _agrees(record: Mapping[str, Any]) -> bool:
    """Whether an option record's ``loglik``/``target`` give its ``confidence``, ``correct`` (and ``probs``)
    as :func:`lm_eval_calib.records.make_record` computes them."""
    try:
        logliks = np.asarray(record["loglik"], dtype=np.float64)
        target = int(record["target"])
        if logliks.ndim != 1 or not logliks.size or not np.isfinite(logliks).all():
            return False
        probs = np.exp(logliks - logliks.max())
        probs /= probs.sum()
        predicted = int(np.argmax(logliks))
        if abs(min(probs[predicted], 1.0) - float(record["confidence"])) > RECORD_TOLERANCE:
            return False
        if int(predicted == target) != int(round(float(record["correct"]))):
            return False
        logged = record.get("probs")
        if logged is not None:
            logged = np.asarray(logged, dtype=np.float64)
            if logged.shape != probs.shape or np.abs(logged - probs).max() > RECORD_TOLERANCE:
                return False
    except (TypeError, ValueError, KeyError):
        return False
    return True


def option_record_problems(records: TaskRecords) -> list[str]:
    """Caveats of a task whose option records cannot back temperature scaling (empty when they can, and for
    token and generation records, which have no options)."""
    if records.estimator is not None:
        return []
    option = [i for i, r in enumerate(records.records) if not isinstance(r.get("confidence"), list)]
    if not option:
        return []
    lacking = [
        i
        for i in option
        if not isinstance(records.records[i].get("loglik"), list) or "target" not in records.records[i]
    ]
    if lacking:
        return [
            f"{_example(records, lacking)} lack loglik or target: no temperature scaling (ECE recal. is "
            "Platt scaling of confidence/correct)"
        ]
    disagree = [i for i in option if not _agrees(records.records[i])]
    if disagree:
        return [
            f"{_example(records, disagree)} have loglik/target that disagree with their confidence/correct "
            "(damaged or edited samples): no temperature scaling, which would be fitted on loglik/target "
            "(ECE recal. is Platt scaling of confidence/correct)"
        ]
    return []


def unreported_samples(folder: Path, results: Mapping[Path, Mapping[str, Any]]) -> list[str]:
    """Warnings for samples files under ``folder`` whose task no results file reports: no
    ``results_<stamp>.json`` beside them, or one (among ``results``, the readable results files by path)
    that does not name the task. Unreadable results files have their own message already."""
    messages = []
    readable = {Path(path).resolve(): body for path, body in results.items()}
    for path in sorted(Path(folder).rglob("samples_*.jsonl")):
        parsed = samples_name(path.name)
        if parsed is None:
            continue
        task, stamp = parsed
        results_file = path.parent / f"results_{stamp}.json"
        if not results_file.is_file():
            messages.append(
                f"warning: {path}: no results_{stamp}.json beside it, so {task} is not reported (lm_eval "
                "writes both in one call: keep its output folder whole, or rerun the task)"
            )
            continue
        body = readable.get(results_file.resolve())
        tasks = body.get("results") if isinstance(body, Mapping) else None
        if isinstance(tasks, Mapping) and task not in tasks:
            messages.append(
                f"warning: {path}: {task} is not in {results_file.name}, so it is not reported (the results "
                f"file was edited, or these samples come from another run); rerun lm_eval for {task}"
            )
    return messages


def compare_bins(runs: Iterable[TaskRun]) -> list[str]:
    """A warning per task section whose runs used different ``n_bins``; each of its runs gets a caveat."""
    messages = []
    by_group: dict[str, list[TaskRun]] = defaultdict(list)
    for run in runs:
        by_group[run.group].append(run)
    for group, members in sorted(by_group.items()):
        counts = sorted({run.options.n_bins for run in members})
        if len(counts) < 2:
            continue
        listing = "; ".join(
            f"{n}: " + ", ".join(sorted({r.label for r in members if r.options.n_bins == n})) for n in counts
        )
        messages.append(
            f"warning: {group}: the runs use different n_bins ({listing}); ECE, MCE, RMS calibration error "
            "and the diagrams' bins depend on the bin count, so these rows are not comparable (marked ⚠). "
            'Rerun with one count: --metadata \'{"calibration": {"n_bins": N}}\''
        )
        for run in members:
            others = "/".join(str(n) for n in counts if n != run.options.n_bins)
            run.caveats.append(
                f"n_bins {run.options.n_bins} where other runs of {group} use {others}: binned metrics not "
                "comparable"
            )
    return messages
