"""The lm-eval plumbing ``hf-calib`` and ``vllm-calib`` share (:mod:`lm_eval_calib.models.model_args`,
:mod:`lm_eval_calib.models.plumbing`, :mod:`lm_eval_calib.models.requests`,
:mod:`lm_eval_calib.models.generated`): option parsing, grouping, results back to requests and lm-eval's
request cache, rolling sums, and which generations carry their own log-probs."""

from __future__ import annotations

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook, hash_args
from sqlitedict import SqliteDict

from lm_eval_calib.generation.text import GeneratedText
from lm_eval_calib.models.generated import with_generation_logprobs
from lm_eval_calib.models.model_args import parse_bool, parse_float, parse_int
from lm_eval_calib.models.plumbing import rolling_results, spread_results
from lm_eval_calib.models.requests import group_by_context, unique_truncated_pairs
from lm_eval_calib.models.token_stats import LoglikelihoodResult, TokenStats

TRUE_FALSE = [(True, True), (False, False), (1, True), (0, False), ("yes", True), (" On ", True)]
TRUE_FALSE += [("TRUE", True), ("1", True), ("no", False), ("off", False), ("False", False), ("0", False)]


@pytest.mark.parametrize(("value", "expected"), TRUE_FALSE)
def test_parse_bool_accepts_the_usual_spellings(value, expected):
    assert parse_bool(value, "opt") is expected


@pytest.mark.parametrize("value", ["ture", "", "2", 2, None, 0.5])
def test_parse_bool_refuses_anything_else_naming_the_option(value):
    with pytest.raises(
        ValueError, match=r"hf-calib: share_context=.* is not a boolean; write one of 1, true"
    ):
        parse_bool(value, "hf-calib: share_context")


def test_parse_numbers():
    assert parse_int("8", "n") == 8 and parse_int(8.0, "n") == 8 and parse_int(-1, "n") == -1
    for bad in (8.5, True, "eight", None):
        with pytest.raises(ValueError, match="is not an integer"):
            parse_int(bad, "n")
    with pytest.raises(ValueError, match="n=0 must be at least 1"):
        parse_int(0, "n", minimum=1)
    assert parse_float("0.9", "u", low=0.0, high=1.0) == 0.9
    with pytest.raises(ValueError, match="is not a number"):
        parse_float(True, "u")


def test_group_by_context_is_independent_of_request_order():
    pairs = [((1, 2), (5,)), ((3,), (7, 8)), ((1, 2), (6, 6, 6)), ((1, 2), (4, 4))]
    groups = group_by_context(pairs)
    assert groups == {(1, 2): [(6, 6, 6), (4, 4), (5,)], (3,): [(7, 8)]}
    assert group_by_context(pairs[::-1]) == groups


def _stats(ids, logprobs) -> TokenStats:
    return TokenStats(np.array(ids), np.array(logprobs), np.array(ids), np.array(logprobs))


def test_spread_results_gives_every_request_its_pairs_result_and_caches_it(tmp_path):
    hook = CacheHook(None)
    hook.dbdict = SqliteDict(str(tmp_path / "cache.db"), autocommit=True)  # what lm-eval's CachingLM holds
    requests = [(("Q:", " a"), [1, 2], [3]), (("Q:", " a"), [1, 2], [3]), (None, [1], [4, 5])]
    unique = unique_truncated_pairs(requests, max_len=10, model="test")
    assert unique == {((1, 2), (3,)): [0, 1], ((1,), (4, 5)): [2]}
    scored = {
        ((1, 2), (3,)): LoglikelihoodResult(-0.5, True, _stats([3], [-0.5])),
        ((1,), (4, 5)): LoglikelihoodResult(-3.0, False, _stats([4, 5], [-1.0, -2.0])),
    }
    results = spread_results(requests, unique, scored, hook)
    assert results == [(-0.5, True), (-0.5, True), (-3.0, False)]
    assert results[2].token_stats == scored[((1,), (4, 5))].token_stats
    assert hook.dbdict[hash_args("loglikelihood", ("Q:", " a"))] == (-0.5, True)
    assert len(hook.dbdict) == 1  # a request without its strings (None) cannot be cached
    with pytest.raises(RuntimeError, match="got no result"):
        spread_results(requests + [(None, [9], [9])], unique, scored, hook)


def test_rolling_results_add_window_sums_per_document(tmp_path):
    hook = CacheHook(None)
    hook.dbdict = SqliteDict(str(tmp_path / "cache.db"), autocommit=True)
    requests = [Instance("loglikelihood_rolling", {}, (text,), 0) for text in ("a b c", "", "d")]
    windows = [
        (-1.5, _stats([1, 2], [-1.0, -0.5])),
        (-2.0, _stats([3], [-2.0])),
        (-0.25, _stats([4], [-0.25])),
    ]
    results = rolling_results(requests, owners=[0, 0, 2], windows=windows, cache_hook=hook)
    assert [float(r) for r in results] == [-3.5, 0.0, -0.25]
    assert results[0].token_stats.token_ids.tolist() == [1, 2, 3] and len(results[1].token_stats) == 0
    assert hook.dbdict[hash_args("loglikelihood_rolling", ("a b c",))] == -3.5


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from lm_eval_calib.bundled_models import get_bundled_model

    smol = get_bundled_model("smollm2")
    return AutoTokenizer.from_pretrained(str(smol.folder()), gguf_file=smol.gguf_file)


def test_generation_logprobs_travel_only_with_the_tokens_that_spell_the_text(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode(" Paris is the capital.\n\nQuestion:", add_special_tokens=False)
    logprobs = [-0.1 * (i + 1) for i in range(len(ids))]
    decode = tok.decode
    text = decode(ids).split("\n\n")[0]  # lm-eval cuts at the stop sequence
    got = with_generation_logprobs(text, [(ids, logprobs)], decode)
    assert type(got) is GeneratedText and got == text
    n = len(got.token_ids)
    assert decode(got.token_ids.tolist()) == text and got.token_logprobs.tolist() == logprobs[:n]
    # the cut falls inside a token: no token sequence is the text, so the task rescores it
    assert type(with_generation_logprobs(" Par", [(ids, logprobs)], decode)) is str
    # a special token among the text's tokens: rescored too
    special = [tok.eos_token_id, *ids]
    spelled = decode(special[: n + 1])
    assert (
        type(with_generation_logprobs(spelled, [(special, [0.0] * len(special))], decode, {tok.eos_token_id}))
        is str
    )
    # a recording that missed a step is not used; a later candidate that spells the text is
    two = [(ids, logprobs[:-1]), (ids, logprobs)]
    assert type(with_generation_logprobs(text, two, decode)) is GeneratedText
