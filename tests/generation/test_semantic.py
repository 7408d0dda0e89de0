"""The numerical core of the meaning-aware sampling estimators (lm_eval_calib.generation.semantic): cases
built by hand for each estimator, order invariance (property tests), and independent recomputations:
rouge_score for ROUGE-L, numpy.linalg.eigvalsh on a Laplacian built entry by entry for EigV, Lin et al.'s
trace formula for the degree."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from lm_eval_calib.generation.semantic import (
    ESTIMATOR_FORMULAS,
    Keys,
    Similarity,
    classes,
    degree_confidence,
    degree_uncertainty,
    eigv_confidence,
    eigv_uncertainty,
    lcs_length,
    lexical_similarity,
    lexsim_confidence,
    num_sets,
    num_sets_confidence,
    rouge_l,
    rouge_l_matrix,
    rouge_tokens,
    semantic_entropy,
    semantic_entropy_confidence,
)

GRAPH = ("semantic_entropy", "num_sets", "eigv", "degree")
"""The estimators that take a relation (lexsim uses the texts alone)."""
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    """The classes as sets of sample indices (labels themselves depend on the order of first appearance)."""
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


def block_matrix(labels: list[int]) -> np.ndarray:
    labels_arr = np.asarray(labels)
    return (labels_arr[:, None] == labels_arr[None, :]).astype(float)


# -- hand-constructed cases ---------------------------------------------------------------------------------
def test_all_samples_equal_is_full_confidence():
    samples = ["The answer is 42.", "the answer is 42", " The  answer is 42 "]
    keys = Keys(["42", "42", "42"])
    ones = Similarity(np.ones((3, 3)), threshold=0.9)
    for name in GRAPH:
        assert ESTIMATOR_FORMULAS[name](samples, keys) == pytest.approx(1.0, abs=1e-12), name
        assert ESTIMATOR_FORMULAS[name](samples, ones) == pytest.approx(1.0, abs=1e-12), name
    assert lexsim_confidence(samples) == pytest.approx(1.0)  # same tokens after case-folding


def test_all_samples_different_is_zero_confidence():
    samples = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    keys = Keys(["1", "2", "3", "4"])
    unrelated = Similarity(np.eye(4), threshold=0.5)
    for name in GRAPH:
        assert ESTIMATOR_FORMULAS[name](samples, keys) == pytest.approx(0.0, abs=1e-12), name
        assert ESTIMATOR_FORMULAS[name](samples, unrelated) == pytest.approx(0.0, abs=1e-12), name
    assert lexsim_confidence(samples) == 0.0  # no two samples share a token


def test_two_plus_one_split_by_hand():
    samples = ["x = 18, so 18", "so 18", "it is 20"]
    keys = Keys(["18", " 18", "20"])
    # p = (2/3, 1/3): H = -(2/3 log 2/3 + 1/3 log 1/3) = log 3 - (2/3) log 2
    entropy = math.log(3) - (2 / 3) * math.log(2)
    assert semantic_entropy(classes(keys)) == pytest.approx(entropy, rel=1e-12)
    assert semantic_entropy_confidence(samples, keys) == pytest.approx(1 - entropy / math.log(3), rel=1e-12)
    assert semantic_entropy_confidence(samples, keys) == pytest.approx(
        (2 / 3) * math.log(2) / math.log(3), rel=1e-12
    )
    assert num_sets(classes(keys)) == 2
    assert num_sets_confidence(samples, keys) == pytest.approx(0.5)  # 1 - (2 - 1) / (3 - 1)
    # Two blocks of ones: the normalised Laplacian's eigenvalues are 0, 1 and 0 -> U_EigV = 2 = num_sets
    assert eigv_uncertainty(block_matrix([0, 0, 1])) == pytest.approx(2.0)
    assert eigv_confidence(samples, keys) == pytest.approx(0.5)
    # one of the three pairs agrees
    assert degree_confidence(samples, keys) == pytest.approx(1 / 3)


def test_key_normalisation_and_never_equal():
    assert partition(classes(Keys([" 42", "42 ", "4 2", "Paris", "PARIS"]))) == {
        frozenset({0, 1}),
        frozenset({2}),
        frozenset({3, 4}),
    }
    failed = ["no number", "still none", "none"]
    # lm-eval's regex fallback: three failed extractions agree unless "[invalid]" means "no answer"
    assert semantic_entropy_confidence(failed, Keys(["[invalid]"] * 3)) == 1.0
    never = Keys(["[invalid]", "[Invalid] ", "[invalid]"], never_equal={"[invalid]"})
    assert num_sets(classes(never)) == 3
    assert semantic_entropy_confidence(failed, never) == pytest.approx(0.0, abs=1e-12)
    mixed = Keys(["7", "[invalid]", "7", "[invalid]"], never_equal=["[invalid]"])
    assert partition(classes(mixed)) == {frozenset({0, 2}), frozenset({1}), frozenset({3})}


def test_similarity_classes_are_connected_components():
    # a ~ b and b ~ c but not a ~ c: greedy-by-first-member gives {a, b}, {c} in this order and
    # {a}, {b, c} or {b, a}, {c} in others; connected components give one class in every order
    w = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.8], [0.1, 0.8, 1.0]])
    samples = ["a", "b", "c"]
    for order in itertools.permutations(range(3)):
        rel = Similarity(w[np.ix_(order, order)], threshold=0.7)
        assert num_sets(classes(rel)) == 1
        assert semantic_entropy_confidence(samples, rel) == 1.0
    assert num_sets(classes(Similarity(w, threshold=0.9))) == 3
    assert num_sets(classes(Similarity(w, threshold=0.8))) == 1  # >= threshold links


def test_degree_is_mean_off_diagonal_similarity_and_lexsim_on_rouge():
    rng = np.random.default_rng(0)
    for k in (2, 3, 6):
        upper = np.triu(rng.uniform(size=(k, k)), 1)
        w = upper + upper.T + np.eye(k)
        samples = [f"s{i}" for i in range(k)]
        # Lin et al. 2023: U_Deg = trace(K I - D) / K^2 with D the degree matrix
        d = np.diag(w.sum(axis=1))
        assert degree_uncertainty(w) == pytest.approx(np.trace(k * np.eye(k) - d) / k**2)
        off = w[~np.eye(k, dtype=bool)].mean()
        assert degree_confidence(samples, Similarity(w, threshold=0.5)) == pytest.approx(off)
    texts = ["the cat sat", "a cat sat down", "dogs run"]
    assert degree_confidence(texts, Similarity(rouge_l_matrix(texts), 0.5)) == pytest.approx(
        lexsim_confidence(texts)
    )


def test_eigv_counts_blocks():
    for labels in ([0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 1, 1], [0, 0, 0, 1, 2]):
        w = block_matrix(labels)
        assert eigv_uncertainty(w) == pytest.approx(len(set(labels)))
        samples = [str(x) for x in labels]
        assert eigv_confidence(samples, Similarity(w, 0.5)) == pytest.approx(
            num_sets_confidence(samples, Keys(labels))
        )


def test_rouge_l_empty_and_non_ascii():
    assert rouge_l("", "...") == 1.0  # neither has a token: the same (empty) answer
    assert rouge_l("", "42") == 0.0
    assert rouge_tokens("Café, 42!") == ["café", "42"]  # rouge_score would keep only "caf" and "42"
    assert lexical_similarity(["", ""]) == 1.0


# -- independent recomputations -----------------------------------------------------------------------------
WORDS = st.sampled_from(["the", "cat", "Sat", "on", "a", "mat", "42", "x1", "dog", "mat."])
TEXT = st.lists(WORDS, min_size=0, max_size=12).map(" ".join) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40
)


def lcs_table(a: list[str], b: list[str]) -> int:
    """The textbook O(len(a) len(b)) dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@settings(max_examples=150, deadline=None)
@given(TEXT, TEXT)
def test_rouge_l_equals_rouge_score_on_ascii(a, b):
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    assert lcs_length(ta, tb) == lcs_table(ta, tb)
    if ta or tb:  # rouge_score scores two token-less texts 0; we score them 1 (see rouge_l)
        assert rouge_l(a, b) == pytest.approx(SCORER.score(a, b)["rougeL"].fmeasure, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(WORDS, min_size=1, max_size=8).map(" ".join), min_size=2, max_size=6))
def test_lexsim_equals_mean_pairwise_rouge_score(samples):
    pairs = itertools.combinations(samples, 2)
    expected = np.mean([SCORER.score(a, b)["rougeL"].fmeasure for a, b in pairs])
    assert lexsim_confidence(samples) == pytest.approx(expected, abs=1e-12)


def laplacian_by_hand(w: np.ndarray) -> np.ndarray:
    """L = D^-1/2 (D - W) D^-1/2, entry by entry."""
    k = w.shape[0]
    degree = [sum(w[i, j] for j in range(k)) for i in range(k)]
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            out[i, j] = ((degree[i] if i == j else 0.0) - w[i, j]) / math.sqrt(degree[i] * degree[j])
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_eigv_equals_eigvalsh_of_laplacian_by_hand(k, seed):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.uniform(size=(k, k)) * (rng.uniform(size=(k, k)) < 0.6), 1)
    w = upper + upper.T + np.eye(k)
    expected = sum(max(0.0, 1.0 - lam) for lam in np.linalg.eigvalsh(laplacian_by_hand(w)))
    assert eigv_uncertainty(w) == pytest.approx(expected, abs=1e-9)
    assert expected >= 1.0 - 1e-9 and expected <= k + 1e-9  # the range the confidence mapping relies on
    samples = [str(i) for i in range(k)]
    assert eigv_confidence(samples, Similarity(w, 0.5)) == pytest.approx(
        min(1.0, max(0.0, 1 - (expected - 1) / (k - 1))), abs=1e-9
    )


# -- order invariance ---------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from(["42", "41", " 42", "forty", "[invalid]", "40"]), min_size=2, max_size=8),
    st.randoms(use_true_random=False),
    st.sampled_from([0.3, 0.5, 0.8, 1.0]),
)
def test_every_estimator_is_invariant_to_sample_order(keys, random, threshold):
    samples = [f"so the answer is {k} {'cats' * (i % 2)}" for i, k in enumerate(keys)]
    order = list(range(len(keys)))
    random.shuffle(order)
    shuffled = [samples[i] for i in order]
    w = rouge_l_matrix(samples)
    assert np.allclose(rouge_l_matrix(shuffled), w[np.ix_(order, order)])
    relations = [
        (Keys(keys), Keys([keys[i] for i in order])),
        (Keys(keys, {"[invalid]"}), Keys([keys[i] for i in order], {"[invalid]"})),
        (Similarity(w, threshold), Similarity(w[np.ix_(order, order)], threshold)),
    ]
    for before, after in relations:
        for name, formula in ESTIMATOR_FORMULAS.items():
            value = formula(samples, before)
            assert 0.0 <= value <= 1.0
            assert formula(shuffled, after) == pytest.approx(value, abs=1e-9), name


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: semantic_entropy_confidence(["42"], Keys(["42"])), ValueError, "K >= 2"),
        (lambda: lexsim_confidence([]), ValueError, "K >= 2"),
        (lambda: lexsim_confidence("42 42"), TypeError, "list of the K sampled"),
        (lambda: lexsim_confidence(["a", 4]), TypeError, "must be strings"),
        (lambda: num_sets_confidence(["a", "b", "c"], Keys(["1", "2"])), ValueError, "2 samples but 3"),
        (lambda: eigv_confidence(["a", "b", "c"], Similarity(np.eye(2), 0.5)), ValueError, "2 samples but 3"),
        (lambda: degree_confidence(["a", "b"], None), ValueError, "Keys"),
        (lambda: degree_confidence(["a", "b"], ["1", "2"]), TypeError, "Keys"),
        (lambda: Keys("42"), TypeError, "one key per sample"),
        (lambda: Keys(["1"], never_equal="[invalid]"), TypeError, "collection"),
        (lambda: Similarity(np.ones((2, 3)), 0.5), ValueError, "square"),
        (lambda: Similarity(np.ones(3), 0.5), ValueError, "square"),
        (lambda: Similarity(np.ones((1, 1)), 0.5), ValueError, "K >= 2"),
        (lambda: Similarity([[1.0, 0.2], [0.3, 1.0]], 0.5), ValueError, "not symmetric"),
        (lambda: Similarity([[1.0, -0.4], [-0.4, 1.0]], 0.5), ValueError, r"\[0, 1\]"),
        (lambda: Similarity([[1.0, 1.5], [1.5, 1.0]], 0.5), ValueError, r"\[0, 1\]"),
        (lambda: Similarity([[1.0, np.nan], [np.nan, 1.0]], 0.5), ValueError, "NaN"),
        (lambda: Similarity([[0.9, 0.2], [0.2, 1.0]], 0.5), ValueError, "diagonal"),
        (lambda: Similarity([["a", "b"], ["c", "d"]], 0.5), TypeError, "array of numbers"),
        (lambda: Similarity(np.eye(2), 0.0), ValueError, r"\(0, 1\]"),
        (lambda: Similarity(np.eye(2), True), TypeError, "threshold"),
    ],
)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float32_cosine_noise_is_accepted():
    w = np.array([[1.0000001, 0.5], [0.5000001, 0.99999994]], dtype=np.float32)
    rel = Similarity(w, 0.9)
    assert rel.matrix.dtype == np.float64 and (rel.matrix == rel.matrix.T).all()
    assert rel.matrix.max() <= 1.0


def test_estimator_names_match_the_issue():
    assert set(ESTIMATOR_FORMULAS) == {"semantic_entropy", "num_sets", "lexsim", "eigv", "degree"}


def test_module_is_numpy_only():
    """The harness options check estimator names before any model loads; this module must stay light."""
    code = (
        "import sys; import lm_eval_calib.generation.semantic; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lm_eval', 'torch', 'scipy', 'rouge_score'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
