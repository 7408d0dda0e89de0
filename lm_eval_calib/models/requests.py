"""Request preparation shared by ``hf-calib`` and ``vllm-calib``: the same truncation and de-duplication as
lm-eval's ``hf``, so both backends score exactly the token sequences ``hf`` would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lm_eval import utils as lm_utils

eval_logger = logging.getLogger(__name__)

Pair = tuple[tuple[int, ...], tuple[int, ...]]


def check_continuations(requests: Sequence[Any], model: str) -> None:
    """Refuse a loglikelihood request with an empty continuation before any scoring: it has no token to score,
    so it has no log-likelihood; the message names the task and document so the config can be fixed."""
    for req in requests:
        context, continuation = req.args
        if not continuation:
            raise ValueError(
                f"{model}: empty continuation in a loglikelihood request (task {req.task_name!r}, doc "
                f"{req.doc_id}, context ...{context[-60:]!r}); there is no token to score"
            )


def unique_truncated_pairs(
    requests: Sequence[tuple[Any, list[int], list[int]]], max_len: int, model: str
) -> dict[Pair, list[int]]:
    """``(context, continuation)`` token pairs -> indices of the requests that asked for them.

    A context longer than fits is cut from the left as ``hf`` does (``(ctx + cont)[-(max_len + 1):][:-1]``),
    and one warning says how many were cut. Empty or over-long continuations are errors naming the request.
    """
    unique: dict[Pair, list[int]] = {}
    n_truncated, longest = 0, 0
    for i, (request_str, ctx, cont) in enumerate(requests):
        if len(cont) == 0:
            raise ValueError(
                f"{model}: continuation {request_str[1] if request_str else ''!r} encodes to no tokens "
                f"(context ...{request_str[0][-60:] if request_str else ''!r}); there is nothing to score"
            )
        if len(ctx) == 0:
            raise ValueError(f"{model}: empty context tokens (lm-eval passes the prefix token for '')")
        if len(cont) > max_len:
            raise ValueError(
                f"{model}: a continuation of {len(cont)} tokens does not fit the model's maximum length "
                f"({max_len}); shorten it or raise max_length"
            )
        keep = max_len + 1 - len(cont)
        if len(ctx) > keep:
            n_truncated += 1
            longest = max(longest, len(ctx) + len(cont))
            ctx = ctx[-keep:]
        unique.setdefault((tuple(ctx), tuple(cont)), []).append(i)
    if n_truncated:
        eval_logger.warning(
            f"{model}: {n_truncated} of {len(requests)} requests exceed the model's maximum length "
            f"({max_len} tokens; longest context+continuation {longest}); truncating their contexts from the "
            "left, as `hf` does"
        )
    return unique


def rolling_windows(lm: Any, requests: Sequence[Any]) -> list[tuple[int, list[int], list[int]]]:
    """``(document index, tokens, scored tokens)`` for every rolling window of every document, exactly as
    lm-eval's ``hf`` cuts them: ``tokens`` (at most ``max_length + 1``) end with the scored tokens."""
    out = []
    for doc, (string,) in enumerate(req.args for req in requests):
        windows = map(
            lm_utils.make_disjoint_window,
            lm_utils.get_rolling_token_windows(
                token_list=lm.tok_encode(string),
                prefix_token=lm.prefix_token_id,
                max_seq_len=lm.max_length,
                context_len=1,
            ),
        )
        for ctx, cont in windows:
            out.append((doc, (ctx + cont)[-(lm.max_length + 1) :], cont))
    return out


def group_by_context(pairs: Sequence[Pair]) -> dict[tuple[int, ...], list[tuple[int, ...]]]:
    """Continuations grouped by their (already truncated) context, each group longest first.

    Both backends run a context once for all its continuations; the order inside a group (longest first,
    then by tokens) does not depend on the request order, so neither do the results.
    """
    groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for ctx, cont in pairs:
        groups.setdefault(ctx, []).append(cont)
    for conts in groups.values():
        conts.sort(key=lambda c: (-len(c), c))
    return groups
