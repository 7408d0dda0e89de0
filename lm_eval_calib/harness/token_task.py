"""The lm-eval task class for calibration of next-token predictions over the whole vocabulary.

Confidence is the model's top-1 next-token probability and an item is correct when that top-1 token is the
actual one. lm-eval's model API returns only summed log-likelihoods, so these tasks need a model that attaches
per-token statistics to its results (``--model hf-calib``); :mod:`lm_eval_calib.harness.preflight` stops a run
with any other model before inference.

Two shapes share this class: ``loglikelihood`` requests scored at their FIRST continuation token
(open-vocabulary fact completion: is the model's top guess the object's first token?) and
``loglikelihood_rolling`` requests scored at EVERY token (next-token calibration on running text). Every
token is one item of the pooled metrics; their bootstrap stderrs resample whole documents (a record), since
the tokens of one document are correlated (:func:`lm_eval_calib.record_metrics.record_groups`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from lm_eval_calib.harness.base import CalibrationTaskBase, ResultMetric, result_table
from lm_eval_calib.harness.results import ModelOutputError
from lm_eval_calib.metrics import METRICS
from lm_eval_calib.models.token_stats import token_stats_of
from lm_eval_calib.records import token_record


class TokenCalibrationTask(CalibrationTaskBase):
    """Calibration of top-1 next-token predictions; see the module docstring."""

    output_types = ("loglikelihood", "loglikelihood_rolling")
    requires_token_stats: ClassVar[bool] = True
    first_token_only: ClassVar[bool] = False
    """Score only the first continuation token (open-vocabulary facts) instead of every token."""

    def calibration_table(self) -> dict[str, ResultMetric]:
        # every metric, ``acc`` included, is computed from the token records (lm-eval has no per-token acc)
        return result_table(METRICS)

    def _where(self, doc: dict) -> str:
        """The document in an error message: its prompt, or its category when the prompt is empty (text)."""
        text = str(self.doc_to_text(doc))
        return repr(text[:60]) if text.strip() else f"{self.category_field}={self.category(doc)!r}"

    def token_record(self, doc: dict, results: list) -> dict:
        """The token record of one document; missing or non-finite token statistics are an error naming the
        task, the document and the fix."""
        stats = token_stats_of(results[0]) if results else None
        if stats is None:
            raise ModelOutputError(
                f"{self.config.task}: the model returned no token statistics; run this task with "
                "`--model hf-calib` or `--model vllm-calib` (a served model: `--model completions-calib`)"
            )
        if self.first_token_only:
            stats = stats[:1]
        bad = stats.first_non_finite()
        if bad is not None:
            name, position, value = bad
            raise ModelOutputError(
                f"{self.config.task}: document {self._where(doc)}: the model returned non-finite token "
                f"statistics ({name} is {value} at token {position} of {len(stats)}). Its scores overflow or "
                "its weights hold NaN: run it in full precision (`--model_args ...,dtype=float32`) and check "
                "the checkpoint."
            )
        return token_record(stats.confidence, stats.correct, -stats.token_logprobs, self.category(doc))

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        return self.record_values(self.token_record(doc, results))
