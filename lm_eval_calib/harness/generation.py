"""The lm-eval task class for calibration of generated answers (any ``generate_until`` config).

``GenerationCalibrationTask(config=<the original task's config>)`` is the original task, unchanged: same
prompt, generation settings, filters and metrics, reported under the same keys. On top, per document and per
filter, it writes one generation record per confidence estimator (:func:`lm_eval_calib.records.
generation_record`) and aggregates them into every calibration metric with the estimator's suffix
(``ece_seqprob``, ``brier_ptrue``, ..., per filter as lm-eval reports its own metrics).

- correctness: the task's own primary metric (the first of its ``metric_list``) after that filter, correct
  when above 0.5 (a 0/1 metric such as ``exact_match`` as it is; a [0, 1] score thresholded);
- confidence: ``ESTIMATORS[name].confidence(view)`` of :mod:`lm_eval_calib.generation.estimators`, one
  object per estimator, over a :class:`~lm_eval_calib.generation.estimators.DocView` of the document under
  the filter being scored; most read the raw generation (before the filters) and are the same for every
  filter, those marked ``per_filter`` (consistency, semantic entropy, ...) compare the samples' filtered
  answers.

How it sees what lm-eval does not hand to ``process_results``: lm-eval's ``evaluate`` (wrapped in
:mod:`lm_eval_calib.harness.preflight`) gives each task the model before any request runs (``bind_model``:
refuses estimators the model cannot serve); after generation, ``apply_filters`` runs every second pass in one
batch per request type (:mod:`lm_eval_calib.generation.passes`); ``doc_iterator`` tells ``process_results``
which document and which filter lm-eval is scoring, and every answer is checked against that instance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_calib.generation import estimators as est
from lm_eval_calib.generation import passes
from lm_eval_calib.harness.base import (
    CALIBRATION_KEYS,
    CalibrationTaskBase,
    ResultMetric,
    result_table,
    total,
)
from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE
from lm_eval_calib.records import RECORD_LOG_KEY, generation_record, record_of

logger = logging.getLogger("lm_eval_calib")

UNPARSED_KEY = est.ESTIMATORS["verbal"].unparsed_key


def result_key(metric: str, estimator: str) -> str:
    """``ece`` + ``seqprob`` -> ``ece_seqprob``; the record itself is logged under ``ece_<estimator>``."""
    return f"{metric}_{estimator}"


def _scored_only(aggregate: Callable, name: str) -> Callable:
    """An aggregation over the records that have a confidence (unparseable verbal replies are counted
    separately), with its bootstrap stderr wrapped the same way."""

    def keep(records: Sequence) -> list:
        return [r for r in records if record_of(r)["confidence"] is not None]

    def wrapped(records: Sequence) -> float:
        kept = keep(records)
        return aggregate(kept) if kept else math.nan

    stderr = getattr(aggregate, STDERR_ATTRIBUTE, None)
    if stderr is not None:

        def wrapped_stderr(records: Sequence, n_resamples: int) -> float:
            kept = keep(records)
            return stderr(kept, n_resamples) if len(kept) > 1 else math.nan

        setattr(wrapped, STDERR_ATTRIBUTE, wrapped_stderr)
    wrapped.__name__ = wrapped.__qualname__ = name
    return wrapped


class GenerationCalibrationTask(CalibrationTaskBase):
    """A ``generate_until`` task plus the calibration of its answers; see the module docstring."""

    output_types = ("generate_until",)
    keeps_own_metrics = True

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        self._primary = self._primary_metric()
        self._lm: Any = None
        self._glue: tuple[str, str] | None = None
        self._chat_template: Callable | None = None
        self._items: dict[int, passes.Generation] = {}
        self._by_doc: dict[int, list] = {}
        self._sample_answers: dict[str, dict[int, list]] = {}
        self._filter_keys: list[str] = []
        self._pass = -1
        self._current_doc_id: int | None = None

    # -- set-up ---------------------------------------------------------------------------------------------
    def _primary_metric(self) -> str | None:
        """The metric that decides correctness: the first of the task's metric_list (None: a custom
        process_results decides; its first key is used)."""
        names = self.own_metric_names()
        if not names:
            return None
        primary = names[0]
        if self.own_higher_is_better().get(primary) is False:
            raise ValueError(
                f"{self.config.task}: the first metric {primary!r} is lower-is-better, so it cannot say "
                "whether an answer is correct; put a 0/1 (or [0, 1] score) metric such as exact_match first"
            )
        return primary

    # -- the calibration table: every calibration metric per estimator ---------------------------------------
    @property
    def estimators(self) -> tuple[str, ...]:
        return self.calibration.confidence

    def calibration_table(self) -> dict[str, ResultMetric]:
        table: dict[str, ResultMetric] = {}
        for estimator in self.estimators:
            table |= result_table(CALIBRATION_KEYS, result_key("", estimator))
        return table

    def plain_aggregations(self) -> dict:
        counted = {
            key: (total, False)
            for key in (est.ESTIMATORS[name].unparsed_key for name in self.estimators)
            if key is not None
        }
        return super().plain_aggregations() | counted

    def aggregation_label(self, row: ResultMetric) -> str:
        estimator = row.record_key.removeprefix(RECORD_LOG_KEY + "_")
        return f"{super().aggregation_label(row)} ({estimator})"

    def record_aggregations(self) -> dict[str, Callable]:
        return {key: _scored_only(fn, f"calib_{key}") for key, fn in super().record_aggregations().items()}

    def bind_model(self, lm: Any) -> None:
        """Called by the evaluate wrapper before any request: keep the model, refuse what it cannot serve."""
        passes.check_model(
            lm, self.estimators, self.config.task, self.config.generation_kwargs, self.config.repeats
        )
        self.calibration.equivalence_rule.prepare(self.estimators)  # the embedding model, before any request
        self._lm = lm

    def build_all_requests(self, **kwargs: Any) -> None:
        apply = kwargs.get("apply_chat_template", False)
        self._chat_template = kwargs.get("chat_template") if apply else None
        return super().build_all_requests(**kwargs)

    # -- after generation: the second passes -----------------------------------------------------------------
    def apply_filters(self):
        out = super().apply_filters()
        self._filter_keys = list(self._instances[0].filtered_resps) if self._instances else []
        self._pass = -1
        if self._lm is None:
            raise RuntimeError(
                f"{self.config.task}: the model was not handed to this task before evaluation; run it "
                "through lm_eval / lm_eval.evaluator.evaluate with lm_eval_calib installed"
            )
        self._glue = passes.chat_glue(self._chat_template) if self._chat_template else None
        self._items, self._by_doc = {}, {}
        for instance in self._instances:
            self._by_doc.setdefault(instance.doc_id, []).append(instance)
            if instance.doc_id in self._items:
                continue
            context, gen_kwargs = instance.args[0], instance.args[1]
            self._items[instance.doc_id] = passes.Generation(
                doc_id=instance.doc_id,
                doc=instance.doc,
                context=context,
                gen_kwargs=dict(gen_kwargs or {}),
                text=instance.resps[0] if instance.resps else "",
                task=self.config.task,
            )
        items = list(self._items.values())
        passes.run_passes(
            self._lm,
            items,
            self.estimators,
            self.calibration.samples,
            self._glue,
            seed=self.calibration.sample_seed,
        )
        per_filter = any(est.ESTIMATORS[name].per_filter for name in self.estimators)
        self._sample_answers = self._filter_samples(items) if per_filter else {}
        return out

    def _filter_samples(self, items: list[passes.Generation]) -> dict[str, dict[int, list]]:
        """Each sampled answer through each of the task's filter pipelines, as lm-eval filters the greedy
        one."""
        flat = [(item, sample) for item in items for sample in item.samples]
        answers: dict[str, dict[int, list]] = {}
        for ensemble in self.filter_ensembles():
            resps: Any = [[sample] for _, sample in flat]
            docs = [item.doc for item, _ in flat]
            for make_filter in ensemble.filters:
                resps = make_filter().apply(resps, docs)
            per_doc: dict[int, list] = {}
            for (item, _), answer in zip(flat, list(resps), strict=True):
                per_doc.setdefault(item.doc_id, []).append(self.filtered_answer(answer))
            answers[ensemble.name] = per_doc
        return answers

    def on_score(self, doc_id: int, filter_key: str) -> None:
        # lm-eval 0.5 names the document and filter it scores (harness/compat); 0.4.13: doc_iterator below
        self._current_doc_id = doc_id
        self._pass = self._filter_keys.index(filter_key) if filter_key in self._filter_keys else -1

    def doc_iterator(self, **kwargs: Any):
        # lm-eval 0.4.13 iterates the documents once per filter, in the order of the filtered responses,
        # calling process_results right after each document is yielded.
        self._pass += 1
        for doc_id, doc in super().doc_iterator(**kwargs):
            self._current_doc_id = doc_id
            yield doc_id, doc

    # -- per document ----------------------------------------------------------------------------------------
    def _correct(self, own: dict[str, Any]) -> bool:
        key = self._primary if self._primary in own else next(iter(own), None)
        if key is None:
            raise ValueError(f"{self.config.task}: the task's process_results returned no metric")
        value = own[key]
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{self.config.task}: metric {key!r} gave {value!r} for a document; correctness needs a "
                "number"
            ) from None
        if not 0.0 <= score <= 1.0:
            raise ValueError(
                f"{self.config.task}: metric {key!r} gave {score} for a document; correctness needs a 0/1 "
                "value or a [0, 1] score (correct when > 0.5). Put such a metric first in metric_list"
            )
        return score > 0.5

    def _current(self, results: list) -> tuple[passes.Generation, str]:
        doc_id = self._current_doc_id
        if doc_id not in self._items or not 0 <= self._pass < len(self._filter_keys):
            raise RuntimeError(
                f"{self.config.task}: process_results was called outside lm-eval's evaluation loop "
                f"(document {doc_id}, pass {self._pass}); calibration of generations needs lm_eval's evaluate"
            )
        filter_key = self._filter_keys[self._pass]
        expected = self.scored_results(sorted(self._by_doc[doc_id], key=lambda i: i.idx), filter_key)
        if list(results) != expected:
            raise RuntimeError(
                f"{self.config.task}: lm-eval scored document {doc_id} in an unexpected order (filter "
                f"{filter_key!r}); this lm-eval version is not supported by generation calibration"
            )
        return self._items[doc_id], filter_key

    def _view(self, item: passes.Generation, filter_key: str) -> est.DocView:
        """What the passes found for this document, under this filter (see :class:`est.DocView`)."""
        return est.DocView(
            seq=item.seq,
            ptrue=item.ptrue,
            verbal=item.verbal,
            samples=tuple(item.samples),
            filtered_samples=tuple(self._sample_answers.get(filter_key, {}).get(item.doc_id, [])),
            greedy_filtered=self._greedy_answer(item.doc_id, filter_key),
            equivalence=self.calibration.equivalence_rule,
        )

    def _greedy_answer(self, doc_id: int, filter_key: str) -> Any:
        return self.filtered_answer(self._by_doc[doc_id][0].filtered_resps[filter_key])

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        own = super().process_results(doc, results)
        item, filter_key = self._current(results)
        correct = self._correct(own)
        values: dict[str, Any] = dict(own)
        view = self._view(item, filter_key)
        for name in self.estimators:
            estimator = est.ESTIMATORS[name]
            confidence, extras = estimator.confidence(view)
            record = generation_record(confidence, correct, self.category(doc), estimator=name, **extras)
            values |= self.record_values(record, result_key(RECORD_LOG_KEY, name))
            if estimator.unparsed_key is not None:
                values[estimator.unparsed_key] = int(confidence is None)
        return values
