"""Make this package's tasks and models visible to lm-eval without ``--include_path``.

lm-eval 0.4.13 has no plugin entry points, so the start-up finder (``_lm_eval_calib_startup``) calls
:func:`find_spec` when one of the lm-eval modules it watches is imported; we load the real module and, right
after it executes, apply the registration patches of :mod:`lm_eval_calib.lm_eval_patches` (which also says
what each relies on, and how each steps aside when lm-eval discovers plugins itself). Every failure here
becomes one warning: a broken plugin must never break ``lm_eval`` itself.

This is the top of the import layers (docs/architecture.md): it plugs the ``calib_<task>`` builder of
:mod:`lm_eval_calib.harness.wrap` into the wrapper patch, so that the patches module needs no task class.
"""

from __future__ import annotations

import importlib.machinery
from typing import Any

from lm_eval_calib import lm_eval_patches

__all__ = ["WATCHED", "find_spec"]

WATCHED = frozenset(("lm_eval.tasks.manager", "lm_eval.models", "lm_eval.evaluator"))
"""The lm-eval modules after whose execution registration patches apply (the start-up finder's list)."""


def _load_wrapper(task_manager: Any, name: str) -> Any:
    """``calib_<x>`` as a task (:func:`lm_eval_calib.harness.wrap.load`); wrap imports lm-eval's task code, so
    it is imported on first use, never while an lm-eval module is still executing."""
    from lm_eval_calib.harness import wrap

    return wrap.load(task_manager, name)


def _match_wrappers(task_manager: Any, patterns: list[str], matched: list[str]) -> list[str]:
    """lm-eval's matches plus the ``calib_<x>`` names (:func:`lm_eval_calib.harness.wrap.match`)."""
    from lm_eval_calib.harness import wrap

    return wrap.match(task_manager, patterns, matched)


lm_eval_patches.plug_wrappers(_load_wrapper, _match_wrappers)


class _PatchingLoader:
    """Delegates to the real loader, then applies our patches to the freshly executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        lm_eval_patches.after_import(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def find_spec(fullname: str, path=None):
    """Find ``fullname`` on the normal path and return its spec with a patching loader, or None."""
    if fullname not in WATCHED:
        return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
        return None
    spec.loader = _PatchingLoader(spec.loader)
    return spec
