"""Leaderboard rows: one per (model or training stage, task), written as Markdown and CSV.

The metric values and stderrs are the numbers lm-eval wrote into its results JSON (never recomputed, so the
report cannot drift from the run); the ECE interval and the after-recalibration columns are computed from
the logged records.
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


def markdown_header(table: Sequence[dict]) -> list[str]:
    arrows = {key: "↑" if METRICS[key].higher_is_better else "↓" for key in COLUMNS}
    names = [f"{METRICS[key].display_name} {arrows[key]}" for key in COLUMNS]
    names.insert(2, "ECE 95% CI")
    stage = ["stage"] if has_stages(table) else []
    return ["model", *stage, "task", "n-shot", "n", *names, "ECE recal. ↓", "recalibration"]


def markdown_cells(row: dict, with_stage: bool) -> list[str]:
    cells = [
        row["model"],
        *([row.get("stage") or ""] if with_stage else []),
        row["task"],
        "" if row["n_shot"] is None else str(row["n_shot"]),
        str(row["n"]),
    ]
    for key in COLUMNS:
        value, stderr = row[key], row[f"{key}_stderr"]
        cells.append(fmt(value) + ("" if stderr is None or value is None else f" ± {fmt(stderr)}"))
        if key == "ece":
            low, high = row.get("ece_ci_low"), row.get("ece_ci_high")
            cells.append("" if low is None else f"[{fmt(low, 3)}, {fmt(high, 3)}]")
    cells += [fmt(row.get("ece_recal")), row.get("recal_summary") or ""]
    return cells


def to_markdown(table: Sequence[dict]) -> str:
    header = markdown_header(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with_stage = has_stages(table)
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in markdown_cells(row, with_stage)) + " |"
        for row in table
    ]
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
