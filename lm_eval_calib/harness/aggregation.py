"""Corpus-level aggregations that lm-eval calls with the list of per-document records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_calib.harness.options import CalibrationOptions
from lm_eval_calib.harness.stderr import STDERR_ATTRIBUTE
from lm_eval_calib.metrics import bootstrap_stderr, compute_metric, small_sample_warning
from lm_eval_calib.records import records_to_data

logger = logging.getLogger("lm_eval_calib")


def make_aggregation(
    key: str, options: CalibrationOptions, task_name: str, warned: set[int] | None = None
) -> Callable[[Sequence], float]:
    """An lm-eval aggregation for metric ``key`` that also knows its own bootstrap stderr.

    ``warned`` is shared by a task's aggregations so the small-sample warning is logged once per task and
    sample size, not once per binned metric.
    """
    warned = set() if warned is None else warned

    def aggregate(records: Sequence[dict[str, Any]]) -> float:
        data = records_to_data(records)
        message = small_sample_warning(key, len(data))
        if message and len(data) not in warned:
            warned.add(len(data))
            logger.warning("[%s] %s", task_name, message)
        return compute_metric(key, data, n_bins=options.n_bins)

    def stderr(records: Sequence[dict[str, Any]], n_resamples: int) -> float:
        return bootstrap_stderr(
            key,
            records_to_data(records),
            n_resamples=min(n_resamples, options.max_bootstrap),
            seed=options.bootstrap_seed,
            n_bins=options.n_bins,
        )

    aggregate.__name__ = f"calib_{key}"
    aggregate.__qualname__ = aggregate.__name__
    setattr(aggregate, STDERR_ATTRIBUTE, stderr)
    return aggregate
