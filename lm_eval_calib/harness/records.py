"""Per-document calibration records: what a task emits for each document and what gets logged.

A record is a plain JSON-able dict so that ``--log_samples`` output is enough to rebuild every metric (and
the reliability diagrams) later without re-running the model. Nothing in it is MMLU-specific: ``category``
is whatever breakdown the task has (an MMLU subject, a LAMA relation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from lm_eval_calib.metrics import CalibrationData


class ModelOutputError(RuntimeError):
    """The model's log-likelihood results cannot be scored (missing, malformed or NaN)."""


def option_logliks(results: Sequence[Any], n_options: int, task: str, doc_id: Any) -> list[float]:
    """Extract the per-option log-likelihoods from lm-eval's ``(loglikelihood, is_greedy)`` results."""
    if results is None or len(results) != n_options:
        got = "nothing" if results is None else f"{len(results)} result(s)"
        raise ModelOutputError(
            f"{task}: document {doc_id} has {n_options} options but the model returned {got}. Calibration "
            "tasks need a model that implements loglikelihood() (e.g. --model hf); generation-only "
            "models cannot be scored."
        )
    values = []
    for option, result in enumerate(results):
        value = result[0] if isinstance(result, (tuple, list)) else result
        if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
            raise ModelOutputError(
                f"{task}: document {doc_id} option {option}: the model returned {result!r} instead of a "
                "(log-likelihood, is_greedy) pair; use a model that implements loglikelihood()."
            )
        if not math.isfinite(float(value)):
            raise ModelOutputError(
                f"{task}: document {doc_id} option {option}: log-likelihood is {float(value)}. The model "
                "produced non-finite scores: check its weights and dtype (try dtype=float32)."
            )
        values.append(float(value))
    return values


def make_record(logliks: Sequence[float], target: int, category: str | None = None) -> dict[str, Any]:
    """Turn one document's option log-likelihoods into its calibration record."""
    item = CalibrationData.from_option_logprobs([logliks], [target])
    lls = np.asarray(logliks, dtype=np.float64)
    probs = softmax(lls)
    return {
        "confidence": float(item.confidence[0]),
        "correct": int(item.correct[0]),
        "brier": float(item.brier[0]),
        "nll": float(item.nll[0]),
        "target": int(target),
        "prediction": int(np.argmax(lls)),
        "probs": [float(p) for p in probs],
        "loglik": [float(v) for v in lls],
        "category": category,
    }


RECORD_KEY = "ece"
"""The metric key whose logged value is the full record; every other calibration key logs a reference."""


class RecordRef:
    """Stands in for a document's record under every calibration metric key but :data:`RECORD_KEY`.

    lm-eval logs each metric's per-document value into ``--log_samples``; without this the same record would
    be written once per metric (11 times). lm-eval serialises unknown objects with ``str()``, so the log shows
    ``"see 'ece'"`` while the aggregation still gets the record itself (also across processes: it pickles).
    """

    __slots__ = ("record",)

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def __str__(self) -> str:
        return f"see {RECORD_KEY!r}"

    __repr__ = __str__

    def __reduce__(self):
        return (RecordRef, (self.record,))


def record_of(value: dict[str, Any] | RecordRef) -> dict[str, Any]:
    """The record behind a per-document metric value (a record, or a reference to one)."""
    return value.record if isinstance(value, RecordRef) else value


def records_to_data(records: Sequence[dict[str, Any] | RecordRef]) -> CalibrationData:
    """Pool records into the metric core's input. A record may hold one item (a question) or many (the
    tokens of a document): values are flattened so every item weighs the same."""
    if not records:
        raise ValueError("no documents were scored; nothing to aggregate")
    records = [record_of(value) for value in records]

    def column(name: str) -> np.ndarray:
        return np.concatenate([np.atleast_1d(np.asarray(r[name], dtype=np.float64)) for r in records])

    return CalibrationData(
        confidence=column("confidence"), correct=column("correct"), brier=column("brier"), nll=column("nll")
    )
