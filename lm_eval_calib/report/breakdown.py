"""Per-category tables (MMLU subject, LAMA relation) computed with the metric core from the logged records.

A task gets a breakdown when its records carry a ``category`` shared by several documents; next-token
records name their document, which would make a table with one row per article, so they get none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lm_eval_calib.metrics import SMALL_SAMPLE_THRESHOLD, CalibrationData, compute_metric
from lm_eval_calib.report.leaderboard import fmt
from lm_eval_calib.report.runs import TaskRun

KEYS = ("acc", "ece", "brier", "nll")


def has_breakdown(run: TaskRun) -> bool:
    """Two or more categories, and at least one of them holds more than one logged document."""
    if run.item_category is None or len(run.categories) < 2 or run.item_record is None:
        return False
    per_record = np.full(run.n_records, -1, dtype=np.int64)
    per_record[run.item_record] = run.item_category
    counts = np.bincount(per_record[per_record >= 0], minlength=len(run.categories))
    return bool((counts > 1).any())


def breakdown_rows(run: TaskRun) -> list[dict]:
    """One row per category (and one for items without a category, if any), sorted by name."""
    rows = []
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
        rows.append(row)
    return rows


def to_markdown(sections: Sequence[tuple[TaskRun, list[dict]]]) -> str:
    """One table per (task, model): category, n, accuracy, mean confidence, ECE, Brier, NLL."""
    out = [
        f"ECE of a category with fewer than {SMALL_SAMPLE_THRESHOLD} items (marked *) is biased upward and "
        "noisy: compare categories by accuracy and confidence first.\n"
    ]
    for run, rows in sections:
        out.append(f"### {run.group} · {run.label}\n")
        out.append("| category | n | Accuracy | mean confidence | ECE | Brier | NLL |")
        out.append("|---|---|---|---|---|---|---|")
        for row in rows:
            star = "*" if row["n"] < SMALL_SAMPLE_THRESHOLD else ""
            out.append(
                f"| {row['category']} | {row['n']} | {fmt(row['acc'])} | {fmt(row['confidence'])} | "
                f"{fmt(row['ece'])}{star} | {fmt(row['brier'])} | {fmt(row['nll'])} |"
            )
        out.append("")
    return "\n".join(out)
