"""Per-category tables (MMLU subject, LAMA relation) computed with the metric core from the logged records.

A task gets a breakdown when its records carry a ``category`` shared by several documents; next-token
records name their document, which would make a table with one row per article, so they get none.

Multiple-choice runs with conformal answer sets also get, per category and score (LAC, APS), the coverage
and mean set size of those sets with bootstrap stderrs over the category's documents: conformal coverage
holds on average over documents, not per category, and this is where it fails conditionally. A category
whose coverage lies more than two stderrs below ``1 - alpha`` is flagged (``coverage_<score>_below``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lm_eval_calib.metrics import SMALL_SAMPLE_THRESHOLD, CalibrationData, ConformalSets, compute_metric
from lm_eval_calib.metrics.conformal import bootstrap_mean_stderr
from lm_eval_calib.report.leaderboard import fmt
from lm_eval_calib.report.runs import TaskRun

KEYS = ("acc", "ece", "brier", "nll")
COVERAGE_RESAMPLES = 1000
COVERAGE_SEED = 1234
"""The bootstrap of the per-category coverage and set size: that of the whole-run numbers (conformal.csv)."""
BELOW_STDERRS = 2.0
"""A category is flagged when its coverage is below ``1 - alpha`` by more than this many stderrs."""


def has_breakdown(run: TaskRun) -> bool:
    """Two or more categories, and at least one of them holds more than one logged document."""
    if run.item_category is None or len(run.categories) < 2 or run.item_record is None:
        return False
    per_record = np.full(run.n_records, -1, dtype=np.int64)
    per_record[run.item_record] = run.item_category
    counts = np.bincount(per_record[per_record >= 0], minlength=len(run.categories))
    return bool((counts > 1).any())


def conformal_cells(sets: ConformalSets, documents: np.ndarray) -> dict[str, float | bool]:
    """Coverage and mean set size of ``sets`` over ``documents`` (indices of the run's records), with
    bootstrap stderrs over those documents, and whether the coverage is more than :data:`BELOW_STDERRS`
    stderrs below the target ``1 - alpha``."""
    score = sets.score
    covered, size = sets.covered[documents], sets.size[documents]
    coverage = float(covered.mean())
    n = int(documents.shape[0])
    coverage_se = bootstrap_mean_stderr(covered, COVERAGE_RESAMPLES, COVERAGE_SEED) if n > 1 else float("nan")
    size_se = bootstrap_mean_stderr(size, COVERAGE_RESAMPLES, COVERAGE_SEED) if n > 1 else float("nan")
    target = 1.0 - sets.alpha
    below = n > 1 and coverage < target - BELOW_STDERRS * coverage_se
    return {
        f"coverage_{score}": coverage,
        f"coverage_{score}_stderr": coverage_se,
        f"set_size_{score}": float(size.mean()),
        f"set_size_{score}_stderr": size_se,
        f"coverage_{score}_below": bool(below),
    }


def breakdown_rows(run: TaskRun, conformal: Sequence[ConformalSets] = ()) -> list[dict]:
    """One row per category (and one for items without a category, if any), sorted by name.

    ``conformal``: the run's answer sets (one per score, over its records, as the report computes them);
    each row then carries their per-category coverage and set size (:func:`conformal_cells`)."""
    rows = []
    record_category = None
    if conformal and run.item_record is not None:
        record_category = np.full(run.n_records, -1, dtype=np.int64)
        record_category[run.item_record] = run.item_category
        if any(len(sets) != run.n_records for sets in conformal):
            raise ValueError(
                f"{run.label} / {run.group}: conformal sets cover {len(conformal[0])} documents but the run "
                f"logged {run.n_records}; compute the sets from this run's records"
            )
    n_bins = run.options.n_bins
    codes = run.item_category
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(-1, len(run.categories) + 1))
    for code in range(-1, len(run.categories)):
        items = order[bounds[code + 1] : bounds[code + 2]]
        if items.shape[0] == 0:
            continue
        data = CalibrationData(
            run.data.confidence[items], run.data.correct[items], run.data.brier[items], run.data.nll[items]
        )
        name = "(none)" if code < 0 else run.categories[code]
        row = {
            "model": run.label,
            "task": run.group,
            "category": name,
            "n": int(items.shape[0]),
            "confidence": float(data.confidence.mean()),
        }
        row |= {key: compute_metric(key, data, n_bins=n_bins) for key in KEYS}
        if record_category is not None:
            documents = np.flatnonzero(record_category == code)
            for sets in conformal:
                row |= conformal_cells(sets, documents)
        rows.append(row)
    return rows


def to_markdown(sections: Sequence[tuple[TaskRun, list[dict]]]) -> str:
    """One table per (task, model): category, n, accuracy, mean confidence, ECE, Brier, NLL."""
    out = [
        f"ECE of a category with fewer than {SMALL_SAMPLE_THRESHOLD} items (marked *) is biased upward and "
        "noisy: compare categories by accuracy and confidence first.\n"
    ]
    for run, rows in sections:
        scores = [s for s in ("lac", "aps") if rows and f"coverage_{s}" in rows[0]]
        out.append(f"### {run.group} · {run.label}\n")
        if scores:
            target = 1.0 - run.options.conformal_alpha
            out.append(
                f"Conformal coverage and mean set size per category (target coverage {target:g}, held on "
                f"average over documents only); ± is a bootstrap stderr over the category's documents; **!** "
                f"marks coverage more than {BELOW_STDERRS:g} stderrs below the target.\n"
            )
        head = "| category | n | Accuracy | mean confidence | ECE | Brier | NLL |"
        head += "".join(f" coverage {s.upper()} | set size {s.upper()} |" for s in scores)
        out.append(head)
        out.append("|---|---|---|---|---|---|---|" + "---|---|" * len(scores))
        for row in rows:
            star = "*" if row["n"] < SMALL_SAMPLE_THRESHOLD else ""
            line = (
                f"| {row['category']} | {row['n']} | {fmt(row['acc'])} | {fmt(row['confidence'])} | "
                f"{fmt(row['ece'])}{star} | {fmt(row['brier'])} | {fmt(row['nll'])} |"
            )
            for s in scores:
                flag = " **!**" if row[f"coverage_{s}_below"] else ""
                line += (
                    f" {_with_stderr(row[f'coverage_{s}'], row[f'coverage_{s}_stderr'])}{flag} |"
                    f" {_with_stderr(row[f'set_size_{s}'], row[f'set_size_{s}_stderr'])} |"
                )
            out.append(line)
        out.append("")
    return "\n".join(out)


def _with_stderr(value: float, stderr: float) -> str:
    return fmt(value) + (f" ± {fmt(stderr)}" if np.isfinite(stderr) else "")
