"""``lm-eval-calib report``: leaderboard, reliability and risk-coverage diagrams, recalibration (with the
calibration / refinement split), conformal answer sets, selective prediction and breakdowns for lm-eval runs.

The report is built in a temporary folder next to ``out`` and moved into place only when complete, so a
failed build never leaves a half-written report (and never touches a folder that is not a report). Its marker
file (:data:`MARKER`) lists the files it wrote; a later report into the same folder replaces exactly those and
keeps everything else there (a user's notes, an ``analysis/`` folder), as training's ``--overwrite`` does.
Problems with single inputs (no samples, mixed task versions, a non-calibration task, an empty folder, the
same model twice) are messages: printed, listed in ``messages.txt`` and on the page, and the rest of the
report is still written.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from lm_eval_calib.atomic import publish_folder
from lm_eval_calib.metrics import (
    CalibrationInputError,
    ConformalSets,
    compute_metric,
    degenerate_confidence,
)
from lm_eval_calib.metrics.cluster_bootstrap import cluster_bootstrap_interval
from lm_eval_calib.report import breakdown, html, leaderboard
from lm_eval_calib.report.figures import (
    Curve,
    overlay_diagram,
    reliability_diagram,
    risk_coverage_diagram,
    smooth_reliability,
)
from lm_eval_calib.report.integrity import compare_bins
from lm_eval_calib.report.labels import parse_label_overrides
from lm_eval_calib.report.recalibrate import (
    RecalRow,
    check_held_out,
    conformal_fitted_on,
    conformal_markdown,
    conformal_rows,
    conformal_run,
    decomposition_markdown,
    decomposition_rows,
    recalibrate_run,
    recalibration_markdown,
    selective_markdown,
    selective_row,
)
from lm_eval_calib.report.runs import ReportInputError, TaskRun, load_run

MARKER = ".lm-eval-calib-report"
"""The report's manifest: JSON with ``files``, every file the report wrote (paths relative to ``--out``)."""
REPORT_FILES = (
    "leaderboard.md",
    "leaderboard.csv",
    "recalibration.md",
    "recalibration.csv",
    "decomposition.md",
    "decomposition.csv",
    "conformal.md",
    "conformal.csv",
    "conformal_sets.jsonl",
    "selective.md",
    "selective.csv",
    "breakdown.md",
    "breakdown.csv",
    "messages.txt",
    "index.html",
)
"""The fixed names a report writes besides ``figures/`` (what a marker without a file list owns)."""
FIGURES = "figures"
FIGURE_SUFFIXES = (".png", ".svg", ".json")
CONSISTENCY_TOLERANCE = 1e-9


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "run"


def _version_text(version: object) -> str:
    return f"{version:g}" if isinstance(version, int | float) else str(version)


def assign_groups(runs: list[TaskRun]) -> list[str]:
    """Leaderboard sections: a task whose runs disagree on the task version gets one section per version."""
    messages = []
    by_task: dict[str, list[TaskRun]] = defaultdict(list)
    for run in runs:
        by_task[run.task].append(run)
    for task, members in sorted(by_task.items()):
        versions = sorted({_version_text(r.version) for r in members})
        if len(versions) > 1:
            listing = "; ".join(
                f"v{v}: "
                + ", ".join(
                    sorted({f"{r.label} ({r.folder})" for r in members if _version_text(r.version) == v})
                )
                for v in versions
            )
            messages.append(
                f"warning: {task} was run with different task versions ({listing}); numbers of different "
                "versions are not comparable, so each version gets its own section. Rerun the older runs "
                "with the current lm-eval-calib to compare them."
            )
            for run in members:
                run.group = f"{task} v{_version_text(run.version)}"
    return messages


def disambiguate(runs: list[TaskRun]) -> list[str]:
    """Two runs of the same model on the same task section keep both rows, told apart by their folder."""
    messages = []
    counts = Counter((r.label, r.group) for r in runs)
    for (label, group), count in sorted(counts.items()):
        if count < 2:
            continue
        members = [r for r in runs if (r.label, r.group) == (label, group)]
        names = [r.folder.name or str(r.folder) for r in members]
        if len(set(names)) < len(names):
            names = [f"{name} #{i + 1}" for i, name in enumerate(names)]
        for run, name in zip(members, names, strict=True):
            run.label = f"{label} [{name}]"
        messages.append(
            f"warning: {count} runs of {label} on {group} ({', '.join(str(r.folder) for r in members)}); "
            "all kept, told apart by folder. Name them with --label RUN_DIR=NAME."
        )
    return messages


def check_consistency(run: TaskRun) -> str | None:
    """The records must reproduce lm-eval's own numbers, or the samples belong to another run."""
    n_bins = run.options.n_bins
    for key in ("acc", "ece"):
        reported = run.results.get(f"{key},none")
        if isinstance(reported, int | float):
            recomputed = compute_metric(key, run.data, n_bins=n_bins)
            if abs(recomputed - reported) > CONSISTENCY_TOLERANCE:
                return (
                    f"warning: {run.label} / {run.task}: the logged records give {key} {recomputed:.6f} but "
                    f"{run.source.name} says {reported:.6f}; the samples file may come from another run. "
                    "The table shows lm-eval's number; diagrams use the records."
                )
    return None


def _interval(run: TaskRun) -> tuple[float, float]:
    """95% percentile interval of the ECE from the same resamples that gave lm-eval's stderr (the task's
    seed, and ``min(--bootstrap_iters, max_bootstrap)`` resamples; 0 iterations meant no stderr)."""
    opts = run.options
    iters = run.bootstrap_iters
    n_resamples = (
        min(iters, opts.max_bootstrap) if isinstance(iters, int) and iters > 0 else opts.max_bootstrap
    )
    if n_resamples < 1:  # max_bootstrap: 0 turned the stderrs off; the interval goes with them
        return float("nan"), float("nan")
    return cluster_bootstrap_interval(  # over documents, as the stderr (record_metrics.record_groups)
        "ece",
        run.data,
        run.item_groups,
        n_resamples=n_resamples,
        seed=opts.bootstrap_seed,
        n_bins=opts.n_bins,
    )


def _replaceable(out: Path) -> bool:
    """A folder the report may be written into: absent, empty, or an earlier report (and nothing else)."""
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or (out / MARKER).is_file()))


def _safe_relative(name: object) -> bool:
    """A manifest entry may only name a path inside the report folder."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def owned_files(out: Path) -> set[str]:
    """The files of the earlier report in ``out`` (relative paths): its marker's ``files`` list; for a
    report written before markers listed them, the report's fixed names and the figure files (images and
    their data) under ``figures/``."""
    try:
        listed = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        listed = None
    if isinstance(listed, dict) and isinstance(listed.get("files"), list):
        return {name for name in listed["files"] if _safe_relative(name)} | {MARKER}
    owned = {name for name in REPORT_FILES if (out / name).is_file()} | {MARKER}
    if (out / FIGURES).is_dir():
        owned |= {f"{FIGURES}/{p.name}" for p in (out / FIGURES).iterdir() if p.suffix in FIGURE_SUFFIXES}
    return owned


def _occupied(out: Path, name: str) -> bool:
    """Whether writing ``out/name`` would meet something there: the path itself, or a file where one of
    its folders would go."""
    path = out / name
    if path.exists() or path.is_symlink():
        return True
    folders = [out / folder for folder in Path(name).parents if str(folder) != "."]
    return any(folder.is_symlink() or (folder.exists() and not folder.is_dir()) for folder in folders)


def _not_ours(out: Path, names: Sequence[str], owned: set[str]) -> list[str]:
    """The ``names`` a report would write over something it did not write (a listed file that has become a
    folder counts too)."""
    return sorted(
        name
        for name in names
        if (name not in owned and _occupied(out, name)) or (name in owned and (out / name).is_dir())
    )


def check_out(out: Path, run_dirs: Sequence[Path]) -> Path:
    """``out`` made absolute, after refusing every ``--out`` that would overwrite or swallow an input.

    An input folder inside ``out`` is refused (a report among the runs it reads invites deleting them with
    it); so is ``out`` inside an input (the report would be read as runs), and an earlier report folder that
    holds a file of the user's under a name the report writes (never overwritten).
    """
    resolved = out.resolve()
    for folder in run_dirs:
        source = Path(folder).resolve()
        if source == resolved:
            why = f"is the input folder {folder}"
        elif resolved in source.parents:
            why = f"contains the input folder {folder}, which replacing the report would delete"
        elif source in resolved.parents:
            why = f"is inside the input folder {folder}"
        else:
            continue
        raise ReportInputError(f"--out {out} {why}; choose a folder outside every input folder")
    if not _replaceable(out):
        raise ReportInputError(
            f"--out {out} exists and is not an lm-eval-calib report folder; choose a new or empty folder"
        )
    if (out / MARKER).is_file():
        in_the_way = _not_ours(out, REPORT_FILES, owned_files(out))
        figures = out / FIGURES
        if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
            in_the_way.append(FIGURES)
        if in_the_way:
            raise ReportInputError(_in_the_way(out, in_the_way) + "; move it away or choose another --out")
    return resolved


def _in_the_way(out: Path, names: Sequence[str]) -> str:
    return (
        f"--out {out} holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}, not written by "
        "lm-eval-calib report (its marker does not list it), so it is never overwritten"
    )


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished report into ``out``, replacing the earlier report's files there and nothing else.

    An existing ``out`` keeps its own folder: the files the earlier report wrote (:func:`owned_files`) go
    aside (its marker first, so the folder stops claiming to hold a report), the new ones move in (their
    marker last), the old ones are deleted, and folders they leave empty are removed. Everything else in
    ``out`` stays as it was, so ``--out .`` works and a user's files beside the report survive. A file of the
    user's under a name the new report writes is never overwritten: the new report is set aside next to
    ``out`` and the error says where.
    """
    owned: set[str] = set()
    if out.exists():
        if not _replaceable(out):
            raise ReportInputError(
                f"--out {out} exists and is not an lm-eval-calib report folder; choose a new or empty folder"
            )
        owned = owned_files(out)
        in_the_way = _not_ours(out, _files(tmp), owned)
        if in_the_way:
            kept = out.parent / f"{out.name}.new-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
            tmp.rename(kept)
            raise ReportInputError(_in_the_way(out, in_the_way) + f"; the new report is in {kept}")
    _remove_emptied_folders(out, publish_folder(tmp, out, owned, MARKER))  # lm_eval_calib.atomic


def _remove_emptied_folders(out: Path, moved: Sequence[str]) -> None:
    """Folders of the earlier report's files that hold nothing now (deepest first); a folder that holds a
    user's file stays."""
    folders = {out / parent for name in moved for parent in Path(name).parents if str(parent) != "."}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def build_report(
    run_dirs: Sequence[Path],
    out: Path,
    log: Callable[[str], None] = print,
    labels: Mapping[str | Path, str] | Sequence[str] = (),
    n_folds: int = 5,
    seed: int = 0,
    stages: Mapping[str | Path, str] | None = None,
    held_out: Sequence[Path] = (),
) -> list[TaskRun]:
    """Write the report for ``run_dirs`` into ``out``; return the runs it shows.

    ``labels`` overrides the label of every model in a run folder: ``{RUN_DIR: NAME}`` or the CLI's
    ``RUN_DIR=NAME`` strings; each RUN_DIR must be one of ``run_dirs``. Raises :class:`ReportInputError`
    when nothing is reportable (then nothing is written). ``stages`` (``{RUN_DIR: STAGE}``) gives the stage
    column for runs whose model has no training manifest (a study's "pretrained" base model); a manifest's
    stage wins. ``held_out`` folders hold runs used only to fit recalibration maps and conformal thresholds
    (``calib_mmlu_val`` for ``calib_mmlu``, another run of the same task for any other); a held-out run whose
    task fits no scored task is a :class:`ReportInputError` before any work.
    """
    started = time.perf_counter()
    run_dirs = [Path(d) for d in run_dirs]
    shown_out = Path(out)
    out = check_out(shown_out, run_dirs)  # absolute: "." has no name and no parent to build next to
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ReportInputError(f"--folds must be an integer >= 2, got {n_folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ReportInputError(f"--seed must be an integer >= 0, got {seed!r}")
    overrides = parse_label_overrides(labels, run_dirs)
    stage_of = {Path(folder).resolve(): str(stage) for folder, stage in (stages or {}).items()}
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        log(message)

    runs: list[TaskRun] = []
    log(f"reading {len(run_dirs)} run folder(s)")
    for folder in run_dirs:
        t0 = time.perf_counter()
        try:
            found, notes = load_run(folder, overrides.get(folder.resolve()), log=log)
        except ReportInputError as exc:
            say(f"skipped: {exc}")
            continue
        for note in notes:
            say(note)
        stage = stage_of.get(folder.resolve())
        runs.extend(run if run.stage or not stage else replace(run, stage=stage) for run in found)
        log(f"read {folder}: {len(found)} calibration task(s) in {time.perf_counter() - t0:.1f} s")
    if not runs:
        raise ReportInputError(
            "no calibration task with logged samples in " + ", ".join(map(str, run_dirs)) + "; run lm_eval "
            "with --tasks calib_... --log_samples and pass its --output_path folder"
        )
    held_out_runs: list[TaskRun] = []
    for folder in [
        Path(d) for d in held_out
    ]:  # a held-out folder that cannot be read is an error, not a note
        found, notes = load_run(folder, overrides.get(folder.resolve()), log=log)
        held_out_runs.extend(found)
        for note in notes:
            say(note)
    check_held_out(held_out_runs, runs)
    for message in assign_groups(runs) + disambiguate(runs) + compare_bins(runs):
        say(message)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        table, recal_rows, diagrams, breakdowns = [], [], [], []
        conformal_table, conformal_sets, selective_table = [], [], []
        used_names: set[str] = set()
        runs.sort(key=lambda r: (r.group, r.label))
        for i, run in enumerate(runs, 1):
            t0 = time.perf_counter()
            log(f"[{i}/{len(runs)}] {run.label} / {run.group}: {len(run.data)} items")
            problem = check_consistency(run)
            if problem:
                say(problem)
            try:
                rows, notes = recalibrate_run(run, runs, n_folds, seed, held_out_runs)
            except CalibrationInputError as exc:  # e.g. degenerate records; the rest of the row still stands
                rows, notes = [], [f"warning: {run.label} / {run.group}: no recalibration ({exc})"]
            for note in notes:
                say(note)
            recal_rows += rows
            rows_of_run, sets_of_run, conformal_of_run = _conformal(run, runs, seed, say, held_out_runs)
            conformal_table += rows_of_run
            conformal_sets += sets_of_run
            selective_table += _selective(run, say)
            table.append(_leaderboard_row(run, _interval(run), rows))
            name = f"{slug(run.label)}__{slug(run.group)}"
            while name in used_names:
                name += "_"
            used_names.add(name)
            images = {}
            for scheme in ("width", "mass"):
                stem = tmp / "figures" / f"{name}__{scheme}"
                title = f"{run.label} · {run.group}"
                reliability_diagram(run.data, title, stem, n_bins=run.options.n_bins, scheme=scheme)
                images[scheme] = f"figures/{name}__{scheme}.png"
            risk_coverage_diagram(run.data, title, tmp / "figures" / f"{name}__risk")
            images["risk"] = f"figures/{name}__risk.png"
            diagrams.append(html.Diagram(run.label, run.group, images))
            if breakdown.has_breakdown(run):
                breakdowns.append((run, breakdown.breakdown_rows(run, conformal_of_run)))
            log(
                "      diagrams, recalibration, conformal sets, selective prediction, breakdown: "
                f"{time.perf_counter() - t0:.1f} s"
            )
        t0 = time.perf_counter()
        overlays = _overlays(runs, tmp)
        table = leaderboard.sort_rows(table)
        recal_table = [row.summary() for row in recal_rows]  # with the bootstrap stderrs of each "after"
        decomposition_table = decomposition_rows(recal_rows)
        log(f"overlays, recalibration stderrs, calibration / refinement: {time.perf_counter() - t0:.1f} s")
        outputs = {
            "leaderboard.md": leaderboard.to_markdown(table),
            "leaderboard.csv": leaderboard.to_csv(table),
            "recalibration.md": recalibration_markdown(recal_table),
            "recalibration.csv": leaderboard.to_csv(recal_table),
            "decomposition.md": decomposition_markdown(decomposition_table) or NO_DECOMPOSITION,
            "decomposition.csv": leaderboard.to_csv(decomposition_table),
            "conformal.md": conformal_markdown(conformal_table),
            "conformal.csv": leaderboard.to_csv(conformal_table),
            "conformal_sets.jsonl": "".join(json.dumps(line) + "\n" for line in conformal_sets),
            "selective.md": selective_markdown(selective_table) or NO_SELECTIVE,
            "selective.csv": leaderboard.to_csv(selective_table),
            "breakdown.md": breakdown.to_markdown(breakdowns),
            "breakdown.csv": leaderboard.to_csv([r for _, rows in breakdowns for r in rows]),
            "messages.txt": "".join(m + "\n" for m in messages),
        }
        page = html.PageContent(
            title="Calibration report",
            created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            inputs=[str(d) for d in run_dirs],
            leaderboard=table,
            recalibration=recal_table,
            overlays=overlays,
            diagrams=diagrams,
            breakdowns=[(run.group, run.label, rows) for run, rows in breakdowns],
            messages=messages,
            notes=[*leaderboard.source_lines(table), NOTE],
            decomposition=decomposition_table,
            conformal=conformal_table,
            selective=selective_table,
        )
        outputs["index.html"] = html.render(page)
        for name, text in outputs.items():
            (tmp / name).write_text(text, encoding="utf-8")
        _write_marker(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"report of {len(runs)} run(s) written to {shown_out} in {time.perf_counter() - started:.1f} s")
    return runs


def _write_marker(folder: Path) -> None:
    """The report's manifest, written last: every file it holds, the ones the next report may replace."""
    body = {
        "written_by": "lm-eval-calib report",
        "note": "a new report into this folder replaces the files listed here and keeps every other file",
        "files": sorted({*_files(folder), MARKER}),
    }
    (folder / MARKER).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")


NOTE = (
    "ECE 95% CI: percentile bootstrap over the logged records (same resamples as the stderr). ECE recal.: "
    "ECE after temperature scaling (Platt scaling for token-level tasks) fitted on held-out items, never on "
    "the items scored. “(degenerate)” after an ECE: the confidences collapsed (all near 0, all near 1 or all "
    "equal) or the answers are all right or all wrong, so it only restates the accuracy, the error rate or "
    "the distance of the confidences from 1 or 0; “undefined (one class)”: every answer is right or every "
    "answer is wrong, so confidence has nothing to rank (the row's ⚠ note says more)."
)
"""The footer's fixed part (after :func:`~lm_eval_calib.report.leaderboard.source_lines`, which says row by
row where the values come from)."""


def _leaderboard_row(run: TaskRun, interval: tuple[float, float], recal: list[RecalRow]) -> dict:
    row = {
        "model": run.label,
        "stage": run.stage,
        "task": run.group,
        "version": run.version,
        "n_shot": run.n_shot,
        "n": len(run.data),
    }
    row |= leaderboard.lm_eval_numbers(run.results)
    row["ece_ci_low"], row["ece_ci_high"] = interval
    primary = recal[0] if recal else None
    row["ece_recal"] = (
        compute_metric("ece", primary.result.after, n_bins=run.options.n_bins) if primary else None
    )
    row["recal_method"] = primary.method if primary else None
    row["recal_fitted_on"] = primary.fitted_on if primary else None
    row["temperature"] = primary.result.parameters.get("temperature") if primary else None
    row["recal_at_bound"] = primary.result.at_bound if primary else None
    row["recal_summary"] = _short_summary(primary) if primary else ""
    row["source"] = str(run.source)
    flags = degenerate_confidence(run.data.confidence, run.data.correct)
    row["degenerate"] = "; ".join(flag.code for flag in flags)
    row["computed_by_report"] = ", ".join(run.computed)
    row["caveats"] = "; ".join([*run.caveats, *(flag.message for flag in flags)])
    return row


def _short_summary(recal: RecalRow) -> str:
    """``T = 1.23, fitted on calib_mmlu_val`` / ``Platt, 5-fold cross-fit``: the table cell (CSV has more)."""
    what = f"T = {recal.result.parameters['temperature']:.4g}" if recal.method == "temperature" else "Platt"
    if recal.result.at_bound:
        what += " (at the bound)"
    where = (
        recal.run_fit_task if recal.result.scheme == "held-out" else f"{recal.result.n_folds}-fold cross-fit"
    )
    return f"{what}, {where}"


def _overlays(runs: list[TaskRun], tmp: Path) -> dict[str, str]:
    from lm_eval_calib.metrics import bin_statistics

    overlays = {}
    for group in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == group]
        curves = [
            Curve(
                r.label,
                bin_statistics(r.data.confidence, r.data.correct, n_bins=r.options.n_bins),
                compute_metric("ece", r.data, n_bins=r.options.n_bins),
                len(r.data),
                smooth_reliability(r.data.confidence, r.data.correct),
                r.data.confidence,
                tuple(flag.code for flag in degenerate_confidence(r.data.confidence, r.data.correct)),
            )
            for r in members
        ]
        name = f"overlay__{slug(group)}"
        overlay_diagram(curves, group, tmp / "figures" / name)
        overlays[group] = f"figures/{name}.png"
    return overlays


NO_DECOMPOSITION = "No calibration / refinement split (no run could be recalibrated).\n"
NO_SELECTIVE = "No selective-prediction numbers (no run could be scored).\n"


def _conformal(
    run: TaskRun,
    runs: list[TaskRun],
    seed: int,
    say: Callable[[str], None],
    held_out: Sequence[TaskRun] = (),
) -> tuple[list[dict], list[dict], list[ConformalSets]]:
    """The conformal-set rows of one run (none for token-level runs), held out on its val run when there is
    one, each document's set (one line per document and score, in record order, with lm-eval's doc_id) and
    the sets themselves (for the per-category breakdown); a run whose records cannot give sets gets a
    warning instead, and the rest of the report stands."""
    try:
        # the run's own alpha and folds, so the report's numbers are the run's conformal_* result keys
        opts = run.options
        sets, notes = conformal_run(run, runs, opts.conformal_folds, seed, opts.conformal_alpha, held_out)
        rows = conformal_rows(run, sets, conformal_fitted_on(run, runs, sets, held_out))
    except CalibrationInputError as exc:
        notes, rows, sets = [f"warning: {run.label} / {run.group}: no conformal sets ({exc})"], [], []
    for note in notes:
        say(note)
    per_document = [
        {
            "model": run.label,
            "task": run.group,
            "score": result.score,
            "alpha": result.alpha,
            "record": i,
            "doc_id": run.doc_ids[i] if i < len(run.doc_ids) else None,
            "set": members,
            "covered": bool(result.covered[i]),
        }
        for result in sets
        for i, members in enumerate(result.sets())
    ]
    return rows, per_document, list(sets)


def _selective(run: TaskRun, say: Callable[[str], None]) -> list[dict]:
    """The selective-prediction row of one run (PRR, AURC, selective accuracy), or a warning instead."""
    try:
        return [selective_row(run)]
    except CalibrationInputError as exc:
        say(f"warning: {run.label} / {run.group}: no selective-prediction numbers ({exc})")
        return []
