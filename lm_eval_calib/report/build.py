"""``lm-eval-calib report``: a leaderboard and reliability diagrams for one or more lm-eval runs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from lm_eval_calib.report import leaderboard
from lm_eval_calib.report.figures import reliability_diagram
from lm_eval_calib.report.runs import ReportInputError, TaskRun, load_run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def build_report(run_dirs: Sequence[Path], out: Path, log=print) -> list[TaskRun]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``figures/`` under ``out``; return the runs used.

    A folder that cannot be read is reported and skipped; the rest of the report is still written.
    """
    runs: list[TaskRun] = []
    for folder in run_dirs:
        try:
            found, warnings = load_run(Path(folder))
        except ReportInputError as exc:
            log(f"skipped: {exc}")
            continue
        for warning in warnings:
            log(f"skipped: {warning}")
        runs.extend(found)
    if not runs:
        raise ReportInputError("no calibration task with logged samples in " + ", ".join(map(str, run_dirs)))
    out.mkdir(parents=True, exist_ok=True)
    table = leaderboard.rows(runs)
    (out / "leaderboard.md").write_text(leaderboard.to_markdown(table))
    (out / "leaderboard.csv").write_text(leaderboard.to_csv(table))
    seen: dict[str, int] = {}
    for run in runs:
        name = f"{_slug(run.label)}__{run.task}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # the same model and task twice (e.g. two limits): keep both, numbered
            log(f"note: {run.label} / {run.task} appears {seen[name]} times; figures numbered")
            name = f"{name}__{seen[name]}"
        for scheme in ("width", "mass"):
            stem = out / "figures" / f"{name}__{scheme}"
            reliability_diagram(run.data, f"{run.label} · {run.task}", stem, scheme=scheme)
        log(f"wrote {run.label} / {run.task}")
    return runs
