"""How ``vllm-calib`` groups seeded sampling requests into engine calls on vLLM's CPU build (pure planning,
no vLLM): every seeded prefill must fit the call's first step, and with the prompts prefilled beforehand only
their last, partial KV block counts."""

from __future__ import annotations

import pytest

from lm_eval_calib.models.vllm_engine import KV_HEADROOM, sampling_waves, uncached_tokens


def test_uncached_tokens_is_the_last_partial_block_and_never_zero():
    assert uncached_tokens(1000, 32) == 8
    assert uncached_tokens(1024, 32) == 32  # a full last block is recomputed: one position needs logits
    assert uncached_tokens(1025, 32) == 1
    assert uncached_tokens(1, 32) == 1
    assert uncached_tokens(100, 128) == 100
    with pytest.raises(ValueError, match="positive"):
        uncached_tokens(0, 32)


def test_without_a_warm_cache_every_sequence_counts_its_whole_prompt():
    """32 gsm8k-sized prompts x 5 sequences in steps of 5,376 tokens: one prompt a call (P8 before)."""
    jobs = [(i, 1000, 5, 64) for i in range(32)]
    waves = sampling_waves(jobs, budget=5376, max_seqs=128)
    assert [len(w) for w in waves] == [1] * 32
    assert [i for w in waves for i in w] == list(range(32))


def test_with_a_warm_cache_the_kv_cache_bounds_a_wave():
    jobs = [(i, 1000, 5, 64) for i in range(32)]
    # each job: its prompt (1,000) + 5 x (8 uncached + 64 new + 32 rounding) = 1,520 tokens of KV cache
    waves = sampling_waves(jobs, budget=5376, max_seqs=128, block_size=32, kv_cache_tokens=20_000)
    per_wave = int(KV_HEADROOM * 20_000) // 1520
    assert [len(w) for w in waves[:-1]] == [per_wave] * (len(waves) - 1)
    assert [i for w in waves for i in w] == list(range(32))
    # a big cache: the step's sequences bound it (25 x 5 = 125 <= 128)
    waves = sampling_waves(jobs, budget=5376, max_seqs=128, block_size=32, kv_cache_tokens=10**6)
    assert [len(w) for w in waves] == [25, 7]


def test_children_of_one_request_count_its_prompt_once_and_a_wave_is_never_empty():
    children = [(0, 1000, 1, 16)] * 4  # one request sent as its n=4 children
    # KV per child: 8 uncached + 16 new + 32 rounding = 56; the prompt (1,000) counted once per wave
    (wave,) = sampling_waves(children, budget=5376, max_seqs=128, block_size=32, kv_cache_tokens=2000)
    assert list(wave) == [0, 1, 2, 3]  # 1,000 + 4 x 56 <= 0.9 x 2,000 (counted 4 times: 4,224)
    assert [len(w) for w in sampling_waves(children, 5376, 128, 32, 1200)] == [1, 1, 1, 1]  # 1,112 > 1,080
    huge = [(0, 50_000, 2, 16)]
    assert [list(w) for w in sampling_waves(huge, budget=100, max_seqs=1)] == [[0]]
