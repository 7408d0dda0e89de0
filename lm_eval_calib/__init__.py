"""lm-eval-calib: calibration tasks and metrics for lm-evaluation-harness.

This module is imported by the interpreter start-up hook only when ``lm_eval`` itself is imported, so it
must stay free of heavy imports: the metric core lives in :mod:`lm_eval_calib.metrics`, the lm-eval glue
in :mod:`lm_eval_calib.harness`.
"""

__version__ = "0.1.0"
