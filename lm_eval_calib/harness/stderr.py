"""Give calibration metrics a bootstrap stderr inside lm-eval's results.

lm-eval 0.4.13 only bootstraps aggregations on a fixed internal list (``stderr_for_metric``); any other
aggregation reports "N/A". Our aggregation functions carry a ``calibration_stderr`` attribute, and the
"stderr" patch of :mod:`lm_eval_calib.lm_eval_patches` wraps lm-eval's lookup so that such functions get
their own vectorised bootstrap. Everything else is passed through untouched.
"""

from __future__ import annotations

STDERR_ATTRIBUTE = "calibration_stderr"


def install() -> None:
    """Apply every lm-eval patch that can apply now, the stderr one included (idempotent)."""
    from lm_eval_calib.lm_eval_patches import install_all

    install_all()
