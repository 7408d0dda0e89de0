"""CalibrationData re-ordered by confidence, ready for batched (bootstrap) evaluation.

The batched metrics take multiplicities in ascending-confidence order (see :mod:`.sorted_sample`).  Sorting
the per-item Brier/NLL terms the same way once means a multiplicity row applies to every per-item array
without any per-resample gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import CalibrationData
from .sorted_sample import SortedSample


@dataclass(frozen=True)
class PreparedData:
    """``data`` sorted by confidence (stable) and its run structure; ``sample.order`` is the identity."""

    data: CalibrationData
    sample: SortedSample

    @classmethod
    def build(cls, data: CalibrationData) -> PreparedData:
        order = np.argsort(data.confidence, kind="stable")
        ordered = CalibrationData(
            confidence=data.confidence[order],
            correct=data.correct[order],
            brier=data.brier[order],
            nll=data.nll[order],
        )
        return cls(data=ordered, sample=SortedSample.build(ordered.confidence, ordered.correct))

    def __len__(self) -> int:
        return len(self.data)
