"""The second passes through the model that the confidence estimators need, one batch per request type.

Every estimator question is asked once per document, all documents of a task together: one
``loglikelihood`` call (rescoring the generations that came back without log-probs, and P(True)) and one
``generate_until`` call (verbalised confidence and the sampled answers). Requests go to the model itself, not
to lm-eval's ``CachingLM`` in front of it: the cache keys on the request, so K identical sampling requests
would all get the first sample back.

The K samples of the sampling estimators go, where the model offers it (``provides_engine_sampling``:
``hf-calib``, ``vllm-calib``), to its ``generate_samples``: ONE seeded engine request per document that
returns K answers (vLLM ``SamplingParams(n=K, seed=...)``, one prefill; transformers
``generate(num_return_sequences=K)``), with the document's own seed
(:func:`~lm_eval_calib.generation.estimators.doc_sample_seed`), so the same ``sample_seed`` reproduces the
same samples. Other models get K separate unseeded ``generate_until`` requests. Neither route goes through
lm-eval's request cache (docs/generation.md, "Sampling at the engine, seeds and the request cache").

Every log-likelihood they read must be finite: a model with NaN weights (or a half-precision overflow)
stops the run with :class:`~lm_eval_calib.generation.text.NonFiniteLogprobsError`, naming the task, the
document and the fix, instead of a NaN or a confidence of 1.0 in the metrics. Such a model usually generates
empty answers, which have no tokens to rescore; a model that does not attach log-probs to its generations
(``hf``, ``vllm``; those that do check their own) therefore scores each empty answer's text prompt once
(:data:`EMPTY_PROBE`), only to check that it can.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM

from lm_eval_calib.generation import estimators as est
from lm_eval_calib.generation.text import NonFiniteLogprobsError, generation_logprobs_of, non_finite_message

logger = logging.getLogger("lm_eval_calib")

ANSWER_MARK = "\x00lm-eval-calib answer\x00"
QUESTION_MARK = "\x00lm-eval-calib question\x00"
PROVIDES_GENERATION_LOGPROBS_ATTR = "provides_generation_logprobs"
PROVIDES_ENGINE_SAMPLING_ATTR = "provides_engine_sampling"
"""A model that sets it True has ``generate_samples(requests, n, seeds) -> list[list[str]]``: for each
request, ``n`` samples drawn in one engine call seeded with ``seeds[i]`` (see the module docstring)."""
DEFAULT_SAMPLE_SEED = 1234
"""``CalibrationOptions.sample_seed``'s default (a test checks that they agree)."""
MESSAGES = "messages"
"""The glue of a model that takes the conversation as JSON messages (chat endpoints, ``chat-calib``): the
follow-up questions become new messages, and P(True) asks for a one-token Yes / No reply."""
Glue = tuple[str, str] | str | None
EMPTY_PROBE = " "
"""Continuation scored after the prompt of an empty answer (see the module docstring); any text would do."""


class MissingLoglikelihoodError(ValueError):
    """An estimator needs log-likelihoods (or token counts) that the chosen model does not give."""


class CachedRepeatsError(ValueError):
    """The task's own ``repeats`` would be read back from lm-eval's request cache as copies of one answer."""


@dataclass
class Generation:
    """One document's generation, as the model produced it (before the task's filters)."""

    doc_id: int
    doc: dict
    context: str
    gen_kwargs: dict
    text: str
    task: str
    seq: tuple[float, int, str] | None = None
    """(sum of token log-probs, number of tokens, "generation" | "rescored")."""
    ptrue: tuple[float, float] | None = None
    """Log-likelihoods of the (A) True / (B) False continuations."""
    verbal: str | None = None
    """The model's reply to the confidence question."""
    samples: list[str] = field(default_factory=list)


def unwrap(lm: Any) -> Any:
    """The model behind lm-eval's request cache (see the module docstring), however many caches wrap it."""
    while isinstance(lm, CachingLM):
        lm = lm.lm
    return lm


def provides_generation_logprobs(lm: Any) -> bool:
    return getattr(unwrap(lm), PROVIDES_GENERATION_LOGPROBS_ATTR, False) is True


def provides_engine_sampling(lm: Any) -> bool:
    """Whether the model draws a prompt's K samples in one seeded call (``generate_samples``)."""
    model = unwrap(lm)
    return getattr(model, PROVIDES_ENGINE_SAMPLING_ATTR, False) is True and callable(
        getattr(model, "generate_samples", None)
    )


def supports_loglikelihood(lm: Any) -> bool:
    """Whether ``lm`` scores log-likelihoods: chat-completion APIs raise NotImplementedError at once."""
    try:
        unwrap(lm).loglikelihood([])
    except NotImplementedError:
        return False
    except Exception:  # an empty request list is unusual; a model that trips on it can still score
        return True
    return True


def cached_repeats_refusal(lm: Any, generation_kwargs: dict | None, repeats: int, task: str) -> str | None:
    """Why the task's own generation would score copies of one cached answer, or None.

    lm-eval 0.4.13's ``CachingLM`` keys a request on its arguments, so the ``repeats`` copies of a request
    share one key (upstream issue #3046), and it skips the cache only for ``do_sample: true``. A task that
    samples by temperature alone (``temperature > 0`` without ``do_sample: true``) and repeats its
    requests therefore gets, on any run after the first with the same ``--use_cache`` file, one cached
    answer ``repeats`` times. (Our own sampling passes never read the cache: they call the model behind it.)
    """
    kwargs = dict(generation_kwargs or {})
    if not isinstance(lm, CachingLM) or int(repeats or 1) <= 1 or kwargs.get("do_sample") is True:
        return None
    try:
        temperature = float(kwargs.get("temperature") or 0.0)
    except (TypeError, ValueError):
        return None
    if temperature <= 0.0:
        return None  # greedy repeats are copies with or without the cache
    return (
        f"{task}: repeats={repeats} samples at temperature {temperature} without do_sample: true, and "
        "lm-eval's request cache (--use_cache) reads such requests back: every run after the first would "
        f"score {repeats} copies of one cached answer (lm-eval issue #3046). Add do_sample: true to the "
        "task's generation_kwargs (or --gen_kwargs do_sample=true): the cache then skips them; or run "
        "without --use_cache"
    )


def check_model(
    lm: Any,
    estimators: Sequence[str],
    task: str,
    generation_kwargs: dict | None = None,
    repeats: int = 1,
) -> None:
    """Refuse, before any generation, estimators that the model cannot serve (by what each needs), and a
    task whose repeated sampled answers lm-eval's request cache would collapse
    (:func:`cached_repeats_refusal`; ``generation_kwargs`` and ``repeats`` are the task's own)."""
    refusal = cached_repeats_refusal(lm, generation_kwargs, repeats, task)
    if refusal is not None:
        raise CachedRepeatsError(refusal)
    needs_ll = [e for e in estimators if any(n.loglikelihood for n in est.ESTIMATORS[e].needs)]
    if needs_ll and not supports_loglikelihood(lm):
        working = [
            name
            for name, e in est.ESTIMATORS.items()
            if not any(n.loglikelihood or n is est.Need.TOKEN_COUNT for n in e.needs)
        ]
        suggestion = json.dumps({"calibration": {"confidence": working}})
        raise MissingLoglikelihoodError(
            f"{task}: confidence estimator(s) {', '.join(needs_ll)} need log-likelihoods, which model "
            f"{type(unwrap(lm)).__name__} does not return (e.g. chat-completion APIs). Use "
            f"--metadata '{suggestion}' with this model, "
            "or a model that scores text (hf, hf-calib, vllm, vllm-calib, a completions API)."
        )
    counted = [e for e in estimators if est.Need.TOKEN_COUNT in est.ESTIMATORS[e].needs]
    tokenizer = callable(getattr(unwrap(lm), "_encode_pair", None))
    if counted and not (provides_generation_logprobs(lm) or tokenizer):
        raise MissingLoglikelihoodError(
            f"{task}: confidence estimator {', '.join(counted)} needs the number of generated tokens, and "
            f"model {type(unwrap(lm)).__name__} has no tokenizer lm-eval can call (_encode_pair); use seqprob"
        )


# -- prompts ------------------------------------------------------------------------------------------------
def chat_glue(chat_template: Callable[..., Any]) -> tuple[str, str] | str:
    """The template text between the assistant's answer and a new user question, and after that question.

    Found by rendering a conversation with marker strings, so any chat template works without knowing its
    format; the original prompt (already rendered by lm-eval) is then continued with it.
    """
    rendered = chat_template(
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": ANSWER_MARK},
            {"role": "user", "content": QUESTION_MARK},
        ]
    )
    if not isinstance(rendered, str):
        return MESSAGES  # a chat endpoint's JSON messages (lm-eval's JsonChatStr): continued as messages
    start, mid = rendered.find(ANSWER_MARK), rendered.find(QUESTION_MARK)
    if start < 0 or mid < start:
        raise ValueError(
            "the model's chat template drops or reorders message contents; P(True) and verbalised "
            "confidence cannot continue the conversation with it"
        )
    return rendered[start + len(ANSWER_MARK) : mid], rendered[mid + len(QUESTION_MARK) :]


def followup_prompt(item: Generation, question: str, text_suffix: str, glue: Glue) -> Any:
    """The original prompt, the model's own answer, then ``question`` (a new chat turn when templated)."""
    if glue is None:
        return item.context + item.text + text_suffix
    if glue == MESSAGES:
        messages = json.loads(item.context.prompt) + [
            {"role": "assistant", "content": str(item.text)},
            {"role": "user", "content": question},
        ]
        return type(item.context)(json.dumps(messages, ensure_ascii=False))
    return item.context + item.text + glue[0] + question + glue[1]


# -- the passes ---------------------------------------------------------------------------------------------
def _instance(kind: str, item: Generation, arguments: tuple, idx: int) -> Instance:
    return Instance(kind, item.doc, arguments, idx, metadata=(item.task, item.doc_id, 1))


def run_passes(
    lm: Any,
    items: Sequence[Generation],
    estimators: Sequence[str],
    n_samples: int,
    glue: Glue,
    seed: int = DEFAULT_SAMPLE_SEED,
) -> None:
    """Fill ``seq``, ``ptrue``, ``verbal`` and ``samples`` of every item, as far as the chosen estimators
    need them; each need is served once, whichever and however many estimators share it. ``seed`` is the
    run-level ``sample_seed`` (each document samples from its own seed derived from it)."""
    model = unwrap(lm)
    needs = est.needs_of(estimators)
    ll_requests: list[Instance] = []
    ll_targets: list[tuple[Generation, str]] = []
    rescore: list[Generation] = []
    want_seq = est.Need.SEQ_LOGPROB in needs
    # models that attach log-probs check their own generations (hf-calib, vllm-calib: models/generated.py),
    # and a chat endpoint's conversation (not a str) cannot be scored with an arbitrary continuation
    probe_empty = not provides_generation_logprobs(lm)

    for item in items:
        if want_seq:
            logprobs = generation_logprobs_of(item.text)
            if logprobs is not None:
                _check(item, "its generation", float(logprobs.sum()))
                item.seq = (float(logprobs.sum()), int(logprobs.shape[0]), "generation")
            elif item.text == "":
                item.seq = (0.0, 0, "empty")
                if probe_empty and isinstance(item.context, str):
                    ll_requests.append(_instance("loglikelihood", item, (item.context, EMPTY_PROBE), 0))
                    ll_targets.append((item, "probe"))
            else:
                rescore.append(item)
        if est.Need.PTRUE in needs:
            question = est.PTRUE_QUESTION_YES_NO if glue == MESSAGES else est.PTRUE_QUESTION
            prompt = followup_prompt(item, question, est.PTRUE_TEXT_SUFFIX, glue)
            choices = {None: est.PTRUE_CHOICES_TEXT, MESSAGES: est.PTRUE_CHOICES_YES_NO}.get(
                glue, est.PTRUE_CHOICES_CHAT
            )
            for idx, choice in enumerate(choices):
                ll_requests.append(_instance("loglikelihood", item, (prompt, choice), idx))
                ll_targets.append((item, f"ptrue{idx}"))

    _rescore(model, rescore, ll_requests, ll_targets)

    gen_requests: list[Instance] = []
    gen_targets: list[tuple[Generation, str]] = []
    at_engine = est.Need.SAMPLES in needs and provides_engine_sampling(model)
    for item in items:
        if est.Need.VERBAL in needs:
            prompt = followup_prompt(item, est.VERBAL_QUESTION, est.VERBAL_TEXT_SUFFIX, glue)
            kwargs = {
                "until": est.VERBAL_UNTIL_TEXT if glue is None else [],
                "max_gen_toks": est.VERBAL_MAX_TOKENS,
                "do_sample": False,
                "temperature": 0.0,
            }
            gen_requests.append(_instance("generate_until", item, (prompt, kwargs), 0))
            gen_targets.append((item, "verbal"))
        if est.Need.SAMPLES in needs and not at_engine:
            kwargs = sampling_kwargs(item.gen_kwargs)
            for k in range(n_samples):
                gen_requests.append(_instance("generate_until", item, (item.context, kwargs), k))
                gen_targets.append((item, "sample"))

    if ll_requests:
        results = model.loglikelihood(ll_requests)
        ptrue_parts: dict[int, list[float]] = {}
        for (item, what), request, result in zip(ll_targets, ll_requests, results, strict=True):
            value = float(result[0])
            _check(item, _WHAT.get(what, what), value)
            if what == "probe":
                continue
            if what == "seq":
                item.seq = (value, _n_tokens(model, request, result), "rescored")
            else:
                ptrue_parts.setdefault(id(item), []).append(value)
                if len(ptrue_parts[id(item)]) == 2:
                    item.ptrue = tuple(ptrue_parts.pop(id(item)))
    if gen_requests:
        replies = model.generate_until(gen_requests)
        for (item, what), reply in zip(gen_targets, replies, strict=True):
            if what == "verbal":
                item.verbal = str(reply)
            else:
                item.samples.append(est.SampledText(str(reply), None, est.SAMPLED_AS_REQUESTS))
    if at_engine:
        _sample_at_engine(model, items, n_samples, seed)


def sampling_kwargs(gen_kwargs: dict) -> dict:
    """The task's generation settings with sampling at temperature 1 (the sampling estimators' setting).

    A ``seed`` among the task's settings is dropped: sent with each of K separate requests (``vllm`` passes it
    to ``SamplingParams``) it would give K copies of one answer; the engine route seeds per document instead.
    """
    kwargs = copy.deepcopy(dict(gen_kwargs or {}))
    if kwargs.pop("seed", None) is not None:
        logger.info("the task's generation seed is not used for the sampling estimators' samples")
    return kwargs | {"do_sample": True, "temperature": 1.0}


def _sample_at_engine(model: Any, items: Sequence[Generation], n_samples: int, seed: int) -> None:
    """K samples per document from the model's ``generate_samples``: one seeded request per document."""
    requests = [
        _instance("generate_until", item, (item.context, sampling_kwargs(item.gen_kwargs)), 0)
        for item in items
    ]
    seeds = [est.doc_sample_seed(seed, item.task, item.doc_id) for item in items]
    replies = model.generate_samples(requests, n_samples, seeds)
    if len(replies) != len(items):
        raise RuntimeError(
            f"{type(model).__name__}.generate_samples returned {len(replies)} lists for {len(items)} requests"
        )
    for item, doc_seed, texts in zip(items, seeds, replies, strict=True):
        if len(texts) != n_samples:
            raise RuntimeError(
                f"{item.task}: document {item.doc_id}: {type(model).__name__}.generate_samples returned "
                f"{len(texts)} samples, {n_samples} were asked for"
            )
        item.samples = [est.SampledText(str(t), doc_seed, est.SAMPLED_AT_ENGINE) for t in texts]


def _rescore(model: Any, items: list[Generation], ll_requests: list, ll_targets: list) -> None:
    """Score each generation as the tokens that follow its prompt's tokens, where the model's tokenizer says
    so (``tok_encode(prompt + text)`` starts with ``tok_encode(prompt)``): then exactly the generated text's
    tokens are scored, even when the prompt ends with whitespace (a chat template's ``assistant\n``), which
    lm-eval's ``loglikelihood`` would move into the continuation and score too. Other items (and models
    without lm-eval's token-level API) go through the public ``loglikelihood`` with the rest."""
    encode, score = getattr(model, "tok_encode", None), getattr(model, "_loglikelihood_tokens", None)
    exact: list[tuple[Generation, tuple]] = []
    for item in items:
        text = str(item.text)
        if callable(encode) and callable(score) and item.context:
            try:
                context_enc, whole = list(encode(item.context)), list(encode(item.context + text))
            except Exception:  # an API model without a local tokenizer: the public API below
                context_enc, whole = [], []
            if context_enc and whole[: len(context_enc)] == context_enc and len(whole) > len(context_enc):
                exact.append((item, ((item.context, text), context_enc, whole[len(context_enc) :])))
                continue
        ll_requests.append(_instance("loglikelihood", item, (item.context, text), 0))
        ll_targets.append((item, "seq"))
    if exact:
        results = score([request for _, request in exact])
        for (item, request), result in zip(exact, results, strict=True):
            value = float(result[0])
            _check(item, "its generation", value)
            item.seq = (value, len(request[2]), "rescored")


_WHAT = {
    "seq": "its generation",
    "probe": "the prompt of its empty answer",
    "ptrue0": "the P(True) question's True choice",
    "ptrue1": "the P(True) question's False choice",
}


def _check(item: Generation, what: str, value: float) -> None:
    """A non-finite log-likelihood is a broken model: stop, naming the task, the document and the fix."""
    if not math.isfinite(value):
        where = f"{item.task}: document {item.doc_id}"
        raise NonFiniteLogprobsError(non_finite_message(where, what, value))


def _n_tokens(model: Any, request: Instance, result: Any) -> int:
    """Number of tokens the rescoring scored: from the model's token statistics, else its tokenizer."""
    stats = getattr(result, "token_stats", None)
    if stats is not None:
        return len(stats)
    encode = getattr(model, "_encode_pair", None)
    if callable(encode):
        return len(encode(*request.args)[1])
    return 0  # only seqprob (which needs no count) reaches here: check_model refuses seqprob_mean
