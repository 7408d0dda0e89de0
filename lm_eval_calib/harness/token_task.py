"""The lm-eval task class for calibration of next-token predictions over the whole vocabulary.

Confidence is the model's top-1 next-token probability and an item is correct when that top-1 token is the
actual one. lm-eval's model API returns only summed log-likelihoods, so these tasks need a model that attaches
per-token statistics to its results (``--model hf-calib``); :mod:`lm_eval_calib.harness.preflight` stops a run
with any other model before inference.

Two shapes share this class: ``loglikelihood`` requests scored at their FIRST continuation token
(open-vocabulary fact completion: is the model's top guess the object's first token?) and
``loglikelihood_rolling`` requests scored at EVERY token (next-token calibration on running text). Every
token is one item of the pooled metrics.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from lm_eval.api.task import ConfigurableTask

from lm_eval_calib.harness import preflight, stderr
from lm_eval_calib.harness.aggregation import make_aggregation
from lm_eval_calib.harness.options import CalibrationOptions
from lm_eval_calib.harness.records import RECORD_KEY, ModelOutputError, RecordRef
from lm_eval_calib.metrics import METRICS
from lm_eval_calib.models.token_stats import token_stats_of

stderr.install()
preflight.install()


def token_record(confidence: np.ndarray, correct: np.ndarray, nll: np.ndarray, category: Any) -> dict:
    """A JSON-able record of scored tokens (lists, one entry per token)."""
    return {
        "confidence": confidence.tolist(),
        "correct": correct.astype(int).tolist(),
        "brier": ((confidence - correct) ** 2).tolist(),  # top-label (binary) Brier: no full distribution
        "nll": nll.tolist(),
        "category": category,
    }


class TokenCalibrationTask(ConfigurableTask):
    """Calibration of top-1 next-token predictions; see the module docstring."""

    requires_token_stats: ClassVar[bool] = True
    first_token_only: ClassVar[bool] = False
    """Score only the first continuation token (open-vocabulary facts) instead of every token."""
    category_field: ClassVar[str | None] = None

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.calibration = CalibrationOptions.from_metadata((config or {}).get("metadata"))
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)
        if self.OUTPUT_TYPE not in ("loglikelihood", "loglikelihood_rolling"):
            raise ValueError(
                f"{self.config.task}: token calibration needs output_type loglikelihood or "
                f"loglikelihood_rolling, got {self.OUTPUT_TYPE!r}"
            )
        name = self.config.task or type(self).__name__
        warned: set[int] = set()
        self._aggregations = {key: make_aggregation(key, self.calibration, name, warned) for key in METRICS}

    def token_record(self, doc: dict, results: list) -> dict:
        stats = token_stats_of(results[0]) if results else None
        if stats is None:
            raise ModelOutputError(
                f"{self.config.task}: the model returned no token statistics; run this task with "
                "`--model hf-calib`"
            )
        if self.first_token_only:
            stats = stats[:1]
        category = doc.get(self.category_field) if self.category_field else None
        return token_record(stats.confidence, stats.correct, -stats.token_logprobs, category)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        record = self.token_record(doc, results)
        reference = RecordRef(record)
        return {key: record if key == RECORD_KEY else reference for key in METRICS}

    def aggregation(self) -> dict:
        return self._aggregations

    def higher_is_better(self) -> dict:
        return {key: METRICS[key].higher_is_better for key in self._aggregations}
