"""The one rule by which ``hf-calib`` and ``vllm-calib`` attach generated-token log-probs to a generation.

lm-eval cuts a generation at its first stop sequence, so the returned text is usually a prefix of what the
model generated. The log-probs travel with the text only for exactly the tokens that spell it
(:func:`~lm_eval_calib.generation.text.aligned_length`): when the cut falls inside a token, or a special
token sits inside the text, no token sequence is *the* text, and the plain string goes back so the task
rescores it. Both backends use this function, so both answer the same documents from their own log-probs.

It is also where a broken model is caught on generation tasks: a model whose weights hold NaN (or whose
half-precision scores overflow) still "generates", usually an empty answer (the first token is whatever
``argmax`` makes of NaN logits), which would score at confidence 1.0. The log-probs of the tokens that spell
the text and of the token that ended it must be finite, else :class:`~lm_eval_calib.generation.text.
NonFiniteLogprobsError` names the task, the document and the fix.

No torch, no vLLM: the backends pass their tokenizer's ``decode`` and special ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lm_eval_calib.generation.text import (
    GeneratedText,
    NonFiniteLogprobsError,
    aligned_length,
    non_finite_message,
)

__all__ = ["request_label", "with_generation_logprobs"]


def request_label(request: Any, backend: str) -> str:
    """``"task: document 3"`` for an lm-eval request (its task and document), for error messages."""
    task, doc_id = getattr(request, "task_name", None), getattr(request, "doc_id", None)
    if task is None:
        return f"{backend}: a generation"
    return f"{task}: document {doc_id}"


def with_generation_logprobs(
    text: str,
    candidates: Iterable[tuple[Sequence[int], Sequence[float]]],
    decode: Callable[[list[int]], str],
    special_ids: Iterable[int] = (),
    where: str = "a generation",
) -> str | GeneratedText:
    """``text`` as a :class:`GeneratedText` holding the ids and log-probs of the tokens that spell it.

    ``candidates`` are ``(token ids, log-probs)`` of generations that may have produced ``text`` (one, or
    several when identical prompts were generated in one batch); the first that spells it wins. ``text``
    itself (a plain ``str``) when none does, or when a special token sits among the tokens.
    A non-finite log-prob among the winning tokens or the token after them is a
    :class:`NonFiniteLogprobsError` naming ``where`` (see the module docstring).
    """
    special = set(special_ids)
    for ids, logprobs in candidates:
        ids = list(ids)
        if len(ids) != len(logprobs):
            continue  # a recording that missed a step: not this text's log-probs
        n = aligned_length(ids, text, decode)
        if n is not None and not special.intersection(ids[:n]):
            _check_finite(list(logprobs)[: n + 1], where)
            return GeneratedText(text, ids[:n], list(logprobs)[:n])
    return str(text)


def _check_finite(logprobs: Sequence[float], where: str) -> None:
    """Raise when a generated token's log-prob is NaN or infinite (the model is broken, see the module
    docstring); the token that ended the text counts too, since it decided where the answer stops."""
    for position, value in enumerate(logprobs):
        if not math.isfinite(value):
            what = f"generated token {position} of its answer"
            raise NonFiniteLogprobsError(non_finite_message(where, what, float(value)))
