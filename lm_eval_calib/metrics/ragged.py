"""Ragged per-item option scores stored flat (CSR style).

Multiple-choice items have different numbers of options, so a rectangular array would need padding whose value
(``-inf``? ``0``?) silently changes softmax, Brier and argmax.  Storing one flat array plus row offsets keeps
every row exact and lets the row reductions below run as single vectorised ``reduceat`` calls instead of a
Python loop per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RaggedRows:
    """Rows of different lengths: ``values[starts[i] : starts[i] + lengths[i]]`` is row ``i``.

    Invariant (enforced by the validation module): every row has at least one entry, so ``reduceat`` never
    sees an empty segment.
    """

    values: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> RaggedRows:
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.zeros(lengths.shape[0], dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(values=np.asarray(values, dtype=np.float64), starts=starts, lengths=lengths)

    def row_of(self, flat_index: int | np.ndarray) -> np.ndarray:
        """Row containing a flat position; used to point error messages at the item, not the flat offset."""
        return np.searchsorted(self.starts, flat_index, side="right") - 1

    def repeat(self, per_row: np.ndarray) -> np.ndarray:
        """Broadcast one value per row to every entry of that row."""
        return np.repeat(per_row, self.lengths)

    def row_sum(self, flat: np.ndarray) -> np.ndarray:
        return np.add.reduceat(flat, self.starts)

    def row_max(self, flat: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(flat, self.starts)

    def first_argmax(self, flat: np.ndarray) -> np.ndarray:
        """Within-row index of the first maximum, i.e. exactly ``np.argmax`` applied row by row.

        The first-index rule matters: lm-eval scores an item correct by ``np.argmax`` over option
        log-likelihoods, and our ``correct`` must agree with its accuracy even when options tie.
        """
        local = np.arange(flat.shape[0], dtype=np.int64) - self.repeat(self.starts)
        is_max = flat == self.repeat(self.row_max(flat))
        sentinel = np.iinfo(np.int64).max
        return np.minimum.reduceat(np.where(is_max, local, sentinel), self.starts)

    def at(self, flat: np.ndarray, index_in_row: np.ndarray) -> np.ndarray:
        """Pick one entry per row (e.g. the target option)."""
        return flat[self.starts + index_in_row]

    def one_hot(self, index_in_row: np.ndarray) -> np.ndarray:
        hot = np.zeros(self.values.shape[0], dtype=np.float64)
        hot[self.starts + index_in_row] = 1.0
        return hot

    def log_softmax(self) -> np.ndarray:
        """Row-wise log-softmax computed stably (max subtracted) so huge negative log-likelihoods survive."""
        shifted = self.values - self.repeat(self.row_max(self.values))
        return shifted - self.repeat(np.log(self.row_sum(np.exp(shifted))))
