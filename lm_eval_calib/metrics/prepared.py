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
    """``data`` sorted by confidence and its run structure; ``sample.order`` is the identity.

    Ties in confidence are broken by correctness, Brier and NLL, so the order (and with it every bootstrap
    draw, which picks sorted positions) depends only on the multiset of items, not on the order they came
    in: records gathered from several processes give the same stderrs as a single-process run.
    """

    data: CalibrationData
    sample: SortedSample

    @classmethod
    def build(cls, data: CalibrationData) -> PreparedData:
        order = np.lexsort((data.nll, data.brier, data.correct, data.confidence))  # last key is primary
        ordered = CalibrationData(
            confidence=data.confidence[order],
            correct=data.correct[order],
            brier=data.brier[order],
            nll=data.nll[order],
        )
        return cls(data=ordered, sample=SortedSample.build(ordered.confidence, ordered.correct))

    def __len__(self) -> int:
        return len(self.data)
