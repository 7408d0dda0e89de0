"""A metric and its bootstrap stderr from per-document records: what a task's aggregation computes (core).

lm-eval calls each calibration task's aggregations with the list of per-document records; the report and the
study compute the same numbers from records read back from a samples file. Both use :func:`make_aggregation`,
so a number recomputed from a finished run is the number the run reported. Nothing here imports lm-eval:
the aggregation carries its stderr function under :data:`STDERR_ATTRIBUTE`, and the "stderr" patch of
:mod:`lm_eval_calib.lm_eval_patches` makes lm-eval's stderr lookup use it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from lm_eval_calib.metrics import (
    CalibrationData,
    compute_metric,
    degenerate_confidence,
    small_sample_warning,
)
from lm_eval_calib.metrics.cluster_bootstrap import cluster_bootstrap_stderr, document_groups
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.records import record_of, records_to_data

logger = logging.getLogger("lm_eval_calib")

STDERR_ATTRIBUTE = "calibration_stderr"
"""The attribute of an aggregation function that holds its own stderr function ``(records, n_resamples)``.

lm-eval 0.4.13 bootstraps only the aggregations on a fixed internal list (``stderr_for_metric``) and reports
"N/A" for any other; the "stderr" patch of :mod:`lm_eval_calib.lm_eval_patches` returns this function for
aggregations that carry it and passes every other one through untouched."""


def mean_stderr(values: Sequence[float]) -> float:
    """The standard error of a mean (sample standard deviation / sqrt(n)), computed exactly as lm-eval's
    ``lm_eval.api.metrics.mean_stderr`` (same operations, same order, so the same float), so a report
    shows a plain task's ``acc_stderr`` as lm-eval reports it without importing lm-eval."""
    mu = sum(values) / len(values)
    return math.sqrt(sum([(x - mu) ** 2 for x in values]) / (len(values) - 1)) / math.sqrt(len(values))


def record_groups(records: Sequence) -> np.ndarray:
    """The document of each item :func:`~lm_eval_calib.records.records_to_data` pools from ``records``: its
    record's position (one record per lm-eval document; a token record holds all of its document's tokens).

    This is what the stderr resamples: whole documents, so the correlated tokens of one document come and go
    together (:mod:`lm_eval_calib.metrics.cluster_bootstrap`); with one item per record it is the item
    bootstrap, draw for draw."""
    sizes = [np.atleast_1d(np.asarray(record_of(r)["confidence"])).shape[0] for r in records]
    return document_groups(np.asarray(sizes, dtype=np.int64))


def _failed(task_name: str, key: str, what: str, exc: Exception, logged: list[str]) -> float:
    """Log one clear error for a metric that could not be computed; its value becomes NaN.

    ``logged`` holds the last message of this metric: its stderr usually fails for the same reason right
    after its aggregation, and that repeat goes to the debug log, so each failing metric costs one error line.
    """
    cause = f"{type(exc).__name__}: {exc}"
    if cause in logged:
        logger.debug("[%s] %s: %s failed too (%s); reported as NaN", task_name, key, what, cause)
    else:
        logged[:] = [cause]
        logger.error(
            "[%s] %s: %s failed (%s); reported as NaN. The other metrics, the results file and the "
            "per-document records (--log_samples) are still written, so nothing the model computed is lost.",
            task_name,
            key,
            what,
            cause,
        )
    logger.debug("[%s] %s: traceback of the failure", task_name, key, exc_info=exc)
    return float("nan")


def _flag_degenerate(data: CalibrationData, task_name: str, warned: set[Hashable]) -> bool:
    """Log, once per task (and estimator, and filter), why its confidences make the metrics uninformative
    (:func:`lm_eval_calib.metrics.degenerate_confidence`); True when AUROC is undefined (already said)."""
    flags = degenerate_confidence(data.confidence, data.correct)
    for flag in flags:
        if (task_name, flag.message) not in warned:
            warned.add((task_name, flag.message))
            logger.warning("[%s] degenerate confidences (%s): %s", task_name, flag.code, flag.message)
    return any(flag.code == "single_class" for flag in flags)


def make_aggregation(
    key: str, options: CalibrationOptions, task_name: str, warned: set[Hashable] | None = None
) -> Callable[[Sequence], float]:
    """An lm-eval aggregation for metric ``key`` that also knows its own bootstrap stderr.

    The stderr resamples documents (records), not items: a token task's tokens of one document are
    correlated, and resampling them one by one would understate the stderr (:func:`record_groups`).

    ``warned`` is shared by a task's aggregations so the small-sample warning is logged once per task and
    sample size, not once per binned metric; so are the warnings about degenerate confidences (all below
    1e-6, all equal, every answer correct or wrong: :mod:`lm_eval_calib.metrics.degenerate`), which say why
    an ECE of 0.0000 or an AUROC of NaN carries no information.

    lm-eval aggregates every task before it writes anything, so an exception here would throw away the whole
    run's model outputs. A metric that fails (bad records, an allocation error, a bug) therefore logs one
    error naming the task and metric and reports NaN; so does its stderr. With ``options.max_bootstrap == 0``
    the stderr is "N/A", as lm-eval writes for metrics without one.
    """
    warned = set() if warned is None else warned
    logged: list[str] = []  # the last failure logged for this metric (see _failed)

    def aggregate(records: Sequence[dict[str, Any]]) -> float:
        try:
            data = records_to_data(records)
            message = small_sample_warning(key, len(data))
            if message and len(data) not in warned:
                warned.add(len(data))
                logger.warning("[%s] %s", task_name, message)
            if _flag_degenerate(data, task_name, warned):
                with warnings.catch_warnings():  # the warning above explains the NaN, naming the task
                    warnings.filterwarnings("ignore", "AUROC is undefined", RuntimeWarning)
                    return compute_metric(key, data, n_bins=options.n_bins)
            return compute_metric(key, data, n_bins=options.n_bins)
        except Exception as exc:  # any failure must cost one metric, not the run
            return _failed(task_name, key, "aggregation", exc, logged)

    def stderr(records: Sequence[dict[str, Any]], n_resamples: int) -> float | str:
        if options.max_bootstrap == 0:
            return "N/A"  # what lm-eval writes for a metric without a stderr
        try:
            return cluster_bootstrap_stderr(
                key,
                records_to_data(records),
                record_groups(records),
                n_resamples=min(n_resamples, options.max_bootstrap),
                seed=options.bootstrap_seed,
                n_bins=options.n_bins,
            )
        except Exception as exc:  # as above
            return _failed(task_name, key, "bootstrap stderr", exc, logged)

    aggregate.__name__ = f"calib_{key}"
    aggregate.__qualname__ = aggregate.__name__
    setattr(aggregate, STDERR_ATTRIBUTE, stderr)
    return aggregate
