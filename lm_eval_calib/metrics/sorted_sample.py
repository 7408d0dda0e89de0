"""Items sorted by confidence once, evaluated under many resampling weights.

Why this exists: the bootstrap evaluates every metric on hundreds of resamples.  Re-binning or re-sorting each
resample would cost O(n log n) per resample.  Instead the sample is sorted by confidence ONCE, and a resample
is described by a multiplicity matrix ``m`` of shape ``(B, n)`` (how many times each item was drawn).  Every
metric is written once, batched along the last axis of ``m``; the plain point estimate is simply ``m = 1``
(``multiplicity=None``).  Because items are sorted, equal-width bins, equal-mass bins and the risk-coverage
curve are all contiguous slices, so a resample costs O(n) with no per-resample sort.

Items with identical confidence form a *run*.  Runs are the unit for tie handling everywhere: tied items
always share a bin, and ranking metrics treat them as an unordered block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SortedSample:
    """A validated (confidence, correct) sample in ascending-confidence order, grouped into runs of ties."""

    order: np.ndarray  # permutation: sorted position -> original item index (stable argsort)
    confidence: np.ndarray  # (n,) ascending
    correct: np.ndarray  # (n,) float 0/1, aligned with ``confidence``
    run_starts: np.ndarray  # (U,) position where each run of equal confidence starts
    run_values: np.ndarray  # (U,) the confidence shared by each run, strictly ascending

    @classmethod
    def build(cls, confidence: np.ndarray, correct: np.ndarray) -> SortedSample:
        order = np.argsort(confidence, kind="stable")
        conf = confidence[order]
        starts = np.flatnonzero(np.concatenate(([True], conf[1:] != conf[:-1])))
        return cls(
            order=order, confidence=conf, correct=correct[order], run_starts=starts, run_values=conf[starts]
        )

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def has_ties(self) -> bool:
        return self.run_starts.shape[0] < self.confidence.shape[0]

    def weights(self, multiplicity: np.ndarray | None) -> np.ndarray:
        """Per-item weights ``(B, n)`` in sorted order.

        ``multiplicity`` is given in *sorted* item order (the bootstrap draws sorted positions directly, which
        is the same resampling distribution and saves a gather per resample).  Use :meth:`from_original` to
        convert weights expressed in the caller's item order.
        """
        if multiplicity is None:
            return np.ones((1, len(self)), dtype=np.float64)
        weights = np.asarray(multiplicity, dtype=np.float64)
        return weights.reshape(-1, len(self))

    def from_original(self, multiplicity: np.ndarray) -> np.ndarray:
        """Reorder ``(B, n)`` weights from the caller's item order into this sample's sorted order."""
        return np.asarray(multiplicity)[..., self.order]

    def run_totals(self, multiplicity: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-run (weighted count, weighted number correct), each ``(B, U)``."""
        weights = self.weights(multiplicity)
        if not self.has_ties:
            return weights, weights * self.correct
        return (
            np.add.reduceat(weights, self.run_starts, axis=1),
            np.add.reduceat(weights * self.correct, self.run_starts, axis=1),
        )
