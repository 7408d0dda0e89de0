"""Check a parsed study against this machine before its first cell runs (``--dry-run`` included).

:func:`lm_eval_calib.study.config.parse_study` checks the file on its own (keys, names, stage arguments
against the train stages' schemas, claims). What needs the environment is checked here: that lm_eval knows
every task and backend, that every local file and folder the cells read exists. Otherwise a typo in the last
task or a missing training file would surface after an hour of training. Every problem is listed at once.
"""

from __future__ import annotations

import difflib
import functools
import shutil
from pathlib import Path

from lm_eval_calib.study.config import StudyConfig, StudyConfigError
from lm_eval_calib.study.plan import (
    DATA_ENV,
    data_root,
    is_local_data,
    is_local_model,
    task_data_folder,
)


@functools.lru_cache(maxsize=1)
def _task_manager():
    """lm_eval's TaskManager as the ``lm_eval`` CLI builds it (our start-up hook adds this package's tasks,
    and any ``calib_<task>`` resolution it patches in); built once per process, it indexes every task."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def task_is_known(name: str) -> bool:
    """Whether ``lm_eval --tasks NAME`` would find the task: the same question its CLI asks (``match_tasks``),
    or, for a ``.yaml`` path, whether the file exists. Asking lm_eval, not a list of ours, keeps this right
    for lm_eval's own tasks and for any task name a later patch of the TaskManager makes resolvable."""
    if name.endswith(".yaml"):
        return Path(name).is_file()
    return bool(_task_manager().match_tasks([name]))


def known_backends() -> list[str]:
    """Model names in lm_eval's registry (``--model``), ours (``hf-calib``, ``vllm-calib``) included."""
    import lm_eval.models  # noqa: F401 - fills the registry; our start-up hook registers our models here
    from lm_eval.api.registry import model_registry

    return sorted(model_registry.keys())


def _unknown_backend(name: str, where: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{where} {name!r} is not a model lm_eval knows; {hint}known: {', '.join(known)}"


def _hook_hint(problems: list[str]) -> str:
    """Our own names missing at once usually means the start-up hook is off or the install is broken."""
    if any("'calib_" in p or "-calib'" in p for p in problems):
        return (
            "\n(if this package's own tasks or models are among them: reinstall it, check that "
            "LM_EVAL_CALIB_NO_HOOK is unset, or see `lm-eval-calib tasks-dir`)"
        )
    return ""


def study_problems(config: StudyConfig) -> list[str]:
    """Every problem this machine can see in ``config`` before anything runs (empty when none)."""
    problems: list[str] = []
    known = known_backends()
    if config.eval.backend not in known:
        problems.append(_unknown_backend(config.eval.backend, "eval.backend", known))
    for task, settings in config.tasks.items():
        if settings.backend not in known and settings.backend != config.eval.backend:
            problems.append(_unknown_backend(settings.backend, f"tasks.{task}.backend", known))
    for task in config.tasks:
        try:
            known = task_is_known(task)
        except Exception as exc:  # noqa: BLE001 - the CLI would stop on it too (a wrapper's refusal, ...)
            problems.append(f"tasks.{task}: lm_eval refuses it: {exc}")
            continue
        if not known:
            close = difflib.get_close_matches(task, _task_manager().all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
            problems.append(f"tasks.{task}: lm_eval has no task {task!r}{hint}")
    for task, settings in config.tasks.items():
        if settings.launcher and shutil.which(settings.launcher[0]) is None:
            problems.append(
                f"tasks.{task}.launcher: {settings.launcher[0]!r} is not on PATH; install it (torchrun comes "
                "with torch, accelerate with `pip install accelerate`) or give its full path"
            )
    for task, settings in config.tasks.items():
        root = data_root(settings)
        if root is None:
            continue
        source = "its metadata data_dir" if settings.metadata.get("data_dir") else f"${DATA_ENV}"
        if not root.is_dir():
            problems.append(f"tasks.{task}: data root {str(root)!r} (from {source}) is not a folder")
            continue
        folder = task_data_folder(task)
        if folder and not (root / folder).is_dir():
            problems.append(
                f"tasks.{task}: data root {str(root)!r} (from {source}) has no {folder}/ folder, which "
                f"{task} reads; point it at a root laid out like ../shared/data"
            )
    for spec in config.models.values():
        if is_local_model(spec) and not Path(str(spec.pretrained)).expanduser().is_dir():
            problems.append(
                f"models.{spec.name}.pretrained: folder {spec.pretrained} does not exist (a hub id is "
                "written org/name, without a leading / . or ~)"
            )
    for spec in config.train.values():
        if is_local_data(spec.data) and not Path(spec.data).expanduser().exists():
            problems.append(
                f"train.{spec.name}.data: {spec.data} does not exist; give a .json, .jsonl or .jsonl.gz file "
                "(or a folder holding one)"
            )
    return problems


def check_study(config: StudyConfig) -> None:
    """Raise :class:`StudyConfigError` listing every problem :func:`study_problems` finds."""
    problems = study_problems(config)
    if not problems:
        return
    count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    listing = "\n".join(f"- {problem}" for problem in problems)
    raise StudyConfigError(
        f"{config.source}: {count} found before anything ran:\n{listing}{_hook_hint(problems)}"
    )
