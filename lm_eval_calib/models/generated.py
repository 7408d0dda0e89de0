"""The one rule by which ``hf-calib`` and ``vllm-calib`` attach generated-token log-probs to a generation.

lm-eval cuts a generation at its first stop sequence, so the returned text is usually a prefix of what the
model generated. The log-probs travel with the text only for exactly the tokens that spell it
(:func:`~lm_eval_calib.generation.text.aligned_length`): when the cut falls inside a token, or a special
token sits inside the text, no token sequence is *the* text, and the plain string goes back so the task
rescores it. Both backends use this function, so both answer the same documents from their own log-probs.

No torch, no vLLM: the backends pass their tokenizer's ``decode`` and special ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from lm_eval_calib.generation.text import GeneratedText, aligned_length

__all__ = ["with_generation_logprobs"]


def with_generation_logprobs(
    text: str,
    candidates: Iterable[tuple[Sequence[int], Sequence[float]]],
    decode: Callable[[list[int]], str],
    special_ids: Iterable[int] = (),
) -> str | GeneratedText:
    """``text`` as a :class:`GeneratedText` holding the ids and log-probs of the tokens that spell it.

    ``candidates`` are ``(token ids, log-probs)`` of generations that may have produced ``text`` (one, or
    several when identical prompts were generated in one batch); the first that spells it wins. ``text``
    itself (a plain ``str``) when none does, or when a special token sits among the tokens.
    """
    special = set(special_ids)
    for ids, logprobs in candidates:
        ids = list(ids)
        if len(ids) != len(logprobs):
            continue  # a recording that missed a step: not this text's log-probs
        n = aligned_length(ids, text, decode)
        if n is not None and not special.intersection(ids[:n]):
            return GeneratedText(text, ids[:n], list(logprobs)[:n])
    return str(text)
