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


ARGUMENTS_LAYOUT = '{"gen_args_<i>": {"arg_0": context, "arg_1": continuation}, ...}'
"""How lm-eval 0.4 logs a document's requests under ``arguments``."""


def _request_index(key: Any) -> int:
    """The ``i`` of lm-eval's ``gen_args_<i>`` key (the request's position)."""
    suffix = str(key).rsplit("_", 1)[-1]
    if not (suffix.isascii() and suffix.isdigit() and len(suffix) < 10):
        raise SkipDocument(f"'arguments' is not lm-eval's {ARGUMENTS_LAYOUT} (it has key {str(key)[:40]!r})")
    return int(suffix)


def _requests(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(context, continuation)`` per request: lm-eval logs ``{"gen_args_i": {"arg_0": ..., "arg_1": ...}}``;
    an in-memory sample holds a list of pairs."""
    raw = sample.get("arguments")
    if isinstance(raw, Mapping):
        items = [raw[key] for key in sorted(raw, key=_request_index)]
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
        value = response
        if isinstance(response, Sequence) and not isinstance(response, str):
            if not response:
                raise SkipDocument("an empty response in 'filtered_resps'")
            value = response[0]
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
    target = _one_gold(target)
    candidates: list[int] = []
    if isinstance(target, bool):
        raise SkipDocument(f"target {target!r} is not an option")
    if isinstance(target, int):
        candidates.append(target)
    elif isinstance(target, str):
        if target.isdecimal() and len(target) <= 18:  # int() reads exactly these (any script's digits)
            candidates.append(int(target))
        if target in choices:
            candidates.append(choices.index(target))
    candidates = [c for c in dict.fromkeys(candidates) if 0 <= c < len(choices)]
    if not candidates:
        shown = repr(target) if len(repr(target)) <= 60 else repr(target)[:57] + "..."
        raise SkipDocument(f"target {shown} is neither an option index nor one of the {len(choices)} options")
    return candidates


def _one_gold(target: Any) -> Any:
    """The gold answer inside a list of one (or the text of one, ``"[2]"``), unwrapped however deep;
    several gold options are a :class:`SkipDocument`. A loop, not recursion: a logged target can be nested
    deeper than Python's recursion limit."""
    while True:
        if isinstance(target, list):
            if len(target) != 1:
                raise SkipDocument("several gold options (multi-gold)")
            target = target[0]
        elif isinstance(target, str) and target.strip().startswith("[") and target.strip().endswith("]"):
            parsed = _literal(target.strip())
            if not isinstance(parsed, list):
                return target
            target = parsed
        else:
            return target


def _literal(text: str) -> Any:
    """A Python literal read from ``text``, or None when it is none (or too deep or odd to build)."""
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):  # TypeError: [{[1]: 2}]
        return None


def _logged_value(value: Any) -> int | None:
    """lm-eval's own per-document value of a rule (``acc``: 0.0 or 1.0) as 0/1, or None when it logged none
    (or something that is not a finite number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return int(round(float(value)))
    except (OverflowError, ValueError):  # inf, nan, an integer too large for a float
        return None


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
    metrics = sample.get("metrics")
    metrics = metrics if isinstance(metrics, list | tuple) else ()
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
    logged = _logged_value(sample.get(rule))
    records = [make_record(scores, gold, category) for gold in candidates]
    if logged is not None:
        records = [r for r in records if r["correct"] == logged]
        if not records:
            raise SkipDocument(f"recomputed {rule} disagrees with the {rule} lm-eval logged")
    return records[0]
