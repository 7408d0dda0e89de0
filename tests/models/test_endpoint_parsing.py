"""The pure parts of the endpoint models: reading OpenAI-compatible responses and refusing secrets.

The real server runs in tests/models/test_endpoints_server.py (vLLM environment); these cases pin the
matching rule, the floor and the error messages on responses written by hand in the servers' formats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_eval_calib.models.endpoint_checks import EndpointError, describe_http_error, refuse_secrets
from lm_eval_calib.models.endpoint_parsing import (
    EndpointResponseError,
    completion_token_stats,
    generated_logprobs_from_chat,
    option_logprobs_from_top,
    parse_token_id,
    spelled_length,
)


def _top(**pairs: float) -> list[dict]:
    return [{"token": token.replace("_", " "), "logprob": math.log(p)} for token, p in pairs.items()]


def test_matching_pools_tokens_that_spell_one_option_and_strips_white_space():
    top = [
        {"token": "A", "logprob": math.log(0.5)},
        {"token": " A", "logprob": math.log(0.1)},
        {"token": "B", "logprob": math.log(0.2)},
        {"token": "\nC", "logprob": math.log(0.15)},
        {"token": "D", "logprob": math.log(0.05)},
    ]
    read = option_logprobs_from_top(top, [" A", " B", " C", " D"])
    assert np.allclose(np.exp(read.logprobs), [0.6, 0.2, 0.15, 0.05])
    assert read.floored == (False, False, False, False)


def test_case_matters_unless_fold_case():
    top = [{"token": "a", "logprob": math.log(0.7)}, {"token": "B", "logprob": math.log(0.3)}]
    strict = option_logprobs_from_top(top, ["A", "B"])
    assert strict.floored == (True, False)
    folded = option_logprobs_from_top(top, ["A", "B"], fold_case=True)
    assert folded.floored == (False, False)
    assert math.isclose(folded.logprobs[0], math.log(0.7))


def test_missing_option_gets_the_documented_floor():
    # top-k mass 0.9: the two missing options share at most 0.1, and each is below the least listed (0.05).
    top = [{"token": "A", "logprob": math.log(0.85)}, {"token": "B", "logprob": math.log(0.05)}]
    read = option_logprobs_from_top(top, ["A", "B", "C", "D"])
    assert read.floored == (False, False, True, True)
    assert math.isclose(read.logprobs[2], math.log(0.05))  # min(p_min=0.05, r/m=0.05)
    top = [{"token": "A", "logprob": math.log(0.97)}, {"token": "B", "logprob": math.log(0.02)}]
    read = option_logprobs_from_top(top, ["A", "B", "C", "D"])
    assert math.isclose(read.logprobs[3], math.log(0.01 / 2), rel_tol=1e-9)  # the residual is smaller
    # the floor never ranks a missing option above a listed one
    assert max(read.logprobs[2:]) <= min(read.logprobs[:2])


def test_no_top_logprobs_is_an_error_naming_the_server_setting():
    with pytest.raises(EndpointResponseError, match="max-logprobs"):
        option_logprobs_from_top([], ["A", "B"])


def _echo_choice(ids, logprobs, tops, named_by_id=True):
    names = [f"token_id:{i}" if named_by_id else f"t{i}" for i in ids] + ["token_id:9"]
    return {
        "index": 0,
        "logprobs": {
            "tokens": names,
            "token_logprobs": [None, *logprobs, -0.1],
            "top_logprobs": [None, *tops, {"token_id:9": -0.1}],
        },
    }


def test_completion_token_stats_read_actual_and_top1_from_the_echo():
    ids = [1, 5, 7, 8]
    choice = _echo_choice(
        ids,
        [-2.0, -0.5, -3.0],
        [
            {"token_id:5": -2.5, "token_id:6": -0.3},
            {"token_id:7": -0.5},
            {"token_id:8": -3.0, "token_id:2": -0.2},
        ],
    )
    stats = completion_token_stats(choice, ids, ctxlen=2)
    assert stats.token_ids.tolist() == [7, 8]
    assert stats.token_logprobs.tolist() == [-0.5, -3.0]
    assert stats.top1_ids.tolist() == [7, 2]
    assert stats.correct.tolist() == [True, False]
    stats_all = completion_token_stats(choice, ids, ctxlen=1)
    # the echo's entry for the actual token can exceed the listed top-1 (rounding): the max wins
    assert stats_all.top1_logprobs[0] == -0.3 and stats_all.token_logprobs[0] == -2.0


def test_completion_token_stats_without_ids_use_the_greedy_rule():
    ids = [1, 5, 7]
    choice = _echo_choice(ids, [-0.1, -2.0], [{"x": -0.1}, {"y": -0.3}], named_by_id=False)
    stats = completion_token_stats(choice, ids, ctxlen=1)
    assert stats.top1_ids.tolist() == [5, -1]  # greedy: the actual id; not greedy: unknown, never equal
    assert stats.correct.tolist() == [True, False]


def test_completion_token_stats_refuse_a_mismatched_echo_and_missing_logprobs():
    ids = [1, 5, 7]
    choice = _echo_choice([1, 5, 4], [-0.1, -2.0], [{"token_id:5": -0.1}, {"token_id:4": -2.0}])
    with pytest.raises(EndpointResponseError, match="tokenizer"):
        completion_token_stats(choice, ids, ctxlen=1)
    with pytest.raises(EndpointResponseError, match="echo"):
        completion_token_stats({"index": 0, "logprobs": None}, ids, ctxlen=1)


def test_token_id_names():
    assert parse_token_id("token_id:42") == 42
    assert parse_token_id("token_id:x") is None
    assert parse_token_id(" A") is None


def test_generated_tokens_spell_the_text_or_not():
    choice = {
        "logprobs": {
            "content": [
                {"token": " Par", "logprob": -0.5, "bytes": list(b" Par")},
                {"token": "is", "logprob": -0.25, "bytes": list(b"is")},
                {"token": ".", "logprob": -1.0, "bytes": list(b".")},
            ]
        }
    }
    pieces = generated_logprobs_from_chat(choice)
    assert [lp for _, lp in pieces] == [-0.5, -0.25, -1.0]
    assert spelled_length([p for p, _ in pieces], " Paris") == 2
    assert spelled_length([p for p, _ in pieces], " Pa") is None  # cut inside a token
    assert spelled_length([p for p, _ in pieces], "") == 0
    assert generated_logprobs_from_chat({"logprobs": None}) is None


@pytest.mark.parametrize(
    "args",
    [
        {"api_key": "sk-secret"},
        {"auth_token": "x"},
        {"header": {"Authorization": "Bearer sk-secret"}},
        {"header": '{"authorization": "Bearer sk-secret"}'},
    ],
)
def test_keys_in_model_args_are_refused_without_echoing_them(args):
    with pytest.raises(EndpointError, match="OPENAI_API_KEY") as info:
        refuse_secrets("chat-calib", {"model": "m", **args})
    assert "sk-secret" not in str(info.value)


def test_a_header_without_a_key_is_fine():
    refuse_secrets("chat-calib", {"model": "m", "header": {"X-Trace": "1"}})


def test_http_errors_say_what_to_change():
    body = '{"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "code": 404}}'
    text = describe_http_error(404, body, "http://127.0.0.1:1/v1/completions", "nope")
    assert "does not exist" in text and "/v1/models" in text
    assert "OPENAI_API_KEY" in describe_http_error(401, '{"error": "Unauthorized"}', "u", "m")
    assert "--max-logprobs" in describe_http_error(
        400,
        '{"error": {"message": "Requested sample logprobs of 30, which is greater than max allowed: 20"}}',
        "u",
        "m",
    )
