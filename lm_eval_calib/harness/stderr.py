"""Give calibration metrics a bootstrap stderr inside lm-eval's results.

lm-eval 0.4.13 only bootstraps aggregations on a fixed internal list (``stderr_for_metric``); any other
aggregation reports "N/A". Our aggregation functions carry a ``calibration_stderr`` attribute, and this
module wraps lm-eval's lookup so that such functions get their own vectorised bootstrap. Everything else is
passed through untouched, so lm-eval's own tasks behave exactly as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

STDERR_ATTRIBUTE = "calibration_stderr"
_PATCHED_FLAG = "_lm_eval_calib_patched"


def _wrap(original: Callable) -> Callable:
    @functools.wraps(original)
    def stderr_for_metric(metric, bootstrap_iters):
        ours = getattr(metric, STDERR_ATTRIBUTE, None)
        if ours is None:
            return original(metric, bootstrap_iters)
        if not bootstrap_iters or bootstrap_iters <= 0:
            return None  # --bootstrap_iters 0 means "no stderr", as for lm-eval's own metrics
        return functools.partial(ours, n_resamples=bootstrap_iters)

    setattr(stderr_for_metric, _PATCHED_FLAG, True)
    return stderr_for_metric


def install() -> None:
    """Patch lm-eval's stderr lookup where the evaluator calls it (idempotent)."""
    import lm_eval.api.metrics as metrics_module
    import lm_eval.evaluator_utils as evaluator_utils

    for module in (evaluator_utils, metrics_module):
        current = module.stderr_for_metric
        if not getattr(current, _PATCHED_FLAG, False):
            module.stderr_for_metric = _wrap(current)
