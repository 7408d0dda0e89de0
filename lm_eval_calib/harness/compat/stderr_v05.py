"""lm-eval 0.5's stderr lookup, answered inside our tasks as lm-eval 0.4.13 answers it.

0.5's ``Scorer.aggregate`` asks ``lm_eval.api.metrics.stderr_for_metric`` (looked up at call time) for every
key: ``mean`` gets its closed form, every other aggregation a pool bootstrap of ``bootstrap_iters`` draws
(100,000 by default; each draw re-runs the aggregation in Python). 0.4.13 bootstraps only a fixed list and
reports "N/A" for the rest. Here, for aggregations computed while one of our tasks aggregates
(:func:`our_task_aggregating`, entered by :mod:`.tasks_v05`):

- a calibration aggregation (it carries :data:`~lm_eval_calib.record_metrics.STDERR_ATTRIBUTE`): our
  vectorised, seeded bootstrap, exactly as on 0.4.13 (what the "stderr" patch does there);
- ``mean`` and the aggregations 0.4.13 bootstraps (:data:`BOOTSTRAPPED_BY_0_4`, by name): lm-eval's own;
- any other (the count of floored options, a perplexity): none, "N/A", as on 0.4.13.

Outside our tasks lm-eval's answer is untouched. Relies on ``lm_eval.api.metrics.stderr_for_metric`` and
``lm_eval.api.metrics.mean`` (and on ``Scorer.aggregate`` looking the former up when it runs).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

RELIES_ON: tuple[str, ...] = (
    "lm_eval.api.metrics.stderr_for_metric",
    "lm_eval.api.metrics.mean",
    "lm_eval.scorers.Scorer.aggregate",  # imports stderr_for_metric from lm_eval.api.metrics when it runs
)

BOOTSTRAPPED_BY_0_4: frozenset[str] = frozenset(
    ("median", "matthews_corrcoef", "f1_score", "perplexity", "bleu", "chrf", "chrfpp", "ter", "nanmean")
)
"""The aggregations lm-eval 0.4.13's ``stderr_for_metric`` bootstraps (its ``bootstrappable`` list)."""

_depth = 0


@contextlib.contextmanager
def our_task_aggregating() -> Iterator[None]:
    """While one of our tasks aggregates, stderrs follow 0.4.13's rule (module docstring)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def inside_our_task() -> bool:
    return _depth > 0


def choose(
    metric: Any, bootstrap_iters: int, original: Callable, mean: Callable, stderr_attribute: str
) -> Callable | None:
    """The stderr function for ``metric`` (module docstring); ``original`` is lm-eval's lookup."""
    ours = getattr(metric, stderr_attribute, None)
    if ours is not None:
        if not bootstrap_iters or bootstrap_iters <= 0:
            return None  # --bootstrap_iters 0 means "no stderr", as for lm-eval's own metrics
        return functools.partial(ours, n_resamples=bootstrap_iters)
    if not inside_our_task() or metric is mean or getattr(metric, "__name__", None) in BOOTSTRAPPED_BY_0_4:
        return original(metric, bootstrap_iters)
    return None
