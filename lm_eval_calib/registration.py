"""Make this package's tasks and models visible to lm-eval without ``--include_path``.

lm-eval 0.4.13 has no plugin entry points, so the start-up finder (``_lm_eval_calib_startup``) calls
:func:`find_spec` when ``lm_eval.tasks.manager`` is imported; we load the real module and, right after it
executes, wrap ``TaskManager.__init__`` so that our task folder joins its ``include_path``; likewise, when
``lm_eval.models`` is imported, our models are registered by lazy ``"module:Class"`` strings. Every failure
here becomes one warning: a broken plugin must never break ``lm_eval`` itself.
"""

from __future__ import annotations

import functools
import importlib.machinery
import warnings
from pathlib import Path

_PATCHED_FLAG = "_lm_eval_calib_patched"


def task_dir() -> Path:
    """The folder holding this package's task YAMLs.

    Installed from a wheel, the repository's ``tasks/`` lives at ``lm_eval_calib/tasks``; in an editable
    install (``pip install -e .``) it is the ``tasks/`` folder beside the package in the source tree.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "tasks", here.parent / "tasks"):
        if (candidate / "mmlu").is_dir():
            return candidate
    raise FileNotFoundError(
        f"lm-eval-calib's task folder is missing (looked in {here / 'tasks'} and {here.parent / 'tasks'}); "
        "reinstall the package with `pip install lm-eval-calib`."
    )


def _add_task_dir(include_path):
    """Return ``include_path`` with our task folder appended, keeping the caller's type and entries."""
    ours = str(task_dir())
    if include_path is None:
        return [ours]
    paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    if ours not in {str(p) for p in paths}:
        paths.append(ours)
    return paths


def patch_task_manager(module) -> None:
    """Wrap ``module.TaskManager.__init__`` so every TaskManager also indexes our tasks."""
    cls = module.TaskManager
    original = cls.__init__
    if getattr(original, _PATCHED_FLAG, False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if len(args) >= 2:  # include_path given positionally (verbosity, include_path, ...)
            args = (args[0], _add_task_dir(args[1]), *args[2:])
        else:
            kwargs["include_path"] = _add_task_dir(kwargs.get("include_path"))
        original(self, *args, **kwargs)

    setattr(__init__, _PATCHED_FLAG, True)
    cls.__init__ = __init__


WRAP_PREFIX = "calib_"
"""``calib_<task>``: a name lm-eval does not index, resolved by wrapping ``<task>`` (see harness/wrap.py)."""


def patch_load_spec_and_match_tasks(module) -> None:
    """Resolve ``calib_<task>`` names that lm-eval does not index by wrapping ``<task>``.

    Relies on two ``TaskManager`` internals of lm-eval 0.4.13: ``_load_spec`` (one name -> Task, Group or
    tags' tasks; ``load()`` calls it) and ``match_tasks`` (the CLI's check that every ``--tasks`` name exists,
    before the model loads). Names lm-eval indexes (ours included) never reach the wrapper, so they keep their
    meaning; the wrapping itself is :mod:`lm_eval_calib.harness.wrap`, imported on first use.
    """
    cls = module.TaskManager
    load_spec, match_tasks = cls._load_spec, cls.match_tasks
    if getattr(load_spec, _PATCHED_FLAG, False):
        return

    def wanted(manager, name) -> bool:
        return isinstance(name, str) and name.startswith(WRAP_PREFIX) and name not in manager.task_index

    @functools.wraps(load_spec)
    def _load_spec(self, spec):
        if wanted(self, spec):
            from lm_eval_calib.harness import wrap

            return wrap.load(self, spec)
        return load_spec(self, spec)

    @functools.wraps(match_tasks)
    def _match_tasks(self, task_list):
        matched = match_tasks(self, task_list)
        patterns = [task_list] if isinstance(task_list, str) else list(task_list)
        if not any(wanted(self, pattern) for pattern in patterns):
            return matched
        from lm_eval_calib.harness import wrap

        return wrap.match(self, patterns, matched)

    setattr(_load_spec, _PATCHED_FLAG, True)
    cls._load_spec, cls.match_tasks = _load_spec, _match_tasks


# lm-eval model name -> lazy "module:Class" target; imported only when a run asks for that model.
MODELS = {
    "hf-calib": "lm_eval_calib.models.hf_calib:HFCalibLM",
    "vllm-calib": "lm_eval_calib.models.vllm_calib:VLLMCalibLM",
}


def register_models(module) -> None:
    """Add our models to lm-eval's registry as lazy placeholders, right after ``lm_eval.models`` loads.

    Registering earlier (when ``lm_eval.api.registry`` loads) would make the registry non-empty and stop
    lm-eval from importing its own models on first use.
    """
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


# module -> the patches applied right after it executes, in order; each fails on its own, with one warning
_PATCHERS = {
    "lm_eval.tasks.manager": (patch_task_manager, patch_load_spec_and_match_tasks),
    "lm_eval.models": (register_models,),
}


def _fallback(patch) -> str:
    """What still works when ``patch`` could not be applied (for its warning)."""
    if patch is patch_load_spec_and_match_tasks:
        return "calib_<task> wrappers of lm-eval's tasks are off (lm-eval-calib's own tasks still work)"
    return f"pass `--include_path {task_dir()}` to lm_eval instead"


class _PatchingLoader:
    """Delegates to the real loader, then applies our patches to the freshly executed module."""

    def __init__(self, loader, patches):
        self._loader = loader
        self._patches = patches

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for patch in self._patches:
            try:
                patch(module)
            except Exception as exc:  # lm_eval changed shape: degrade to the manual route
                warnings.warn(
                    f"lm-eval-calib: could not register with {module.__name__} ({exc!r}); {_fallback(patch)}",
                    stacklevel=2,
                )

    def __getattr__(self, name):
        return getattr(self._loader, name)


def find_spec(fullname: str, path=None):
    """Find ``fullname`` on the normal path and return its spec with a patching loader, or None."""
    patches = _PATCHERS.get(fullname)
    if patches is None:
        return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
        return None
    spec.loader = _PatchingLoader(spec.loader, patches)
    return spec
