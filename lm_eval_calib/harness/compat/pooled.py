"""``PooledTaskBase`` for the installed lm-eval, chosen once at import (:mod:`.pooled_v04` or
:mod:`.pooled_v05`): the base of :class:`~lm_eval_calib.harness.wrapped_task.PooledCalibrationTask`."""

from __future__ import annotations

from lm_eval_calib.harness.compat import lm_eval_line

if lm_eval_line() == "0.5":
    from lm_eval_calib.harness.compat.pooled_v05 import RELIES_ON, PooledTaskBase
else:
    from lm_eval_calib.harness.compat.pooled_v04 import RELIES_ON, PooledTaskBase

__all__ = ["RELIES_ON", "PooledTaskBase"]
