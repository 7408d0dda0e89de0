"""Where lm-eval-calib's task YAMLs are, for us and for lm-eval's ``lm_eval.tasks`` entry point.

The YAMLs live in the repository's ``tasks/`` folder; a wheel installs them as ``lm_eval_calib/tasks``, while
an editable install (``pip install -e .``) leaves them beside the package in the source tree. lm-eval's task
entry point (upstream PR #4015) drops the ``:attr`` part of the value, imports nothing but the named
module's location, and scans that module's folder; so it needs a module whose file is IN the task folder, in
both installs, under an unambiguous dotted name. This package is that name: its ``__path__`` is the task
folder, so ``lm_eval_calib.task_folder.anchor`` is the file ``tasks/anchor.py`` wherever ``tasks/`` is.
Only :mod:`pathlib` is imported, so resolving the entry point costs nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

ANCHOR = "anchor"
"""The module in the task folder that the ``lm_eval.tasks`` entry point names (``tasks/anchor.py``)."""


def task_dir() -> Path:
    """The folder holding this package's task YAMLs (wheel: ``lm_eval_calib/tasks``; editable: ``tasks/``)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "tasks", package.parent / "tasks"):
        if (candidate / "mmlu").is_dir():
            return candidate
    raise FileNotFoundError(
        f"lm-eval-calib's task folder is missing (looked in {package / 'tasks'} and "
        f"{package.parent / 'tasks'}); reinstall the package with `pip install lm-eval-calib`."
    )


# Submodules of this package are the task folder's modules. A broken install keeps the default path; lm-eval
# then logs that our entry point did not resolve.
with contextlib.suppress(FileNotFoundError):
    __path__ = [str(task_dir())]
