"""What every calibration task class shares: options, output-type check, per-document values, aggregations.

A task class says which lm-eval output types it accepts and fills ONE table, :meth:`CalibrationTaskBase.
calibration_table`: result key -> :class:`ResultMetric` (the metric it reports, and the record it is computed
from). Everything else follows from that table here, once: the aggregations (with their bootstrap stderrs),
the directions, and the per-document values (the record under the key it is logged under, a
:class:`~lm_eval_calib.records.RecordRef` to it under every other key). Option parsing happens before any
download.

Importing this module applies lm-eval-calib's evaluation patches (:func:`lm_eval_calib.lm_eval_patches.
install_all`: the bootstrap stderr, the check before inference): every task class of ours derives from
:class:`CalibrationTaskBase`, so a run that loads one of our tasks has them, start-up hook or not.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from lm_eval.api.task import ConfigurableTask

from lm_eval_calib import lm_eval_patches
from lm_eval_calib.harness.results import FLOORED_KEY, floored_options
from lm_eval_calib.metrics import METRICS
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.record_metrics import make_aggregation
from lm_eval_calib.records import RECORD_LOG_KEY, RecordRef

lm_eval_patches.install_all()  # the one call: see the module docstring


CALIBRATION_KEYS: tuple[str, ...] = tuple(key for key in METRICS if key != "acc")
"""The calibration metrics of a prediction rule whose accuracy the task reports itself (lm-eval's ``acc``:
bit-for-bit lm-eval's value for the same prompts), in registry order."""


class ResultMetric(NamedTuple):
    """One row of a task's calibration table: what a result key reports."""

    metric: str
    """The metric computed (a key of :data:`lm_eval_calib.metrics.METRICS`)."""
    record_key: str
    """The result key under which the record it is computed from is logged (``ece``, ``ece_norm``,
    ``ece_ptrue``)."""


def result_table(metrics: Iterable[str], suffix: str = "") -> dict[str, ResultMetric]:
    """``{metric + suffix: ResultMetric(metric, RECORD_LOG_KEY + suffix)}``: the rows of one record (one
    prediction rule, one estimator)."""
    return {metric + suffix: ResultMetric(metric, RECORD_LOG_KEY + suffix) for metric in metrics}


def build_record_aggregations(
    table: Mapping[str, ResultMetric], options: CalibrationOptions, label: Callable[[ResultMetric], str]
) -> dict[str, Callable]:
    """The aggregation (with its stderr) of every row of ``table``; ``label(row)`` names the task in warnings.

    The rows share one ``warned`` set, so the small-sample warning is logged once per task and sample size,
    not once per metric (:func:`lm_eval_calib.record_metrics.make_aggregation`)."""
    warned: set[Hashable] = set()
    return {key: make_aggregation(row.metric, options, label(row), warned) for key, row in table.items()}


def total(values: Sequence[float]) -> float:
    """The aggregation of a count per document (floored options, unparsed verbal replies): their sum."""
    return float(sum(values))


class CalibrationTaskBase(ConfigurableTask):
    """A ConfigurableTask whose metrics are the calibration metrics of per-document records."""

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
        self.result_metrics: dict[str, ResultMetric] = self.calibration_table()
        self._plain: dict[str, tuple[Callable, bool]] = self.plain_aggregations()
        self._aggregations: dict[str, Callable] = {key: fn for key, (fn, _) in self._plain.items()}
        self._aggregations |= self.record_aggregations()

    # -- the table and what follows from it -------------------------------------------------------------
    def calibration_table(self) -> dict[str, ResultMetric]:
        """Result key -> what it reports. Default: the calibration metrics of the one record of a document."""
        return result_table(CALIBRATION_KEYS)

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
        ours = {key: METRICS[row.metric].higher_is_better for key, row in self.result_metrics.items()}
        return own | plain | ours

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
