"""Which configs ``calib_<x>`` can wrap, and with which class: ONE rule for building and for listing.

:func:`config_refusal` says why one task config cannot be wrapped (one of our own tasks, an output type
without options, its own ``process_results``); :func:`pooled_refusal` why it cannot join a pooled group or
tag. The build path (:func:`lm_eval_calib.harness.wrap.plan`) applies them to the configs lm-eval's factory
resolved, then :func:`leaf_class` composes the class; the listing and globs (:func:`static_refusal`,
:func:`wrappable`) apply the same two rules to lm-eval's index, its unresolved configs, with no YAML function
imported and no data read. Only the check of a Python ``class`` needs the imported class, so only the build
path makes it.
"""

from __future__ import annotations

import fnmatch
import importlib
from pathlib import Path
from typing import Any

from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._index import Kind

from lm_eval_calib.harness.base import CalibrationTaskBase
from lm_eval_calib.harness.wrap_refusal import PREFIX, SINGLE_GOLD_ALTERNATIVE, Unwrappable
from lm_eval_calib.harness.wrapped_task import WrappedMultipleChoiceTask
from lm_eval_calib.task_folder import task_dir

GENERATION_MODULE = "lm_eval_calib.harness.generation"
GENERATION_CLASS = "GenerationCalibrationTask"

KIND_NAMES = {Kind.GROUP: "group", Kind.TAG: "tag"}
"""lm-eval's index kind -> the kind of a wrapper (anything else is a ``task``)."""
_STATIC_ATTRIBUTE = "_lm_eval_calib_static"

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


# -- which class wraps which output type ---------------------------------------------------------------------
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
            raise Unwrappable(
                "its output_type is generate_until (free-form generation), and generate_until is not "
                "supported yet (calibration needs per-option log-likelihoods)",
                "a multiple-choice variant of the task, if lm-eval has one (`lm-eval-calib tasks "
                "--wrappable` lists every task that can be wrapped)",
            )
        return cls
    if output_type == "loglikelihood_rolling":
        raise Unwrappable(
            "its output_type is loglikelihood_rolling (the perplexity of whole documents): there are no "
            "options to be confident about",
            "for next-token calibration on text run calib_clm with --model hf-calib",
        )
    if output_type == "loglikelihood":
        raise Unwrappable(
            "its output_type is loglikelihood (one continuation per document): there are no options to "
            "compare",
            "for the calibration of the model's own next-token guess run calib_facts_open or calib_clm with "
            "--model hf-calib",
        )
    raise Unwrappable(f"its output_type {output_type!r} is not one lm-eval-calib can score", "none")


# -- the rule, for a resolved config and for lm-eval's index alike -------------------------------------------
def output_type_of(cfg: dict) -> str:
    """A config's output type: its own, else its Python class's (resolved configs), else lm-eval's default."""
    return cfg.get("output_type") or getattr(cfg.get("class"), "OUTPUT_TYPE", None) or "generate_until"


def _is_our_yaml(path: Any) -> bool:
    if not path or path == "inline":
        return False
    try:
        return Path(path).resolve().is_relative_to(task_dir().resolve())
    except OSError:
        return False


def _is_ours(cfg: dict, yaml_path: Any) -> bool:
    """Whether a config is one of this package's own calibration tasks: from its YAML file (the index), its
    resolved class, or the ``config_source`` lm-eval records in its metadata (a resolved config)."""
    cls = cfg.get("class")
    if isinstance(cls, type) and issubclass(cls, CalibrationTaskBase):
        return True
    metadata = cfg.get("metadata")
    source = metadata.get("config_source") if isinstance(metadata, dict) else None
    return _is_our_yaml(yaml_path) or _is_our_yaml(source)


def _mc1_hint(name: str, known: Any) -> str:
    sibling = name.replace("mc2", "mc1")
    return f" (here: {PREFIX}{sibling})" if sibling != name and sibling in known else ""


def config_refusal(cfg: dict, yaml_path: Any = None, known: Any = ()) -> Unwrappable | None:
    """Why one task config cannot be wrapped, or None. ``cfg``: resolved (the build path) or as lm-eval
    indexes it (functions unresolved: the listing); ``yaml_path``: its file, where known; ``known``: the names
    lm-eval knows, for suggestions."""
    name = str(cfg.get("task"))
    if _is_ours(cfg, yaml_path):
        return Unwrappable("it is already one of lm-eval-calib's calibration tasks", f"run {name} itself")
    output_type = output_type_of(cfg)
    try:
        task_class_for(output_type)
    except Unwrappable as problem:
        return problem
    if output_type == "multiple_choice" and cfg.get("process_results") is not None:
        scorer = cfg["process_results"]
        scorer = getattr(scorer, "__qualname__", None) or str(scorer).rsplit("/", 1)[-1]
        return Unwrappable(
            f"it scores documents with its own process_results ({scorer}), as tasks with several correct "
            "answers do (truthfulqa_mc2 adds up the probability of every true answer), so it has no single "
            "gold option; calibration needs exactly one correct option per document",
            SINGLE_GOLD_ALTERNATIVE.format(hint=_mc1_hint(name, known)),
        )
    return None


def pooled_refusal(cfg: dict) -> Unwrappable | None:
    """Why a (wrappable) task config cannot be a subtask of a pooled group or tag, or None."""
    if output_type_of(cfg) == "multiple_choice":
        return None
    return Unwrappable(
        "one pooled calibration result is built over multiple-choice subtasks only, and this one is not "
        "multiple_choice",
        f"wrap its subtasks one by one ({PREFIX}{cfg.get('task')}, ...)",
    )


def leaf_class(cfg: dict, known: Any = ()) -> type:
    """The class that wraps one resolved task config (``class`` is a class, functions are callables), or
    :class:`~lm_eval_calib.harness.wrap_refusal.Unwrappable` (:func:`config_refusal`, then the one check that
    needs the imported class). ``known``: names lm-eval knows, for suggestions."""
    problem = config_refusal(cfg, known=known)
    if problem is not None:
        raise problem
    base = task_class_for(output_type_of(cfg))
    original_cls = cfg.get("class")
    if original_cls is None:
        return base
    if not (isinstance(original_cls, type) and issubclass(original_cls, ConfigurableTask)):
        raise Unwrappable(
            f"its Python class {original_cls!r} is not an lm-eval ConfigurableTask",
            "a YAML task with the same prompt and choices",
        )
    return type(f"Calib{original_cls.__name__}", (base, original_cls), {"__module__": __name__})


# -- from the index alone (listing, globs): no YAML functions imported, no data ------------------------------
def static_refusal(task_manager: Any, name: str, _memo: dict | None = None) -> Unwrappable | None:
    """Why ``calib_<name>`` would be refused, judged from lm-eval's index (unresolved configs), or None."""
    memo = task_manager.__dict__.setdefault(_STATIC_ATTRIBUTE, {}) if _memo is None else _memo
    if name in memo:
        return memo[name]
    memo[name] = None  # a group that (indirectly) contains itself is not refused for that
    entry = task_manager.task_index.get(name)
    if entry is None:
        result = Unwrappable(f"lm-eval knows no {name!r}", "none")
    elif entry.kind == Kind.TAG:
        result = _first(_member_refusal(task_manager, n, memo) for n in sorted(entry.tags))
    elif entry.kind == Kind.GROUP:
        result = _group_refusal(task_manager, (entry.cfg or {}).get("task"), memo)
    else:
        result = config_refusal(entry.cfg or {}, entry.yaml_path, task_manager.task_index)
    memo[name] = result
    return result


def _first(items) -> Unwrappable | None:
    return next((item for item in items if item is not None), None)


def _member_refusal(task_manager: Any, name: str, memo: dict) -> Unwrappable | None:
    """An indexed member of a group or tag: its own refusal, else whether a pooled task can take it."""
    problem = static_refusal(task_manager, name, memo)
    entry = task_manager.task_index.get(name)
    if problem is not None or entry is None or entry.kind in (Kind.GROUP, Kind.TAG):
        return problem
    return pooled_refusal(entry.cfg or {})


def _group_refusal(task_manager: Any, members: Any, memo: dict) -> Unwrappable | None:
    for member in members if isinstance(members, list) else [members]:
        if isinstance(member, str):
            problem = _member_refusal(task_manager, member, memo)
        elif (
            isinstance(member, dict) and "group" in member and member["group"] not in task_manager.task_index
        ):
            problem = _group_refusal(task_manager, member.get("task"), memo)
        elif isinstance(member, dict) and isinstance(member.get("task") or member.get("group"), str):
            ref = member.get("task") or member.get("group")
            if ref in task_manager.task_index:
                problem = _member_refusal(task_manager, ref, memo)
            else:  # an inline task defined in the group itself
                problem = config_refusal(member, None, task_manager.task_index)
        else:
            problem = None
        if problem is not None:
            return problem
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
        kind = KIND_NAMES.get(entry.kind, "task")
        output_type = "multiple_choice" if kind != "task" else output_type_of(entry.cfg or {})
        rows.append((wrapped, kind, output_type))
    return rows
