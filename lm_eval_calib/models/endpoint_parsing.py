"""Reading calibration inputs out of OpenAI-compatible responses: pure functions, no I/O, no lm-eval.

Two routes, one per kind of endpoint:

- ``/v1/completions`` with ``echo: true, logprobs: 1`` returns, for every prompt token, its log-probability
  and the top-1 token with its log-probability: exactly the per-token statistics
  (:class:`~lm_eval_calib.models.token_stats.TokenStats`) that ``hf-calib`` computes locally.
  :func:`completion_token_stats` reads them.
- ``/v1/chat/completions`` has no prompt log-probs. It returns, for the first generated token, the
  ``top_logprobs`` most likely tokens. Where every option of a question is one token (``" A"``..``" D"``),
  those are the option log-probabilities: :func:`option_logprobs_from_top` matches options to tokens.

The matching rule (documented in docs/endpoints.md and tested):

- an option and a returned token match when they are equal after removing surrounding white space
  (``" A"``, ``"A"`` and ``"A\\n"`` all spell option ``" A"``); ``fold_case=True`` also ignores case;
- several returned tokens that spell the same option (``"A"`` and ``" A"``) are pooled: their probabilities
  add up (log-sum-exp);
- an option that no returned token spells gets the floor ``log(min(p_min, r / m))``: a token outside the
  top-k is no more probable than the least probable token listed (``p_min``), and the ``m`` missing options
  together hold at most the probability mass the top-k leave over (``r = 1 - sum(top-k)``). The floor is an
  upper bound, so a missing option is never given less than it could have; how often it happened is
  counted (``floored``) and reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lm_eval_calib.models.token_stats import TokenStats

__all__ = [
    "TOKEN_ID_PREFIX",
    "OptionLogprobs",
    "completion_token_stats",
    "generated_logprobs_from_chat",
    "option_logprobs_from_top",
    "parse_token_id",
    "spelled_length",
]

#: vLLM and SGLang name tokens ``token_id:<id>`` when asked with ``return_tokens_as_token_ids: true``.
TOKEN_ID_PREFIX = "token_id:"

#: Smallest residual probability mass used by the floor (the top-k sum can round above 1).
_MIN_RESIDUAL = 1e-12


class EndpointResponseError(ValueError):
    """A server's response lacks what the calibration route needs (the message names the server setting)."""


def parse_token_id(token: str) -> int | None:
    """The id in a ``token_id:<id>`` token name, or None for any other token text."""
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX) :])
        except ValueError:
            return None
    return None


def completion_token_stats(choice: Mapping[str, Any], token_ids: Sequence[int], ctxlen: int) -> TokenStats:
    """Token statistics of the scored tokens ``token_ids[ctxlen:]`` from one echoed completion choice.

    ``choice`` is one element of ``choices`` of a ``/v1/completions`` response to the prompt ``token_ids``
    sent with ``echo: true, logprobs: 1`` (``max_tokens: 1``: one generated token follows the prompt and
    is ignored). Where tokens come as ``token_id:<id>`` they must equal the ids sent; the top-1 id is read
    from its name, or, for servers that name tokens by text, is the scored token's own id when that token
    is the most probable (the only case in which the name is not needed to tell right from wrong), else -1.
    """
    logprobs = choice.get("logprobs") or {}
    token_lps, tops = logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
    n = len(token_ids)
    if not isinstance(token_lps, list) or not isinstance(tops, list) or len(token_lps) < n or len(tops) < n:
        raise EndpointResponseError(
            "the completions endpoint returned no prompt log-probs (echo with logprobs): "
            f"got {_describe(logprobs)}; the server must support `echo: true` with `logprobs` (vLLM, SGLang, "
            "TGI's OpenAI route do)"
        )
    names = logprobs.get("tokens") or []
    actual, top1_ids, top1_lps = [], [], []
    for pos in range(ctxlen, n):
        value, top = token_lps[pos], tops[pos]
        if value is None or not isinstance(top, Mapping) or not top:
            raise EndpointResponseError(
                f"the completions endpoint returned no log-prob for prompt position {pos}; raise the "
                "server's log-prob limit (vLLM: --max-logprobs) or use a server that echoes prompt log-probs"
            )
        sent = parse_token_id(names[pos]) if pos < len(names) else None
        if sent is not None and sent != int(token_ids[pos]):
            raise EndpointResponseError(
                f"the server echoed token {sent} at position {pos} where {int(token_ids[pos])} was sent: "
                "the tokenizer given to lm-eval (tokenizer=...) is not the served model's"
            )
        best_name, best = max(top.items(), key=lambda kv: kv[1])
        best_id = parse_token_id(best_name)
        if best_id is None:
            best_id = int(token_ids[pos]) if float(value) >= float(best) else -1
        actual.append(float(value))
        top1_ids.append(best_id)
        top1_lps.append(max(float(best), float(value)))
    return TokenStats(
        token_ids=np.asarray(token_ids[ctxlen:n], dtype=np.int64),
        token_logprobs=np.asarray(actual),
        top1_ids=np.asarray(top1_ids, dtype=np.int64),
        top1_logprobs=np.asarray(top1_lps),
    )


@dataclass(frozen=True)
class OptionLogprobs:
    """Per-option log-probabilities of a question read from one ``top_logprobs`` list."""

    logprobs: tuple[float, ...]
    floored: tuple[bool, ...]
    """Whether each option was missing from the top-k and got the floor."""


def _normalise(text: str, fold_case: bool) -> str:
    text = text.strip()
    return text.casefold() if fold_case else text


def option_logprobs_from_top(
    top: Sequence[Mapping[str, Any]], options: Sequence[str], fold_case: bool = False
) -> OptionLogprobs:
    """Each option's log-probability as the first generated token (see the module docstring for the rule).

    ``top`` is a chat response's ``logprobs.content[0].top_logprobs``: ``[{"token": str, "logprob": float},
    ...]``.
    """
    if not top:
        raise EndpointResponseError(
            "the chat endpoint returned no top_logprobs for the answer token; the server must return "
            "`logprobs: true, top_logprobs: k` (vLLM: raise --max-logprobs to at least k)"
        )
    entries = [(_normalise(str(e.get("token", "")), fold_case), float(e["logprob"])) for e in top]
    wanted = [_normalise(option, fold_case) for option in options]
    found: list[float | None] = []
    for option in wanted:
        matches = [lp for token, lp in entries if token == option]
        found.append(_logsumexp(matches) if matches else None)
    n_missing = sum(value is None for value in found)
    floor = None
    if n_missing:
        listed = [lp for _, lp in entries]
        residual = max(1.0 - sum(math.exp(lp) for lp in listed), _MIN_RESIDUAL)
        floor = min(min(listed), math.log(residual / n_missing))
    return OptionLogprobs(
        logprobs=tuple(floor if value is None else value for value in found),  # type: ignore[misc]
        floored=tuple(value is None for value in found),
    )


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def generated_logprobs_from_chat(choice: Mapping[str, Any]) -> list[tuple[bytes, float]] | None:
    """``(token bytes, log-prob)`` of each generated token of a chat choice, or None when not returned."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list):
        return None
    out = []
    for entry in content:
        raw = entry.get("bytes")
        token = bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode("utf-8")
        out.append((token, float(entry["logprob"])))
    return out


def spelled_length(pieces: Sequence[bytes], text: str) -> int | None:
    """The number of leading token ``pieces`` whose bytes are exactly ``text`` (UTF-8), or None.

    A server cuts a generation at its stop sequence, so the returned text is a prefix of the generated tokens;
    the log-probs belong to the text only when a whole number of tokens spells it.
    """
    target = text.encode("utf-8")
    if not target:
        return 0
    joined = b""
    for n, piece in enumerate(pieces, start=1):
        joined += piece
        if joined == target:
            return n
        if not target.startswith(joined):
            return None
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {type(v).__name__}" for k, v in value.items()) + "}" if value else "{}"
    return type(value).__name__
