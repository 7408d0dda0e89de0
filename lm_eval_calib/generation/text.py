"""A generated answer that carries the log-probs of its own tokens through lm-eval.

lm-eval's ``generate_until`` returns strings. ``hf-calib`` and ``vllm-calib`` return :class:`GeneratedText`:
it IS that string (equality, hashing, slicing, JSON, filters) and also holds the ids and log-probs of the
generated tokens that make up the text, so the sequence-probability estimators cost no second pass.
Anything that rebuilds the string (a filter, lm-eval's request cache) drops the log-probs, and the task
falls back to rescoring.

numpy only: importing this module does not import torch or lm-eval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class GeneratedText(str):
    """A generation (exactly the string lm-eval returns) plus ``token_ids`` and ``token_logprobs``."""

    token_ids: np.ndarray
    token_logprobs: np.ndarray

    def __new__(
        cls, text: str, token_ids: Sequence[int] | None = None, token_logprobs: Sequence[float] | None = None
    ):
        if token_ids is None and token_logprobs is None:
            # ``type(result)(x)``: lm-eval casts a gold answer to the type of the model's result when the
            # task has no extracting filter; that must give the plain string ``hf`` would have given.
            return str(text)
        if token_ids is None or token_logprobs is None:
            raise ValueError("token_ids and token_logprobs go together: give both or neither")
        self = super().__new__(cls, text)
        ids = np.asarray(token_ids, dtype=np.int64)
        logprobs = np.asarray(token_logprobs, dtype=np.float64)
        if ids.shape != logprobs.shape or ids.ndim != 1:
            raise ValueError(f"token_ids {ids.shape} and token_logprobs {logprobs.shape} must be equal 1-D")
        self.token_ids, self.token_logprobs = ids, logprobs
        return self

    def __reduce__(self):
        return (GeneratedText, (str(self), self.token_ids.tolist(), self.token_logprobs.tolist()))


class NonFiniteLogprobsError(ValueError):
    """The model scored a generation (or a question about it) as NaN or infinite: its weights hold NaN or its
    half-precision scores overflow. Raised where the document is known, so the message names it."""


def non_finite_message(where: str, what: str, value: float) -> str:
    """The error for a non-finite log-prob: ``where`` (``"task: document 3"``), what was scored, the fix."""
    return (
        f"{where}: the model scored {what} as {value}. Its scores overflow or its weights hold NaN: run it "
        "in full precision (`--model_args ...,dtype=float32`) and check the checkpoint."
    )


def generation_logprobs_of(result: object) -> np.ndarray | None:
    """The token log-probs a model attached to a generation, or ``None`` (plain string)."""
    return result.token_logprobs if isinstance(result, GeneratedText) else None


def aligned_length(token_ids: Sequence[int], text: str, decode: Callable[[list[int]], str]) -> int | None:
    """The number of leading ``token_ids`` whose decoding is exactly ``text``, or ``None``.

    lm-eval cuts a generation at its first stop sequence (and drops special tokens), so the returned text is
    a prefix of the decoded tokens. It is scored as the tokens that spell it; when the cut falls inside a
    token no such prefix exists and the caller rescores the text instead.
    """
    ids = list(token_ids)
    if text == "":
        return 0
    lo, hi = 1, len(ids)
    while lo < hi:  # the shortest prefix whose decoding is at least as long as the text
        mid = (lo + hi) // 2
        if len(decode(ids[:mid])) >= len(text):
            hi = mid
        else:
            lo = mid + 1
    for n in (lo, lo - 1, lo + 1):  # decoding length is monotone only up to multi-byte characters
        if 0 < n <= len(ids) and decode(ids[:n]) == text:
            return n
    return None
