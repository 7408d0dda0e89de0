"""Run a study's missing cells, then write its report and findings.

Each cell runs as its own process (``lm-eval-calib train ...`` or ``lm_eval ...``), exactly the command a
user could run by hand (``--dry-run`` prints them), with its output in ``OUTPUT/logs/``. An evaluation writes
into a temporary folder that is renamed into place only when lm_eval succeeded, with ``study_cell.json``
inside, so a killed study never leaves a cell that looks done. A failing cell is reported with the tail of its
log; cells that need it are skipped, the others still run, and the report covers what finished.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from lm_eval_calib.atomic import replace_folder
from lm_eval_calib.data.root import chosen_data_root
from lm_eval_calib.study.archive import archive_cell, restore_cell
from lm_eval_calib.study.checks import check_study
from lm_eval_calib.study.config import FindingSpec, StudyConfig
from lm_eval_calib.study.findings import (
    FindingInputError,
    FindingResult,
    SeedSpread,
    check_finding,
    findings_markdown,
    judge,
    seed_pairs,
)
from lm_eval_calib.study.plan import (
    CELL_FILE,
    Cell,
    archive_folder,
    build_plan,
    eval_folder,
    is_archived,
    run_file,
    select_cells,
)

LOG_TAIL_LINES = 25


class CellRun(NamedTuple):
    """What running one cell gave: whether it succeeded, its wall time, its log, and the peak resident memory
    of its largest process (the cell's command or anything it waited for), in MiB."""

    ok: bool
    seconds: float
    log: Path
    peak_rss_mib: float | None


def _cell_body(cell: Cell, seconds: float | None = None, peak_rss_mib: float | None = None) -> dict:
    return {
        "cell": cell.name,
        "fingerprint": cell.fingerprint,
        "command": cell.command,
        "seconds": None if seconds is None else round(seconds, 1),
        "peak_rss_mib": None if peak_rss_mib is None else round(peak_rss_mib, 1),
        "inputs": cell.inputs,  # the local data it read, by content digest: names what changed when stale
    }


def _write_cell_file(folder: Path, cell: Cell, seconds: float, peak_rss_mib: float | None) -> None:
    body = _cell_body(cell, seconds, peak_rss_mib)
    (folder / CELL_FILE).write_text(json.dumps(body, indent=2) + "\n")


MEASURE = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""
"""Run a command, then write its peak resident memory (KiB) to a file. The cell runs under this small
interpreter, not straight from the study: a child's peak counts the memory of the process it was forked from
(Linux keeps the high-water mark across ``exec``), which is the study's own (hundreds of MB once lm_eval's
task index is loaded) when the study forks it, and this interpreter's few MB here."""


def _call(command: list[str], log: Path) -> tuple[int, float | None]:
    """Run ``command`` with its output appended to ``log``; its exit status and peak resident memory in MiB.

    ``os.wait4`` gives the command's own resource use, which Linux merges with that of the processes it waited
    for, so the peak covers a cell's whole process tree (the train CLI, lm_eval and their workers) and no
    other cell: the figure a user sizing a machine for one step needs."""
    with tempfile.TemporaryDirectory() as folder, log.open("a") as handle:
        peak_file = Path(folder) / "peak"
        measured = [sys.executable, "-c", MEASURE, str(peak_file), *command]
        process = subprocess.Popen(measured, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = process.wait()
        except BaseException:  # Ctrl-C: stop the cell, never leave it running behind the study
            process.kill()
            process.wait()
            raise
        peak = float(peak_file.read_text()) / 1024 if peak_file.is_file() else None  # killed: unknown
    return code, peak


def _train_mode(cell: Cell) -> str:
    """``--overwrite`` for a stale checkpoint or an interrupted run of other settings or data (the plan's
    ``restart``: its steps are not this stage's); ``--resume`` otherwise, which continues an interrupted run
    of this very cell (the train CLI refuses when its inputs differ) or starts from the beginning."""
    return "--overwrite" if cell.status == "stale" or cell.restart else "--resume"


def run_cell(cell: Cell, log_dir: Path) -> CellRun:
    """Run one cell: whether it succeeded, its seconds, its log file and its peak memory."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (cell.name.replace("/", "__") + ".log")
    command = list(cell.command)
    if cell.kind == "eval":
        work = cell.folder.with_name(f".{cell.folder.name}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        command[command.index(str(cell.folder))] = str(work)
    else:
        work = cell.folder  # the train CLI builds its folder atomically itself
        command.append(_train_mode(cell))
    cell.folder.parent.mkdir(parents=True, exist_ok=True)
    if cell.kind == "train":  # what this run is, so that a later study resumes it only if it is the same
        run_file(cell.folder).write_text(json.dumps(_cell_body(cell), indent=2) + "\n")
    log.write_text("$ " + " ".join(command) + "\n")
    start = time.perf_counter()
    code, peak = _call(command, log)
    seconds = time.perf_counter() - start
    if code != 0:
        if cell.kind == "eval":
            shutil.rmtree(work, ignore_errors=True)
        return CellRun(False, seconds, log, peak)
    if cell.kind == "eval":
        _write_cell_file(work, cell, seconds, peak)
        replace_folder(work, cell.folder)
    else:
        _write_cell_file(cell.folder, cell, seconds, peak)
        run_file(cell.folder).unlink(missing_ok=True)
    return CellRun(True, seconds, log, peak)


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def run_study(
    config: StudyConfig,
    log: Callable[[str], None] = print,
    n_resamples: int = 1000,
    only: Sequence[str] = (),
) -> int:
    """Run what is missing, then report; returns 0 when every cell is done at the end, else 1.

    ``only`` (shell patterns of cell names, ``--only``) runs just those cells, a step of a study too long for
    one sitting: a chosen cell whose training stage is neither done nor chosen is skipped, naming it; the
    report and findings still cover every cell done so far, and 0 means every chosen cell is done.

    Raises :class:`~lm_eval_calib.study.config.StudyConfigError` before any cell runs when the study names a
    task or backend lm_eval does not know, or a file that is missing (:func:`check_study`).
    """
    check_study(config)
    config.output.mkdir(parents=True, exist_ok=True)  # so build_plan keeps the file hashes it computes
    cells = build_plan(config)
    restore_archived(config, cells, log)
    archive_done(config, cells, log)
    chosen = select_cells(cells, only)
    todo = [c for c in chosen if c.status in ("missing", "stale")]
    step = f" ({len(chosen)} chosen by --only)" if only else ""
    log(f"study {config.name}: {len(cells)} cells{step}, {len(todo)} to run, the rest done or blocked")
    status = {c.name: c.status for c in cells}
    todo_names = {c.name for c in todo}
    failed: set[str] = set()
    for number, cell in enumerate(todo, 1):
        unchosen = [n for n in cell.needs if status.get(n) != "done" and n not in todo_names]
        if unchosen:
            failed.add(cell.name)
            log(f"[{number}/{len(todo)}] {cell.name}: skipped, needs {', '.join(unchosen)}: add it to --only")
            continue
        blocked_by = [n for n in cell.needs if n in failed]
        if blocked_by:
            failed.add(cell.name)
            log(f"[{number}/{len(todo)}] {cell.name}: skipped, needs {', '.join(blocked_by)} which failed")
            continue
        log(f"[{number}/{len(todo)}] {cell.name}: running")
        run = run_cell(cell, config.output / "logs")
        if run.ok:
            cell.status = "done"
            peak = "" if run.peak_rss_mib is None else f", peak memory {run.peak_rss_mib / 1024:.1f} GiB"
            log(f"[{number}/{len(todo)}] {cell.name}: done in {run.seconds:.0f} s{peak}")
            archive_done(config, [cell], log)
        else:
            failed.add(cell.name)
            head = f"[{number}/{len(todo)}] {cell.name}: FAILED after {run.seconds:.0f} s"
            log(f"{head}; log {run.log}:\n{_tail(run.log)}")
    for cell in chosen:
        if cell.status == "blocked":
            log(f"{cell.name}: blocked: {cell.reason}")
    done = [c for c in cells if c.status == "done" and c.kind == "eval"]
    if done:
        write_outputs(config, done, log, n_resamples)
    return 0 if all(c.status == "done" for c in chosen) else 1


def restore_archived(config: StudyConfig, cells: list[Cell], log: Callable[[str], None]) -> None:
    """Put every archived evaluation back into the output folder (all of them, chosen or not: the report and
    findings cover every cell the study has); each becomes done."""
    restored = [cell for cell in cells if cell.status == "archived"]
    for cell in restored:
        restore_cell(archive_folder(config, cell.model, str(cell.task)), cell.folder)
        cell.status, cell.reason = "done", ""
    if restored:
        log(f"restored {len(restored)} finished evaluations from {config.archive}")


def archive_done(config: StudyConfig, cells: list[Cell], log: Callable[[str], None]) -> None:
    """Copy each done evaluation whose archived copy is missing or of another fingerprint into the archive
    (nothing without ``archive:``)."""
    if config.archive is None:
        return
    data_root, _ = chosen_data_root()
    for cell in cells:
        if cell.kind != "eval" or cell.status != "done" or not (cell.folder / CELL_FILE).is_file():
            continue
        if is_archived(config, cell):
            continue
        target = archive_folder(config, cell.model, str(cell.task))
        try:
            archive_cell(cell.folder, target, None if data_root is None else str(data_root))
        except OSError as exc:  # the cell stays done in the output folder; the study goes on
            log(f"{cell.name}: not archived: {exc}")
            continue
        log(f"{cell.name}: archived in {target}")


def write_outputs(
    config: StudyConfig, done: list[Cell], log: Callable[[str], None], n_resamples: int
) -> None:
    """The report over every finished evaluation (labelled by study name) and the findings table."""
    from lm_eval_calib.report.build import build_report
    from lm_eval_calib.report.runs import ReportInputError

    report_dir = config.output / "report"
    labels = {cell.folder: cell.model for cell in done}
    stages = {  # the study file's `stage:` of a model, or a stage's kind, where no training manifest says it
        # (a restored evaluation's checkpoint may not exist on this machine)
        cell.folder: config.models[cell.model].stage
        if cell.model in config.models
        else config.train[cell.model].kind
        for cell in done
        if cell.model in config.train or config.models[cell.model].stage != "model"
    }
    try:
        build_report(list(labels), report_dir, log=log, labels=labels, stages=stages)
        log(f"report written to {report_dir}")
    except ReportInputError as exc:
        log(f"report not written: {exc}")
    if not config.findings:
        return
    finished = {(c.model, c.task) for c in done}
    results = []
    for spec in config.findings:
        pair = [(spec.baseline, spec.task), (spec.treatment, spec.task)]
        if not all(p in finished for p in pair):
            results.append(FindingResult(spec, None, "not run", "an evaluation it needs did not finish"))
            continue
        folders = [eval_folder(config, model, task) for model, task in pair]
        try:
            result = check_finding(spec, *folders, n_resamples=n_resamples)
        except FindingInputError as exc:
            results.append(FindingResult(spec, None, "not run", str(exc)))
            continue
        results.append(judge(spec, result))
    results = [replace(item, spreads=_spreads(config, item.spec, finished, n_resamples)) for item in results]
    table = findings_markdown(results)
    (config.output / "findings.md").write_text(table)
    log("findings:\n" + table)


def _spreads(
    config: StudyConfig, spec: FindingSpec, finished: set[tuple[str, str]], n_resamples: int
) -> tuple[SeedSpread, ...]:
    """The seed spread of each seed replicate of the claim's stages on the claim's task, metric and documents
    (replicate minus twin, paired like the claim itself)."""
    spreads = []
    for twin, replicate in seed_pairs(config, spec):
        absent = [name for name in (twin, replicate) if spec.task not in config.tasks_of(name)]
        if absent:
            note = (
                f"{' and '.join(absent)} {'is' if len(absent) == 1 else 'are'} not evaluated on {spec.task}"
            )
            spreads.append(SeedSpread(twin, replicate, None, note))
            continue
        if not {(twin, spec.task), (replicate, spec.task)} <= finished:
            spreads.append(SeedSpread(twin, replicate, None, "an evaluation it needs did not finish"))
            continue
        pair = replace(spec, baseline=twin, treatment=replicate)
        folders = [eval_folder(config, model, spec.task) for model in (twin, replicate)]
        try:
            spreads.append(
                SeedSpread(twin, replicate, check_finding(pair, *folders, n_resamples=n_resamples))
            )
        except FindingInputError as exc:
            spreads.append(SeedSpread(twin, replicate, None, str(exc)))
    return tuple(spreads)
