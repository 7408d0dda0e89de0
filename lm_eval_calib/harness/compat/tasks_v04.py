"""lm-eval 0.4.13's task base for our task classes: ``ConfigurableTask`` as it is.

0.4.13's ``ConfigurableTask`` already has the contract our classes are written against (see
:mod:`lm_eval_calib.harness.compat`): it builds the requests of every output type, calls ``process_results``
once per document and filter (iterating ``doc_iterator`` in between), and aggregates each key with
``aggregation()``. This adapter only names what the classes read of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.task import ConfigurableTask

RELIES_ON: tuple[str, ...] = (
    "lm_eval.api.task.ConfigurableTask",  # requests of every output type
    "lm_eval.api.task.ConfigurableTask.process_results",  # the original task's own per-document metrics
    "lm_eval.api.task.ConfigurableTask.aggregation",
    "lm_eval.api.task.ConfigurableTask.doc_iterator",  # once per filter, process_results in between
)
"""Upstream internals this adapter relies on (besides the instance attributes ``ConfigurableTask.__init__``
sets: ``_metric_fn_list``, ``_higher_is_better``, ``_filters``, ``multiple_target``, ``multiple_input``)."""


class TaskBase(ConfigurableTask):
    """``ConfigurableTask``, plus the readings of it that differ on lm-eval 0.5."""

    def own_metric_names(self) -> list[str]:
        """The original task's metrics, in its ``metric_list`` order."""
        return list(self._metric_fn_list)

    def own_higher_is_better(self) -> dict[str, Any]:
        """The original task's direction of each of its metrics."""
        return dict(self._higher_is_better)

    def first_target_count(self) -> int:
        """How many targets the first document has when they are a list (0 when not): lm-eval scores every
        document of a task the way it scores the first."""
        return int(self.multiple_target or 0)

    def options_are_inputs(self) -> bool:
        """Whether the options are the contexts (``doc_to_text`` gives the list; winogrande)."""
        return bool(self.multiple_input)

    def on_score(self, doc_id: int, filter_key: str) -> None:
        """Called on lm-eval 0.5 before each ``process_results``; on 0.4.13 ``doc_iterator`` is the loop."""

    def filter_ensembles(self) -> list[Any]:
        """The task's filter pipelines (each with ``name`` and ``filters``, factories of filters)."""
        return list(getattr(self, "_filters", []))

    @staticmethod
    def filtered_answer(value: Any) -> Any:
        """One generation's answer after a filter pipeline (0.4.13's ``take_first`` gives the answer)."""
        return value

    @staticmethod
    def scored_results(instances: Sequence[Any], filter_key: str) -> list[Any]:
        """What ``process_results`` receives for a document's instances under one filter."""
        return [instance.filtered_resps[filter_key] for instance in instances]
