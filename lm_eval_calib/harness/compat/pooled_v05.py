"""lm-eval 0.5's base for the pooled task (``calib_<group or tag>``): scorers, scoring loop, aggregation.

On 0.5 a task filters, scores and aggregates through its scorers (``Task._scorers``, one per filter
pipeline): ``process_instances`` applies each scorer's filter and stores each document's scores on the scorer,
``aggregate`` reads them back, and sample logging reads ``scorers`` and their ``reduced_docs``. The pooled
task has the first subtask's scorers (every subtask has the same filter names; the pooled task checks that),
applies each subtask's own filters to its own instances, scores each document with its own subtask
(:class:`~lm_eval_calib.harness.compat.tasks_v05.TaskBase`'s loop: the subtask's ``process_results`` and
scorer) and aggregates as our tasks do (our ``aggregation()`` first, 0.4.13's stderrs).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from lm_eval.api._utils import group_by_doc_id
from lm_eval.api.task import Task

from lm_eval_calib.harness.compat.tasks_v05 import TaskBase

RELIES_ON: tuple[str, ...] = (
    "lm_eval.api.task.Task",  # the abstract task: build_all_requests, doc_iterator, eval_docs, ...
    "lm_eval.api.task.Task.process_instances",  # called by evaluate after the model ran
    "lm_eval.api.task.Task.scorers",  # read by sample logging (with Scorer.reduced_docs)
    "lm_eval.api.task.Task.set_num_fewshot",  # called by evaluate for --num_fewshot
    "lm_eval.api.task.Task.eval_docs",
    "lm_eval.api._utils.group_by_doc_id",
    "lm_eval.scorers.Scorer.apply_filter",
    "lm_eval.scorers.Scorer.set_results",
)
"""Upstream internals this adapter relies on (besides those of :mod:`.tasks_v05` and the attributes
``Task._scorers``, ``Task._instances``, ``Task._config``, ``Scorer.name``)."""


class PooledTaskBase(Task):
    """0.5's ``Task`` for a pooled task; ``subtasks`` and ``subtask(doc)`` come from the subclass."""

    subtasks: list[Any]

    def subtask(self, doc: dict) -> Any:
        raise NotImplementedError

    @staticmethod
    def subtask_docs(sub: Any) -> Any:
        """A subtask's evaluation documents (iterated once, in order, to pool them)."""
        return sub.eval_docs

    def pool_own_metrics(self) -> None:
        """The pooled task's scorers: copies of the first subtask's (their metrics aggregate the pool)."""
        self._scorers = [dataclasses.replace(scorer) for scorer in self.subtasks[0]._scorers]

    def after_override_metric(self) -> None:
        """After the subtasks' ``override_metric`` (0.5 rebuilds their scorers): the pooled scorers again."""
        self.pool_own_metrics()

    def process_instances(self) -> None:
        if not self._instances:
            return
        by_subtask: dict[int, list] = defaultdict(list)
        for instance in self._instances:
            by_subtask[id(self.subtask(instance.doc))].append(instance)
        for sub in self.subtasks:
            for scorer in sub._scorers if by_subtask.get(id(sub)) else ():
                scorer.apply_filter(by_subtask[id(sub)])
        instances = group_by_doc_id(self._instances)
        for scorer in self._scorers:
            scored: dict[int, Any] = {}
            for doc_id, doc_instances in instances.items():
                sub = self.subtask(doc_instances[0].doc)
                scored |= sub._try_process_results({doc_id: doc_instances}, scorer.name)
            scorer.set_results(scored)

    def aggregate(self, bootstrap_iters: int | None = 100000) -> tuple[dict[str, Any], int]:
        return TaskBase.aggregate(self, bootstrap_iters)  # type: ignore[arg-type]

    def set_num_fewshot(self, num_fewshot: int) -> None:
        super().set_num_fewshot(num_fewshot)
        for sub in self.subtasks:
            sub.set_num_fewshot(num_fewshot)  # a subtask configured with 0 shots keeps 0 (0.5's rule)
