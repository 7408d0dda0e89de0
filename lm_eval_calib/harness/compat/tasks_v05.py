"""lm-eval 0.5's task base for our task classes: the contract of 0.4.13's ``ConfigurableTask`` kept on 0.5.

On lm-eval 0.5 ``ConfigurableTask`` is the abstract ``Task``: it builds no requests (a run stops with
"task.build_requests() did not find any docs!"), the class of the config's ``output_type`` does. Our classes
are written against one contract (:mod:`lm_eval_calib.harness.compat`); here it is kept on 0.5:

- **Requests.** :class:`TaskBase` creates each task as our class composed with 0.5's class for its
  ``output_type`` (``Task._registry``): ``CalibMMLU`` over ``MultipleChoiceTask``, the token task over
  ``LoglikelihoodTask`` or ``LoglikelihoodRollingTask``. Our methods come first; 0.5 builds the requests.
- **Per document.** 0.5 calls ``process_results`` from ``Task._try_process_results`` (once per scorer, that
  is per filter) and reads a list value as repeats. Our loop calls it the same way, tells the task which
  document and filter it scores (:meth:`TaskBase.on_score`), and keeps every value as ONE value per document.
  ``super().process_results`` (the original task's own metrics, in wrapped and generation tasks) runs 0.5's
  Scorer for that document: ``score_doc`` then ``reduce``, the values 0.5 reports for the task itself.
- **Aggregation.** 0.5's ``Scorer.aggregate`` prefers a metric's own aggregation over the task's
  ``aggregation()``; a calibration key that shares a name with a default metric (``acc`` of the token tasks,
  computed from token records) would be averaged as plain numbers. Ours take precedence here.
- **Metrics by name.** 0.5 types each registered metric by output type and refuses, when it builds a task's
  scorers, a ``metric_list`` entry of another type (``acc`` of ``calib_facts_gen``, a ``generate_until``
  task). Where the config has its own ``process_results`` (which gives every value; the metric's function is
  never called), such an entry keeps its name, aggregation and direction and is typed as this task's output,
  as 0.4.13 reads it.
- **Rolling requests.** 0.5's ``LoglikelihoodRollingTask`` sends ``("", text)``; our models (``hf-calib``,
  ``vllm-calib``) read 0.4.13's ``(text,)``, which is what they receive from our rolling tasks here.

Stderrs: while our task aggregates, 0.5's ``stderr_for_metric`` answers as 0.4.13's does
(:mod:`.stderr_v05`, applied by the "stderr (lm-eval 0.5)" patch of :mod:`lm_eval_calib.lm_eval_patches`):
our seeded bootstrap for the calibration keys, not 100,000 pool draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lm_eval.api.metrics import Metric
from lm_eval.api.registry import metric_registry
from lm_eval.api.task import Task
from lm_eval.scorers import ScoredDoc, build_scorer

from lm_eval_calib.harness.compat.stderr_v05 import our_task_aggregating

RELIES_ON: tuple[str, ...] = (
    "lm_eval.api.task.Task._registry",  # output_type -> the class that builds its requests
    "lm_eval.api.task.Task._build_scorers",  # () -> one Scorer per config.filter_list entry (in __init__)
    "lm_eval.api.task.Task._build_scorer_context",  # the kwargs a scorer hands its metrics (Scorer.context)
    "lm_eval.scorers.build_scorer",  # (cfg=, output_type=, scorer_type=); keeps Metric entries as they are
    "lm_eval.api.metrics.Metric.from_dict",  # (cfg, output_type): no output_type -> no type check
    "lm_eval.api.registry.metric_registry",  # name -> Metric (its output_type: the types it accepts)
    "lm_eval.api.task.Task._try_process_results",  # (instances by doc_id, filter key) -> {doc_id: ScoredDoc}
    "lm_eval.api.task.Task.process_instances",  # calls the above once per scorer
    "lm_eval.api.task.Task.process_results",  # the config's own process_results, else None
    "lm_eval.api.task.Task.aggregate",  # (bootstrap_iters) -> ({"metric,filter": value}, sample_len)
    "lm_eval.api.task.Task.aggregation",
    "lm_eval.api.task.Task.higher_is_better",
    "lm_eval.api.task.LoglikelihoodRollingTask.construct_requests",
    "lm_eval.api.instance.Instance.args",  # a property over the dataclass field ``arguments``
    "lm_eval.scorers.ScoredDoc",
    "lm_eval.scorers.Scorer.score_doc",
    "lm_eval.scorers.Scorer.reduce",
    "lm_eval.scorers.Scorer.aggregate",  # (reduced_docs, bootstrap_iters=, aggregation_overrides=)
)
"""Upstream internals this adapter relies on (besides the instance attributes ``Task._scorers``,
``Task._multiple_inputs``, ``Scorer.metrics``, ``Scorer.name``, ``Scorer.filter``,
``Scorer.reduced_docs``)."""

_composed: dict[tuple[type, str], type] = {}


def concrete_class(cls: type, output_type: str | None) -> type:
    """``cls`` composed with 0.5's class for ``output_type`` (ours first in the MRO), made once per pair;
    ``cls`` itself when it derives from that class already or the type is unknown (then our class's own
    output-type check names the problem)."""
    base = Task._registry.get(output_type) if output_type else None
    if base is None or issubclass(cls, base):
        return cls
    key = (cls, output_type)
    if key not in _composed:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        _composed[key] = type(cls.__name__, (cls, base), namespace)
    return _composed[key]


def _output_type(config: Any) -> str | None:
    if isinstance(config, Mapping):
        return config.get("output_type")
    return getattr(config, "output_type", None)


class TaskBase(Task):
    """0.5's ``Task`` with 0.4.13's contract for our classes; see the module docstring."""

    _scoring: tuple[int, str, Sequence[Any]] | None = None
    """(doc_id, filter key, its instances) while :meth:`_try_process_results` scores a document."""

    def __new__(cls, config: Any = None, *args: Any, **kwargs: Any) -> TaskBase:
        return super().__new__(concrete_class(cls, _output_type(config) or cls.OUTPUT_TYPE))

    # -- scorers --------------------------------------------------------------------------------------------
    def _build_scorers(self) -> list[Any]:
        """0.5's scorers, one per filter pipeline; with the config's own ``process_results``, a metric that
        0.5 registers for other output types is kept by name (see the module docstring)."""
        if not callable(self.config.process_results):
            return super()._build_scorers()
        context = self._build_scorer_context()
        scorers = []
        for cfg in self.config.filter_list:
            metrics = [self._metric_by_name(item) for item in cfg.get("metric_list") or []]
            config = {**cfg, "metric_list": metrics}
            scorer = build_scorer(cfg=config, output_type=self.OUTPUT_TYPE, scorer_type=self.config.scorer)
            scorer.context = context
            scorers.append(scorer)
        return scorers

    def _metric_by_name(self, item: Any) -> Any:
        """``item`` of a ``metric_list`` as 0.5 builds it for this output type; a registered metric of other
        types as a metric of this one (its name, aggregation and direction; ``process_results`` gives its
        values)."""
        if isinstance(item, Metric):
            return item
        name = item.get("metric") if isinstance(item, Mapping) else None
        registered = metric_registry.get(name, None) if isinstance(name, str) else None
        if registered is None or self.OUTPUT_TYPE in registered.output_type:
            return Metric.from_dict(item, self.OUTPUT_TYPE)
        metric = Metric.from_dict(item)  # no output type: no type check
        return dataclasses.replace(metric, output_type={self.OUTPUT_TYPE})

    # -- what our classes read of the original task -------------------------------------------------------
    def own_metric_names(self) -> list[str]:
        """The original task's metrics, in its ``metric_list`` order (every scorer's, each name once)."""
        names = [metric.name for scorer in self._scorers for metric in scorer.metrics or []]
        return list(dict.fromkeys(names))

    def own_higher_is_better(self) -> dict[str, Any]:
        return Task.higher_is_better(self)

    def first_target_count(self) -> int:
        """How many targets the first document has when they are a list (0 when not), as 0.4.13's
        ``multiple_target``."""
        if "_first_target_count" not in vars(self):
            docs = self.eval_docs
            target = self.doc_to_target(docs[0]) if len(docs) else None
            self._first_target_count = len(target) if isinstance(target, list) else 0
        return self._first_target_count

    def options_are_inputs(self) -> bool:
        return bool(self._multiple_inputs)

    def on_score(self, doc_id: int, filter_key: str) -> None:
        """Called before each ``process_results`` with the document and the filter being scored."""

    def filter_ensembles(self) -> list[Any]:
        """The task's filter pipelines: one per scorer (each with ``name`` and ``filters``)."""
        return [scorer.filter for scorer in self._scorers]

    @staticmethod
    def filtered_answer(value: Any) -> Any:
        """One generation's answer after a filter pipeline: 0.5's filters keep a document's responses a list
        (its repeats; ``take_first`` gives ``[answer]``), 0.4.13's give the answer itself."""
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @staticmethod
    def scored_results(instances: Sequence[Any], filter_key: str) -> list[Any]:
        """What ``process_results`` receives for a document's instances under one filter (flattened: each
        instance's filtered responses are a list)."""
        return [resp for instance in instances for resp in instance.filtered_resps[filter_key]]

    # -- per document ---------------------------------------------------------------------------------------
    def _try_process_results(
        self, instances: Mapping[int, Sequence[Any]], filter_key: str
    ) -> dict[int, ScoredDoc]:
        scored: dict[int, ScoredDoc] = {}
        try:
            for doc_id, doc_instances in instances.items():
                self._scoring = (doc_id, filter_key, doc_instances)
                self.on_score(doc_id, filter_key)
                results = self.scored_results(doc_instances, filter_key)
                values = self.process_results(doc_instances[0].doc, results)
                scores = {key: [value] for key, value in values.items()}  # one value per document: no repeats
                scored[doc_id] = ScoredDoc(doc_id=doc_id, reference=doc_instances[0].target, scores=scores)
        finally:
            self._scoring = None
        return scored

    def process_results(self, doc: dict, results: Sequence[Any]) -> dict[str, Any]:
        """The original task's own metrics of this document: its ``process_results`` where it has one, else
        0.5's Scorer for the filter being scored (``score_doc``, then ``reduce``)."""
        own = super().process_results(doc, results)
        if own is not None:
            return dict(own)
        if self._scoring is None:
            raise RuntimeError(
                f"{self.config.task}: process_results was called outside lm-eval's scoring loop "
                "(Task.process_instances); run the task through lm_eval's evaluate"
            )
        doc_id, filter_key, doc_instances = self._scoring
        scorer = next(scorer for scorer in self._scorers if scorer.name == filter_key)
        return dict(scorer.reduce({doc_id: scorer.score_doc(doc_id, list(doc_instances))})[doc_id])

    # -- aggregation ----------------------------------------------------------------------------------------
    def aggregate(self, bootstrap_iters: int | None = 100000) -> tuple[dict[str, Any], int]:
        """0.5's per-scorer aggregation with our ``aggregation()`` first: a scorer metric of the same name
        is left out of the scorer, so its aggregation cannot take the key over."""
        ours = self.aggregation()
        results: dict[str, Any] = {}
        sample_len = 0
        with our_task_aggregating():  # stderrs as on 0.4.13 (stderr_v05)
            for scorer in self._scorers:
                kept = [m for m in scorer.metrics or [] if ours.get(m.name, m.aggregation) is m.aggregation]
                view = dataclasses.replace(scorer, metrics=kept)
                values, count = view.aggregate(
                    scorer.reduced_docs, bootstrap_iters=bootstrap_iters, aggregation_overrides=ours
                )
                results.update(values)
                sample_len = max(sample_len, count)
        return results, sample_len

    # -- requests -------------------------------------------------------------------------------------------
    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> Any:
        requests = super().construct_requests(doc, ctx, **kwargs)
        if self.OUTPUT_TYPE == "loglikelihood_rolling":
            for request in requests or []:
                request.arguments = (request.arguments[-1],)  # ("", text) -> (text,), as 0.4.13 sends it
        return requests
