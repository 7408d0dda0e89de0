"""``TaskBase`` for the installed lm-eval, chosen once at import (:func:`lm_eval_calib.harness.compat.
lm_eval_line`): the one place our task classes dispatch on lm-eval's version."""

from __future__ import annotations

from lm_eval_calib.harness.compat import lm_eval_line

LM_EVAL_LINE = lm_eval_line()

if LM_EVAL_LINE == "0.5":
    from lm_eval_calib.harness.compat.tasks_v05 import RELIES_ON, TaskBase
else:
    from lm_eval_calib.harness.compat.tasks_v04 import RELIES_ON, TaskBase

__all__ = ["LM_EVAL_LINE", "RELIES_ON", "TaskBase"]
