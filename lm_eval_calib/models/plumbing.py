"""How ``hf-calib`` and ``vllm-calib`` hand their scores back to lm-eval: one implementation for both.

Each backend scores distinct ``(context, continuation)`` token pairs and rolling windows its own way; what
lm-eval sees must not depend on which backend ran: every request gets the result of its pair (duplicates
share one), each result also goes to lm-eval's request cache (``cache_hook``), and a rolling document's
log-likelihood is the sum of its windows' sums, as ``hf`` adds them, with the token statistics of all its
windows in order. Registration under a model name is here too, so both names behave alike when taken.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lm_eval.api.registry import model_registry, register_model

from lm_eval_calib.models.requests import Pair
from lm_eval_calib.models.token_stats import LoglikelihoodResult, RollingLoglikelihoodResult, TokenStats

__all__ = ["register_backend", "rolling_results", "spread_results"]

eval_logger = logging.getLogger(__name__)


def register_backend(name: str, cls: type) -> None:
    """Register ``cls`` in lm-eval's model registry under ``name``.

    The package's lazy placeholder for the name is upgraded; a name that another object already holds is
    left to it, with a warning (lm-eval refuses to register one name twice). The entry point of this very
    class, registered by lm-eval's plugin loader, is ours: lm-eval 0.4.13's registry cannot compare it with
    the class (``EntryPoint.__eq__`` raises AttributeError; PR #4013 upgrades it), and it resolves to ``cls``.
    """
    try:
        register_model(name)(cls)
    except (ValueError, AttributeError) as exc:
        current = dict(model_registry.items()).get(name)
        if getattr(current, "value", None) == f"{cls.__module__}:{cls.__qualname__}":
            return
        eval_logger.warning(f"{name}: not registered in lm-eval's model registry ({exc})")


def spread_results(
    requests: Sequence[tuple[Any, list[int], list[int]]],
    unique: Mapping[Pair, list[int]],
    scored: Mapping[Pair, LoglikelihoodResult],
    cache_hook: Any,
) -> list[LoglikelihoodResult]:
    """Results in request order: each request gets its pair's result, and every request that lm-eval can
    cache (its strings are known) is added to the cache under ``loglikelihood``.

    ``unique`` maps each scored pair to the indices of the requests that asked for it
    (:func:`~lm_eval_calib.models.requests.unique_truncated_pairs`).
    """
    results: list[LoglikelihoodResult | None] = [None] * len(requests)
    for key, indices in unique.items():
        result = scored[key]
        for i in indices:
            results[i] = result
            request_str = requests[i][0]
            if request_str is not None:
                cache_hook.add_partial("loglikelihood", request_str, result)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"internal error: {len(missing)} loglikelihood request(s) got no result")
    return results  # type: ignore[return-value]


def rolling_results(
    requests: Sequence[Any],
    owners: Sequence[int],
    windows: Sequence[tuple[float, TokenStats]],
    cache_hook: Any,
) -> list[RollingLoglikelihoodResult]:
    """One result per document from its windows' ``(log-likelihood, token statistics)``.

    ``owners[k]`` is the index of the document window ``k`` belongs to (windows of a document in order, as
    :func:`~lm_eval_calib.models.requests.rolling_windows` yields them). A document's log-likelihood is the
    sum of its windows' log-likelihoods (``hf`` adds the window sums, not the tokens); a document without
    windows (an empty string) scores 0 with no statistics. Each result is added to lm-eval's request cache.
    """
    per_doc: list[list[tuple[float, TokenStats]]] = [[] for _ in requests]
    for doc, window in zip(owners, windows, strict=True):
        per_doc[doc].append(window)
    results = []
    for req, parts in zip(requests, per_doc, strict=True):
        total = sum(value for value, _ in parts)
        result = RollingLoglikelihoodResult(total, TokenStats.concatenate(stats for _, stats in parts))
        cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        results.append(result)
    return results
