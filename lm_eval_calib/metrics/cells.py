"""Large samples resampled as cells: the bootstrap as a multinomial over K cells instead of n items.

Drawing n items with replacement and counting how often each was drawn costs O(n) per resample; at a million
tokens and 1,000 resamples that is 10^9 draws per metric.  Resampling items is the same thing as drawing the
number of items taken from each cell from a multinomial with the cells' item frequencies, so a resample only
costs O(K) for K cells, and every batched metric evaluates the cells as items whose multiplicities are the
drawn cell counts.

A cell is a group of consecutive items (in the order of the metric's sort key) split by ``correct``; its
representative carries the cell's mean confidence / Brier / NLL.  When the sort key has at most
``MAX_GROUPS`` distinct values every group is one distinct value, so the cells are the distinct
(confidence, correct) pairs and the resampling is EXACT (the same distribution as the item bootstrap).
Otherwise the sorted items are cut into ``MAX_GROUPS`` near-equal-count groups (about 0.05% of the items
each), also cut at the equal-width bin edges so that no cell straddles a bin.  This approximates the item
bootstrap: it only loses the spread of values inside a cell (tiny next to the 0/1 spread of ``correct``),
ties the items of a cell for the ranking metrics and moves equal-mass bin boundaries by at most a cell.

* Confidence metrics (binned, AUROC, AURC): groups of the confidence-sorted items.  For equal-width bins the
  per-bin count, confidence sum and number correct at the original frequencies equal the exact ones.
* Means of a per-item value (``MetricInfo.mean_of``: accuracy, Brier, NLL): groups of the items sorted by
  (correct, value), since Brier (multiple choice) and NLL are not functions of (confidence, correct).
  Accuracy has two cells and is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .data import CalibrationData
from .prepared import PreparedData

MAX_GROUPS = 2048
FIELDS = ("confidence", "correct", "brier", "nll")


@dataclass(frozen=True)
class Cells:
    """One representative item per non-empty cell (confidence-sorted) and how many items it stands for."""

    prepared: PreparedData
    frequency: np.ndarray  # (K,) int64, sums to the number of items
    exact: bool  # True when cells are the distinct values of the sort key (no approximation)

    @classmethod
    def of_confidence(cls, prepared: PreparedData, n_bins: int) -> Cells:
        """Cells of the confidence-sorted items, never straddling an equal-width bin edge."""
        conf = prepared.data.confidence
        edges = np.searchsorted(conf, np.linspace(0.0, 1.0, n_bins + 1), side="left")
        return cls._build(prepared.data, prepared.sample.run_starts, edges)

    @classmethod
    def of_values(cls, data: CalibrationData, field: str) -> Cells:
        """Cells of the items sorted by (correct, ``field``), for the mean of ``field``."""
        values, correct = getattr(data, field), data.correct
        order = np.lexsort((values, correct))
        ordered = CalibrationData(*(getattr(data, name)[order] for name in FIELDS))
        values, correct = values[order], correct[order]
        changed = (values[1:] != values[:-1]) | (correct[1:] != correct[:-1])
        run_starts = np.flatnonzero(np.concatenate(([True], changed)))
        class_start = np.searchsorted(correct, 0.5)  # never mix wrong and correct items in one group
        return cls._build(ordered, run_starts, np.array([class_start]))

    @classmethod
    def _build(cls, data: CalibrationData, run_starts: np.ndarray, breaks: np.ndarray) -> Cells:
        n = len(data)
        exact = run_starts.shape[0] <= MAX_GROUPS
        if exact:
            starts = run_starts
        else:
            starts = np.unique(np.concatenate([np.arange(MAX_GROUPS) * n // MAX_GROUPS, breaks]))
            starts = starts[starts < n]
        n_groups = starts.shape[0]
        group = np.repeat(np.arange(n_groups), np.diff(np.append(starts, n)))
        key = 2 * group + data.correct.astype(np.int64)
        frequency = np.bincount(key, minlength=2 * n_groups)
        safe = np.maximum(frequency, 1)
        means = {
            name: np.bincount(key, weights=getattr(data, name), minlength=2 * n_groups) / safe
            for name in FIELDS
        }
        # A mean can round past the values it averages; keep it inside the group (hence inside its bin).
        low = np.repeat(np.minimum.reduceat(data.confidence, starts), 2)
        high = np.repeat(np.maximum.reduceat(data.confidence, starts), 2)
        means["confidence"] = np.clip(means["confidence"], low, high)
        means["correct"] = np.tile([0.0, 1.0], n_groups)
        keep = np.flatnonzero(frequency)
        keep = keep[np.argsort(means["confidence"][keep], kind="stable")]
        cells = CalibrationData(*(means[name][keep] for name in FIELDS))
        return cls(prepared=PreparedData.build(cells), frequency=frequency[keep], exact=exact)


def cell_multiplicities(
    frequency: np.ndarray, n_resamples: int, seed: int, max_elements: int
) -> Iterator[np.ndarray]:
    """Yield ``(b, K)`` int64 cell counts, ``n_resamples`` rows in all, each multinomial(n, frequency / n)."""
    rng = np.random.default_rng(seed)
    n = int(frequency.sum())
    probabilities = frequency / n
    rows_per_chunk = max(1, max_elements // frequency.shape[0])
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        yield rng.multinomial(n, probabilities, size=rows)
        done += rows
