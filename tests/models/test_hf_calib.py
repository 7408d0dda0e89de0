"""``hf-calib``: same log-likelihoods as lm-eval's ``hf``, plus per-token statistics.

Unit tests run the tiny random Llama (SmolLM2's real tokenizer) in float32; one integration test runs the real
SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import random

import numpy as np
import pytest
import torch

from lm_eval_calib.models.token_stats import (
    LoglikelihoodResult,
    RollingLoglikelihoodResult,
    TokenStats,
    model_provides_token_stats,
    token_stats_of,
)

LL_ATOL = 1e-5  # |hf - hf-calib| per request, float32 (measured: 0 on the tiny model)
ROLLING_ATOL = 1e-4


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_lm(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def calib_lm(tiny_model_dir):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    return HFCalibLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4)


#: the three scoring routes: one packed forward per batch (sdpa mask, eager additive mask), KV-cache reuse
ROUTES = {
    "packed-sdpa": {},
    "packed-eager": {"attn_implementation": "eager"},
    "kv-cache": {"pack_continuations": False},
}


@pytest.fixture(scope="module")
def route_lms(tiny_model_dir, calib_lm):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    lms = {"packed-sdpa": calib_lm}
    for name, extra in ROUTES.items():
        if name not in lms:
            lms[name] = HFCalibLM(
                pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4, **extra
            )
    assert lms["packed-sdpa"]._pack_continuations and lms["packed-eager"]._pack_continuations
    assert lms["packed-eager"]._attn_implementation == "eager"
    assert not lms["kv-cache"]._pack_continuations and lms["kv-cache"].share_context
    return lms


def _mmlu_prompts(data_root, n=6):
    """Real MMLU questions in lm-eval's `mmlu` zero-shot format."""
    prompts = []
    for subject in ("anatomy", "astronomy", "high_school_geography"):
        with open(data_root / "mmlu" / "test" / f"{subject}_test.csv", newline="", encoding="utf-8") as fh:
            for row in list(csv.reader(fh))[: n // 3]:
                question, *choices, _ = row
                body = (
                    question.strip()
                    + "\n"
                    + "\n".join(f"{L}. {c}" for L, c in zip("ABCD", choices, strict=True))
                )
                head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                prompts.append(head + body + "\nAnswer:")
    return prompts


def _requests(data_root):
    from lm_eval.api.instance import Instance

    pairs = []
    for prompt in _mmlu_prompts(data_root):
        pairs += [(prompt, f" {letter}") for letter in "ABCD"]
    facts = ["The capital of Italy is", "Dante Alighieri was born in", "The Colosseum is located in"]
    for ctx in facts:
        pairs += [
            (ctx, " Rome"),
            (ctx, " Rome, Italy"),
            (ctx, " Florence"),
            (ctx, " the city of Paris, France"),
        ]
    pairs += [("", "Rome is the capital of Italy."), ("Paris ", "is in France")]  # empty ctx; trailing space
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _direct_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """log_softmax of a plain transformers forward over ``tokens``: row p predicts tokens[p + 1]."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


# -- TokenStats and result types ----------------------------------------------------------------------------
def _stats(n=3, offset=0):
    return TokenStats(
        token_ids=np.arange(n) + offset,
        token_logprobs=-np.linspace(0.5, 2.0, n),
        top1_ids=np.array([offset, 99, offset + 2][:n]),
        top1_logprobs=-np.linspace(0.1, 0.3, n),
    )


def test_token_stats_helpers_and_json():
    s = _stats()
    assert s.token_ids.dtype == np.int64 and s.token_logprobs.dtype == np.float64
    assert len(s) == 3
    np.testing.assert_allclose(s.confidence, np.exp(s.top1_logprobs))
    assert s.correct.tolist() == [True, False, True] and not s.is_greedy
    assert s.loglikelihood == pytest.approx(float(s.token_logprobs.sum()))
    back = TokenStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    both = TokenStats.concatenate([s, _stats(2, offset=10)])
    assert len(both) == 5 and both.token_ids.tolist() == [0, 1, 2, 10, 11]
    assert both[3:] == _stats(2, offset=10) and both[0].token_ids.tolist() == [0]
    assert both[-1].token_ids.tolist() == [11]
    assert len(TokenStats.concatenate([])) == 0
    with pytest.raises(ValueError, match="same length"):
        TokenStats([1, 2], [0.0], [1, 2], [0.0, 0.0])
    with pytest.raises(ValueError, match="missing"):
        TokenStats.from_dict({"token_ids": [1]})
    with pytest.raises(ValueError):  # read-only arrays: results shared between duplicate requests stay intact
        s.token_ids[0] = 5


def test_result_types_behave_like_lm_eval_values():
    s = _stats()
    r = LoglikelihoodResult(-1.5, True, s)
    assert r == (-1.5, True) and hash(r) == hash((-1.5, True))
    ll, greedy = r
    assert (ll, greedy) == (-1.5, True) and r[0] == -1.5 and r[1] is True and r[-1] is True
    assert isinstance(r, tuple) and len(r) == 2 and repr(r) == "(-1.5, True)"
    assert json.dumps(r) == "[-1.5, true]"
    for back in (pickle.loads(pickle.dumps(r)), pickle.loads(pickle.dumps(r, protocol=2))):
        assert back == r and type(back) is LoglikelihoodResult and back.token_stats == s
    assert token_stats_of(r) is s and token_stats_of((-1.5, True)) is None and token_stats_of(-2.0) is None

    f = RollingLoglikelihoodResult(-12.25, s)
    assert f == -12.25 and isinstance(f, float) and f + 1 == -11.25 and json.dumps(f) == "-12.25"
    back = pickle.loads(pickle.dumps(f))
    assert back == f and back.token_stats == s and token_stats_of(back) == s
    with pytest.raises(TypeError):
        LoglikelihoodResult(-1.0, False, {"token_ids": []})


# -- loglikelihood ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", list(ROUTES))
def test_loglikelihood_equals_hf(hf_lm, route_lms, route, data_root):
    requests = _requests(data_root)
    expected = hf_lm.loglikelihood(requests, disable_tqdm=True)
    got = route_lms[route].loglikelihood(requests, disable_tqdm=True)
    assert all(type(r) is LoglikelihoodResult for r in got)
    diffs = [abs(a[0] - b[0]) for a, b in zip(expected, got, strict=True)]
    print(f"{route}: max |hf - hf-calib| loglikelihood over {len(requests)} requests: {max(diffs):.3g}")
    assert max(diffs) <= LL_ATOL
    assert [a[1] for a in expected] == [b[1] for b in got]
    for res in got:
        stats = token_stats_of(res)
        assert stats is not None and len(stats) >= 1
        assert stats.token_logprobs.sum() == pytest.approx(res[0], abs=LL_ATOL)
        assert stats.is_greedy == res[1]
        assert np.all(stats.top1_logprobs >= stats.token_logprobs - 1e-6)


@pytest.mark.parametrize("route", list(ROUTES))
def test_token_stats_match_a_direct_forward(route_lms, route, data_root):
    calib_lm = route_lms[route]
    requests = _requests(data_root)
    results = calib_lm.loglikelihood(requests, disable_tqdm=True)
    model = calib_lm.model
    for req, res in zip(requests, results, strict=True):
        ctx, cont = req.args
        if ctx == "":
            ctx_enc = [calib_lm.prefix_token_id]
            cont_enc = calib_lm.tok_encode(cont, add_special_tokens=False)
        else:
            ctx_enc, cont_enc = calib_lm._encode_pair(ctx, cont)
        lp = _direct_logprobs(model, ctx_enc + cont_enc)
        # the positions that predict the continuation tokens
        rows = lp[len(ctx_enc) - 1 : len(ctx_enc) + len(cont_enc) - 1]
        stats = res.token_stats
        assert stats.token_ids.tolist() == cont_enc
        np.testing.assert_allclose(
            stats.token_logprobs, rows[torch.arange(len(cont_enc)), cont_enc], atol=1e-5
        )
        np.testing.assert_allclose(stats.top1_logprobs, rows.max(dim=-1).values, atol=1e-5)
        assert stats.top1_ids.tolist() == rows.argmax(dim=-1).tolist()
        assert stats.token_logprobs.sum() == pytest.approx(res[0], abs=1e-5)


def test_results_do_not_depend_on_order_or_batch_size(tiny_model_dir, calib_lm, data_root):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    requests = _requests(data_root)
    reference = calib_lm.loglikelihood(requests, disable_tqdm=True)
    shuffled = list(range(len(requests)))
    random.Random(1).shuffle(shuffled)
    worst = 0.0
    for batch_size, extra in ((1, {}), (3, {}), (64, {}), (3, ROUTES["kv-cache"]), (64, ROUTES["kv-cache"])):
        lm = HFCalibLM(
            pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=batch_size, **extra
        )
        got = lm.loglikelihood([requests[i] for i in shuffled], disable_tqdm=True)
        for j, i in enumerate(shuffled):
            worst = max(worst, abs(got[j][0] - reference[i][0]))
            assert got[j][1] == reference[i][1]
            np.testing.assert_allclose(
                got[j].token_stats.token_logprobs, reference[i].token_stats.token_logprobs, atol=1e-6
            )
    print(f"max difference across orders, batch sizes 1/3/4/64 and routes: {worst:.3g}")
    assert worst <= 1e-6


def test_share_context_off_gives_the_same_results(tiny_model_dir, calib_lm, data_root):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    requests = _requests(data_root)
    plain = HFCalibLM(
        pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4, share_context="False"
    )
    assert plain.share_context is False and calib_lm.share_context is True
    a = calib_lm.loglikelihood(requests, disable_tqdm=True)
    b = plain.loglikelihood(requests, disable_tqdm=True)
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True)) <= LL_ATOL
    assert all(
        x.token_stats.top1_ids.tolist() == y.token_stats.top1_ids.tolist() for x, y in zip(a, b, strict=True)
    )


def test_truncation_matches_hf_and_warns_once(tiny_model_dir, caplog):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_calib.models.hf_calib import HFCalibLM

    args = dict(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=2, max_length=24)
    hf, calib = HFLM(**args), HFCalibLM(**args)
    long_ctx = "In the beginning was the word, and the word was with the reader of long documents. " * 4
    pairs = [
        (long_ctx, " A"),
        (long_ctx, " Rome, Italy"),
        (long_ctx, " the city of Paris, France"),
        ("Hi", " there"),
    ]
    requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    expected = hf.loglikelihood(requests, disable_tqdm=True)
    with caplog.at_level(logging.WARNING):
        got = calib.loglikelihood(requests, disable_tqdm=True)
    warnings = [r for r in caplog.records if "hf-calib" in r.getMessage() and "truncat" in r.getMessage()]
    assert len(warnings) == 1 and "3 of 4 requests" in warnings[0].getMessage()
    assert max(abs(a[0] - b[0]) for a, b in zip(expected, got, strict=True)) <= LL_ATOL
    assert [a[1] for a in expected] == [b[1] for b in got]

    too_long = Instance("loglikelihood", {}, ("Hi", " word" * 40), 0)
    with pytest.raises(ValueError, match="maximum length"):
        calib.loglikelihood([too_long], disable_tqdm=True)


def test_bad_input_gives_clear_errors(tiny_model_dir, calib_lm):
    from lm_eval.api.instance import Instance
    from transformers import AutoModel

    from lm_eval_calib.models.hf_calib import HFCalibLM

    with pytest.raises(ValueError, match="empty continuation"):
        calib_lm.loglikelihood([Instance("loglikelihood", {}, ("Question:", ""), 0)], disable_tqdm=True)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        calib_lm._loglikelihood_tokens([(("Question:", "?"), [1, 2], [])])

    headless = AutoModel.from_pretrained(str(tiny_model_dir))  # LlamaModel: no LM head
    with pytest.raises(ValueError, match="LM head"):
        HFCalibLM(pretrained=headless, tokenizer=str(tiny_model_dir), batch_size=1)


# -- loglikelihood_rolling ----------------------------------------------------------------------------------
def test_rolling_equals_hf_on_wikitext(tiny_model_dir, data_root):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_calib.models.hf_calib import HFCalibLM

    text = (data_root / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:2000]
    # max_length 128 forces several rolling windows, as a long document does on a real model
    args = dict(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=3, max_length=128)
    hf, calib = HFLM(**args), HFCalibLM(**args)
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([text, text[:300], ""])]
    expected = hf.loglikelihood_rolling(requests, disable_tqdm=True)
    got = calib.loglikelihood_rolling(requests, disable_tqdm=True)
    diffs = [abs(a - b) for a, b in zip(expected, got, strict=True)]
    print(f"rolling: hf {expected[0]:.4f} vs hf-calib {got[0]:.4f}, max |diff| {max(diffs):.3g}")
    assert max(diffs) <= ROLLING_ATOL
    for req, res in zip(requests, got, strict=True):
        assert type(res) is RollingLoglikelihoodResult
        tokens = calib.tok_encode(req.args[0])
        assert res.token_stats.token_ids.tolist() == tokens  # one entry per token, in order
        # the result is hf's float32 sum of window sums; the stats hold the float32 per-token values
        assert res.token_stats.token_logprobs.sum() == pytest.approx(float(res), rel=1e-6, abs=1e-6)
    assert len(tokens) == 0 and float(got[2]) == 0.0
    assert len(got[0].token_stats) > 128  # several windows


def test_long_windows_are_batched_within_the_logits_budget(tiny_model_dir, data_root, monkeypatch):
    """A batch of long windows holds batch x width x vocabulary logits at once: with a 151k-token vocabulary
    (Qwen 0.5B) scoring four WikiText-2 articles at once peaked at 12.6 GB. Batches are cut so that a
    forward's logits stay within ``_LOGITS_BUDGET`` elements (one window always runs), same results."""
    from lm_eval.api.instance import Instance

    from lm_eval_calib.models import hf_calib

    text = (data_root / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:3000]
    args = dict(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4, max_length=128)
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([text, text[:900]])]
    unbudgeted = hf_calib.HFCalibLM(**args).loglikelihood_rolling(requests, disable_tqdm=True)

    calib = hf_calib.HFCalibLM(**args)
    vocab = calib.model.config.vocab_size
    budget = 2 * 128 * vocab  # two full-width windows
    monkeypatch.setattr(hf_calib, "_LOGITS_BUDGET", budget, raising=False)
    shapes = []
    forward = calib._forward

    def recording_forward(input_ids, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, **kwargs)

    monkeypatch.setattr(calib, "_forward", recording_forward)
    got = calib.loglikelihood_rolling(requests, disable_tqdm=True)
    assert sum(b for b, _ in shapes) > 4  # more windows than one batch of 4 holds
    assert all(b * width * vocab <= budget for b, width in shapes), shapes
    assert max(b for b, _ in shapes) == 2  # cut by the budget, not by batch_size
    for a, b in zip(unbudgeted, got, strict=True):
        assert float(b) == pytest.approx(float(a), abs=1e-4)
        np.testing.assert_allclose(b.token_stats.token_logprobs, a.token_stats.token_logprobs, atol=1e-5)


def test_rolling_stats_match_a_direct_forward(calib_lm):
    from lm_eval.api.instance import Instance

    text = "The quick brown fox jumps over the lazy dog. It was not amused."
    (res,) = calib_lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True
    )
    tokens = calib_lm.tok_encode(text)
    lp = _direct_logprobs(calib_lm.model, [calib_lm.prefix_token_id] + tokens[:-1])
    stats = res.token_stats
    np.testing.assert_allclose(stats.token_logprobs, lp[torch.arange(len(tokens)), tokens], atol=1e-5)
    assert stats.top1_ids.tolist() == lp.argmax(dim=-1).tolist()
    np.testing.assert_allclose(stats.top1_logprobs, lp.max(dim=-1).values, atol=1e-5)


# -- lm-eval integration ------------------------------------------------------------------------------------
def test_registry_marker_and_request_cache(tiny_model_dir, calib_lm, hf_lm, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import CachingLM
    from lm_eval.api.registry import get_model

    from lm_eval_calib.models.hf_calib import HFCalibLM

    assert get_model("hf-calib") is HFCalibLM
    assert HFCalibLM.provides_token_stats is True and model_provides_token_stats(calib_lm)
    assert not model_provides_token_stats(hf_lm)

    lm = HFCalibLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=2)
    cached = CachingLM(lm, str(tmp_path / "cache.db"))
    assert model_provides_token_stats(cached)
    requests = [
        Instance("loglikelihood", {}, ("The capital of Italy is", c), 0) for c in (" Rome", " Rome, Italy")
    ]
    rolling = [Instance("loglikelihood_rolling", {}, ("A short document.",), 0)]
    first, first_rolling = cached.loglikelihood(requests), cached.loglikelihood_rolling(rolling)
    lm.loglikelihood = lm.loglikelihood_rolling = None  # a second call must come from the SQLite cache
    second, second_rolling = cached.loglikelihood(requests), cached.loglikelihood_rolling(rolling)
    for a, b in zip(first + first_rolling, second + second_rolling, strict=True):
        assert a == b and token_stats_of(b) == token_stats_of(a) and token_stats_of(b) is not None


def test_simple_evaluate_runs_hf_calib(tiny_model_dir):
    """lm-eval's Python API accepts the model object; a loglikelihood task sees our result types."""
    import lm_eval
    from lm_eval.api.instance import Instance

    from lm_eval_calib.models.hf_calib import HFCalibLM

    lm = HFCalibLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=8)
    seen = []
    original = lm.loglikelihood

    def spy(requests: list[Instance], disable_tqdm: bool = False):
        out = original(requests, disable_tqdm=disable_tqdm)
        seen.extend(out)
        return out

    lm.loglikelihood = spy
    cfg = {
        "task": "hf_calib_smoke",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(_smoke_data(tiny_model_dir))}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    results = lm_eval.simple_evaluate(model=lm, tasks=[cfg], limit=4, log_samples=False)
    assert "acc,none" in results["results"]["hf_calib_smoke"]
    assert seen and all(token_stats_of(r) is not None for r in seen)


def _smoke_data(folder):
    path = folder / "hf_calib_smoke.jsonl"
    if not path.exists():
        rows = [
            {"question": "The capital of Italy is", "choices": ["Rome", "Paris, France"], "answer": 0},
            {"question": "Dante was born in", "choices": ["Florence", "Madrid"], "answer": 0},
            {"question": "The Seine flows through", "choices": ["Berlin", "Paris"], "answer": 1},
            {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- real model ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_smollm2_hf_calib_equals_hf(smollm2_model_args, data_root):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_calib.models.hf_calib import HFCalibLM

    args = dict(kv.split("=", 1) for kv in smollm2_model_args.split(","))
    calib = HFCalibLM(**args, device="cpu", batch_size=8)
    # hf on the SAME weights (no second 15 s load): lm-eval accepts a loaded model object
    hf = HFLM(pretrained=calib.model, tokenizer=calib.tokenizer, batch_size=8)
    requests = _requests(data_root)
    expected = hf.loglikelihood(requests, disable_tqdm=True)
    got = calib.loglikelihood(requests, disable_tqdm=True)
    diffs = [abs(a[0] - b[0]) for a, b in zip(expected, got, strict=True)]
    print(f"SmolLM2: max |hf - hf-calib| loglikelihood {max(diffs):.3g}")
    assert max(diffs) <= 1e-4
    assert [a[1] for a in expected] == [b[1] for b in got]

    text = (data_root / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:1000]
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    (a,), (b,) = hf.loglikelihood_rolling(rolling, disable_tqdm=True), calib.loglikelihood_rolling(rolling)
    assert abs(a - b) <= 1e-3 and len(b.token_stats) == len(calib.tok_encode(text))
    # an instruction-tuned 135M model predicts a good share of WikiText tokens
    assert 0.2 < b.token_stats.correct.mean() < 0.8
