"""Vectorised nonparametric bootstrap of any registered metric.

A resample draws n items with replacement.  It is represented by its multiplicity row (how often each item
was drawn), built with one ``bincount`` over per-resample offset indices, and all metrics are evaluated for a
whole chunk of resamples at once through their batched form.  Indices are generated in chunks of at most
``MAX_CHUNK_ELEMENTS`` so memory stays bounded for large n.  Draws are of positions in the
confidence-sorted order (the same resampling distribution, and no per-resample gather is needed).

Results are deterministic for a given (seed, n, n_resamples).  Resamples on which a metric is undefined
(``nan``, e.g. AUROC when a resample has a single class) are dropped.  With fewer than two defined values the
standard error is ``nan``.  A 1-item sample gives identical resamples, hence a standard error of 0.0 for
metrics defined on one item (``nan`` for AUROC).

smECE has no batched form (``relplot``): it is bootstrapped with a Python loop over at most
``SMECE_MAX_RESAMPLES`` resamples, the first ones of the same stream.

Above ``CELL_BOOTSTRAP_MIN_ITEMS`` items the batched metrics are resampled as cells instead (see
:mod:`.cells`): a multinomial draw of K <= 2 * ``MAX_GROUPS`` cell counts per resample replaces n item draws.
It is exact when the sort key has at most ``MAX_GROUPS`` distinct values and otherwise a close approximation
(standard errors agree with the item bootstrap within its own Monte-Carlo noise).  Its random stream is not
the item bootstrap's, so values differ from the item path's draw for draw, not in distribution.  Up to the
threshold (every MMLU-sized task) nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .calibration_error import smooth_calibration_error
from .cells import Cells, cell_multiplicities
from .data import CalibrationData
from .errors import CalibrationInputError
from .prepared import PreparedData
from .registry import get_metric
from .validation import check_n_bins

MAX_CHUNK_ELEMENTS = 2**20  # small chunks keep bincount's output in cache: faster, not just leaner
SMECE_MAX_RESAMPLES = 100
CELL_BOOTSTRAP_MIN_ITEMS = 100_000  # strictly more items than this: resample cells (see module doc)


def resample_multiplicities(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield ``(b, n)`` int64 multiplicity chunks, ``n_resamples`` rows in total, each row summing to n."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, MAX_CHUNK_ELEMENTS // n)
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        draws = rng.integers(
            0, n, size=(rows, n), dtype=np.int64
        )  # int64: bincount would convert int32 anyway
        draws += (np.arange(rows, dtype=np.int64) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)
        done += rows


def _check_n_resamples(n_resamples: object) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise CalibrationInputError(
            f"n_resamples must be an integer >= 1, got {n_resamples!r}; 1000 is usual"
        )
    return int(n_resamples)


def bootstrap_values(
    key: str, data: CalibrationData, n_resamples: int = 1000, seed: int = 1234, n_bins: int = 10
) -> np.ndarray:
    """The metric on each resample (``nan`` where undefined); smECE returns at most 100 values."""
    info = get_metric(key)
    n_resamples, n_bins = _check_n_resamples(n_resamples), check_n_bins(n_bins)
    prepared = PreparedData.build(data)
    if info.batched is None:
        n_resamples = min(n_resamples, SMECE_MAX_RESAMPLES)
    values = []
    with np.errstate(invalid="ignore", divide="ignore"):
        if info.batched is not None and len(prepared) > CELL_BOOTSTRAP_MIN_ITEMS:
            if info.mean_of is not None:
                cells = Cells.of_values(prepared.data, info.mean_of)
            else:
                cells = Cells.of_confidence(prepared, n_bins)
            chunks = cell_multiplicities(cells.frequency, n_resamples, seed, MAX_CHUNK_ELEMENTS)
            return np.concatenate([info.batched(cells.prepared, chunk, n_bins) for chunk in chunks])
        for chunk in resample_multiplicities(len(prepared), n_resamples, seed):
            if info.batched is not None:
                values.append(info.batched(prepared, chunk, n_bins))
                continue
            for row in chunk:
                conf = np.repeat(prepared.data.confidence, row)
                correct = np.repeat(prepared.data.correct, row)
                values.append(np.array([smooth_calibration_error(conf, correct)]))
    return np.concatenate(values)


def bootstrap_stderr(
    key: str, data: CalibrationData, n_resamples: int = 1000, seed: int = 1234, n_bins: int = 10
) -> float:
    """Bootstrap standard error: sample std (ddof=1) of the metric over resamples."""
    return stderr_of(bootstrap_values(key, data, n_resamples, seed, n_bins))


def stderr_of(values: np.ndarray) -> float:
    """The stderr of a metric from its resample values: sample std (ddof=1) of the defined ones (a resample
    on which the metric is undefined is NaN and left out); NaN with fewer than two."""
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if values.shape[0] >= 2 else float("nan")


def check_level(level: object) -> None:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise CalibrationInputError(f"level must be in (0, 1), got {level!r}; e.g. 0.95")


def percentile_interval_of(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the defined resample values at the given coverage level (NaN, NaN if none)."""
    values = values[~np.isnan(values)]
    if values.shape[0] == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    key: str,
    data: CalibrationData,
    n_resamples: int = 1000,
    seed: int = 1234,
    n_bins: int = 10,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval at the given coverage level."""
    check_level(level)
    return percentile_interval_of(bootstrap_values(key, data, n_resamples, seed, n_bins), level)
