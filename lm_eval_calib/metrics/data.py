"""Per-item calibration data: the one structure every metric, the bootstrap and the reports consume.

Keeping per-item Brier and NLL terms (not just confidence/correct) lets the bootstrap resample them together
with the binned metrics, and lets multiple-choice and open-vocabulary tasks share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationInputError
from .ragged import RaggedRows
from .scoring import brier_terms, nll_terms
from .validation import check_confidence_correct, check_option_logprobs


@dataclass(frozen=True)
class CalibrationData:
    """Per-item float64 arrays of equal length.

    ``confidence``: probability of the predicted answer; ``correct``: 1.0 if the prediction was right;
    ``brier``: the item's Brier term; ``nll``: -log p(target), or ``nan`` when unknown.
    """

    confidence: np.ndarray
    correct: np.ndarray
    brier: np.ndarray
    nll: np.ndarray

    def __post_init__(self) -> None:
        confidence, correct = check_confidence_correct(self.confidence, self.correct)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "correct", correct)
        for name in ("brier", "nll"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.shape != confidence.shape:
                raise CalibrationInputError(
                    f"{name} has shape {values.shape} but confidence has {confidence.shape}; pass one {name} "
                    "term per item"
                )
            object.__setattr__(self, name, values)
        if not np.all(np.isfinite(self.brier)):
            raise CalibrationInputError("brier has non-finite values; per-item Brier terms must be finite")

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    @classmethod
    def from_option_logprobs(
        cls, logprobs: Sequence[Sequence[float]] | np.ndarray, targets: Sequence[int] | np.ndarray
    ) -> CalibrationData:
        """Multiple choice: per-item option log-likelihoods (ragged) and the gold option index.

        Options are renormalised with a float64 softmax.  The prediction is the first maximal option
        (``np.argmax``), computed on the log-likelihoods so that it agrees with lm-eval's ``acc``.
        """
        rows, targets = check_option_logprobs(logprobs, targets)
        log_probs = RaggedRows(rows.log_softmax(), rows.starts, rows.lengths)
        probs = RaggedRows(np.exp(log_probs.values), rows.starts, rows.lengths)
        predicted = rows.first_argmax(rows.values)
        return cls(
            confidence=np.minimum(probs.at(probs.values, predicted), 1.0),
            correct=(predicted == targets).astype(np.float64),
            brier=brier_terms(probs, targets),
            nll=nll_terms(log_probs, targets),
        )

    @classmethod
    def from_top_label(
        cls, confidence: object, correct: object, nll: Sequence[float] | np.ndarray | None = None
    ) -> CalibrationData:
        """Open vocabulary / next token: only the top-1 confidence is known.

        The Brier term is then the binary top-label one, (confidence - correct)^2, which is NOT comparable to
        the multi-class Brier of :meth:`from_option_logprobs`.  ``nll`` (-log p(reference)) is optional.
        """
        conf, corr = check_confidence_correct(confidence, correct)
        if nll is None:
            nll_values = np.full(conf.shape, np.nan)
        else:
            nll_values = np.asarray(nll, dtype=np.float64)
            if nll_values.shape != conf.shape:
                raise CalibrationInputError(
                    f"nll has shape {nll_values.shape} but confidence has {conf.shape}; pass one value per "
                    "item or nll=None"
                )
            bad = ~np.isfinite(nll_values) | (nll_values < 0)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise CalibrationInputError(
                    f"nll[{first}] = {float(nll_values[first])}; nll must be finite and >= 0 (it is -log p "
                    "of the reference): check the sign and the log-likelihoods"
                )
        return cls(confidence=conf, correct=corr, brier=(conf - corr) ** 2, nll=nll_values)

    @classmethod
    def concatenate(cls, parts: Sequence[CalibrationData]) -> CalibrationData:
        """Pool items from several tasks or shards (e.g. MMLU subjects) into one sample."""
        if len(parts) == 0:
            raise CalibrationInputError("concatenate got no CalibrationData; pass at least one")
        return cls(
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in ("confidence", "correct", "brier", "nll")
            }
        )
