"""Which recalibration each run gets, and on which items it is fitted; conformal sets and selective scores.

* Tasks whose records hold per-option log-likelihoods (multiple choice) get temperature scaling (the
  leaderboard's "ECE recal." column), per-option histogram binning where every document has the same
  options (positional letters), and the top-label maps, Platt scaling, isotonic regression and histogram
  binning; token-level tasks (open-vocabulary facts, next token) get the top-label maps only.
* ``calib_mmlu`` is fitted on MMLU's validation split when a ``calib_mmlu_val`` run of the same model with
  the same number of shots is among the inputs; every other task, or MMLU without such a run, is
  cross-fitted (K seeded folds, tokens of one document kept in one fold). The fitted map is never scored on
  the items it was fitted on.
* Each method's ECE, Brier and NLL after recalibration carry bootstrap stderrs over the scored documents
  (the fitted map held fixed; a token task's tokens are resampled with their document), and
  :func:`decomposition_rows` splits the run's Brier and NLL into the part the best of these maps removes
  (calibration) and the rest (refinement).
* Multiple-choice runs also get conformal answer sets (LAC and APS, held out on the same val run or
  cross-fitted over documents, :func:`conformal_rows`) and every run its selective-prediction numbers
  (:func:`selective_row`), all post hoc from the logged records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lm_eval_calib.metrics import (
    ConformalSets,
    Recalibration,
    TopLabel,
    calibration_refinement,
    compute_metric,
    conformal_cross_fitted,
    conformal_held_out,
    recalibrate_cross_fitted,
    recalibrate_held_out,
    selective_accuracies,
)
from lm_eval_calib.metrics.cluster_bootstrap import cluster_bootstrap_stderr
from lm_eval_calib.metrics.conformal import DEFAULT_ALPHA, SCORES
from lm_eval_calib.metrics.recalibration import TOP_LABEL_METHODS
from lm_eval_calib.report.runs import ReportInputError, TaskRun

HELD_OUT_SPLITS = {"calib_mmlu": "calib_mmlu_val"}
"""Evaluation task -> the task on the same model whose items are the held-out fitting split."""


def fitted_task(held_out_task: str) -> str:
    """The task a held-out run recalibrates: ``calib_mmlu`` for ``calib_mmlu_val``, else its own task (a
    held-out run of ``calib_facts`` on other documents fits ``calib_facts``)."""
    return {split: task for task, split in HELD_OUT_SPLITS.items()}.get(held_out_task, held_out_task)


def check_held_out(held_out: Sequence[TaskRun], runs: Sequence[TaskRun]) -> None:
    """Every held-out run (``--held-out``) fits a task that is scored: else a clear error, before any work.

    A map fitted on one task's items and applied to another's measures nothing (a temperature of MMLU says
    nothing about LAMA facts), so a held-out run of another task is refused rather than ignored."""
    scored = sorted({r.task for r in runs})
    for fit in held_out:
        target = fitted_task(fit.task)
        if target not in scored:
            needed = ", ".join(HELD_OUT_SPLITS.get(task, task) for task in scored)
            raise ReportInputError(
                f"held-out run {fit.source} is task {fit.task}, which can only recalibrate {target}, but the "
                f"scored task(s) are {', '.join(scored)}: a held-out run must be of the task it recalibrates "
                f"({'; '.join(f'{HELD_OUT_SPLITS.get(t, t)} for {t}' for t in scored)}). Pass a run of "
                f"{needed} with --held-out (build_report(held_out=...)), or leave it out to cross-fit "
                "within each run"
            )


STDERR_RESAMPLES = 200
"""Bootstrap resamples behind each after-recalibration stderr (200: the stderr to about 5%, at a fifth of the
time of the headline's 1,000; a report has a dozen of them per run)."""
STDERR_SEED = 1234


@dataclass(frozen=True)
class RecalRow:
    """One recalibration of one run, summarised for the tables."""

    run: TaskRun
    method: str
    fitted_on: str
    """Human description of the fitting items: ``calib_mmlu_val (1531 items)`` or ``5-fold cross-fit ...``."""
    result: Recalibration
    run_fit_task: str = ""
    """The task whose items the map was fitted on (held out), else empty."""

    @property
    def parameters(self) -> str:
        p = self.result.parameters
        if self.method == "temperature":
            text = f"T = {p['temperature']:.4g}"
        elif self.method == "platt":
            text = f"a = {p['slope']:.3f}, b = {p['intercept']:.3f}"
        elif self.method == "option_histogram":
            text = f"{p['bins']:.0f} bins per option"
        elif self.method == "isotonic":
            text = f"{p['steps']:.3g} steps"
        else:
            text = f"{p['bins']:.0f} bins, {p['empty_bins']:.3g} empty"
        if self.result.scheme == "cross-fit":
            text += f" (mean of {self.result.n_folds} folds)"
        return text + (" (at the bound)" if self.result.at_bound else "")

    def summary(self) -> dict:
        before, after, n_bins = self.result.before, self.result.after, self.run.options.n_bins
        groups = self.run.item_groups if len(after) == len(self.run.data) else np.arange(len(after))
        row = {
            "model": self.run.label,
            "task": self.run.group,
            "method": self.method,
            "fitted_on": self.fitted_on,
            "n_fit": self.result.n_fit,
            "n_scored": len(after),
            "parameters": self.parameters,
        }
        row |= {f"param_{key}": value for key, value in self.result.parameters.items()}
        for key in ("ece", "nll", "brier"):
            row[f"{key}_before"] = compute_metric(key, before, n_bins=n_bins)
            row[f"{key}_after"] = compute_metric(key, after, n_bins=n_bins)
            row[f"{key}_after_stderr"] = cluster_bootstrap_stderr(  # over the run's documents
                key, after, groups, n_resamples=STDERR_RESAMPLES, seed=STDERR_SEED, n_bins=n_bins
            )
        return row


def _top_label(run: TaskRun) -> TopLabel:
    return TopLabel(run.data.confidence, run.data.correct)


def held_out_partner(
    run: TaskRun, runs: Sequence[TaskRun], held_out: Sequence[TaskRun] = ()
) -> tuple[TaskRun | None, str | None]:
    """The val-split run to fit ``run`` on, or ``None`` and (when one was near) why it was not used.

    ``held_out``: runs given as fitting splits only (``--held-out``), each fitting :func:`fitted_task`."""
    split = HELD_OUT_SPLITS.get(run.task)
    given = [r for r in held_out if fitted_task(r.task) == run.task and r.base_label == run.base_label]
    found = [] if split is None else [r for r in runs if r.task == split and r.base_label == run.base_label]
    if not found and not given:
        return None, None
    split = split or run.task
    same_model = found + [r for r in given if all(r is not f for f in found)]
    matching = [r for r in same_model if r.n_shot == run.n_shot and r.scores is not None]
    if len(matching) > 1:
        matching = [r for r in matching if r.folder == run.folder] or matching
    if len(matching) == 1:
        return matching[0], None
    if len(matching) > 1:
        return None, (
            f"{run.label} / {run.task}: {len(matching)} {split} runs of this model in different "
            f"folders; cross-fitting instead (give them distinct --label)"
        )
    if same_model:
        shots = sorted({str(r.n_shot) for r in same_model})
        return None, (
            f"{run.label} / {run.task} is {run.n_shot}-shot but its {split} run is {'/'.join(shots)}-shot; "
            "a temperature does not carry over, so cross-fitting instead"
        )
    return None, None


def recalibrate_run(
    run: TaskRun, runs: Sequence[TaskRun], n_folds: int, seed: int, held_out: Sequence[TaskRun] = ()
) -> tuple[list[RecalRow], list[str]]:
    """Temperature (option records) and Platt recalibrations of ``run``; messages for what was not done."""
    messages: list[str] = []
    partner, why_not = held_out_partner(run, runs, held_out)
    if why_not:
        messages.append(f"note: {why_not}")
    methods = list(TOP_LABEL_METHODS)
    if run.scores is not None:
        counts = {int(n) for n in np.unique(run.scores.rows.lengths)}
        if partner is not None and partner.scores is not None:
            counts |= {int(n) for n in np.unique(partner.scores.rows.lengths)}
        positional = len(counts) == 1  # the same options everywhere, fit and scored (A-D)
        methods = ["temperature", *(["option_histogram"] if positional else []), *methods]
    rows = []
    if partner is not None:
        for method in methods:
            multi = method not in TOP_LABEL_METHODS
            fit_on = partner.scores if multi else _top_label(partner)
            score_on = run.scores if multi else _top_label(run)
            result = recalibrate_held_out(method, fit_on, score_on)
            rows.append(RecalRow(run, method, f"{partner.task} ({len(fit_on)} items)", result, partner.task))
        return rows, messages
    n_items = len(run.data)
    by_document = run.n_records < n_items and run.n_records >= n_folds
    if not by_document and n_items < 2 * n_folds:
        messages.append(
            f"note: {run.label} / {run.group}: {n_items} items are too few for {n_folds}-fold cross-fitted "
            "recalibration; none reported"
        )
        return rows, messages
    unit = "documents" if by_document else "items"
    if run.n_records < n_items and not by_document:
        messages.append(
            f"note: {run.label} / {run.group}: only {run.n_records} document(s), fewer than {n_folds} folds; "
            "cross-fitting over tokens, which share documents across folds"
        )
    for method in methods:
        split = _top_label(run) if method in TOP_LABEL_METHODS else run.scores
        groups = run.item_record if by_document else None
        result = recalibrate_cross_fitted(method, split, n_folds=n_folds, seed=seed, groups=groups)
        rows.append(RecalRow(run, method, f"{n_folds}-fold cross-fit over {unit} (seed {seed})", result))
    return rows, messages


# ------------------------------------------------------------------------------ calibration / refinement
def decomposition_rows(rows: Sequence[RecalRow]) -> list[dict]:
    """Brier and NLL of each run split into calibration (what its best map removes) and refinement.

    ``rows`` are one report's recalibrations; they are grouped by run and by kind (multi-class: temperature,
    per-option histogram; top-label: Platt, isotonic, histogram), each group decomposed by
    :func:`~lm_eval_calib.metrics.calibration_refinement`.
    """
    found = []
    runs = list(dict.fromkeys(id(r.run) for r in rows))
    for key in runs:
        mine = [r for r in rows if id(r.run) == key]
        for kind in ("multi-class", "top-label"):
            chosen = [r.result for r in mine if (r.method in TOP_LABEL_METHODS) == (kind == "top-label")]
            if not chosen:
                continue
            for loss in ("brier", "nll"):
                if not np.all(np.isfinite(getattr(chosen[0].before, loss))):
                    continue  # e.g. the NLL of token records that did not log it
                d = calibration_refinement(chosen, loss)
                found.append(
                    {
                        "model": mine[0].run.label,
                        "task": mine[0].run.group,
                        "loss": loss,
                        "kind": kind,
                        "total": d.total,
                        "calibration": d.calibration,
                        "calibration_stderr": d.calibration_stderr,
                        "refinement": d.refinement,
                        "best_map": d.method,
                        "fitted_on": mine[0].fitted_on,
                    }
                )
    return found


# ------------------------------------------------------------------------------------- conformal sets
def conformal_run(
    run: TaskRun,
    runs: Sequence[TaskRun],
    n_folds: int,
    seed: int,
    alpha: float = DEFAULT_ALPHA,
    held_out: Sequence[TaskRun] = (),
) -> tuple[list[ConformalSets], list[str]]:
    """LAC and APS answer sets of a multiple-choice run: held out on its val run, else cross-fitted.

    Token-level runs (no option scores) get none. Returns the sets (per document, for records or a figure)
    and messages for what was not done.
    """
    if run.scores is None:
        return [], []
    partner, _ = held_out_partner(run, runs, held_out)
    if partner is not None and partner.scores is not None:
        return [conformal_held_out(partner.scores, run.scores, s, alpha, seed) for s in SCORES], []
    if len(run.scores) < n_folds:
        return [], [
            f"note: {run.label} / {run.group}: {len(run.scores)} documents are too few for {n_folds}-fold "
            "cross-fitted conformal sets; none reported"
        ]
    return [conformal_cross_fitted(run.scores, s, alpha, n_folds, seed) for s in SCORES], []


def conformal_rows(run: TaskRun, sets: Sequence[ConformalSets], fitted_on: str) -> list[dict]:
    """One table row per score: coverage and mean set size with bootstrap stderrs, and the worst category.

    Coverage is guaranteed on average over documents only; the lowest per-category coverage (categories with
    at least 20 documents) shows where it fails conditionally.
    """
    rows = []
    for result in sets:
        row = {
            "model": run.label,
            "task": run.group,
            "score": result.score,
            "alpha": result.alpha,
            "target_coverage": 1.0 - result.alpha,
            "fitted_on": fitted_on,
            "n_calibration": result.n_calibration,
            "n_scored": len(result),
            **result.summary(seed=STDERR_SEED),
            "worst_category": "",
            "worst_category_coverage": None,
        }
        if run.item_category is not None and len(run.categories) > 1:
            codes = run.item_category
            counts = np.bincount(codes[codes >= 0], minlength=len(run.categories))
            hits = np.bincount(codes[codes >= 0], weights=result.covered[codes >= 0], minlength=len(counts))
            big = np.flatnonzero(counts >= 20)
            if big.shape[0]:
                worst = big[np.argmin(hits[big] / counts[big])]
                row["worst_category"] = run.categories[worst]
                row["worst_category_coverage"] = float(hits[worst] / counts[worst])
        rows.append(row)
    return rows


def conformal_fitted_on(
    run: TaskRun, runs: Sequence[TaskRun], sets: Sequence[ConformalSets], held_out: Sequence[TaskRun] = ()
) -> str:
    """``calib_mmlu_val (1531 documents)`` or ``5-fold cross-fit over documents (seed 0)``."""
    if not sets:
        return ""
    if sets[0].scheme == "held-out":
        partner, _ = held_out_partner(run, runs, held_out)
        return f"{partner.task if partner else 'held out'} ({sets[0].n_calibration} documents)"
    return f"{len(sets[0].thresholds)}-fold cross-fit over documents"


# ---------------------------------------------------------------------------------- selective prediction
def selective_row(run: TaskRun, coverages: Sequence[float] = (0.5, 0.8, 0.9)) -> dict:
    """PRR (with its bootstrap stderr), AURC and the selective accuracy at ``coverages`` of one run."""
    data, n_bins = run.data, run.options.n_bins
    prr = compute_metric("prr", data)  # nan for one class only, shown as "–"
    row = {
        "model": run.label,
        "task": run.group,
        "n": len(data),
        "acc": compute_metric("acc", data),
        "prr": prr,
        "prr_stderr": cluster_bootstrap_stderr(
            "prr", data, run.item_groups, STDERR_RESAMPLES, STDERR_SEED, n_bins
        ),
        "aurc": compute_metric("aurc", data),
    }
    for coverage, value in selective_accuracies(data.confidence, data.correct, coverages).items():
        row[f"sel_acc@{coverage:g}"] = value
    return row


# --------------------------------------------------------------------------------------------- tables
def _fmt(value: object, stderr: object = None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if isinstance(stderr, float) and np.isfinite(stderr):
        text += f" ± {stderr:.4f}"
    return text


def recalibration_markdown(rows: Sequence[dict]) -> str:
    """The report's recalibration table: every method's ECE, Brier and NLL before and after (± stderr)."""
    if not rows:
        return "No recalibration (too few items).\n"
    lines = [
        "Fitted on held-out items only; before/after are the same scored items; ± is a bootstrap stderr over "
        "the scored documents (a document's tokens resampled together) with the fitted map held fixed. "
        "For the top-label methods (Platt, isotonic, histogram) NLL is the binary log loss of correctness "
        "and Brier the top-label Brier.\n",
        "| model | task | method | fitted on | n scored | parameters | ECE before | ECE after | "
        "Brier before | Brier after | NLL before | NLL after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["model"], r["task"], r["method"], r["fitted_on"], r["n_scored"], r["parameters"]]
        for key in ("ece", "brier", "nll"):
            cells += [_fmt(r[f"{key}_before"]), _fmt(r[f"{key}_after"], r.get(f"{key}_after_stderr"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def decomposition_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "Calibration = the loss that the best cross-fitted recalibration removes; refinement = what remains "
        "(see docs/recalibration.md).\n",
        "| model | task | loss | kind | total | calibration | refinement | best map |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['loss']} | {r['kind']} | {_fmt(r['total'])} | "
            f"{_fmt(r['calibration'], r['calibration_stderr'])} | {_fmt(r['refinement'])} | {r['best_map']} |"
        )
    return "\n".join(lines) + "\n"


def conformal_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "No conformal sets (no multiple-choice run with option scores).\n"
    lines = [
        "Split-conformal answer sets (LAC, APS); coverage is guaranteed on average over documents, not per "
        "category: the worst category (>= 20 documents) shows where it fails. ± is a bootstrap stderr.\n",
        "| model | task | score | target | fitted on | coverage | mean set size | worst category |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        worst = (
            f"{r['worst_category']} ({_fmt(r['worst_category_coverage'])})" if r["worst_category"] else "–"
        )
        lines.append(
            f"| {r['model']} | {r['task']} | {r['score'].upper()} | {r['target_coverage']:.2f} | "
            f"{r['fitted_on']} | {_fmt(r['coverage'], r['coverage_stderr'])} | "
            f"{_fmt(r['set_size'], r['set_size_stderr'])} | {worst} |"
        )
    return "\n".join(lines) + "\n"


def selective_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    extra = [k for k in rows[0] if k.startswith("sel_acc@")]
    lines = [
        "PRR = (AURC_random - AURC) / (AURC_random - AURC_oracle): 1 = confidence ranks every wrong answer "
        "last, 0 = no better than abstaining at random. sel. acc @c: accuracy of the most confident share "
        "c of the items.\n",
        "| model | task | n | accuracy | PRR | AURC | "
        + " | ".join(f"sel. acc @{k[8:]}" for k in extra)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for r in rows:
        cells = [
            r["model"],
            r["task"],
            r["n"],
            _fmt(r["acc"]),
            _fmt(r["prr"], r["prr_stderr"]),
            _fmt(r["aurc"]),
        ]
        cells += [_fmt(r[k]) for k in extra]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
