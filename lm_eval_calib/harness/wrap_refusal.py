"""Why ``calib_<x>`` cannot be built: the refusal types and their one message format.

Shared by the rules (:mod:`lm_eval_calib.harness.wrap_rules`, from configs), the task classes
(:mod:`lm_eval_calib.harness.wrapped_task`, what only the data show) and the planner
(:mod:`lm_eval_calib.harness.wrap`), so that every refusal reads the same way: what cannot be wrapped, why,
and what to run instead. No lm-eval import.
"""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_calib.lm_eval_patches import WRAP_PREFIX

PREFIX = WRAP_PREFIX
WRAPS_KEY = "calib_wraps"
"""Task metadata key: the lm-eval task, group or tag a wrapper wraps (in the results' ``configs``)."""
SUBTASKS_KEY = "calib_subtasks"
"""Metadata key of a pooled task: ``{subtask: [start, stop]}``, its subtasks in document order with the
range of pooled document indices (``--samples``) each holds."""

SINGLE_GOLD_ALTERNATIVE = (
    "wrap a variant of the task with one correct answer per document{hint}, or give the task a YAML of "
    "your own with lm-eval's default multiple-choice scoring (no process_results; doc_to_target = the index "
    "of the one correct option) and pass it with --include_path"
)


class WrapRefusal(ValueError):
    """``calib_<x>`` cannot be built: the message names the reason and what to run instead."""


class UnknownWrappedTaskError(KeyError):
    """``calib_<x>`` where lm-eval knows no ``<x>``."""

    def __str__(self) -> str:  # KeyError would print the repr of its message
        return str(self.args[0]) if self.args else ""


@dataclass
class Unwrappable(Exception):
    """Why one config cannot be wrapped, and the alternative (completed into a :class:`WrapRefusal`)."""

    reason: str
    alternative: str


def refusal_message(calib_name: str, original: str, subtask: str | None, problem: Unwrappable) -> str:
    """``calib_<x>: cannot wrap '<x>' (its subtask ...): <reason>. Instead: <alternative>.``"""
    where = f" (its subtask {subtask!r})" if subtask and subtask != original else ""
    return f"{calib_name}: cannot wrap {original!r}{where}: {problem.reason}. Instead: {problem.alternative}."
