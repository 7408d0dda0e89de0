"""Read lm-eval's per-request model results (``(loglikelihood, is_greedy)`` pairs) into option scores.

What a calibration task makes of them, the per-document record, lives in :mod:`lm_eval_calib.records`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FLOORED_KEY = "n_floored_options"
"""Results key: how many option log-probabilities the model could not read and gave a floor instead (a chat
endpoint's options outside its ``top_logprobs``; see lm_eval_calib/models/chat_calib.py)."""


def floored_options(results: Sequence[Any]) -> int | None:
    """How many of a document's option results say ``floored`` (None: the model does not say, i.e. it
    scored every option exactly)."""
    flags = [getattr(result, "floored", None) for result in results]
    if all(flag is None for flag in flags):
        return None
    return sum(bool(flag) for flag in flags)


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
