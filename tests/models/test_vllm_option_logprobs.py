"""``vllm-calib``'s multi-token options read their context from vLLM's prefix cache: same numbers, less work.

With ``prefix_caching=True`` each question's context is prefilled once (that request also gives every
option's first token) and each option request reads the context's cached KV blocks, so vLLM computes prompt
log-probs only for the context's last, partial block and the option. These tests compare that path with the
uncached one (every option request runs context + option in full) and with ``hf-calib``, on real 5-shot MMLU
contexts and hand-made options: first tokens that differ, options that share a prefix, options long enough to
cross KV-cache blocks, a one-token option beside them. Runs where vLLM is installed (``.ci/run_vllm``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; .ci/run_vllm runs these tests in an environment with vllm-cpu"
)

from helpers import build_tiny_llama, hf_calib_lm, task_requests  # noqa: E402

pytestmark = pytest.mark.vllm

LL_ATOL = 1e-3  # |vllm-calib - hf-calib| per request in float32 (as tests/models/test_vllm_calib.py)
SAME_ENGINE_ATOL = 1e-5  # two scoring paths of the same vLLM engine

#: Engines stay alive for the session: in-process vLLM engines share global state (see test_vllm_calib.py).
_ENGINES: list = []

OPTIONS = [
    " the liver",  # first tokens that differ
    " a small bone of the middle ear",
    " seventeen",
    " the left lung",  # a shared prefix
    " the left kidney",
    " the left ventricle of the heart",
    " A",  # one token, scored from the context's prefill
]
#: ~150-token options that share their first ~140 tokens: they cross a 128-token KV-cache block together.
LONG_STEM = " The answer follows from the anatomy of the region," + " and from its nerves and vessels" * 12


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("vllm-option-tiny"), hidden_size=64, heads=2, kv_heads=1)


def _vllm(folder: Path, **kwargs):
    from lm_eval_calib.models.vllm_calib import VLLMCalibLM

    lm = VLLMCalibLM(pretrained=str(folder), dtype="float32", kv_cache_memory_bytes=2**26, **kwargs)
    _ENGINES.append(lm)
    return lm


@pytest.fixture(scope="module")
def cached_lm(tiny_dir):
    return _vllm(tiny_dir, prefix_caching=True)


@pytest.fixture(scope="module")
def uncached_lm(tiny_dir):
    return _vllm(tiny_dir, prefix_caching=False)


@pytest.fixture(scope="module")
def option_requests(data_root):
    """Three 5-shot calib_mmlu_anatomy contexts (several cache blocks each), every option after each."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    built = task_requests(TaskManager(metadata={"data_dir": str(data_root)}), {"calib_mmlu_anatomy": 3})
    contexts = sorted({r.args[0] for r in built["calib_mmlu_anatomy"]})
    options = [*OPTIONS, LONG_STEM + " of the head.", LONG_STEM + " of the neck and the thorax."]
    return [Instance("loglikelihood", {}, (ctx, opt), i) for ctx in contexts for i, opt in enumerate(options)]


class Recorder:
    """The real engine, with every call's prompts, params and outputs kept (to count the work done)."""

    def __init__(self, engine) -> None:
        self.engine, self.info, self.calls = engine, engine.info, []

    def generate(self, prompts, params):
        outputs = self.engine.generate(prompts, params)
        self.calls.append((prompts, params, outputs))
        return outputs


def _assert_same(got, expected, atol: float) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert abs(a[0] - b[0]) <= atol, (a[0], b[0])
        assert a[1] == b[1]
        sa, sb = a.token_stats, b.token_stats
        assert sa.token_ids.tolist() == sb.token_ids.tolist()
        assert sa.top1_ids.tolist() == sb.top1_ids.tolist()
        np.testing.assert_allclose(sa.token_logprobs, sb.token_logprobs, atol=atol)
        np.testing.assert_allclose(sa.top1_logprobs, sb.top1_logprobs, atol=atol)


def test_options_read_from_the_cached_context_equal_uncached_and_hf(
    tiny_dir, cached_lm, uncached_lm, option_requests
):
    cached_lm.engine.llm.reset_prefix_cache()
    spy = Recorder(cached_lm.engine)
    cached_lm.engine = spy
    try:
        got = cached_lm.loglikelihood(option_requests, disable_tqdm=True)
    finally:
        cached_lm.engine = spy.engine
    _assert_same(got, uncached_lm.loglikelihood(option_requests, disable_tqdm=True), SAME_ENGINE_ATOL)
    _assert_same(got, hf_calib_lm(tiny_dir).loglikelihood(option_requests, disable_tqdm=True), LL_ATOL)

    # the work: each option request computed (prompt log-probs included) at most its context's last partial
    # block and the option, never the context's full blocks again; only options that share a prefix reaching
    # into a block of their own (the two long ones) may need a second request without the cache
    block = cached_lm.info.block_size
    contexts = {tuple(cached_lm.tok_encode(r.args[0])) for r in option_requests}
    assert min(map(len, contexts)) > 2 * block  # 315-360 tokens: two full blocks each
    sent = [
        (tuple(prompt), p.skip_reading_prefix_cache, output)
        for prompts, params, outputs in spy.calls
        for prompt, p, output in zip(prompts, params, outputs, strict=True)
        if p.prompt_logprobs
    ]
    assert not any(prompt in contexts for prompt, _, _ in sent)  # no context scored by prompt log-probs
    for r in option_requests:
        if r.args[1] not in OPTIONS:
            continue
        ctx = cached_lm.tok_encode(r.args[0])
        prompt = tuple(ctx + cached_lm.tok_encode(r.args[0] + r.args[1])[len(ctx) :])
        if len(prompt) - len(ctx) < 2:
            continue  # one token: read from the context's prefill, no request of its own
        mine = [(skip, output) for p, skip, output in sent if p == prompt]
        assert len(mine) == 1 and mine[0][0] is False  # one request, read from the cache, kept
        computed = len(prompt) - mine[0][1].num_cached_tokens
        assert computed < block + len(prompt) - len(ctx), (computed, len(prompt), len(ctx))


def test_a_second_pass_scores_again_where_the_cache_covers_the_options(cached_lm, option_requests):
    """Scored again, the options' own blocks are cached (past the context): those rows were not computed,
    so such options are rescored without the cache, with the same numbers."""
    first = cached_lm.loglikelihood(option_requests, disable_tqdm=True)
    spy = Recorder(cached_lm.engine)
    cached_lm.engine = spy
    try:
        again = cached_lm.loglikelihood(option_requests, disable_tqdm=True)
    finally:
        cached_lm.engine = spy.engine
    retried = [
        p for _, params, _ in spy.calls for p in params if p.prompt_logprobs and p.skip_reading_prefix_cache
    ]
    assert retried  # the long options filled blocks of their own the first time
    _assert_same(again, first, SAME_ENGINE_ATOL)


def test_rows_the_engine_did_not_compute_are_refused(cached_lm, option_requests):
    """stats_after_cached_prefix on real engine outputs: accepts the rows after the cache only where the
    option's first row matches the context's own prefill, and refuses a cache that reaches into the option."""
    from lm_eval_calib.models import vllm_engine as engine_mod

    lm = cached_lm
    ctx = lm.tok_encode(option_requests[0].args[0])
    cont = lm.tok_encode(option_requests[0].args[0] + OPTIONS[1])[len(ctx) :]
    prompt = ctx + cont
    lm.engine.llm.reset_prefix_cache()
    (pre,) = lm.engine.generate([ctx], [engine_mod.next_token_params([cont[0], cont[1]])])
    greedy, logprobs = engine_mod.next_token_logprobs(pre)
    first = engine_mod.next_token_stats(cont[0], greedy, logprobs)
    (cached,) = lm.engine.generate([prompt], [engine_mod.prompt_params(read_prefix_cache=True)])
    (full,) = lm.engine.generate([prompt], [engine_mod.prompt_params()])
    assert 0 < cached.num_cached_tokens < len(ctx) and full.num_cached_tokens == 0

    rows = engine_mod.stats_after_cached_prefix(cached, prompt, len(ctx), first, 1e-4)
    expected = engine_mod.prompt_stats(full, prompt, len(ctx) + 1)
    assert rows is not None and rows.token_ids.tolist() == expected.token_ids.tolist() == cont[1:]
    assert rows.top1_ids.tolist() == expected.top1_ids.tolist()
    np.testing.assert_allclose(rows.token_logprobs, expected.token_logprobs, atol=SAME_ENGINE_ATOL)
    # a first token's statistics that are not this row's (another token): refused
    wrong = engine_mod.next_token_stats(cont[1], greedy, logprobs)
    assert engine_mod.stats_after_cached_prefix(cached, prompt, len(ctx), wrong, 1e-4) is None
    # a cache that reaches past the context (here: a context two tokens shorter than the cached part)
    short = cached.num_cached_tokens - 2
    assert engine_mod.stats_after_cached_prefix(cached, prompt, short, first, 1e-4) is None
