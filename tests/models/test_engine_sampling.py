"""Sampling at the engine on ``hf-calib`` (issue 31), on the real SmolLM2-135M-Instruct in float32.

``generate_samples`` draws a prompt's K samples in ONE ``generate`` call of K rows (the prompt prefilled
once) seeded with the document's seed: K distinct draws, the same K again under the same seed (whatever the
batch and the order), others under another seed, and the global torch RNG untouched. ``run_passes`` takes
this route when the model offers it and K separate requests otherwise (plain ``hf`` on the same weights), past
lm-eval's request cache either way.
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM

from lm_eval_calib.generation import passes
from lm_eval_calib.generation.estimators import SAMPLED_AS_REQUESTS, SAMPLED_AT_ENGINE, doc_sample_seed

pytestmark = pytest.mark.integration

PROMPTS = (
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Question: A train travels 60 miles in 2 hours. What is its speed in miles per hour?\nAnswer:",
)
TOKENS = 8
"""Tokens per sample: enough for K draws at temperature 1 to differ, few enough to keep the file fast."""
SAMPLE = {"until": ["Question:"], "max_gen_toks": TOKENS, "do_sample": True, "temperature": 1.0}
K = 4


@pytest.fixture(scope="module")
def calib(smollm2_model_args):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    args = dict(kv.split("=", 1) for kv in smollm2_model_args.split(","))
    return HFCalibLM(**args, device="cpu", batch_size=8)


def _requests(prompts=PROMPTS, kwargs=SAMPLE) -> list[Instance]:
    return [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)]


class GenerateCalls:
    """Passes every ``model.generate`` call through and keeps its input rows and ``num_return_sequences``."""

    def __init__(self, model) -> None:
        self.model, self.original, self.calls = model, model.generate, []

    def __enter__(self):
        def generate(*args, **kwargs):
            self.calls.append((kwargs["input_ids"].shape[0], kwargs.get("num_return_sequences", 1)))
            return self.original(*args, **kwargs)

        self.model.generate = generate
        return self

    def __exit__(self, *exc) -> None:
        del self.model.generate  # the bound method of the class again


def test_k_distinct_draws_reproduced_by_the_seed(calib):
    with GenerateCalls(calib.model) as spy:
        first = calib.generate_samples(_requests(), K, [11, 22])
    assert [rows * k for rows, k in spy.calls] == [K, K]  # ONE generate call per prompt, K sequences
    assert [len(texts) for texts in first] == [K, K]
    assert all(len(set(texts)) > 1 for texts in first), first  # K draws, not K copies
    assert calib.generate_samples(_requests(), K, [11, 22]) == first
    # a document's samples depend on its own seed only: not on the order or on the other prompts
    assert calib.generate_samples(_requests()[::-1], K, [22, 11]) == first[::-1]
    assert calib.generate_samples(_requests()[1:], K, [22]) == first[1:]
    assert calib.generate_samples(_requests(), K, [12, 23]) != first


def test_prompt_prefilled_once_draws_what_num_return_sequences_draws(calib, monkeypatch):
    """The prompt's KV cache repeated to K rows (one prefill) and ``num_return_sequences=K`` (K prefills)
    draw the same samples under the same seed."""
    with GenerateCalls(calib.model) as spy:
        once = calib.generate_samples(_requests()[:1], K, [7])
    assert spy.calls == [(K, 1)]  # the K rows continue one prefilled cache
    monkeypatch.setattr(calib, "share_context", False)
    with GenerateCalls(calib.model) as spy:
        repeated = calib.generate_samples(_requests()[:1], K, [7])
    assert spy.calls == [(1, K)]
    assert once == repeated


def test_global_rng_is_left_as_it_was(calib):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    calib.generate_samples(_requests()[:1], 2, [5])
    assert torch.equal(torch.rand(3), expected)


def test_greedy_requests_are_refused(calib):
    greedy = {"until": ["Question:"], "max_gen_toks": 4, "do_sample": False}
    with pytest.raises(ValueError, match="K greedy answers would be K copies of one. Set do_sample: true"):
        calib.generate_samples(_requests(kwargs=greedy)[:1], 3, [1])
    with pytest.raises(ValueError, match="2 seeds for 1 requests"):
        calib.generate_samples(_requests()[:1], 3, [1, 2])


def _items(task: str = "calib_test") -> list[passes.Generation]:
    greedy = {"until": ["Question:"], "max_gen_toks": TOKENS, "do_sample": False}
    return [
        passes.Generation(doc_id=i, doc={}, context=p, gen_kwargs=dict(greedy), text="", task=task)
        for i, p in enumerate(PROMPTS)
    ]


def test_passes_sample_at_the_engine_past_the_request_cache(calib, tmp_path):
    cached = CachingLM(calib, str(tmp_path / "cache.db"))
    assert passes.provides_engine_sampling(cached)
    items = _items()
    with GenerateCalls(calib.model) as spy:
        passes.run_passes(cached, items, ["consistency", "semantic_entropy"], 3, None)
    assert [rows * k for rows, k in spy.calls] == [3, 3]
    seeds = [doc_sample_seed(passes.DEFAULT_SAMPLE_SEED, "calib_test", i) for i in range(2)]
    direct = calib.generate_samples(_requests(), 3, seeds)  # the passes' sampling settings: SAMPLE
    for item, seed, texts in zip(items, seeds, direct, strict=True):
        assert item.samples == texts
        assert {(s.seed, s.sampled_by) for s in item.samples} == {(seed, SAMPLED_AT_ENGINE)}
    assert len(cached.dbdict) == 0  # nothing sampled was written to (or read from) the cache
    again = _items()
    passes.run_passes(cached, again, ["consistency"], 3, None, seed=passes.DEFAULT_SAMPLE_SEED)
    assert [i.samples for i in again] == [i.samples for i in items]
    other = _items()
    passes.run_passes(cached, other, ["consistency"], 3, None, seed=7)
    assert [i.samples for i in other] != [i.samples for i in items]


def test_passes_fall_back_to_separate_requests_for_plain_hf(calib, tmp_path):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=calib.model, tokenizer=calib.tokenizer, batch_size=8)
    assert not passes.provides_engine_sampling(hf)
    cached = CachingLM(hf, str(tmp_path / "cache.db"))
    runs = []
    for _ in range(2):  # the second run finds the first run's samples in the cache, and must not read them
        items = _items()
        with GenerateCalls(calib.model) as spy:
            passes.run_passes(cached, items, ["consistency"], 3, None)
        # K separate requests: 2 x 3 rows in hf's batches, none with num_return_sequences
        assert {k for _, k in spy.calls} == {1} and sum(rows for rows, _ in spy.calls) == 2 * 3
        for item in items:
            assert len(item.samples) == 3
            assert {(s.seed, s.sampled_by) for s in item.samples} == {(None, SAMPLED_AS_REQUESTS)}
        runs.append([list(i.samples) for i in items])
    assert len(cached.dbdict) > 0  # hf's cache hook wrote the sampled answers ...
    assert runs[0] != runs[1]  # ... and the second run drew new ones instead of K cached copies
