"""The confidence estimators of generated answers: names, result-key suffixes, what each needs from the model,
and the prompts and parsers of the estimators that ask the model a second question.

Pure Python (no torch, no lm-eval import): :mod:`lm_eval_calib.options` validates estimator names
with it before any data or model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOGLIKELIHOOD = "loglikelihood"
GENERATE = "generate_until"


@dataclass(frozen=True)
class Estimator:
    """One confidence estimator; ``name`` is what users pass and the result-key suffix (``ece_<name>``)."""

    name: str
    needs: str
    """The model method it calls besides the task's own generation (LOGLIKELIHOOD or GENERATE)."""
    description: str


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator(
            "seqprob",
            LOGLIKELIHOOD,
            "probability of the generated text given the prompt: exp(sum of its token log-probs); read from "
            "hf-calib/vllm-calib's generation, else one loglikelihood rescoring",
        ),
        Estimator(
            "seqprob_mean",
            LOGLIKELIHOOD,
            "length-normalised sequence probability: exp(mean token log-prob), the geometric mean of the "
            "generated tokens' probabilities",
        ),
        Estimator(
            "ptrue",
            LOGLIKELIHOOD,
            "P(True) (Kadavath et al. 2022): the model judges its own answer, (A) True / (B) False; "
            "confidence = P(A) / (P(A) + P(B))",
        ),
        Estimator(
            "verbal",
            GENERATE,
            "verbalised confidence (Tian et al. 2023; Xiong et al. 2024): the model is asked for a 0-100 "
            "confidence in its answer, the number is parsed; unparseable replies are counted",
        ),
        Estimator(
            "consistency",
            GENERATE,
            "sampling consistency: share of `samples` answers sampled at temperature 1 whose filtered answer "
            "equals the greedy answer's",
        ),
    )
}

DEFAULT_ESTIMATORS: tuple[str, ...] = ("seqprob", "seqprob_mean")
"""Cheap and model-agnostic (any model with log-likelihoods); free with hf-calib and vllm-calib."""


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
