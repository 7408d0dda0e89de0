"""Leaderboard rows: one per (model, task), the numbers lm-eval reported, written as Markdown and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from lm_eval_calib.metrics import METRICS
from lm_eval_calib.report.runs import TaskRun

COLUMNS = ("acc", "ece", "ece_em", "mce", "smece", "brier", "nll", "auroc")


def rows(runs: Sequence[TaskRun]) -> list[dict]:
    """Values and stderrs as lm-eval wrote them (``None`` where a stderr was ``"N/A"``)."""
    table = []
    for run in runs:
        row = {"model": run.label, "task": run.task, "n": len(run.data)}
        for key in COLUMNS:
            stderr = run.results.get(f"{key}_stderr,none")
            row[key] = run.results.get(f"{key},none")
            row[f"{key}_stderr"] = stderr if isinstance(stderr, float) else None
        table.append(row)
    return sorted(table, key=lambda r: (r["task"], r["ece"] if r["ece"] is not None else float("inf")))


def to_markdown(table: list[dict]) -> str:
    arrows = {key: "↑" if METRICS[key].higher_is_better else "↓" for key in COLUMNS}
    header = ["model", "task", "n", *(f"{METRICS[key].display_name} {arrows[key]}" for key in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["model"], row["task"], str(row["n"])]
        for key in COLUMNS:
            value, stderr = row[key], row[f"{key}_stderr"]
            interval = "" if stderr is None else f" ± {stderr:.4f}"
            cells.append("" if value is None else f"{value:.4f}{interval}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["model", "task", "n"])
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()
