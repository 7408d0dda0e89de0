"""Calibration and refinement: how much of a proper score (Brier, NLL) recalibration can remove.

For a proper scoring rule S and forecasts f, the expected score splits into a calibration part and a
refinement part (DeGroot & Fienberg 1983; Bröcker 2009; Kull & Flach 2015):

    E[S(f, Y)] = E[S(f, Y)] - E[S(c(f), Y)]  +  E[S(c(f), Y)]
                 `---- calibration loss ----'    `- refinement -'

where ``c(f) = P(Y | f)`` is the canonical recalibration of f. Refinement is what no recalibration of these
forecasts can remove (it depends only on how well they separate the outcomes); the calibration loss is
what the best recalibration removes. Following Berta et al. (2025, "Rethinking early stopping: refinement,
then calibration"; the ``probmetrics`` package) and the CORP decomposition of Dimitriadis, Gneiting & Jordan
(2021, PNAS, which estimates ``c`` by isotonic regression), ``c`` is estimated by the recalibration maps of
:mod:`.recalibration`, and the estimate is **cross-fitted** (each item scored by a map fitted on other items),
so a flexible map cannot lower the loss by fitting the noise of the items it scores:

* refinement = the lowest cross-fitted loss among the candidate maps and the identity (the model as it is);
* calibration = total - refinement, >= 0 by construction (0 when no map helps on held-out items).

Two kinds, never mixed: **multi-class** (the Brier and NLL of the gold option over all options; candidate
maps temperature scaling and, for positional options, per-option histogram binning) and **top-label**
(binary Brier and log loss of correctness given the top confidence; candidates Platt, isotonic and
histogram binning).

Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationInputError
from .recalibration import (
    TOP_LABEL_METHODS,
    OptionScores,
    Recalibration,
    TopLabel,
    recalibrate_cross_fitted,
)

LOSSES = ("brier", "nll")


@dataclass(frozen=True)
class Decomposition:
    """One proper score split into its calibration and refinement parts (means over the scored items).

    ``calibration_stderr`` is the standard error of the mean per-item loss reduction under the chosen map
    (the normal-approximation value, which a bootstrap of that mean converges to); 0 when no map helped.
    """

    loss: str
    kind: str
    """``"multi-class"`` or ``"top-label"``."""
    total: float
    calibration: float
    refinement: float
    method: str
    """The recalibration whose cross-fitted loss is lowest, or ``"none"`` when none beats the model."""
    calibration_stderr: float
    n_items: int


def _kind(recalibration: Recalibration) -> str:
    return "top-label" if recalibration.method in TOP_LABEL_METHODS else "multi-class"


def calibration_refinement(recalibrations: Sequence[Recalibration], loss: str) -> Decomposition:
    """Split ``loss`` of the scored items using the best of ``recalibrations`` (see the module doc).

    All recalibrations must score the same items, be of one kind and none may be fitted on the items it scores
    (cross-fitted or held out, as every :class:`.Recalibration` is).
    """
    if loss not in LOSSES:
        raise CalibrationInputError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    if len(recalibrations) == 0:
        raise CalibrationInputError("calibration_refinement needs at least one recalibration; got none")
    kinds = {_kind(r) for r in recalibrations}
    if len(kinds) > 1:
        raise CalibrationInputError(
            "recalibrations mix multi-class (temperature, option_histogram) and top-label (platt, isotonic, "
            "histogram) losses, "
            "which are different numbers; decompose each kind separately"
        )
    before = getattr(recalibrations[0].before, loss)
    for r in recalibrations[1:]:
        other = getattr(r.before, loss)
        if other.shape != before.shape or not np.allclose(
            other, before, rtol=0.0, atol=1e-12, equal_nan=True
        ):
            raise CalibrationInputError(
                f"recalibrations score different items ({r.method} differs from {recalibrations[0].method}); "
                "pass recalibrations of one run"
            )
    if not np.all(np.isfinite(before)):
        raise CalibrationInputError(
            f"{loss} is unknown for some items (nan); the decomposition needs the loss of every item"
        )
    total = float(before.mean())
    best, best_loss = "none", total
    reduction = np.zeros_like(before)
    for r in recalibrations:
        after = getattr(r.after, loss)
        if float(after.mean()) < best_loss:
            best, best_loss, reduction = r.method, float(after.mean()), before - after
    n = int(before.shape[0])
    stderr = float(np.std(reduction, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Decomposition(
        loss=loss,
        kind=kinds.pop(),
        total=total,
        calibration=total - best_loss,
        refinement=best_loss,
        method=best,
        calibration_stderr=stderr,
        n_items=n,
    )


def cross_fitted_decompositions(
    top: TopLabel,
    scores: OptionScores | None = None,
    n_folds: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> list[Decomposition]:
    """Brier and NLL decompositions of one run: top-label always, multi-class where options are scored.

    Every candidate map is cross-fitted on the same seeded folds (``groups`` keeps e.g. a document's tokens in
    one fold). The top-label NLL is the binary log loss; it is skipped, like the multi-class part, when the
    run has no option scores and the item NLL is all that is known.
    """
    top_label = [recalibrate_cross_fitted(m, top, n_folds, seed, groups) for m in TOP_LABEL_METHODS]
    found = [calibration_refinement(top_label, loss) for loss in LOSSES]
    if scores is not None:
        methods = ["temperature"]
        if np.unique(scores.rows.lengths).shape[0] == 1:  # positional options: per-option binning too
            methods.append("option_histogram")
        multi = [recalibrate_cross_fitted(m, scores, n_folds, seed, groups) for m in methods]
        found += [calibration_refinement(multi, loss) for loss in LOSSES]
    return found
