"""The per-document calibration record: the contract between a calibration task and everything after it.

A task writes one record per lm-eval document; lm-eval logs it with ``--log_samples`` under
:data:`RECORD_LOG_KEY`; the aggregations, the report and the study read it back. The record is a plain
JSON-able dict, so a samples file is enough to rebuild every metric and diagram without the model. The one
reader of samples files is :mod:`lm_eval_calib.records_io` (see docs/records.md); this module does no I/O.

Schema (one of three shapes; ``category`` is whatever breakdown the task has, or ``null``):

Option record (one item: a question with options, written by :func:`make_record`)::

    {"confidence": 0.61, "correct": 1, "brier": 0.21, "nll": 0.49,   # top-label values of the item
     "target": 2, "prediction": 2,                                    # gold and argmax option index
     "probs": [...], "loglik": [...],                                 # per option: softmax, log-likelihood
     "category": "anatomy",
     "conformal_sets": {"alpha": 0.1, "folds": 5, "seed": 0, "lac": [2], "aps": [2, 0]}}  # see below

``conformal_sets`` (:data:`CONFORMAL_SETS_FIELD`) is added at aggregation, once every document is scored,
to the records of tasks that report the conformal keys.

Token record (many items: the scored tokens of a document, written by :func:`token_record`)::

    {"confidence": [...], "correct": [...], "brier": [...], "nll": [...],   # one entry per token
     "category": null}

Generation record (one generated answer of a ``generate_until`` task and one confidence estimator, written by
:func:`generation_record`; logged under ``RECORD_LOG_KEY + "_" + estimator``, e.g. ``ece_seqprob``)::

    {"confidence": 0.42, "correct": 1, "brier": 0.34, "nll": 0.87,   # binary: is the answer right?
     "category": null, "estimator": "seqprob",
     ...}                                                             # estimator-specific fields, e.g.
     # seqprob/seqprob_mean: "logprob" (sum), "n_tokens", "source" ("generation" | "rescored" | "empty")
     # ptrue: "loglik" ([A, B]); verbal: "reply" (the model's text), "parsed" (0-100 value or null)
     # consistency: "agree", "samples"; lexsim: "texts" (the K samples)
     # semantic_entropy/num_sets/eigv/degree: "texts", "answers" (filtered), "clusters" (class per sample)

``correct`` is the task's own primary metric (> 0.5) after the filter of that line. ``confidence`` is
``null`` (and ``brier``/``nll`` too) when the estimator gave none (an unparseable verbalised reply): such
records are counted (``n_unparsed_verbal``) and left out of that estimator's metrics. ``nll`` is the binary
-log p(correctness), with p floored at :data:`NLL_FLOOR`.

Every item weighs the same when records are pooled (:func:`records_to_data`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

from lm_eval_calib.metrics import CalibrationData

RECORD_LOG_KEY = "ece"
"""The metric key under which lm-eval logs a document's full record in ``--log_samples`` output; every
other calibration metric key logs a :class:`RecordRef` (printed as ``"see 'ece'"``)."""

CONFORMAL_SETS_FIELD = "conformal_sets"
"""Field of a multiple-choice record that holds the document's cross-fitted conformal answer sets, added when
the task aggregates (they depend on every document): ``{"alpha": 0.1, "folds": 5, "seed": 0, "lac": [0, 2],
"aps": [0, 1, 2]}``, option indices per score. lm-eval logs the record object itself in one process, so the
samples file carries the field; gathered across processes the logged copies do not (the report recomputes
the same sets from ``loglik`` and ``target``)."""
NORM_SUFFIX = "_norm"
"""Result-key suffix of the calibration of lm-eval's ``acc_norm`` prediction rule (``ece_norm``, ...); its
record is logged under ``RECORD_LOG_KEY + NORM_SUFFIX``."""


def length_normalised(logliks: Sequence[float], choices: Sequence[str]) -> list[float]:
    """lm-eval's ``acc_norm`` scores: each option's log-likelihood divided by its choice's length in
    characters (``len(choice)``, without the target delimiter), exactly as lm-eval 0.4's
    ``ConfigurableTask.process_results`` computes ``pred_norm`` (an empty choice counts as length 1 where
    lm-eval would divide by zero). A record built from these scores
    (:func:`make_record`) has confidence ``softmax(ll_i / len_i)`` at the ``acc_norm`` prediction."""
    if len(logliks) != len(choices):
        raise ValueError(f"{len(logliks)} log-likelihoods for {len(choices)} choices")
    return [float(ll) / max(float(len(choice)), 1.0) for ll, choice in zip(logliks, choices, strict=True)]


def make_record(logliks: Sequence[float], target: int, category: str | None = None) -> dict[str, Any]:
    """The option record of one document from its per-option log-likelihoods and gold option index."""
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


def token_record(confidence: np.ndarray, correct: np.ndarray, nll: np.ndarray, category: Any) -> dict:
    """The token record of one document (lists, one entry per scored token)."""
    return {
        "confidence": confidence.tolist(),
        "correct": correct.astype(int).tolist(),
        "brier": ((confidence - correct) ** 2).tolist(),  # top-label (binary) Brier: no full distribution
        "nll": nll.tolist(),
        "category": category,
    }


NLL_FLOOR = 1e-12
"""Smallest probability a generation record's binary NLL uses: a confidence of exactly 1 on a wrong answer
(an empty generation's sequence probability, a verbalised 100) costs 27.6 nats instead of infinity."""


def generation_record(
    confidence: float | None, correct: bool | int, category: Any = None, **extras: Any
) -> dict[str, Any]:
    """The generation record of one answer under one estimator (see the module docstring)."""
    y = int(bool(correct))
    if confidence is None:
        return {"confidence": None, "correct": y, "brier": None, "nll": None, "category": category, **extras}
    c = float(confidence)
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"a confidence must lie in [0, 1], got {c}")
    p = c if y else 1.0 - c
    return {
        "confidence": c,
        "correct": y,
        "brier": (c - y) ** 2,
        "nll": -math.log(max(p, NLL_FLOOR)),
        "category": category,
        **extras,
    }


class RecordRef:
    """Stands in for a document's record under every result key but the one the record is logged under.

    lm-eval logs each metric's per-document value into ``--log_samples``; without this the same record would
    be written once per metric (11 times). lm-eval serialises unknown objects with ``str()``, so the log shows
    ``"see 'ece'"`` (``key``: where the record itself is logged: :data:`RECORD_LOG_KEY`, or
    ``RECORD_LOG_KEY + NORM_SUFFIX`` for the ``acc_norm`` rule, ``ece_<estimator>`` for a generation
    estimator) while the aggregation still gets the record itself (also across processes: it pickles).
    """

    __slots__ = ("key", "record")

    def __init__(self, record: dict[str, Any], key: str = RECORD_LOG_KEY) -> None:
        self.record = record
        self.key = key

    def __str__(self) -> str:
        return f"see {self.key!r}"

    __repr__ = __str__

    def __reduce__(self):
        return (RecordRef, (self.record, self.key))


def record_of(value: dict[str, Any] | RecordRef) -> dict[str, Any]:
    """The record behind a per-document metric value (a record, or a reference to one)."""
    return value.record if isinstance(value, RecordRef) else value


VALUE_FIELDS = ("confidence", "correct", "brier", "nll")
"""The fields every record holds, one value per item: what :func:`records_to_data` pools."""

_EXPECTED = {
    "confidence": "a probability in [0, 1]",
    "correct": "0 or 1 (or true/false)",
    "brier": "a finite number",
    "nll": "a number, or null when unknown",
}
"""What each value field must hold, item by item (a token record holds a flat list of them)."""


@dataclass(frozen=True)
class RecordProblem:
    """Why a record read back from a file cannot be pooled: the field and what it should hold."""

    field: str
    expected: str


def _numbers(value: Any, *, allow_bool: bool = False, allow_null: bool = False) -> np.ndarray | None:
    """``value`` as float64 (a number: 0-d, a flat list of numbers: 1-d), or None when it is neither.

    Stricter than ``np.asarray(value, dtype=float)``, which also reads ``"0.2"`` and ``True`` as numbers."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # a list holding lists of other lengths
        return None
    if array.ndim > 1:
        return None
    kinds = "iufb" if allow_bool else "iuf"
    if array.dtype.kind in kinds:
        return array.astype(np.float64)
    if array.dtype.kind != "O":
        return None
    items = []  # integers too large for int64, nulls
    for item in array.ravel().tolist():
        if item is None and allow_null:
            items.append(math.nan)
        elif isinstance(item, int | float) and (allow_bool or not isinstance(item, bool)):
            try:
                items.append(float(item))
            except OverflowError:
                return None
        else:
            return None
    return np.asarray(items, dtype=np.float64).reshape(array.shape)


def record_problem(record: Mapping[str, Any], prefix: str = "") -> RecordProblem | None:
    """The first value field of ``record`` that :func:`records_to_data` cannot pool, or None.

    Records this package writes always pass. A damaged or hand-edited samples file would otherwise stop deep
    in numpy (``KeyError``, ``TypeError``) or in the metric core with a message that cannot say which
    document is wrong; the reader (:mod:`lm_eval_calib.records_io`) adds the file and line. ``prefix`` is
    put before the field names in the message (``"ece."``). A ``confidence`` of ``null`` (an unparseable
    verbalised reply) is the reader's to skip, not checked here.
    """
    confidence = _numbers(record.get("confidence"))
    if confidence is None or not ((confidence >= 0) & (confidence <= 1)).all():  # NaN is outside too
        return RecordProblem(
            "confidence", _EXPECTED["confidence"] + " or a flat list of them (one per token)"
        )
    for name in VALUE_FIELDS[1:]:
        values = _numbers(record.get(name), allow_bool=name == "correct", allow_null=name == "nll")
        if (
            name not in record
            or values is None
            or values.shape != confidence.shape
            or (name == "correct" and not ((values == 0) | (values == 1)).all())
            or (name == "brier" and not np.isfinite(values).all())
        ):
            if confidence.ndim:
                n = confidence.shape[0]
                expected = (
                    f"a list of {n} values (one per item, as {prefix}confidence), each {_EXPECTED[name]}"
                )
            elif values is not None and values.ndim:
                expected = f"{_EXPECTED[name]} (one value, as {prefix}confidence)"
            else:
                expected = _EXPECTED[name]
            return RecordProblem(name, expected)
    return None


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
