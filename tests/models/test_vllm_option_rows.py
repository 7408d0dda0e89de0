"""Which prompt log-prob rows of a cache-reading option request ``vllm-calib`` keeps (no vLLM needed).

``stats_after_cached_prefix`` reads a vLLM ``RequestOutput``: ``num_cached_tokens`` and ``prompt_logprobs``
in vLLM's list-of-dicts form (``None`` for the first token, then ``{token id: log-prob}`` per position: the
actual token and the top-1). The outputs here are written out as data; the real engine's are checked in
tests/models/test_vllm_option_logprobs.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from lm_eval_calib.models.token_stats import TokenStats
from lm_eval_calib.models.vllm_engine import next_token_stats, stats_after_cached_prefix

CONTEXT = [5, 6, 7, 8]
OPTION = [20, 21, 22]
PROMPT = CONTEXT + OPTION
#: per prompt position after the first: (log-prob of the actual token, top-1 token, its log-prob)
ROWS = {1: (-1.0, 6, -1.0), 2: (-2.0, 9, -0.5), 3: (-1.5, 9, -0.2), 4: (-3.0, 30, -0.1),
        5: (-0.7, 21, -0.7), 6: (-0.4, 31, -0.3)}  # fmt: skip


def _output(num_cached_tokens, rows=ROWS):
    logprobs = [None] + [{PROMPT[p]: rows[p][0], rows[p][1]: rows[p][2]} for p in range(1, len(PROMPT))]
    return SimpleNamespace(num_cached_tokens=num_cached_tokens, prompt_logprobs=logprobs)


def _first(logprob=-3.0, top1=30, top1_logprob=-0.1) -> TokenStats:
    """The option's first token (20) as the context's own prefill scored it."""
    return next_token_stats(OPTION[0], top1, {OPTION[0]: logprob, top1: top1_logprob})


def test_rows_after_a_cache_that_ends_inside_the_context_are_kept_when_the_first_row_agrees():
    stats = stats_after_cached_prefix(_output(2), PROMPT, len(CONTEXT), _first(), 1e-4)
    assert stats is not None
    assert stats.token_ids.tolist() == OPTION[1:]
    np.testing.assert_array_equal(stats.token_logprobs, [-0.7, -0.4])
    assert stats.top1_ids.tolist() == [21, 31]
    assert stats.is_greedy is False  # 22 is not the top-1 token at its position


def test_a_first_row_that_is_not_the_prefills_is_refused():
    """A row vLLM did not compute holds another request's numbers: the first option row disagrees."""
    for first in (_first(logprob=-2.5), _first(top1=99), _first(top1_logprob=-0.3)):
        assert stats_after_cached_prefix(_output(2), PROMPT, len(CONTEXT), first, 1e-4) is None
    assert stats_after_cached_prefix(_output(2), PROMPT, len(CONTEXT), _first(logprob=-3.00005), 1e-4)


def test_a_cache_reaching_into_the_option_or_not_reported_is_refused():
    assert stats_after_cached_prefix(_output(5), PROMPT, len(CONTEXT), _first(), 1e-4) is None
    assert stats_after_cached_prefix(_output(None), PROMPT, len(CONTEXT), _first(), 1e-4) is None


def test_a_cache_covering_exactly_the_context_keeps_the_rows_after_its_first_option_token():
    """The first option row was not computed (nothing to compare): the rows after it are real."""
    stale = {**ROWS, 4: (-9.0, 1, -9.0)}
    stats = stats_after_cached_prefix(_output(4, stale), PROMPT, len(CONTEXT), _first(), 1e-4)
    assert stats is not None and stats.token_ids.tolist() == OPTION[1:]
