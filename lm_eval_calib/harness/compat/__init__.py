"""What differs between lm-eval 0.4.13 and 0.5 for our task classes, one adapter module per concern.

lm-eval 0.4.13 and 0.5 build requests, score documents and compute stderrs differently (docs/
lm_eval_versions.md). The calibration logic is written once, against 0.4.13's contract; these modules keep
that contract on 0.5, each naming the upstream internals it relies on (``RELIES_ON``):

- task classes: :mod:`.tasks` chooses, once at import, :mod:`.tasks_v04` or :mod:`.tasks_v05`
  (``TaskBase``, the base of :class:`~lm_eval_calib.harness.base.CalibrationTaskBase`);
- the pooled task (``calib_<group or tag>``): :mod:`.pooled` chooses :mod:`.pooled_v04` or :mod:`.pooled_v05`
  (``PooledTaskBase``, the base of :class:`~lm_eval_calib.harness.wrapped_task.PooledCalibrationTask`);
- stderrs: :mod:`.stderr_v05` (0.5's scorers bootstrap every aggregation that is not ``mean``; inside our
  tasks the stderrs are 0.4.13's), applied by the "stderr (lm-eval 0.5)" patch of
  :mod:`lm_eval_calib.lm_eval_patches`; 0.4.13's is that module's "stderr" patch.

:func:`lm_eval_line` says which line is installed; importing this package imports no lm-eval module.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

LINES = ("0.4", "0.5")


def lm_eval_line() -> str:
    """``"0.5"`` for lm-eval 0.5 and later (0.5.0.dev1, the ``next0.5`` branch), else ``"0.4"`` (0.4.13);
    read from the installed distribution's version, so no lm-eval module is imported."""
    try:
        installed = version("lm_eval")
    except PackageNotFoundError:
        return "0.4"
    match = re.match(r"(\d+)\.(\d+)", installed)
    major, minor = (int(match[1]), int(match[2])) if match else (0, 4)
    return "0.5" if (major, minor) >= (0, 5) else "0.4"
