"""The meaning-aware sampling estimators as estimators of generation tasks (issue 31): one object per
estimator (:data:`ESTIMATORS`), hand-computed cases through ``confidence(view)``, and the same cases through
the real task class, lm-eval's evaluator and gsm8k's real regex filter.

The model answering here is :class:`FakeSamplingChatAPI`, standing in (like ``FakeChatAPI`` of
test_generation_errors.py) for a chat API without log-likelihoods: it returns chosen samples, so the
classes, and with them every confidence, are known by hand. The real SmolLM2 run is in
test_generation_e2e.py.
"""

from __future__ import annotations

import math

import pytest
from lm_eval.api.model import LM
from lm_eval.evaluator import simple_evaluate
from test_generation_errors import gsm8k_config

from lm_eval_calib.generation.estimators import ESTIMATORS, DocView, Need, needs_of

SEMANTIC = ["semantic_entropy", "num_sets", "lexsim", "eigv", "degree"]

# K = 4 samples: two say 42, one 41, one has no "#### <number>" (the regex filter gives "[invalid]").
TEXTS = ("x #### 42", "x #### 42", "y #### 41", "z")
ANSWERS = ("42", "42", "41", "[invalid]")
EXPECTED = {
    # classes {42, 42}, {41}, {[invalid]}: p = (1/2, 1/4, 1/4), H = 1.5 log 2, log K = 2 log 2
    "semantic_entropy": 1 - 1.5 * math.log(2) / (2 * math.log(2)),  # 0.25
    "num_sets": 1 - (3 - 1) / (4 - 1),  # 3 classes of 4 samples
    "eigv": 1 - (3 - 1) / (4 - 1),  # with exact keys, U_EigV counts the classes
    "degree": 2 / 12,  # 2 of the 12 ordered pairs of distinct samples agree
    # ROUGE-L F1 of the raw texts: tokens [x, 42], [x, 42], [y, 41], [z]; only pair (0, 1) shares any: 1
    "lexsim": 1 / 6,
}


def test_one_object_per_estimator_with_its_needs():
    assert {name for name, e in ESTIMATORS.items() if e.needs == {Need.SAMPLES}} == {"consistency", *SEMANTIC}
    # every sampling estimator shares the one SAMPLES need: the passes draw one set of K samples
    assert needs_of(["consistency", *SEMANTIC]) == {Need.SAMPLES}
    assert needs_of(["seqprob", "seqprob_mean", "ptrue"]) == {Need.SEQ_LOGPROB, Need.TOKEN_COUNT, Need.PTRUE}
    assert [n for n, e in ESTIMATORS.items() if e.per_filter] == [
        "consistency", "semantic_entropy", "num_sets", "eigv", "degree"
    ]  # fmt: skip


@pytest.mark.parametrize("name", SEMANTIC)
def test_hand_computed_case(name):
    view = DocView(samples=TEXTS, filtered_samples=ANSWERS, greedy_filtered="42")
    confidence, extras = ESTIMATORS[name].confidence(view)
    assert confidence == pytest.approx(EXPECTED[name], abs=1e-12)
    assert extras["texts"] == list(TEXTS)
    if name != "lexsim":
        assert extras["answers"] == list(ANSWERS) and extras["clusters"] == [0, 0, 1, 2]


def test_failed_extractions_never_agree_but_equal_answers_do():
    failed = DocView(samples=("a", "b"), filtered_samples=("[invalid]", " [INVALID] "), greedy_filtered="1")
    same = DocView(samples=("The answer: 42", "42."), filtered_samples=(" 42", "42"), greedy_filtered="1")
    for name in ("semantic_entropy", "num_sets", "eigv", "degree"):
        assert ESTIMATORS[name].confidence(failed)[0] == pytest.approx(0.0, abs=1e-12)
        assert ESTIMATORS[name].confidence(same)[0] == pytest.approx(1.0, abs=1e-12)
    # lexsim reads the raw texts: tokens [the, answer, 42] and [42], LCS 1: F1 = 2 * 1 / (3 + 1)
    assert ESTIMATORS["lexsim"].confidence(same)[0] == pytest.approx(0.5)


class FakeSamplingChatAPI(LM):
    """A chat API without log-likelihoods that answers the greedy request with ``GREEDY`` and sample k of
    every document with ``TEXTS[k]`` (see the module docstring)."""

    GREEDY = " She makes 18 dollars.\n#### 42"

    def __init__(self) -> None:
        super().__init__()
        self.sampled = 0

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for request in requests:
            if request.args[1].get("do_sample"):
                self.sampled += 1
                out.append(TEXTS[request.idx])
            else:
                out.append(self.GREEDY)
        return out


def test_through_the_task_class_with_the_tasks_own_filter(data_root):
    from lm_eval_calib.harness.generation import GenerationCalibrationTask

    model = FakeSamplingChatAPI()
    config = gsm8k_config(data_root, confidence=["consistency", *SEMANTIC], samples=4)
    task = GenerationCalibrationTask(config=config)
    out = simple_evaluate(model=model, tasks=[task], limit=2, log_samples=True, bootstrap_iters=10)
    assert model.sampled == 2 * 4  # one set of K samples per document, shared by all six estimators
    metrics = out["results"]["calib_gsm8k_errors"]
    lines = out["samples"]["calib_gsm8k_errors"]
    assert len(lines) == 2
    for line in lines:
        assert line["filtered_resps"] == ["42"]
        consistency = line["ece_consistency"]
        assert consistency["agree"] == 2 and consistency["confidence"] == 0.5
        for name in SEMANTIC:
            record = line[f"ece_{name}"]
            assert record["estimator"] == name
            assert record["confidence"] == pytest.approx(EXPECTED[name], abs=1e-12)
            assert record["texts"] == list(TEXTS)
            if name != "lexsim":  # gsm8k's own strict-match regex extracted these answers
                assert record["answers"] == list(ANSWERS) and record["clusters"] == [0, 0, 1, 2]
    for name in SEMANTIC:
        for metric in ("ece", "brier", "auroc", "aurc"):
            assert f"{metric}_{name},strict-match" in metrics
            assert f"{metric}_{name}_stderr,strict-match" in metrics
        correct = sum(line["exact_match"] for line in lines) / 2
        assert metrics[f"ece_{name},strict-match"] == pytest.approx(abs(EXPECTED[name] - correct))
