"""Make this package's tasks and models visible to lm-eval without ``--include_path``.

lm-eval 0.4.13 has no plugin entry points, so the start-up finder (``_lm_eval_calib_startup``) calls
:func:`find_spec` when one of the lm-eval modules it watches is imported; we load the real module and, right
after it executes, apply the registration patches of :mod:`lm_eval_calib.lm_eval_patches` (which also says
what each relies on, and how each steps aside when lm-eval discovers plugins itself). Every failure here
becomes one warning: a broken plugin must never break ``lm_eval`` itself.
"""

from __future__ import annotations

import importlib.machinery

from lm_eval_calib.lm_eval_patches import MODELS, WRAP_PREFIX, after_import
from lm_eval_calib.task_folder import task_dir

__all__ = ["MODELS", "WATCHED", "WRAP_PREFIX", "find_spec", "task_dir"]

WATCHED = frozenset(("lm_eval.tasks.manager", "lm_eval.models", "lm_eval.evaluator"))
"""The lm-eval modules after whose execution registration patches apply (the start-up finder's list)."""


class _PatchingLoader:
    """Delegates to the real loader, then applies our patches to the freshly executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        after_import(module)

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
