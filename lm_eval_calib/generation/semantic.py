"""Meaning-aware sampling estimators: the numbers computed from K answers sampled for one prompt.

The estimators of LM-Polygraph (Fadeeva et al. 2023) that need only the sampled answers and a way to say
which of them mean the same thing:

- ``semantic_entropy``: discrete semantic entropy (Farquhar et al., Nature 2024; Kuhn et al. 2023), the
  entropy of the empirical distribution of the samples over meaning classes;
- ``num_sets``: the number of meaning classes (LM-Polygraph's NumSemSets; Lin et al. 2023);
- ``lexsim``: mean pairwise ROUGE-L F1 between the sample texts (LM-Polygraph's LexicalSimilarity);
- ``eigv``: sum of max(0, 1 - lambda) over the eigenvalues of the normalised graph Laplacian of the
  similarity matrix (Lin et al. 2023, "Generating with Confidence", U_EigV);
- ``degree``: the degree-matrix uncertainty of the same graph (Lin et al. 2023, U_Deg).

Each is returned as a confidence in [0, 1], 1 when all samples agree and 0 at the most disagreement K
samples can show; the mappings are documented on each ``*_confidence`` function and in
docs/generation_semantic.md. :data:`ESTIMATOR_FORMULAS` maps each estimator name to its formula.

Which samples "mean the same" is a :class:`Keys` (exact equality of the task's filtered answers, e.g. gsm8k's
extracted number) or a :class:`Similarity` (a K x K matrix in [0, 1], e.g. from a sentence-embedding model,
with a threshold). Pure: numpy only, no I/O, no lm-eval import. The estimators of generation tasks
(:data:`lm_eval_calib.generation.estimators.ESTIMATORS`) call these formulas with the task's filtered
answers as :class:`Keys` (``lexsim``: the raw sample texts).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6
"""How far a similarity matrix may be from symmetric, from [0, 1] and from a unit diagonal (float32 cosine
similarities of an embedding model are off by ~1e-7); within it the matrix is symmetrised and clipped."""


# -- which samples mean the same ----------------------------------------------------------------------------
def normalise_key(key: object) -> str:
    """The text a key is compared by: ``str(key)`` with runs of whitespace collapsed to one space, stripped,
    and case-folded, so ``" 42"``, ``"42 "`` and ``"42"`` are one answer (as the ``consistency`` estimator
    compares filtered answers)."""
    return " ".join(str(key).split()).casefold()


@dataclass(frozen=True)
class Keys:
    """Samples mean the same when their keys are equal after :func:`normalise_key`.

    ``values``: one key per sample, typically the task's filtered answer (gsm8k's extracted number).
    ``never_equal``: keys (normalised the same way) that say "no answer" rather than an answer, such as
    lm-eval's regex-filter fallback ``"[invalid]"`` or ``""``; each sample with one is a class of its own, so
    K failed extractions count as K different answers, not as full agreement.

    Equality is an equivalence relation, so the classes are the same under every rule (greedy, connected
    components) and in every order.
    """

    values: tuple[object, ...]
    never_equal: frozenset[str]

    def __init__(self, values: Sequence[object], never_equal: Collection[str] = ()) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            raise TypeError(
                "Keys takes one key per sample (a list such as ['42', '41', '42']), got "
                f"{type(values).__name__}"
            )
        if isinstance(never_equal, str):
            raise TypeError(
                f"never_equal is a collection of keys, such as {{'[invalid]'}}, got {never_equal!r}"
            )
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "never_equal", frozenset(normalise_key(k) for k in never_equal))

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, eq=False)
class Similarity:
    """Samples are similar to the degree ``matrix[i, j]`` in [0, 1] (an embedding model's cosine similarity
    clipped at 0, ROUGE-L, a symmetrised NLI entailment probability).

    The matrix must be K x K, finite, symmetric, in [0, 1] and 1 on the diagonal (a sample is the same as
    itself), each within :data:`TOLERANCE`. ``threshold`` in (0, 1]: two samples are linked when their
    similarity is at least it; the meaning classes are the connected components of that graph (see
    :func:`classes_by_similarity`). The graph estimators (``eigv``, ``degree``) use the matrix itself and
    ignore the threshold.
    """

    matrix: np.ndarray
    threshold: float

    def __init__(self, matrix: np.ndarray | Sequence[Sequence[float]], threshold: float) -> None:
        checked = check_similarity(matrix)
        checked.flags.writeable = False  # frozen: the classes and graph measures are read from it
        object.__setattr__(self, "matrix", checked)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a number in (0, 1], got {threshold!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(
                f"threshold must be in (0, 1] (samples with similarity >= threshold share a class), got "
                f"{threshold}; 0 would put every pair in one class"
            )
        object.__setattr__(self, "threshold", float(threshold))

    def __len__(self) -> int:
        return int(self.matrix.shape[0])


Relation = Keys | Similarity


def check_similarity(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The validated similarity matrix as float64, symmetrised and clipped to [0, 1]; a clear error
    (naming the problem and the fix) for anything else."""
    try:
        w = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"a similarity matrix must be a K x K array of numbers: {err}") from None
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(
            f"a similarity matrix must be square (K x K, one row per sample), got shape {w.shape}"
        )
    if w.shape[0] < 2:
        raise ValueError(f"a similarity matrix needs K >= 2 samples, got {w.shape[0]}")
    if not np.isfinite(w).all():
        raise ValueError("the similarity matrix holds NaN or infinite values")
    if w.min() < -TOLERANCE or w.max() > 1.0 + TOLERANCE:
        raise ValueError(
            f"similarities must lie in [0, 1], got values in [{w.min():.6g}, {w.max():.6g}]; clip cosine "
            "similarities at 0 (np.clip(w, 0, 1)) or rescale them ((1 + w) / 2)"
        )
    asymmetry = float(np.abs(w - w.T).max())
    if asymmetry > TOLERANCE:
        raise ValueError(
            f"the similarity matrix is not symmetric (largest |w[i,j] - w[j,i]| = {asymmetry:.6g}); for a "
            "one-directional score such as NLI entailment use (w + w.T) / 2, as Lin et al. 2023 do"
        )
    off_diagonal = float(np.abs(np.diag(w) - 1.0).max())
    if off_diagonal > TOLERANCE:
        raise ValueError(
            f"the similarity matrix must be 1 on the diagonal (a sample is the same as itself), but a "
            f"diagonal entry differs from 1 by {off_diagonal:.6g}; set it with np.fill_diagonal(w, 1.0)"
        )
    w = np.clip((w + w.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(w, 1.0)
    return w


def classes_by_key(keys: Keys) -> np.ndarray:
    """Class label per sample (0, 1, ... in order of first appearance): equal normalised keys share one."""
    labels = np.empty(len(keys), dtype=np.int64)
    seen: dict[str, int] = {}
    next_label = 0
    for i, key in enumerate(keys.values):
        text = normalise_key(key)
        if text in keys.never_equal:
            labels[i] = next_label
            next_label += 1
            continue
        if text not in seen:
            seen[text] = next_label
            next_label += 1
        labels[i] = seen[text]
    return labels


def classes_by_similarity(similarity: Similarity) -> np.ndarray:
    """Class label per sample: the connected components of the graph that links samples whose similarity
    is at least the threshold (single linkage).

    Why components and not the greedy rule of Kuhn et al. 2023 / Farquhar et al. 2024 (each sample joins
    the first class whose first member it is equivalent to): with a relation that is not transitive (a ~ b,
    b ~ c, a !~ c) the greedy classes depend on the order of the samples, and components do not. Both agree
    whenever the relation is an equivalence. LM-Polygraph's NumSemSets also counts connected components.
    """
    linked = similarity.matrix >= similarity.threshold
    k = linked.shape[0]
    labels = np.full(k, -1, dtype=np.int64)
    next_label = 0
    for start in range(k):
        if labels[start] >= 0:
            continue
        labels[start] = next_label
        stack = [start]
        while stack:
            node = stack.pop()
            for other in np.flatnonzero(linked[node] & (labels < 0)):
                labels[other] = next_label
                stack.append(int(other))
        next_label += 1
    return labels


def classes(relation: Relation) -> np.ndarray:
    """Class label per sample under either kind of relation."""
    if isinstance(relation, Keys):
        return classes_by_key(relation)
    if isinstance(relation, Similarity):
        return classes_by_similarity(relation)
    raise TypeError(
        f"which samples mean the same is given as Keys([...]) or Similarity(matrix, threshold), "
        f"got {type(relation).__name__}"
    )


def similarity_matrix(relation: Relation) -> np.ndarray:
    """The K x K similarity of a relation: the matrix itself, or 1 where the keys' classes are equal."""
    if isinstance(relation, Similarity):
        return relation.matrix
    labels = classes(relation)
    return (labels[:, None] == labels[None, :]).astype(np.float64)


# -- the raw quantities -------------------------------------------------------------------------------------
def semantic_entropy(labels: np.ndarray) -> float:
    """Discrete semantic entropy in nats: H = -sum_c p_c log p_c with p_c = |c| / K, the share of the K
    samples in meaning class c (Farquhar et al. 2024, "discrete" variant: no sequence likelihoods)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def num_sets(labels: np.ndarray) -> int:
    """The number of meaning classes among the samples."""
    return int(np.unique(np.asarray(labels)).size)


_TOKEN = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokens: case-folded runs of letters and digits (everything else separates tokens).

    On ASCII text this is exactly rouge_score's tokeniser without stemming (lower-case, non-alphanumerics to
    spaces, split); unlike it, letters outside ASCII are kept instead of dropped.
    """
    return _TOKEN.findall(text.casefold())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison & Dix 1986, in Hyyrö's 2004 form): one Python big-int operation per token of
    ``b`` instead of a len(a) x len(b) table, so chain-of-thought samples of hundreds of tokens cost
    microseconds. Bit i of V is 0 where the LCS grows at a[i]; the LCS is the number of 0 bits.
    """
    if not a or not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & positions.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts: 2 LCS / (|a| + |b|) over :func:`rouge_tokens` (symmetric).

    Two texts without any token (empty, or punctuation only) are the same answer: 1.0 (rouge_score gives 0,
    which would score K empty samples as full disagreement). One without tokens against one with: 0.
    """
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta and not tb:
        return 1.0
    return 2.0 * lcs_length(ta, tb) / (len(ta) + len(tb))


def rouge_l_matrix(samples: Sequence[str]) -> np.ndarray:
    """The K x K ROUGE-L F1 matrix of the samples (1 on the diagonal), a lexical :class:`Similarity`."""
    check_samples(samples)
    tokens = [rouge_tokens(s) for s in samples]
    k = len(tokens)
    w = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            if not tokens[i] and not tokens[j]:
                w[i, j] = w[j, i] = 1.0
            else:
                w[i, j] = w[j, i] = 2.0 * lcs_length(tokens[i], tokens[j]) / (len(tokens[i]) + len(tokens[j]))
    return w


def lexical_similarity(samples: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the K(K-1)/2 pairs of samples (LM-Polygraph's LexicalSimilarity, which returns
    its negative as an uncertainty)."""
    w = rouge_l_matrix(samples)
    return float(w[np.triu_indices(w.shape[0], k=1)].mean())


def eigv_uncertainty(matrix: np.ndarray) -> float:
    """U_EigV (Lin et al. 2023): sum over the eigenvalues lambda of the normalised Laplacian
    L = I - D^-1/2 W D^-1/2 (D = diag of the row sums of W) of max(0, 1 - lambda).

    A continuous count of meaning classes: for a W of c disjoint all-ones blocks it is exactly c. With a
    unit diagonal every degree is >= 1, and 1 <= U_EigV <= K (L has a 0 eigenvalue, and eigenvalues >= 0).
    """
    w = np.asarray(matrix, dtype=np.float64)
    inv_sqrt = 1.0 / np.sqrt(w.sum(axis=1))
    laplacian = np.eye(w.shape[0]) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    eigenvalues = np.linalg.eigvalsh(laplacian)
    return float(np.clip(1.0 - eigenvalues, 0.0, None).sum())


def degree_uncertainty(matrix: np.ndarray) -> float:
    """U_Deg (Lin et al. 2023): trace(K I - D) / K^2 = 1 - mean(W), in [0, 1 - 1/K] for a unit diagonal."""
    w = np.asarray(matrix, dtype=np.float64)
    k = w.shape[0]
    return float((k * k - w.sum()) / (k * k))


# -- confidences in [0, 1] ----------------------------------------------------------------------------------
def check_samples(samples: Sequence[str]) -> int:
    """K, the number of samples; a clear error unless they are K >= 2 strings."""
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise TypeError(
            f"samples must be a list of the K sampled answers (strings), got {type(samples).__name__}"
        )
    bad = [type(s).__name__ for s in samples if not isinstance(s, str)]
    if bad:
        raise TypeError(f"samples must be strings (the generated texts), got {', '.join(sorted(set(bad)))}")
    if len(samples) < 2:
        raise ValueError(
            f"a sampling estimator needs K >= 2 samples to compare, got {len(samples)}; set "
            '--metadata \'{"calibration": {"samples": 5}}\''
        )
    return len(samples)


def _checked(samples: Sequence[str], relation: Relation | None) -> int:
    k = check_samples(samples)
    if relation is None:
        raise ValueError(
            "this estimator needs to know which samples mean the same: pass Keys(filtered answers) or "
            "Similarity(matrix, threshold)"
        )
    if not isinstance(relation, (Keys, Similarity)):
        classes(relation)  # raises the TypeError that names the accepted kinds
    if len(relation) != k:
        raise ValueError(
            f"{type(relation).__name__} describes {len(relation)} samples but {k} samples were given; give "
            "one key (or one matrix row) per sample, in the same order"
        )
    return k


def _unit(value: float) -> float:
    """Clip float noise (eigenvalues of 1 - 1e-16) into [0, 1]."""
    return float(min(1.0, max(0.0, value)))


def semantic_entropy_confidence(samples: Sequence[str], relation: Relation) -> float:
    """1 - H / log K: 1 when all K samples share a class (H = 0), 0 when each is its own class (H = log K,
    the largest entropy K samples can have). Monotone decreasing in H, and independent of K at both ends."""
    k = _checked(samples, relation)
    return _unit(1.0 - semantic_entropy(classes(relation)) / math.log(k))


def num_sets_confidence(samples: Sequence[str], relation: Relation) -> float:
    """1 - (s - 1) / (K - 1) for s meaning classes: 1 for one class, 0 for K classes."""
    k = _checked(samples, relation)
    return _unit(1.0 - (num_sets(classes(relation)) - 1) / (k - 1))


def lexsim_confidence(samples: Sequence[str], relation: Relation | None = None) -> float:
    """The mean pairwise ROUGE-L F1 as it is: already in [0, 1], 1 when all samples have the same tokens,
    0 when no two share a token. Always lexical: ``relation`` is accepted for a uniform signature and not
    used (checked for length when given)."""
    if relation is not None:
        _checked(samples, relation)
    return _unit(lexical_similarity(samples))


def eigv_confidence(samples: Sequence[str], relation: Relation) -> float:
    """1 - (U_EigV - 1) / (K - 1), since 1 <= U_EigV <= K: 1 for one cluster, 0 for K unrelated samples.
    With Keys the matrix is 0/1 equality of the classes and this equals ``num_sets``."""
    k = _checked(samples, relation)
    return _unit(1.0 - (eigv_uncertainty(similarity_matrix(relation)) - 1.0) / (k - 1))


def degree_confidence(samples: Sequence[str], relation: Relation) -> float:
    """1 - U_Deg / (1 - 1/K), which is the mean similarity over the K(K-1) ordered pairs of distinct samples:
    1 when all are fully similar, 0 when none is similar to another. (1 - U_Deg itself would bottom out at
    1/K, because the diagonal counts; rescaling puts every estimator's "total disagreement" at 0 for any K.)
    With Keys it is the share of sample pairs that agree; with the ROUGE-L matrix it equals ``lexsim``."""
    k = _checked(samples, relation)
    return _unit(1.0 - degree_uncertainty(similarity_matrix(relation)) / (1.0 - 1.0 / k))


Formula = Callable[[Sequence[str], Relation | None], float]

ESTIMATOR_FORMULAS: dict[str, Formula] = {
    "semantic_entropy": semantic_entropy_confidence,
    "num_sets": num_sets_confidence,
    "lexsim": lexsim_confidence,
    "eigv": eigv_confidence,
    "degree": degree_confidence,
}
"""Estimator name (the ``confidence`` option and result-key suffix) -> confidence in [0, 1] from the K
sampled texts and which of them mean the same (``lexsim`` uses the texts alone)."""
