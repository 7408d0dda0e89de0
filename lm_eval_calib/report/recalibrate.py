"""Which recalibration each run gets, and on which items it is fitted.

* Tasks whose records hold per-option log-likelihoods (multiple choice) get temperature scaling (the
  leaderboard's "ECE recal." column) and Platt scaling; token-level tasks (open-vocabulary facts, next token)
  get Platt scaling only, on the top-label confidence.
* ``calib_mmlu`` is fitted on MMLU's validation split when a ``calib_mmlu_val`` run of the same model with
  the same number of shots is among the inputs; every other task, or MMLU without such a run, is
  cross-fitted (K seeded folds, tokens of one document kept in one fold). The fitted map is never scored on
  the items it was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lm_eval_calib.metrics import (
    Recalibration,
    TopLabel,
    compute_metric,
    recalibrate_cross_fitted,
    recalibrate_held_out,
)
from lm_eval_calib.report.runs import TaskRun

HELD_OUT_SPLITS = {"calib_mmlu": "calib_mmlu_val"}
"""Evaluation task -> the task on the same model whose items are the held-out fitting split."""


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
        text = (
            f"T = {p['temperature']:.4g}"
            if self.method == "temperature"
            else f"a = {p['slope']:.3f}, b = {p['intercept']:.3f}"
        )
        if self.result.scheme == "cross-fit":
            text += f" (mean of {self.result.n_folds} folds)"
        return text + (" (at the bound)" if self.result.at_bound else "")

    def summary(self) -> dict:
        before, after, n_bins = self.result.before, self.result.after, self.run.options.n_bins
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
        return row


def _top_label(run: TaskRun) -> TopLabel:
    return TopLabel(run.data.confidence, run.data.correct)


def held_out_partner(run: TaskRun, runs: Sequence[TaskRun]) -> tuple[TaskRun | None, str | None]:
    """The val-split run to fit ``run`` on, or ``None`` and (when one was near) why it was not used."""
    split = HELD_OUT_SPLITS.get(run.task)
    if split is None:
        return None, None
    same_model = [r for r in runs if r.task == split and r.base_label == run.base_label]
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
    run: TaskRun, runs: Sequence[TaskRun], n_folds: int, seed: int
) -> tuple[list[RecalRow], list[str]]:
    """Temperature (option records) and Platt recalibrations of ``run``; messages for what was not done."""
    messages: list[str] = []
    methods = ["temperature", "platt"] if run.scores is not None else ["platt"]
    partner, why_not = held_out_partner(run, runs)
    if why_not:
        messages.append(f"note: {why_not}")
    rows = []
    if partner is not None:
        for method in methods:
            fit_on = partner.scores if method == "temperature" else _top_label(partner)
            score_on = run.scores if method == "temperature" else _top_label(run)
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
        split = run.scores if method == "temperature" else _top_label(run)
        groups = run.item_record if by_document else None
        result = recalibrate_cross_fitted(method, split, n_folds=n_folds, seed=seed, groups=groups)
        rows.append(RecalRow(run, method, f"{n_folds}-fold cross-fit over {unit} (seed {seed})", result))
    return rows, messages
