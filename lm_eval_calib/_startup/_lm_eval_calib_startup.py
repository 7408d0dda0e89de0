"""Interpreter start-up part of lm-eval-calib's drop-in registration.

``lm_eval_calib.pth`` imports this module in every interpreter of the environment, so it must cost
nothing: it imports no module that is not already loaded at start-up (``sys`` and ``os`` are), and only
puts a tiny finder on ``sys.meta_path``. The finder answers for nothing except a few ``lm_eval`` modules;
when one of those is imported, the real work is done by :mod:`lm_eval_calib.registration` (which steps
aside for what an lm-eval with entry-point discovery registers itself; see
:mod:`lm_eval_calib.lm_eval_patches`).

Set ``LM_EVAL_CALIB_NO_HOOK=1`` to switch it off (then use ``lm_eval --include_path``).
"""

import os
import sys

# Modules after whose execution lm_eval_calib.registration patches something (keep in step with
# registration.WATCHED; a test checks).
_TARGETS = frozenset(("lm_eval.tasks.manager", "lm_eval.models", "lm_eval.evaluator"))


class LmEvalCalibFinder:
    """A meta-path finder that defers to lm_eval_calib.registration for its few target modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS:
            return None
        try:
            from lm_eval_calib import registration
        except Exception as exc:  # the package is half-installed: never break lm_eval for it
            _warn(exc)
            return None
        return registration.find_spec(fullname, path)


def _warn(exc):
    import warnings

    warnings.warn(f"lm-eval-calib: drop-in registration skipped ({exc!r}); use --include_path", stacklevel=2)


def _install():
    # The true words of lm_eval_calib.models.model_args.TRUE_WORDS, inlined: start-up imports nothing.
    if os.environ.get("LM_EVAL_CALIB_NO_HOOK", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    if not any(type(f).__name__ == "LmEvalCalibFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, LmEvalCalibFinder())


_install()
