"""What every calibration task class shares: options, output-type check, per-document values, aggregations.

Subclasses say which lm-eval output types they accept and which metric keys aggregate records; everything
else (option parsing before any download, logging each record once, bootstrap stderrs, directions) lives
here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from lm_eval.api.task import ConfigurableTask

from lm_eval_calib import lm_eval_patches
from lm_eval_calib.harness.aggregation import make_aggregation
from lm_eval_calib.harness.options import CalibrationOptions
from lm_eval_calib.harness.results import FLOORED_KEY, floored_options
from lm_eval_calib.metrics import METRICS
from lm_eval_calib.records import RECORD_LOG_KEY, RecordRef

lm_eval_patches.install_all()


class CalibrationTaskBase(ConfigurableTask):
    """A ConfigurableTask whose metrics are the calibration metrics of per-document records."""

    output_types: ClassVar[tuple[str, ...]] = ()
    """The lm-eval output types this class can score."""
    record_keys: ClassVar[tuple[str, ...]] = tuple(METRICS)
    """Metric keys aggregated from the records (a subclass may keep lm-eval's own value for others)."""
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
        name = self.config.task or type(self).__name__
        warned: set[int] = set()  # one small-sample warning per task, not one per binned metric
        self._aggregations: dict[str, Callable] = {
            key: make_aggregation(key, self.calibration, name, warned) for key in self.record_keys
        }
        if self.OUTPUT_TYPE == "multiple_choice":
            # reported only when the model floors options (chat-calib): documents of other models emit no
            # value under this key, and lm-eval aggregates only the keys that documents emit
            self._aggregations[FLOORED_KEY] = total

    def category(self, doc: dict) -> Any:
        return doc.get(self.category_field) if self.category_field else None

    def floored_values(self, record: dict[str, Any], results: Sequence[Any]) -> dict[str, Any]:
        """The count of floored options, in the record and as :data:`FLOORED_KEY`, where the model says."""
        count = floored_options(results)
        if count is None:
            return {}
        record["floored"] = count
        return {FLOORED_KEY: count}

    def record_values(self, record: dict[str, Any]) -> dict[str, Any]:
        """Per-document values of the record keys: the record once, references to it elsewhere."""
        reference = RecordRef(record)
        return {key: record if key == RECORD_LOG_KEY else reference for key in self.record_keys}

    def aggregation(self) -> dict:
        return self._aggregations

    def higher_is_better(self) -> dict:
        directions = {key: METRICS[key].higher_is_better for key in self._aggregations if key in METRICS}
        if FLOORED_KEY in self._aggregations:
            directions[FLOORED_KEY] = False
        return directions


def total(values: Sequence[float]) -> float:
    """The aggregation of a count per document (floored options, unparsed verbal replies): their sum."""
    return float(sum(values))


def metric_keys(excluded: Iterable[str] = ()) -> tuple[str, ...]:
    """Metric keys in registry order, without ``excluded``."""
    return tuple(key for key in METRICS if key not in set(excluded))
