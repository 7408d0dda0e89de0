"""``calib_<task>``: calibration for any lm-eval multiple-choice task, built on the fly from its config.

``lm_eval --tasks calib_arc_challenge`` runs lm-eval's own ``arc_challenge`` (its prompt, choices, few-shot
sampling, filters, ``process_docs`` and metrics, all lm-eval's code) and adds every calibration metric, from
the same per-option log-likelihoods. How a name resolves (patched into ``TaskManager`` by the "calib_<task>
wrappers" patch of :mod:`lm_eval_calib.lm_eval_patches`, which :mod:`lm_eval_calib.registration` points at
:func:`load` and :func:`match`):

- a name lm-eval indexes wins, so this package's own tasks (``calib_mmlu``, ``calib_mmlu_<subject>``, ...)
  keep their names and behaviour; only a ``calib_<x>`` that lm-eval does not know is wrapped;
- ``<x>`` is one task (built-in, from ``--include_path``):
  :class:`~lm_eval_calib.harness.wrapped_task.WrappedMultipleChoiceTask` is the original
  ``ConfigurableTask`` (same config; for a Python task class, a subclass of that class) whose
  ``process_results`` returns the original's metrics unchanged plus the calibration record(s);
- ``<x>`` is a group or tag: :class:`~lm_eval_calib.harness.wrapped_task.PooledCalibrationTask` is ONE task
  over the documents of all its subtasks (in lm-eval's order), each document handled by its own subtask's
  wrapper, records carrying the subtask as ``category``; ``acc`` and the other original metrics are pooled.

Where the original reports ``acc_norm``, the calibration of that prediction rule is added under
``<key>_norm`` (``ece_norm``, ...): confidence = softmax over ``ll_i / len(choice_i)``
(:func:`lm_eval_calib.records.length_normalised`), its record logged under ``ece_norm``.

This module plans. Configs come from lm-eval's own machinery, a :class:`lm_eval.tasks._factory.TaskFactory`
whose only change is that it returns each leaf config instead of constructing the task, so group expansion,
overrides and the run's metadata are lm-eval's. Which configs can be wrapped, and with which class, is the
one rule of :mod:`lm_eval_calib.harness.wrap_rules` (the listing applies it too); what cannot be wrapped is
refused with :class:`~lm_eval_calib.harness.wrap_refusal.WrapRefusal` before the model loads (from the
configs) or, for what only the data show (several gold answers), when the task is built
(:mod:`lm_eval_calib.harness.wrapped_task`). The wrapper's other public names are re-exported here for their
callers (``lm-eval-calib tasks``). See docs/wrapped_tasks.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass
from typing import Any

from lm_eval.api.group import Group
from lm_eval.api.task import ConfigurableTask, Task
from lm_eval.config.task import TaskConfig
from lm_eval.tasks._factory import TaskFactory

from lm_eval_calib.data.root import hub_snapshot, snapshot_cache_dir
from lm_eval_calib.harness.wrap_refusal import (
    PREFIX,
    SUBTASKS_KEY,
    WRAPS_KEY,
    UnknownWrappedTaskError,
    Unwrappable,
    WrapRefusal,
    refusal_message,
)
from lm_eval_calib.harness.wrap_rules import (
    GENERATION_CLASS,
    GENERATION_MODULE,
    KIND_NAMES,
    NAMING,
    leaf_class,
    pooled_refusal,
    static_refusal,
    wrappable,
)
from lm_eval_calib.harness.wrapped_task import PooledCalibrationTask, WrappedMultipleChoiceTask

__all__ = [
    "GENERATION_CLASS",
    "GENERATION_MODULE",
    "NAMING",
    "PREFIX",
    "SUBTASKS_KEY",
    "WRAPS_KEY",
    "Leaf",
    "PooledCalibrationTask",
    "UnknownWrappedTaskError",
    "WrapPlan",
    "WrapRefusal",
    "WrappedMultipleChoiceTask",
    "build",
    "load",
    "match",
    "plan",
    "wrappable",
    "wrapped_config",
]

logger = logging.getLogger("lm_eval_calib")


def wrapped_config(cfg: dict, task_name: str, original: str) -> dict:
    """The original config as the wrapper gets it: renamed, provenance in metadata, and a hub dataset read
    from ``ROOT/hub/<dataset_path>`` when a data root is set (cached by its contents: :meth:`Leaf.build`).
    Nothing else changes."""
    cfg = dict(cfg)
    for key in ("tag", "group", "task_list", "task_alias"):
        cfg.pop(key, None)
    cfg["task"] = task_name
    metadata = dict(cfg.get("metadata") or {})
    metadata[WRAPS_KEY] = original
    cfg["metadata"] = metadata
    if cfg.get("custom_dataset") is None:
        folder = hub_snapshot(cfg.get("dataset_path"), metadata.get("data_dir"), task=f"{PREFIX}{original}")
        if folder is not None:
            cfg["dataset_path"] = str(folder)
    return cfg


# -- configs through lm-eval's own factory -------------------------------------------------------------------
class _CapturedConfig:
    """Stands where lm-eval's factory would put a constructed task: the config it would construct it with."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.task_name = cfg["task"]


class _ConfigFactory(TaskFactory):
    """lm-eval's TaskFactory, returning each task's final config instead of building the task (no data)."""

    def _build_task(self, entry, overrides):
        cfg = self._load_full_config(entry, overrides)
        for key in ("tag", "group", "task_list"):
            cfg.pop(key, None)
        return _CapturedConfig(cfg)


def _leaf_configs(built: Any) -> list[tuple[str, dict]]:
    """(task name, config) of every task under what the factory built, depth first, each name once."""
    out: dict[str, dict] = {}

    def visit(item: Any) -> None:
        if isinstance(item, (list, Group)):
            for child in item:
                visit(child)
        elif isinstance(item, _CapturedConfig):
            out.setdefault(item.task_name, item.cfg)
        elif isinstance(item, ConfigurableTask):  # an inline task of a group: the factory built it directly
            out.setdefault(
                item.config.task, {f: getattr(item.config, f) for f in TaskConfig.__dataclass_fields__}
            )

    visit(built)
    return list(out.items())


@dataclass
class Leaf:
    name: str
    """The original task's name (a subtask's, in a group)."""
    cls: type
    config: dict
    snapshot: tuple[str, Any] | None = None
    """``(folder, the task's own dataset_kwargs cache_dir)`` where the data come from a local hub snapshot."""

    def build(self) -> Task:
        """The task, its data read now. A local snapshot is loaded through a ``datasets`` cache keyed by its
        files' contents (:func:`~lm_eval_calib.data.root.snapshot_cache_dir`), computed here rather than in
        the plan: ``datasets`` keys a local folder by its README's patterns alone and would serve the rows
        of before an edit, with no message."""
        config = self.config
        if self.snapshot is not None:
            folder, cache_dir = self.snapshot
            kwargs = dict(config.get("dataset_kwargs") or {})
            kwargs["cache_dir"] = str(snapshot_cache_dir(folder, cache_dir))
            config = {**config, "dataset_kwargs": kwargs}
        return self.cls(config=config)


@dataclass
class WrapPlan:
    """Everything ``calib_<original>`` needs, decided from configs alone (no data, no model)."""

    name: str
    original: str
    kind: str
    """``task``, ``group`` or ``tag``."""
    leaves: list[Leaf]


_PLANS_ATTRIBUTE = "_lm_eval_calib_wrap_plans"


def unknown_name_hint(task_manager: Any, name: str) -> str:
    inner = name[len(PREFIX) :]
    close = difflib.get_close_matches(inner, task_manager.all_tasks, n=3, cutoff=0.8)
    maybe = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    return (
        f"lm-eval-calib: {name!r} is not a task: calib_<task> wraps a multiple-choice task, group or tag "
        f"that lm-eval knows, and lm-eval knows no {inner!r}.{maybe} `lm-eval-calib tasks --wrappable` lists "
        "the names that can be wrapped; a task of your own needs --include_path."
    )


def plan(task_manager: Any, name: str) -> WrapPlan:
    """The plan for ``calib_<x>`` (cached on the TaskManager): raises :class:`WrapRefusal` for what cannot be
    wrapped, :class:`UnknownWrappedTaskError` for an unknown ``<x>`` and ``DataNotFoundError`` for a missing
    hub snapshot under the data root."""
    plans = task_manager.__dict__.setdefault(_PLANS_ATTRIBUTE, {})
    if name in plans:
        return plans[name]
    original = name[len(PREFIX) :]
    entry = task_manager.task_index.get(original)
    if entry is None:
        raise UnknownWrappedTaskError(
            f"Spec {name!r} is not a registered task/group/tag name or valid YAML path. "
            + unknown_name_hint(task_manager, name)
        )
    kind = KIND_NAMES.get(entry.kind, "task")
    factory = _ConfigFactory(meta=getattr(task_manager, "metadata", None))
    built = factory.build(entry, overrides=None, registry=dict(task_manager.task_index))
    leaves, problems = [], []
    for leaf_name, cfg in _leaf_configs(built):
        try:
            cls = leaf_class(cfg, task_manager.task_index)
        except Unwrappable as problem:
            problems.append((leaf_name, problem))
            continue
        config = wrapped_config(cfg, name if kind == "task" else leaf_name, original)
        local = config.get("dataset_path") != cfg.get("dataset_path")  # read from a snapshot under the root
        snapshot = (
            (config["dataset_path"], (cfg.get("dataset_kwargs") or {}).get("cache_dir")) if local else None
        )
        leaves.append(Leaf(leaf_name, cls, config, snapshot))
    if problems:
        leaf_name, problem = problems[0]
        more = f" ({len(problems) - 1} more subtask(s) cannot be wrapped either)" if len(problems) > 1 else ""
        raise WrapRefusal(refusal_message(name, original, leaf_name, problem) + more)
    if not leaves:
        raise WrapRefusal(refusal_message(name, original, None, Unwrappable("it has no tasks", "none")))
    if kind != "task":
        _check_poolable(name, original, leaves)
    plans[name] = result = WrapPlan(name, original, kind, leaves)
    return result


def _check_poolable(name: str, original: str, leaves: list[Leaf]) -> None:
    """A group or tag pools multiple-choice subtasks only: the rule the listing applies too
    (:func:`~lm_eval_calib.harness.wrap_rules.pooled_refusal`)."""
    for leaf in leaves:
        problem = pooled_refusal(leaf.config)
        if problem is not None:
            raise WrapRefusal(refusal_message(name, original, leaf.name, problem))


def build(task_manager: Any, name: str) -> Task:
    """The task for ``calib_<x>``: the wrapper of one task, or the pooled task of a group or tag."""
    the_plan = plan(task_manager, name)
    if the_plan.kind == "task":
        return the_plan.leaves[0].build()
    subtasks = []
    for leaf in the_plan.leaves:
        subtask = leaf.build()
        subtask.record_category = leaf.name
        subtasks.append(subtask)
    return PooledCalibrationTask(the_plan, subtasks)


# -- the name patches' entry points (plugged in by lm_eval_calib.registration) -------------------------------
def load(task_manager: Any, spec: str) -> Task:
    """``TaskManager._load_spec`` for a ``calib_<x>`` name lm-eval does not index."""
    return build(task_manager, spec)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def match(task_manager: Any, patterns: list[str], matched: list[str]) -> list[str]:
    """``TaskManager.match_tasks``: lm-eval's matches, plus ``calib_<x>`` for each ``calib_`` pattern that
    matched nothing lm-eval indexes. An exact name is planned here, so what cannot be wrapped is refused
    before the model loads; a glob adds the wrappable names it matches. An unknown name gets a hint (lm-eval
    then reports it as not found)."""
    extra: list[str] = []
    for pattern in patterns:
        if not (isinstance(pattern, str) and pattern.startswith(PREFIX) and len(pattern) > len(PREFIX)):
            continue
        if fnmatch.filter(task_manager.all_tasks, pattern):
            continue  # lm-eval's own (ours included) win
        inner = pattern[len(PREFIX) :]
        if not _is_glob(inner):
            if inner in task_manager.task_index:
                plan(task_manager, pattern)
                extra.append(pattern)
            else:
                logger.warning(unknown_name_hint(task_manager, pattern))
            continue
        names = [
            PREFIX + n
            for n in fnmatch.filter(task_manager.all_tasks, inner)
            if static_refusal(task_manager, n) is None
        ]
        if not names:
            logger.warning(
                "lm-eval-calib: %r matches no task that can be wrapped (`lm-eval-calib tasks --wrappable` "
                "lists them)",
                pattern,
            )
        extra += names
    return sorted(set(matched) | set(extra))
