"""Leaderboard rows: one per (model or training stage, task), written as Markdown and CSV.

The metric values and stderrs are the numbers lm-eval wrote into its results JSON (never recomputed, so the
report cannot drift from the run), except where the run has none: a plain lm-eval task's calibration metrics
and a generation task's accuracy are computed by the report from the logged records (a row's
``computed_by_report``; those cells are marked :data:`COMPUTED` and the page names the rows). The ECE
interval and the after-recalibration columns are computed from the logged records. A row whose confidences
are degenerate (:func:`lm_eval_calib.metrics.degenerate_confidence`: ``degenerate`` holds the codes) is
marked, its ECE cell says "(degenerate)" and an undefined AUROC says why instead of ``nan``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from lm_eval_calib.metrics import METRICS

COLUMNS = ("acc", "ece", "ece_em", "mce", "smece", "brier", "nll", "auroc")
"""lm-eval's own numbers shown for every row (value and stderr)."""


def fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def lm_eval_numbers(results: dict) -> dict:
    """Values and stderrs as lm-eval wrote them (``None`` where absent or ``"N/A"``)."""
    row = {}
    for key in COLUMNS:
        value, stderr = results.get(f"{key},none"), results.get(f"{key}_stderr,none")
        row[key] = value if isinstance(value, int | float) else None
        row[f"{key}_stderr"] = stderr if isinstance(stderr, int | float) else None
    return row


def sort_rows(table: list[dict]) -> list[dict]:
    """By task section, then ECE (best first; rows without one last)."""
    return sorted(table, key=lambda r: (r["task"], r["ece"] is None, r["ece"] or 0.0, r["model"]))


def has_stages(table: Sequence[dict]) -> bool:
    return any(row.get("stage") for row in table)


MAIN = ("acc", "ece", "brier", "auroc")
"""The numbers a reader compares first (with the ECE interval and ECE after recalibration)."""
DETAILS = ("ece_em", "mce", "smece", "nll")
"""The rest of lm-eval's numbers: the details table (the CSV keeps every column)."""


def _name(key: str) -> str:
    return f"{METRICS[key].display_name} {'↑' if METRICS[key].higher_is_better else '↓'}"


COMPUTED = "†"
"""After a value the report computed from the logged records (lm-eval's run did not compute it)."""
DEGENERATE_ECE = ("tiny_confidence", "saturated_confidence", "constant_confidence", "single_class")
"""Degenerate conditions under which the ECE says nothing about calibration: it only restates the accuracy,
the error rate, or (answers all of one class) how far the confidences are from 0 or 1."""


def _listed(row: dict, key: str, separator: str) -> set[str]:
    return {item for item in str(row.get(key) or "").split(separator) if item}


def _with_stderr(row: dict, key: str) -> str:
    value, stderr = row[key], row[f"{key}_stderr"]
    text = fmt(value) + ("" if stderr is None or value is None else f" ± {fmt(stderr)}")
    return f"{text} {COMPUTED}" if text and key in _listed(row, "computed_by_report", ", ") else text


def ece_cell(row: dict) -> str:
    """The ECE, marked "(degenerate)" under :data:`DEGENERATE_ECE` (``0.0000`` from answers all wrong at
    confidence 1e-10 is no finding)."""
    text = _with_stderr(row, "ece")
    return f"{text} (degenerate)" if text and _listed(row, "degenerate", "; ") & set(DEGENERATE_ECE) else text


def auroc_cell(row: dict) -> str:
    """The AUROC, or why there is none: answers all of one class leave nothing to rank (lm-eval: NaN)."""
    value = row["auroc"]
    if "single_class" in _listed(row, "degenerate", "; ") and (value is None or value != value):
        return "undefined (one class)"
    return _with_stderr(row, "auroc")


def recal_cell(row: dict) -> str:
    """ECE after recalibration, flagged when the fitted temperature sits at the edge of its search range
    (the optimum is flatter or sharper than any map tried, so the number is not the best one possible)."""
    text = fmt(row.get("ece_recal"))
    return text + (" (T at bound)" if text and row.get("recal_at_bound") else "")


def _identity(table: Sequence[dict]) -> list[str]:
    return ["model", *(["stage"] if has_stages(table) else []), "task"]


MARK = "⚠"
"""After the model's name in a row that is not comparable or lacks a number (its ``caveats`` say why)."""


def model_cell(row: dict) -> str:
    return f"{row['model']} {MARK}" if row.get("caveats") else row["model"]


def caveat_lines(table: Sequence[dict]) -> list[str]:
    """``⚠ model / task: caveat`` for every marked row (printed below the tables)."""
    return [
        f"{MARK} {row['model']} / {row['task']}: {caveat}"
        for row in table
        for caveat in (row.get("caveats") or "").split("; ")
        if caveat
    ]


def _identity_cells(row: dict, with_stage: bool) -> list[str]:
    return [model_cell(row), *([row.get("stage") or ""] if with_stage else []), row["task"]]


def main_header(table: Sequence[dict]) -> list[str]:
    """model, [stage], task, n-shot, n, accuracy, ECE, its interval, ECE recal., Brier, AUROC."""
    acc, ece, brier, auroc = (_name(key) for key in MAIN)
    return [*_identity(table), "n-shot", "n", acc, ece, "ECE 95% CI", "ECE recal. ↓", brier, auroc]


def main_cells(row: dict, with_stage: bool) -> list[str]:
    low, high = row.get("ece_ci_low"), row.get("ece_ci_high")
    return [
        *_identity_cells(row, with_stage),
        "" if row["n_shot"] is None else str(row["n_shot"]),
        str(row["n"]),
        _with_stderr(row, "acc"),
        ece_cell(row),
        "" if low is None else f"[{fmt(low, 3)}, {fmt(high, 3)}]",
        recal_cell(row),
        _with_stderr(row, "brier"),
        auroc_cell(row),
    ]


def details_header(table: Sequence[dict]) -> list[str]:
    """model, [stage], task, equal-mass ECE, MCE, smECE, NLL, and which recalibration was done."""
    return [*_identity(table), *(_name(key) for key in DETAILS), "recalibration"]


def details_cells(row: dict, with_stage: bool) -> list[str]:
    return [
        *_identity_cells(row, with_stage),
        *(_with_stderr(row, key) for key in DETAILS),
        row.get("recal_summary") or "",
    ]


def source_lines(table: Sequence[dict]) -> list[str]:
    """Where the numbers come from, row by row: lm-eval's results, except the keys the report computed."""
    computed = [
        f"{row['model']} / {row['task']}: {row['computed_by_report']}"
        for row in table
        if row.get("computed_by_report")
    ]
    if not computed:
        return ["Values ± stderr are the numbers lm-eval wrote for each run."]
    return [
        "Values ± stderr are the numbers lm-eval wrote for each run, except those marked "
        f"{COMPUTED}: lm-eval's run did not compute them, so the report did, from the logged records with "
        "the code a calibration task's aggregation runs (the run's n_bins and bootstrap seed; a generation "
        "task's accuracy is the share of answers its own metric judged correct). Computed by the report: "
        + "; ".join(computed)
        + "."
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]


def to_markdown(table: Sequence[dict]) -> str:
    """The main table, then the details table (same rows, same order)."""
    with_stage = has_stages(table)
    lines = _markdown_table(main_header(table), [main_cells(row, with_stage) for row in table])
    lines += ["", "Details:", ""]
    lines += _markdown_table(details_header(table), [details_cells(row, with_stage) for row in table])
    marked = caveat_lines(table)
    if marked:
        lines += ["", f"Rows marked {MARK} (see messages.txt):", "", *(f"- {line}" for line in marked)]
    lines += ["", *source_lines(table)]
    return "\n".join(lines) + "\n"


def to_csv(table: Sequence[dict]) -> str:
    out = io.StringIO()
    fields: list[str] = []
    for row in table:
        fields += [key for key in row if key not in fields]
    writer = csv.DictWriter(out, fieldnames=fields or ["model", "task", "n"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()
