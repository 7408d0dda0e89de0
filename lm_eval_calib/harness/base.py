"""What every calibration task class shares: options, output-type check, per-document values, aggregations.

A task class says which lm-eval output types it accepts and fills ONE table, :meth:`CalibrationTaskBase.
calibration_table`: result key -> :class:`ResultMetric` (the metric it reports, and the record it is computed
from). Everything else follows from that table here, once: the aggregations (with their bootstrap stderrs),
the directions, and the per-document values (the record under the key it is logged under, a
:class:`~lm_eval_calib.records.RecordRef` to it under every other key). Option parsing happens before any
download.

A multiple-choice task's table also has the cross-fitted conformal answer sets of its option records
(:data:`CONFORMAL_KEYS`, :meth:`CalibrationTaskBase.conformal_table`): whole-run statistics like the other
metrics, computed by :func:`lm_eval_calib.metrics.conformal_cross_fitted` exactly as the report computes
them from the logged records.

Importing this module applies lm-eval-calib's evaluation patches (:func:`lm_eval_calib.lm_eval_patches.
install_all`: the bootstrap stderr, the check before inference): every task class of ours derives from
:class:`CalibrationTaskBase`, so a run that loads one of our tasks has them, start-up hook or not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from lm_eval_calib import lm_eval_patches
from lm_eval_calib.harness.compat.tasks import TaskBase
from lm_eval_calib.harness.results import FLOORED_KEY, floored_options
from lm_eval_calib.metrics import METRICS, ConformalSets, OptionScores, conformal_cross_fitted
from lm_eval_calib.metrics.conformal import RESULT_KEYS, SCORES
from lm_eval_calib.options import CONFORMAL_SEED, OPTIONS_KEY, CalibrationOptions
from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE, make_aggregation
from lm_eval_calib.records import CONFORMAL_SETS_FIELD, RECORD_LOG_KEY, RecordRef, record_of

lm_eval_patches.install_all()  # the one call: see the module docstring

logger = logging.getLogger("lm_eval_calib")


CALIBRATION_KEYS: tuple[str, ...] = tuple(key for key in METRICS if key != "acc")
"""The calibration metrics of a prediction rule whose accuracy the task reports itself (lm-eval's ``acc``:
bit-for-bit lm-eval's value for the same prompts), in registry order."""


CONFORMAL_KEYS: tuple[str, ...] = RESULT_KEYS
"""``conformal_coverage_lac``, ``conformal_set_size_lac``, ``conformal_coverage_aps``,
``conformal_set_size_aps``: the keys of a multiple-choice task's conformal answer sets (each with
``_stderr``)."""

CONFORMAL_HIGHER_IS_BETTER: dict[str, bool] = {
    key: key.startswith("conformal_coverage") for key in CONFORMAL_KEYS
}
"""lm-eval needs one direction per key. Coverage is marked higher-is-better: it is guaranteed only from
below (at least ``1 - conformal_alpha`` on average), so falling short is the failure to see; beyond that
target, higher coverage is bought with larger sets, which set size (lower is better) shows."""


class ResultMetric(NamedTuple):
    """One row of a task's calibration table: what a result key reports."""

    metric: str
    """The metric computed (a key of :data:`lm_eval_calib.metrics.METRICS`, or of :data:`CONFORMAL_KEYS`)."""
    record_key: str
    """The result key under which the record it is computed from is logged (``ece``, ``ece_norm``,
    ``ece_ptrue``)."""


def result_table(metrics: Iterable[str], suffix: str = "") -> dict[str, ResultMetric]:
    """``{metric + suffix: ResultMetric(metric, RECORD_LOG_KEY + suffix)}``: the rows of one record (one
    prediction rule, one estimator)."""
    return {metric + suffix: ResultMetric(metric, RECORD_LOG_KEY + suffix) for metric in metrics}


def metric_higher_is_better(metric: str) -> bool:
    """The direction lm-eval shows for a row's metric (registry metric or conformal key)."""
    if metric in CONFORMAL_HIGHER_IS_BETTER:
        return CONFORMAL_HIGHER_IS_BETTER[metric]
    return METRICS[metric].higher_is_better


def build_record_aggregations(
    table: Mapping[str, ResultMetric], options: CalibrationOptions, label: Callable[[ResultMetric], str]
) -> dict[str, Callable]:
    """The aggregation (with its stderr) of every row of ``table``; ``label(row)`` names the task in warnings.

    The rows share one ``warned`` set, so the small-sample warning is logged once per task and sample size,
    not once per metric (:func:`lm_eval_calib.record_metrics.make_aggregation`); the conformal rows share
    one :class:`ConformalRun`, so the sets are computed once per run, not once per key."""
    warned: set[Hashable] = set()
    conformal: dict[str, ConformalRun] = {}  # one per task label
    out: dict[str, Callable] = {}
    for key, row in table.items():
        if row.metric in CONFORMAL_KEYS:
            run = conformal.setdefault(label(row), ConformalRun(options, label(row)))
            out[key] = make_conformal_aggregation(row.metric, run)
        else:
            out[key] = make_aggregation(row.metric, options, label(row), warned)
    return out


# -- conformal answer sets --------------------------------------------------------------------------------
class ConformalRun:
    """The cross-fitted LAC and APS sets of one task's records, computed once for its four conformal keys.

    lm-eval calls each key's aggregation, then its stderr, with that key's own list of per-document values:
    the same records (or copies, after gathering across ranks). The sets need every document at once, so
    they are kept for the last inputs seen (option log-likelihoods and gold indices, compared by value) and
    recomputed only when those change. A failure is logged once, naming the task, and every key is NaN.
    """

    def __init__(self, options: CalibrationOptions, task_name: str) -> None:
        self.options = options
        self.task_name = task_name
        self._inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._sets: dict[str, ConformalSets] | None = None
        self._said: set[str] = set()

    def say(self, level: int, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.log(level, "[%s] %s", self.task_name, message)

    def sets(self, values: Sequence[Any]) -> dict[str, ConformalSets] | None:
        """Score -> sets of these documents; None (said once) when they cannot be computed."""
        try:
            records = [record_of(value) for value in values]
            logliks = [np.asarray(record["loglik"], dtype=np.float64) for record in records]
            inputs = (
                np.concatenate(logliks) if logliks else np.empty(0),
                np.asarray([row.shape[0] for row in logliks], dtype=np.int64),
                np.asarray([record["target"] for record in records], dtype=np.int64),
            )
        except Exception as exc:  # records without option log-likelihoods (a damaged or foreign record)
            self.say(logging.ERROR, f"conformal sets failed ({type(exc).__name__}: {exc}); reported as NaN")
            return None
        if self._inputs is not None and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(self._inputs, inputs, strict=True)
        ):
            return self._sets
        self._inputs, self._sets = inputs, None
        folds, alpha = self.options.conformal_folds, self.options.conformal_alpha
        if len(records) < folds:
            self.say(
                logging.WARNING,
                f"{len(records)} documents are too few for {folds}-fold cross-fitted conformal sets: "
                f"{', '.join(CONFORMAL_KEYS)} are reported as NaN (score at least {folds} documents, or "
                f"lower the calibration option conformal_folds to at most the documents scored, 2 at least)",
            )
            return None
        try:
            scores = OptionScores.build(logliks, inputs[2])
            self._sets = {
                score: conformal_cross_fitted(scores, score, alpha, folds, CONFORMAL_SEED) for score in SCORES
            }
        except Exception as exc:  # any failure must cost these keys, not the run (as make_aggregation)
            self.say(logging.ERROR, f"conformal sets failed ({type(exc).__name__}: {exc}); reported as NaN")
            return None
        write_sets(records, self._sets, folds)
        if any(math.isinf(t) for sets in self._sets.values() for t in sets.thresholds):
            smallest = min(sets.n_calibration for sets in self._sets.values())
            self.say(
                logging.WARNING,
                f"conformal sets: {smallest} calibration documents per fold are too few for alpha={alpha} "
                f"(it needs about {math.ceil(1 / alpha) - 1}): those folds' sets hold every option, so "
                "their coverage is 1 by construction; score more documents or raise conformal_alpha",
            )
        return self._sets


def write_sets(records: Sequence[dict[str, Any]], sets: Mapping[str, ConformalSets], folds: int) -> None:
    """Each document's sets into its record, under :data:`~lm_eval_calib.records.CONFORMAL_SETS_FIELD`.

    The sets exist only once every document is scored, after lm-eval has logged the records; but in one
    process the record lm-eval logs (``--log_samples``, written after aggregation) is this very dict, so the
    samples file carries them. Gathered from several processes the logged records are copies and do not."""
    per_score = {score: result.sets() for score, result in sets.items()}
    alpha = next(iter(sets.values())).alpha
    for i, record in enumerate(records):
        entry: dict[str, Any] = {"alpha": alpha, "folds": folds, "seed": CONFORMAL_SEED}
        entry |= {score: members[i] for score, members in per_score.items()}
        record[CONFORMAL_SETS_FIELD] = entry


def make_conformal_aggregation(key: str, run: ConformalRun) -> Callable[[Sequence], float]:
    """The aggregation of conformal key ``key`` (coverage or mean set size of one score) and, under
    :data:`~lm_eval_calib.record_metrics.STDERR_ATTRIBUTE`, its bootstrap stderr over documents (the
    thresholds held fixed; ``min(bootstrap_iters, max_bootstrap)`` resamples seeded with ``bootstrap_seed``,
    as :func:`lm_eval_calib.metrics.conformal_results` and the report compute it)."""
    quantity, score = key.removeprefix("conformal_").rsplit("_", 1)
    position = 0 if quantity == "coverage" else 1
    options = run.options

    def aggregate(values: Sequence[Any]) -> float:
        sets = run.sets(values)
        if sets is None:
            return float("nan")
        return sets[score].coverage if quantity == "coverage" else sets[score].mean_size

    def stderr(values: Sequence[Any], n_resamples: int) -> float | str:
        if options.max_bootstrap == 0:
            return "N/A"  # what lm-eval writes for a metric without a stderr
        sets = run.sets(values)
        if sets is None:
            return float("nan")
        try:
            resamples = min(n_resamples, options.max_bootstrap)
            return sets[score].stderrs(resamples, options.bootstrap_seed)[position]
        except Exception as exc:  # as in aggregate
            run.say(logging.ERROR, f"{key} stderr failed ({type(exc).__name__}: {exc}); reported as NaN")
            return float("nan")

    aggregate.__name__ = f"calib_{key}"
    aggregate.__qualname__ = aggregate.__name__
    setattr(aggregate, STDERR_ATTRIBUTE, stderr)
    return aggregate


def total(values: Sequence[float]) -> float:
    """The aggregation of a count per document (floored options, unparsed verbal replies): their sum."""
    return float(sum(values))


class CalibrationTaskBase(TaskBase):
    """An lm-eval task whose metrics are the calibration metrics of per-document records (``TaskBase``:
    lm-eval 0.4.13's ``ConfigurableTask``, or its contract on 0.5: :mod:`lm_eval_calib.harness.compat`)."""

    output_types: ClassVar[tuple[str, ...]] = ()
    """The lm-eval output types this class can score."""
    keeps_own_metrics: ClassVar[bool] = False
    """Whether ``process_results`` also returns the original task's own metrics (a wrapped or generation
    task): then ``aggregation()`` and ``higher_is_better()`` keep lm-eval's entries for them."""
    category_field: ClassVar[str | None] = None
    """Document field copied into each record for per-category breakdowns in reports."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # Checked before super().__init__ downloads anything, so a typo fails in seconds.
        self.calibration = CalibrationOptions.from_metadata((config or {}).get("metadata"))
        # The YAML's `class:` key chose this class; TaskConfig itself has no such field.
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)
        if self.OUTPUT_TYPE not in self.output_types:
            raise ValueError(
                f"{self.config.task}: {type(self).__name__} needs output_type "
                f"{' or '.join(self.output_types)}, got {self.OUTPUT_TYPE!r}"
            )
        self.result_metrics: dict[str, ResultMetric] = self.calibration_table() | self.conformal_table()
        self._plain: dict[str, tuple[Callable, bool]] = self.plain_aggregations()
        self._aggregations: dict[str, Callable] = {key: fn for key, (fn, _) in self._plain.items()}
        self._aggregations |= self.record_aggregations()

    # -- the table and what follows from it -------------------------------------------------------------
    def calibration_table(self) -> dict[str, ResultMetric]:
        """Result key -> what it reports. Default: the calibration metrics of the one record of a document."""
        return result_table(CALIBRATION_KEYS)

    def conformal_table(self) -> dict[str, ResultMetric]:
        """The conformal rows: multiple-choice tasks only (their record holds every option's log-likelihood
        and the gold index), computed from the record of the argmax rule (:data:`RECORD_LOG_KEY`)."""
        if self.OUTPUT_TYPE != "multiple_choice":
            return {}
        return {key: ResultMetric(key, RECORD_LOG_KEY) for key in CONFORMAL_KEYS}

    def plain_aggregations(self) -> dict[str, tuple[Callable, bool]]:
        """Result keys aggregated from plain per-document values, not records: key -> (aggregation, higher is
        better). Multiple-choice tasks report floored options (:data:`FLOORED_KEY`) where the model says:
        documents of other models emit no value under this key, and lm-eval aggregates only emitted keys."""
        return {FLOORED_KEY: (total, False)} if self.OUTPUT_TYPE == "multiple_choice" else {}

    def aggregation_label(self, row: ResultMetric) -> str:
        """How warnings about the aggregation of ``row`` name the task."""
        return self.config.task or type(self).__name__

    def record_aggregations(self) -> dict[str, Callable]:
        """The aggregation of every row of the calibration table."""
        return build_record_aggregations(self.result_metrics, self.calibration, self.aggregation_label)

    def aggregation(self) -> dict:
        own = super().aggregation() if self.keeps_own_metrics else {}
        return own | self._aggregations

    def higher_is_better(self) -> dict:
        own = super().higher_is_better() if self.keeps_own_metrics else {}
        plain = {key: higher for key, (_, higher) in self._plain.items()}
        ours = {key: metric_higher_is_better(row.metric) for key, row in self.result_metrics.items()}
        return own | plain | ours

    # -- before inference -------------------------------------------------------------------------------
    def build_all_requests(self, **kwargs: Any) -> None:
        self.check_conformal_folds(kwargs.get("limit"), kwargs.get("samples"))
        super().build_all_requests(**kwargs)

    def check_conformal_folds(self, limit: int | None, samples: Sequence[int] | None) -> None:
        """Refuse, before any request is built, ``conformal_folds`` set above the number of documents the run
        scores (``--limit``/``--samples``, as lm-eval passes them here; lm-eval has turned a fractional
        limit into a count already). The default (5) is not refused: a smoke run of 2 documents still runs,
        and its conformal keys are NaN with a warning."""
        if not any(row.metric in CONFORMAL_KEYS for row in self.result_metrics.values()):
            return
        raw = ((self.config.metadata or {}).get(OPTIONS_KEY)) or {}
        folds = self.calibration.conformal_folds
        if "conformal_folds" not in raw:
            return
        n_docs = len(self.eval_docs)
        if samples is not None:
            n_docs = len(samples)
        elif limit is not None:
            n_docs = min(int(limit), n_docs)
        if folds > n_docs:
            raise ValueError(
                f"{self.config.task}: calibration option 'conformal_folds' is {folds}, but this run scores "
                f"{n_docs} document(s); cross-fitting needs at least one document per fold. Set "
                f"conformal_folds to at most {n_docs} (2 at least), or score more documents "
                "(a larger --limit)."
            )

    # -- per document ---------------------------------------------------------------------------------
    def category(self, doc: dict) -> Any:
        return doc.get(self.category_field) if self.category_field else None

    def record_values(self, record: dict[str, Any], record_key: str = RECORD_LOG_KEY) -> dict[str, Any]:
        """Per-document values of the rows computed from ``record`` (logged under ``record_key``): the record
        once, references to it under every other key."""
        reference = RecordRef(record, record_key)
        return {
            key: record if key == record_key else reference
            for key, row in self.result_metrics.items()
            if row.record_key == record_key
        }

    def floored_values(self, record: dict[str, Any], results: Sequence[Any]) -> dict[str, Any]:
        """The count of floored options, in the record and as :data:`FLOORED_KEY`, where the model says."""
        count = floored_options(results)
        if count is None:
            return {}
        record["floored"] = count
        return {FLOORED_KEY: count}

    def check_options(self, doc: dict, choices: list) -> None:
        """Refuse a document with fewer than two options: its one option is the prediction at confidence 1
        and always 'right', so acc 1 and ECE 0 would be reported whatever the model does."""
        if len(choices) < 2:
            raise ValueError(
                f"{self.config.task}: document {str(self.doc_to_text(doc))[:60]!r} has {len(choices)} "
                f"option(s) {choices!r}; calibration needs at least two options per document (with one, "
                "confidence is 1 and the answer is always right: acc 1, ECE 0). Fix the task's doc_to_choice "
                "or its data, or leave such documents out."
            )
