"""lm-eval 0.4.13's base for the pooled task (``calib_<group or tag>``): 0.4.13's ``Task`` run by hand.

:class:`~lm_eval_calib.harness.wrapped_task.PooledCalibrationTask` is one task over the documents of several
wrapped subtasks. On 0.4.13 lm-eval filters a task's instances with its ``_filters`` (``apply_filters``) and
reads ``_metric_fn_list`` when it logs samples; here each subtask's filters run on its own instances.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from lm_eval.api.task import Task

RELIES_ON: tuple[str, ...] = (
    "lm_eval.api.task.Task",  # the abstract task: build_all_requests, doc_iterator, set_fewshot_seed, ...
    "lm_eval.api.task.Task.apply_filters",  # called by evaluate after the model ran
    "lm_eval.api.task.Task.build_all_requests",
)
"""Upstream internals this adapter relies on (besides the attributes ``Task._instances``,
``ConfigurableTask._filters``, ``_metric_fn_list``, ``task_docs``)."""


class PooledTaskBase(Task):
    """0.4.13's ``Task`` for a pooled task; ``subtasks`` and ``subtask(doc)`` come from the subclass."""

    subtasks: list[Any]

    def subtask(self, doc: dict) -> Any:
        raise NotImplementedError

    @staticmethod
    def subtask_docs(sub: Any) -> Any:
        """A subtask's evaluation documents (iterated once, in order, to pool them)."""
        return sub.task_docs

    def pool_own_metrics(self) -> None:
        """The subtasks' own metric functions, read by lm-eval when it logs samples."""
        self._metric_fn_list = {key: fn for sub in self.subtasks for key, fn in sub._metric_fn_list.items()}

    def after_override_metric(self) -> None:
        """After the subtasks' ``override_metric``: nothing (0.4.13 keeps the metrics as built)."""

    def apply_filters(self) -> None:
        by_subtask: dict[int, list] = defaultdict(list)
        for instance in self._instances:
            by_subtask[id(self.subtask(instance.doc))].append(instance)
        for sub in self.subtasks:
            for ensemble in sub._filters if by_subtask.get(id(sub)) else ():
                ensemble.apply(by_subtask[id(sub)])
