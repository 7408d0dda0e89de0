"""Option records from the samples of a plain lm-eval multiple-choice task (no lm-eval-calib task involved).

lm-eval 0.4 logs, for every document of a ``multiple_choice`` task, one ``(log-likelihood, is_greedy)`` pair
per option in ``filtered_resps`` (as strings), the requests in ``arguments`` (context and continuation per
option), the gold ``target`` (as ``str()`` of an option index, an option text or a list) and its own
per-document ``acc`` / ``acc_norm``. That is everything a calibration record needs, so any finished run with
``--log_samples`` can be scored without the model: this module turns one such sample into the record a
calibration task would have written (:func:`lm_eval_calib.records.make_record`), under lm-eval's ``acc``
rule (raw log-likelihoods) or its ``acc_norm`` rule (:func:`lm_eval_calib.records.length_normalised`).

A document that cannot be scored this way (several gold options, a gold index outside the options, a task
whose options are contexts rather than continuations, non-numeric responses) raises :class:`SkipDocument`
with the reason, so the reader can skip it and say why.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from typing import Any

from lm_eval_calib.records import length_normalised, make_record

RULES = ("acc", "acc_norm")
"""lm-eval's two multiple-choice prediction rules: argmax of the log-likelihoods, or of the log-likelihoods
divided by each choice's length in characters."""


class SkipDocument(ValueError):
    """This logged document cannot become an option record; the message says why (one short phrase)."""


def target_delimiter(config: Mapping[str, Any] | None, chat_template: bool = False) -> str:
    """The text lm-eval put between context and each choice, as ``ConfigurableTask.construct_requests`` does:
    the task's ``target_delimiter`` (default ``" "``), or ``""`` under ``--apply_chat_template`` unless the
    task has a ``gen_prefix`` that does not end in whitespace."""
    config = config or {}
    delimiter = config.get("target_delimiter", " ")
    delimiter = " " if delimiter is None else str(delimiter)
    if chat_template:
        prefix = config.get("gen_prefix")
        return delimiter if prefix and not str(prefix)[-1].isspace() else ""
    return delimiter


def _requests(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(context, continuation)`` per request: lm-eval logs ``{"gen_args_i": {"arg_0": ..., "arg_1": ...}}``;
    an in-memory sample holds a list of pairs."""
    raw = sample.get("arguments")
    if isinstance(raw, Mapping):
        items = [raw[key] for key in sorted(raw, key=lambda k: int(str(k).rsplit("_", 1)[-1]))]
        pairs = [(item.get("arg_0"), item.get("arg_1")) for item in items if isinstance(item, Mapping)]
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        pairs = [tuple(item)[:2] for item in raw if isinstance(item, Sequence) and len(item) >= 2]
    else:
        pairs = []
    if not pairs or len(pairs) != len(raw) or not all(isinstance(c, str) for pair in pairs for c in pair):
        raise SkipDocument("no (context, continuation) pairs in 'arguments'")
    return pairs


def _logliks(sample: Mapping[str, Any]) -> list[float]:
    """The per-option log-likelihoods in ``filtered_resps`` (``[["-1.5", "False"], ...]``)."""
    responses = sample.get("filtered_resps")
    if not isinstance(responses, Sequence) or isinstance(responses, str) or not responses:
        raise SkipDocument("no per-option responses in 'filtered_resps'")
    values = []
    for response in responses:
        value = response[0] if isinstance(response, Sequence) and not isinstance(response, str) else response
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SkipDocument("responses are not log-likelihoods (not a multiple-choice task)") from None
        if not math.isfinite(number):
            raise SkipDocument("a non-finite log-likelihood")
        values.append(number)
    return values


def _gold_candidates(target: Any, choices: list[str]) -> list[int]:
    """Option indices the logged target can mean, most likely first.

    lm-eval logs ``str(doc_to_target(doc))``: an index (``"2"``), an option text, or a list. A digit string
    that is also an option text is ambiguous; both readings are returned and the logged ``acc`` decides.
    """
    candidates: list[int] = []
    if isinstance(target, bool):
        raise SkipDocument(f"target {target!r} is not an option")
    if isinstance(target, int):
        candidates.append(target)
    elif isinstance(target, list):
        if len(target) != 1:
            raise SkipDocument("several gold options (multi-gold)")
        return _gold_candidates(target[0], choices)
    elif isinstance(target, str):
        text = target.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                parsed = None
            if isinstance(parsed, list):
                return _gold_candidates(parsed, choices)
        if target.isdigit():
            candidates.append(int(target))
        if target in choices:
            candidates.append(choices.index(target))
    candidates = [c for c in dict.fromkeys(candidates) if 0 <= c < len(choices)]
    if not candidates:
        raise SkipDocument(
            f"target {target!r} is neither an option index nor one of the {len(choices)} options"
        )
    return candidates


def option_record(
    sample: Mapping[str, Any], rule: str = "acc", delimiter: str = " ", category: Any = None
) -> dict[str, Any]:
    """The option record of one logged lm-eval multiple-choice document under ``rule`` (``acc``/``acc_norm``).

    ``delimiter`` is the task's target delimiter (:func:`target_delimiter`): removed from the front of each
    logged continuation it gives back the choice text whose length lm-eval's ``acc_norm`` divides by. Where
    lm-eval logged its own per-document value of the rule, the record must agree with it (that is what makes
    these numbers the same as lm-eval's), or the document is skipped.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    logliks = _logliks(sample)
    requests = _requests(sample)
    metrics = sample.get("metrics") or ()
    if "acc_mutual_info" in metrics and len(logliks) == len(requests) and len(logliks) % 2 == 0:
        half = len(logliks) // 2  # the second half are the unconditional ("", choice) requests
        logliks, requests = logliks[:half], requests[:half]
    if len(logliks) != len(requests):
        raise SkipDocument(f"{len(logliks)} responses for {len(requests)} requests")
    if len(logliks) < 2:
        raise SkipDocument("fewer than two options")
    if len({context for context, _ in requests}) > 1:
        raise SkipDocument("the options are contexts, not continuations (a multiple-input task)")
    continuations = [continuation for _, continuation in requests]
    choices = [c[len(delimiter) :] if delimiter and c.startswith(delimiter) else c for c in continuations]
    scores = length_normalised(logliks, choices) if rule == "acc_norm" else logliks
    candidates = _gold_candidates(sample.get("target"), choices)
    logged = sample.get(rule)
    records = [make_record(scores, gold, category) for gold in candidates]
    if isinstance(logged, int | float) and not isinstance(logged, bool):
        records = [r for r in records if r["correct"] == int(round(float(logged)))]
        if not records:
            raise SkipDocument(f"recomputed {rule} disagrees with the {rule} lm-eval logged")
    return records[0]
