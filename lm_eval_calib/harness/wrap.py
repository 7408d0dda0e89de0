"""``calib_<task>``: calibration for any lm-eval multiple-choice task, built on the fly from its config.

``lm_eval --tasks calib_arc_challenge`` runs lm-eval's own ``arc_challenge`` (its prompt, choices, few-shot
sampling, filters, ``process_docs`` and metrics, all lm-eval's code) and adds every calibration metric, from
the same per-option log-likelihoods. How a name resolves (patched into ``TaskManager`` by the "calib_<task>
wrappers" patch of :mod:`lm_eval_calib.lm_eval_patches`, which :mod:`lm_eval_calib.registration` points at
:func:`load` and :func:`match`; everything else lives here):

- a name lm-eval indexes wins, so this package's own tasks (``calib_mmlu``, ``calib_mmlu_<subject>``, ...)
  keep their names and behaviour; only a ``calib_<x>`` that lm-eval does not know is wrapped;
- ``<x>`` is one task (built-in, from ``--include_path``): :class:`WrappedMultipleChoiceTask` is the original
  ``ConfigurableTask`` (same config; for a Python task class, a subclass of that class) whose
  ``process_results`` returns the original's metrics unchanged plus the calibration record(s);
- ``<x>`` is a group or tag: :class:`PooledCalibrationTask` is ONE task over the documents of all its
  subtasks (in lm-eval's order), each document handled by its own subtask's wrapper, records carrying the
  subtask as ``category``; ``acc`` and the other original metrics are pooled over documents.

Where the original reports ``acc_norm``, the calibration of that prediction rule is added under
``<key>_norm`` (``ece_norm``, ...): confidence = softmax over ``ll_i / len(choice_i)``
(:func:`lm_eval_calib.records.length_normalised`), its record logged under ``ece_norm``.

Configs come from lm-eval's own machinery: a :class:`lm_eval.tasks._factory.TaskFactory` whose only change is
that it returns each leaf config instead of constructing the task, so group expansion, overrides and the run's
metadata are lm-eval's. Tasks that cannot be wrapped are refused with :class:`WrapRefusal` before the model
loads (from the configs) or, for what only the data show (several gold answers), when the task is built.
See docs/wrapped_tasks.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
import numbers
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.group import Group
from lm_eval.api.metrics import mean
from lm_eval.api.task import ConfigurableTask, Task
from lm_eval.config.task import TaskConfig
from lm_eval.tasks._factory import TaskFactory
from lm_eval.tasks._index import Kind

from lm_eval_calib.data.root import hub_snapshot, snapshot_cache_dir
from lm_eval_calib.harness.base import (
    CALIBRATION_KEYS,
    CalibrationTaskBase,
    ResultMetric,
    build_record_aggregations,
    result_table,
)
from lm_eval_calib.harness.results import option_logliks
from lm_eval_calib.lm_eval_patches import WRAP_PREFIX
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.records import NORM_SUFFIX, RECORD_LOG_KEY, length_normalised, make_record
from lm_eval_calib.task_folder import task_dir

logger = logging.getLogger("lm_eval_calib")

PREFIX = WRAP_PREFIX
WRAPS_KEY = "calib_wraps"
"""Task metadata key: the lm-eval task, group or tag a wrapper wraps (in the results' ``configs``)."""
SUBTASKS_KEY = "calib_subtasks"
"""Metadata key of a pooled task: ``{subtask: [start, stop]}``, its subtasks in document order with the
range of pooled document indices (``--samples``) each holds."""
GENERATION_MODULE = "lm_eval_calib.harness.generation"
GENERATION_CLASS = "GenerationCalibrationTask"

_SINGLE_GOLD_ALTERNATIVE = (
    "wrap a variant of the task with one correct answer per document{hint}, or give the task a YAML of "
    "your own with lm-eval's default multiple-choice scoring (no process_results; doc_to_target = the index "
    "of the one correct option) and pass it with --include_path"
)


NAMING = """\
Task names. lm-eval-calib's own tasks (lm-eval-calib tasks lists them) keep their names. Any other
calib_<x> wraps the task, group or tag <x> that lm-eval knows (built-in, or from --include_path): the
original's prompt, choices, few-shot examples, filters, process_docs and metrics, plus every calibration
metric from the same log-likelihoods (ece, brier, ... and, where <x> reports acc_norm, ece_norm,
brier_norm, ... for that rule). A group or tag becomes ONE task pooled over its subtasks' documents. Where
one of our own tasks is named calib_<x> it wins (calib_mmlu_anatomy is ours, and equals wrapping lm-eval's
mmlu_anatomy). Multiple-choice tasks with one correct answer per document can be wrapped (and
generate_until tasks where generation calibration is available); `lm-eval-calib tasks --wrappable
[PATTERN]` lists every name this installation can build, with its output type. Details:
docs/wrapped_tasks.md."""


class WrapRefusal(ValueError):
    """``calib_<x>`` cannot be built: the message names the reason and what to run instead."""


class UnknownWrappedTaskError(KeyError):
    """``calib_<x>`` where lm-eval knows no ``<x>``."""

    def __str__(self) -> str:  # KeyError would print the repr of its message
        return str(self.args[0]) if self.args else ""


@dataclass
class _Unwrappable(Exception):
    """Why one config cannot be wrapped, and the alternative (completed into a :class:`WrapRefusal`)."""

    reason: str
    alternative: str


def refusal_message(calib_name: str, original: str, subtask: str | None, problem: _Unwrappable) -> str:
    where = f" (its subtask {subtask!r})" if subtask and subtask != original else ""
    return f"{calib_name}: cannot wrap {original!r}{where}: {problem.reason}. Instead: {problem.alternative}."


# -- which class wraps which config --------------------------------------------------------------------------
def task_class_for(output_type: str) -> type:
    """The calibration class for an original task's ``output_type``; the one place that dispatches on it.

    ``generate_until`` is served by :data:`GENERATION_MODULE`'s :data:`GENERATION_CLASS` when that exists
    (imported only here, only then).
    """
    if output_type == "multiple_choice":
        return WrappedMultipleChoiceTask
    if output_type == "generate_until":
        try:
            module = importlib.import_module(GENERATION_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != GENERATION_MODULE:
                raise
            module = None
        cls = getattr(module, GENERATION_CLASS, None)
        if cls is None:
            raise _Unwrappable(
                "its output_type is generate_until (free-form generation), and generate_until is not "
                "supported yet (calibration needs per-option log-likelihoods)",
                "a multiple-choice variant of the task, if lm-eval has one (`lm-eval-calib tasks "
                "--wrappable` lists every task that can be wrapped)",
            )
        return cls
    if output_type == "loglikelihood_rolling":
        raise _Unwrappable(
            "its output_type is loglikelihood_rolling (the perplexity of whole documents): there are no "
            "options to be confident about",
            "for next-token calibration on text run calib_clm with --model hf-calib",
        )
    if output_type == "loglikelihood":
        raise _Unwrappable(
            "its output_type is loglikelihood (one continuation per document): there are no options to "
            "compare",
            "for the calibration of the model's own next-token guess run calib_facts_open or calib_clm with "
            "--model hf-calib",
        )
    raise _Unwrappable(f"its output_type {output_type!r} is not one lm-eval-calib can score", "none")


def _config_is_ours(cfg: dict) -> bool:
    """Whether a leaf config is one of this package's own calibration tasks."""
    cls = cfg.get("class")
    if isinstance(cls, type) and issubclass(cls, CalibrationTaskBase):
        return True
    metadata = cfg.get("metadata")
    return _is_our_yaml(metadata.get("config_source") if isinstance(metadata, dict) else None)


def _is_our_yaml(path: Any) -> bool:
    if not path or path == "inline":
        return False
    try:
        return Path(path).resolve().is_relative_to(task_dir().resolve())
    except OSError:
        return False


def _mc1_hint(name: str, known: Any) -> str:
    sibling = name.replace("mc2", "mc1")
    return f" (here: {PREFIX}{sibling})" if sibling != name and sibling in known else ""


def leaf_class(cfg: dict, known: Any = ()) -> type:
    """The class that wraps one task config (a resolved config: ``class`` is a class, functions are
    callables), or :class:`_Unwrappable`. ``known``: names lm-eval knows, for suggestions."""
    name = str(cfg.get("task"))
    if _config_is_ours(cfg):
        raise _Unwrappable("it is already one of lm-eval-calib's calibration tasks", f"run {name} itself")
    original_cls = cfg.get("class")
    output_type = cfg.get("output_type") or getattr(original_cls, "OUTPUT_TYPE", None) or "generate_until"
    base = task_class_for(output_type)
    if output_type == "multiple_choice" and cfg.get("process_results") is not None:
        scorer = cfg["process_results"]
        scorer = getattr(scorer, "__qualname__", None) or str(scorer).rsplit("/", 1)[-1]
        raise _Unwrappable(
            f"it scores documents with its own process_results ({scorer}), as tasks with several correct "
            "answers do (truthfulqa_mc2 adds up the probability of every true answer), so it has no single "
            "gold option; calibration needs exactly one correct option per document",
            _SINGLE_GOLD_ALTERNATIVE.format(hint=_mc1_hint(name, known)),
        )
    if original_cls is None:
        return base
    if not (isinstance(original_cls, type) and issubclass(original_cls, ConfigurableTask)):
        raise _Unwrappable(
            f"its Python class {original_cls!r} is not an lm-eval ConfigurableTask",
            "a YAML task with the same prompt and choices",
        )
    return type(f"Calib{original_cls.__name__}", (base, original_cls), {"__module__": __name__})


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


_KIND = {Kind.GROUP: "group", Kind.TAG: "tag"}
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
    kind = _KIND.get(entry.kind, "task")
    factory = _ConfigFactory(meta=getattr(task_manager, "metadata", None))
    built = factory.build(entry, overrides=None, registry=dict(task_manager.task_index))
    leaves, problems = [], []
    for leaf_name, cfg in _leaf_configs(built):
        try:
            cls = leaf_class(cfg, task_manager.task_index)
        except _Unwrappable as problem:
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
        raise WrapRefusal(refusal_message(name, original, None, _Unwrappable("it has no tasks", "none")))
    if kind != "task":
        _check_poolable(name, original, leaves)
    plans[name] = result = WrapPlan(name, original, kind, leaves)
    return result


def _check_poolable(name: str, original: str, leaves: list[Leaf]) -> None:
    other = [leaf.name for leaf in leaves if not issubclass(leaf.cls, WrappedMultipleChoiceTask)]
    if other:
        raise WrapRefusal(
            refusal_message(
                name,
                original,
                other[0],
                _Unwrappable(
                    "one pooled calibration result is built over multiple-choice subtasks only, and this one "
                    "is not multiple_choice",
                    f"wrap its subtasks one by one ({PREFIX}{other[0]}, ...)",
                ),
            )
        )


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


# -- from the index alone (listing, globs): no YAML functions imported, no data ------------------------------
def static_refusal(task_manager: Any, name: str, _memo: dict | None = None) -> _Unwrappable | None:
    """Why ``calib_<name>`` would be refused, judged from lm-eval's index (unresolved configs), or None."""
    memo = task_manager.__dict__.setdefault("_lm_eval_calib_static", {}) if _memo is None else _memo
    if name in memo:
        return memo[name]
    memo[name] = None  # a group that (indirectly) contains itself is not refused for that
    entry = task_manager.task_index.get(name)
    if entry is None:
        result = _Unwrappable(f"lm-eval knows no {name!r}", "none")
    elif entry.kind == Kind.TAG:
        result = _first(static_refusal(task_manager, n, memo) for n in sorted(entry.tags))
        result = result or _first(_pooled_type(task_manager, n) for n in sorted(entry.tags))
    elif entry.kind == Kind.GROUP:
        result = _group_refusal(task_manager, (entry.cfg or {}).get("task"), memo)
    else:
        result = _static_leaf(entry)
    memo[name] = result
    return result


def _first(items) -> _Unwrappable | None:
    return next((item for item in items if item is not None), None)


def _static_output_type(cfg: dict) -> str:
    return cfg.get("output_type") or "generate_until"


def _pooled_type(task_manager: Any, name: str) -> _Unwrappable | None:
    entry = task_manager.task_index.get(name)
    if entry is None or entry.kind in (Kind.GROUP, Kind.TAG):
        return None
    if _static_output_type(entry.cfg or {}) != "multiple_choice":
        return _Unwrappable(
            "a pooled task takes multiple-choice subtasks only", "wrap its subtasks one by one"
        )
    return None


def _group_refusal(task_manager: Any, members: Any, memo: dict) -> _Unwrappable | None:
    for member in members if isinstance(members, list) else [members]:
        if isinstance(member, str):
            problem = static_refusal(task_manager, member, memo) or _pooled_type(task_manager, member)
        elif (
            isinstance(member, dict) and "group" in member and member["group"] not in task_manager.task_index
        ):
            problem = _group_refusal(task_manager, member.get("task"), memo)
        elif isinstance(member, dict) and isinstance(member.get("task") or member.get("group"), str):
            ref = member.get("task") or member.get("group")
            if ref in task_manager.task_index:
                problem = static_refusal(task_manager, ref, memo) or _pooled_type(task_manager, ref)
            else:  # an inline task defined in the group itself
                problem = _static_leaf_cfg(member, None)
        else:
            problem = None
        if problem is not None:
            return problem
    return None


def _static_leaf(entry: Any) -> _Unwrappable | None:
    return _static_leaf_cfg(entry.cfg or {}, entry.yaml_path)


def _static_leaf_cfg(cfg: dict, yaml_path: Any) -> _Unwrappable | None:
    if _is_our_yaml(yaml_path):
        return _Unwrappable("it is already one of lm-eval-calib's calibration tasks", "run it itself")
    output_type = _static_output_type(cfg)
    try:
        task_class_for(output_type)
    except _Unwrappable as problem:
        return problem
    if output_type == "multiple_choice" and cfg.get("process_results") is not None:
        return _Unwrappable("it scores documents with its own process_results", "a single-answer variant")
    return None


def wrappable(task_manager: Any, pattern: str | None = None) -> list[tuple[str, str, str]]:
    """``(calib_<name>, kind, output type)`` of every name lm-eval indexes that can be wrapped and is not
    already indexed under its ``calib_`` name, optionally those whose name (with or without ``calib_``)
    matches the glob ``pattern``."""
    rows = []
    known = set(task_manager.all_tasks)
    for name in task_manager.all_tasks:
        wrapped = PREFIX + name
        if wrapped in known or (
            pattern and not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(wrapped, pattern))
        ):
            continue
        if static_refusal(task_manager, name) is not None:
            continue
        entry = task_manager.task_index[name]
        kind = _KIND.get(entry.kind, "task")
        output_type = "multiple_choice" if kind != "task" else _static_output_type(entry.cfg or {})
        rows.append((wrapped, kind, output_type))
    return rows


# -- one task ------------------------------------------------------------------------------------------------
class WrappedMultipleChoiceTask(CalibrationTaskBase):
    """An lm-eval multiple-choice task, unchanged, plus the calibration of its predictions.

    ``process_results`` returns the original's own metrics (lm-eval's code, same values) and adds, from the
    same log-likelihoods: the option record of the argmax rule (``ece``, ``brier``, ...; ``acc`` too when the
    original does not report it) and, where the original reports ``acc_norm``, the record of that rule
    (``ece_norm``, ``brier_norm``, ...; confidence from ``ll_i / len(choice_i)``).
    """

    output_types = ("multiple_choice",)
    keeps_own_metrics = True
    record_category: Any = None
    """The ``category`` of this task's records (a pooled task sets its subtask's name)."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        if self.multiple_target > 1:
            raise self._refusal(
                f"its documents have several correct answers (doc_to_target gave "
                f"{self.doc_to_target(self.task_docs[0])!r} for the first one); calibration needs exactly "
                "one correct option per document"
            )
        clash = sorted(set(self._metric_fn_list) & set(self.result_metrics))
        if clash:
            raise ValueError(
                f"{self.config.task}: the task's own metric(s) {clash} have the names of calibration "
                "metrics; rename them in its metric_list to wrap it"
            )

    def calibration_table(self) -> dict[str, ResultMetric]:
        # Decided once, from the original's metric list as configured (lm-eval's override_metric, e.g. for
        # --predict_only, later replaces that list): does it report acc itself, does it report acc_norm?
        own = set(self._metric_fn_list)
        self._adds_acc = "acc" not in own
        self._norm = "acc_norm" in own
        norm = result_table(CALIBRATION_KEYS, NORM_SUFFIX) if self._norm else {}
        return result_table(CALIBRATION_KEYS) | norm

    def plain_aggregations(self) -> dict:
        return ({"acc": (mean, True)} if self._adds_acc else {}) | super().plain_aggregations()

    def _refusal(self, reason: str) -> WrapRefusal:
        name = self.config.task
        original = (self.config.metadata or {}).get(WRAPS_KEY, name)
        subtask = None if name == PREFIX + original else name  # a pooled task's subtask keeps its name
        return WrapRefusal(
            refusal_message(
                PREFIX + original,
                original,
                subtask,
                _Unwrappable(reason, _SINGLE_GOLD_ALTERNATIVE.format(hint="")),
            )
        )

    def check_target(self, doc: dict) -> None:
        """Refuse, naming the document, a target that lm-eval's multiple-choice scoring cannot score.

        lm-eval decides from the FIRST document whether a task has list targets; a later document with a
        gold list ``[0, 1]`` then crashes its ``process_results`` after inference ("The truth value of an
        array ... is ambiguous"), and a later single target in a task whose first target is a list crashes it
        too. Called for every document when its requests are built (before any model call) and again before
        scoring (requests read from lm-eval's cache are not built).
        """
        gold = self.doc_to_text(doc) if self.multiple_input else self.doc_to_target(doc)
        if isinstance(gold, list) and len(gold) != 1:
            reason = (
                f"has {'several correct answers' if gold else 'no correct answer'} (doc_to_target gave "
                f"{gold!r}); calibration needs exactly one correct option per document"
            )
        elif self.multiple_target and not isinstance(gold, list):
            reason = (
                f"has a single target (doc_to_target gave {gold!r}) where the first document's is a list, "
                "and lm-eval scores every document of a task the way it scores the first"
            )
        else:
            return
        index = next((i for i, other in enumerate(self.eval_docs) if other == doc), "?")
        raise self._refusal(f"its document {index} ({str(self.doc_to_text(doc))[:60]!r}) {reason}")

    def category(self, doc: dict) -> Any:
        return self.record_category

    def _gold(self, doc: dict, choices: list) -> int | None:
        """The gold option index, read the way lm-eval's multiple-choice scoring reads it; None when there is
        no single valid one."""
        gold = self.doc_to_text(doc) if self.multiple_input else self.doc_to_target(doc)
        if isinstance(gold, list):
            if len(gold) != 1:
                return None
            gold = gold[0]
        if isinstance(gold, str):
            return choices.index(gold) if gold in choices else None
        if isinstance(gold, numbers.Integral) and not isinstance(gold, bool) and 0 <= gold < len(choices):
            return int(gold)
        return None

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> Any:
        # lm-eval-calib's rule for every multiple-choice task, checked before any inference: with one option
        # the answer is right at confidence 1 whatever the model does
        self.check_options(doc, list(self.doc_to_choice(doc)))
        self.check_target(doc)
        return super().construct_requests(doc, ctx, **kwargs)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        self.check_target(doc)
        values = dict(super().process_results(doc, results))  # the original's metrics, by lm-eval's code
        choices = list(self.doc_to_choice(doc))
        where = repr(str(self.doc_to_text(doc))[:60])
        gold = self._gold(doc, choices)
        if gold is None:  # lm-eval warns and scores it wrong; a calibration record has no target to score
            logger.warning(
                "[%s] document %s has no single valid gold option (doc_to_target gave %r for options %r): "
                "its calibration record is left out (the task's own metrics keep it)",
                self.config.task,
                where,
                self.doc_to_target(doc),
                choices,
            )
            return values
        # lm-eval appends unconditional scores after the options for acc_mutual_info; the options come first
        logliks = option_logliks(list(results)[: len(choices)], len(choices), self.config.task, where)
        record = make_record(logliks, gold, self.category(doc))
        values.update(self.floored_values(record, list(results)[: len(choices)]))
        if self._adds_acc:
            values["acc"] = float(record["correct"])
        values.update(self.record_values(record))
        if self._norm:
            norm = make_record(length_normalised(logliks, choices), gold, self.category(doc))
            values.update(self.record_values(norm, RECORD_LOG_KEY + NORM_SUFFIX))
        return values


# -- a group or tag as one task ------------------------------------------------------------------------------
class PooledCalibrationTask(Task):
    """ONE lm-eval task over the documents of every subtask of a group or tag (subtasks in lm-eval's order).

    Each document keeps its own subtask's prompt, few-shot examples, requests, filters and scoring (its
    :class:`WrappedMultipleChoiceTask`); the records carry the subtask as ``category``; every metric is
    aggregated over all documents (``acc``: the size-weighted mean, as lm-eval's ``mmlu`` group reports it).
    ``--limit N`` takes the first N documents of the pooled list, as for ``calib_mmlu``; ``--samples`` indexes
    it. ``--num_fewshot`` reaches every subtask by lm-eval's rule (a subtask configured with 0 shots keeps 0).
    """

    OUTPUT_TYPE = "multiple_choice"

    def __init__(self, the_plan: WrapPlan, subtasks: list[WrappedMultipleChoiceTask]) -> None:
        # Task.__init__ would download a dataset; the subtasks have theirs.
        self.subtasks = subtasks
        self.plan = the_plan
        self._instances = None
        self._training_docs = None
        self._fewshot_docs = None
        self.fewshot_rnd = None
        filters = {tuple(f.name for f in sub._filters) for sub in subtasks}
        if len(filters) > 1:
            raise WrapRefusal(
                refusal_message(
                    the_plan.name,
                    the_plan.original,
                    None,
                    _Unwrappable(
                        f"its subtasks use different filters {sorted(filters)}", "wrap them one by one"
                    ),
                )
            )
        self._docs: list[dict] = []
        self._owner: dict[int, WrappedMultipleChoiceTask] = {}
        spans: dict[str, list[int]] = {}
        for sub in subtasks:
            start = len(self._docs)
            for doc in sub.task_docs:
                self._docs.append(doc)
                self._owner[id(doc)] = sub
            spans[sub.config.task] = [start, len(self._docs)]
        logger.info(
            "[%s] one task over the %d documents of %d subtasks (--samples indices: %s)", the_plan.name,
            len(self._docs), len(subtasks), ", ".join(f"{n} [{a}, {b})" for n, (a, b) in spans.items()),
        )  # fmt: skip
        shots = [sub.config.num_fewshot for sub in subtasks]
        metadata = {
            key: value
            for key, value in (subtasks[0].config.metadata or {}).items()
            if key not in ("config_source", "version")
        }
        metadata |= {WRAPS_KEY: the_plan.original, SUBTASKS_KEY: spans}
        self._config = TaskConfig(
            task=the_plan.name,
            output_type=self.OUTPUT_TYPE,
            # a shared default when there is one (lm-eval then leaves the subtasks' own defaults alone)
            num_fewshot=next((n for n in shots if n), next((n for n in shots if n is not None), None)),
            metadata=metadata,
        )
        versions = {str(sub.VERSION) for sub in subtasks}
        self.VERSION = versions.pop() if len(versions) == 1 else "mixed"
        self.calibration = CalibrationOptions.from_metadata(metadata)
        self._aggregations, self._higher_is_better = self._pooled_aggregations()
        self._metric_fn_list = {key: fn for sub in subtasks for key, fn in sub._metric_fn_list.items()}
        self.UNSAFE_CODE = any(getattr(sub, "UNSAFE_CODE", False) for sub in subtasks)
        self.MULTIMODAL = any(getattr(sub, "MULTIMODAL", False) for sub in subtasks)

    def _pooled_aggregations(self) -> tuple[dict, dict]:
        """The subtasks' own aggregations (one per key), and the calibration rows of every subtask
        aggregated over all pooled documents (:func:`~lm_eval_calib.harness.base.build_record_aggregations`,
        as one task does)."""
        table: dict[str, ResultMetric] = {}
        for sub in self.subtasks:
            table |= sub.result_metrics
        aggregations: dict = {}
        higher: dict = {}
        for sub in self.subtasks:
            for key, fn in sub.aggregation().items():
                if key in table:
                    continue
                if key in aggregations and aggregations[key] is not fn:
                    logger.warning(
                        "[%s] subtasks aggregate %r differently; pooling with %s's", self.plan.name, key,
                        self.subtasks[0].config.task,
                    )  # fmt: skip
                aggregations.setdefault(key, fn)
            for key, value in sub.higher_is_better().items():
                higher.setdefault(key, value)
        aggregations |= build_record_aggregations(table, self.calibration, lambda row: self.plan.name)
        return aggregations, higher

    # what lm-eval asks of a task --------------------------------------------------------------------------
    def download(self, *args: Any, **kwargs: Any) -> None:
        pass

    def dump_config(self) -> dict:
        config = self.config.to_dict()
        config.pop("fewshot_config", None)  # each subtask has its own (its config is lm-eval's)
        return config

    def has_training_docs(self) -> bool:
        return False

    def has_validation_docs(self) -> bool:
        return False

    def has_test_docs(self) -> bool:
        return True

    def test_docs(self) -> list[dict]:
        return self._docs

    def subtask(self, doc: dict) -> WrappedMultipleChoiceTask:
        return self._owner[id(doc)]

    def doc_to_text(self, doc: dict):
        return self.subtask(doc).doc_to_text(doc)

    def doc_to_target(self, doc: dict):
        return self.subtask(doc).doc_to_target(doc)

    def doc_to_choice(self, doc: dict):
        return self.subtask(doc).doc_to_choice(doc)

    def doc_to_prefix(self, doc: dict):
        return self.subtask(doc).doc_to_prefix(doc)

    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any):
        sub = self.subtask(doc)
        return sub.fewshot_context(doc, num_fewshot=sub.config.num_fewshot or 0, **kwargs)

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any):
        return self.subtask(doc).construct_requests(doc, ctx, **kwargs)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        return self.subtask(doc).process_results(doc, results)

    def build_all_requests(self, **kwargs: Any) -> None:
        # requests are told apart by their document object (cached ones are copies): never from the cache
        super().build_all_requests(**{**kwargs, "cache_requests": False, "rewrite_requests_cache": False})

    def apply_filters(self) -> None:
        by_subtask: dict[int, list] = defaultdict(list)
        for instance in self._instances:
            by_subtask[id(self.subtask(instance.doc))].append(instance)
        for sub in self.subtasks:
            for ensemble in sub._filters if by_subtask.get(id(sub)) else ():
                ensemble.apply(by_subtask[id(sub)])

    def set_fewshot_seed(self, seed: int | None = None) -> None:
        super().set_fewshot_seed(seed)
        for sub in self.subtasks:
            sub.set_fewshot_seed(seed)

    def set_config(self, key: str, value: Any, update: bool = False) -> None:
        super().set_config(key, value, update)
        for sub in self.subtasks:
            if key == "num_fewshot" and sub.get_config("num_fewshot") == 0:
                continue  # lm-eval's rule: a task configured with 0 shots keeps 0
            sub.set_config(key, value, update)

    def override_metric(self, metric_name: str) -> None:
        for sub in self.subtasks:
            sub.override_metric(metric_name)
        self._aggregations, self._higher_is_better = self._pooled_aggregations()

    def aggregation(self) -> dict:
        return self._aggregations

    def higher_is_better(self) -> dict:
        return self._higher_is_better
