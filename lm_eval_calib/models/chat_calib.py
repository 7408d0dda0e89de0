"""``chat-calib``: multiple choice and generation calibration through a chat endpoint.

The route is ``/v1/chat/completions``.

Chat endpoints return no prompt log-probs, so lm-eval's chat models refuse every ``loglikelihood`` request
and multiple-choice tasks cannot run on them. Where every option of a question is a single token (answer
letters ``A``..``D``, ``Yes``/``No``), one generated token is enough: the server's ``top_logprobs`` for the
first answer token hold each option's log-probability (matching rule and floor:
:mod:`~lm_eval_calib.models.endpoint_parsing`). ``chat-calib`` sends ONE request per question (all options
read from it), returns lm-eval's usual ``(log-likelihood, is_greedy)`` per option, so ``acc``, every
calibration metric, the records and the report work unchanged; each result also says whether the option
was read or floored (``result.floored``), counted in the records.

Use with ``--apply_chat_template``. ``--model_args``: lm-eval's ``local-chat-completions`` arguments
(``model``, ``base_url``, ``num_concurrent``, ``max_retries``, ``timeout``, ``tokenizer`` [optional:
exact single-token check of the options]) plus ``top_logprobs`` (default 20, vLLM's default limit),
``fold_case`` (default false) and ``check_endpoint`` (default true). Options that are not single tokens
are refused before any request. Generations carry their tokens' log-probs (``logprobs: true``) for
``seqprob``/``seqprob_mean``.
The API key comes from ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from lm_eval.models.openai_completions import LocalChatCompletion

from lm_eval_calib.generation.text import GeneratedText
from lm_eval_calib.models.endpoint_checks import EndpointError, refuse_secrets
from lm_eval_calib.models.endpoint_client import EndpointMixin, guarded
from lm_eval_calib.models.endpoint_parsing import (
    EndpointResponseError,
    generated_logprobs_from_chat,
    option_logprobs_from_top,
    spelled_length,
)
from lm_eval_calib.models.model_args import parse_bool, parse_int
from lm_eval_calib.models.plumbing import register_backend

__all__ = ["ChatCalibLM", "FlooredLoglikelihood"]

eval_logger = logging.getLogger(__name__)

NAME = "chat-calib"
#: Longest option text accepted as a single token when no tokenizer is given.
MAX_LABEL_CHARS = 8


class FlooredLoglikelihood(tuple):
    """lm-eval's ``(loglikelihood, is_greedy)`` plus ``.floored``: the option was missing from the top-k."""

    floored: bool

    def __new__(cls, loglikelihood: float, is_greedy: bool, floored: bool):
        self = super().__new__(cls, (float(loglikelihood), bool(is_greedy)))
        self.floored = bool(floored)
        return self

    def __reduce__(self):
        return (FlooredLoglikelihood, (self[0], self[1], self.floored))

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class ChatCalibLM(EndpointMixin, LocalChatCompletion):
    """Chat endpoint model that scores single-token options from ``top_logprobs`` (module docstring)."""

    model_name = NAME
    provides_generation_logprobs = True

    def __init__(
        self, top_logprobs: Any = 20, fold_case: Any = False, check_endpoint: Any = True, **kwargs: Any
    ) -> None:
        refuse_secrets(NAME, kwargs)
        if not kwargs.get("base_url"):
            raise EndpointError(
                f"{NAME}: base_url is required, e.g. base_url=http://HOST:PORT/v1/chat/completions"
            )
        self.top_logprobs = parse_int(top_logprobs, "top_logprobs", minimum=1)
        self.fold_case = parse_bool(fold_case, "fold_case")
        check = parse_bool(check_endpoint, "check_endpoint")
        kwargs.setdefault("tokenizer_backend", "huggingface" if kwargs.get("tokenizer") else None)
        kwargs.setdefault("tokenized_requests", False)
        super().__init__(**kwargs)
        self.tokens_as_ids = False
        if check:
            self._probe_chat()

    # -- requests ---------------------------------------------------------------------------------------
    def _first_token_payload(self, messages: list[dict]) -> dict[str, Any]:
        return {
            "messages": messages,
            "model": self.model,
            "max_tokens": 1,
            "temperature": 0,
            "seed": self._seed,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def _create_payload(
        self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs
    ) -> dict:
        payload = super()._create_payload(
            messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos
        )
        payload.setdefault("logprobs", True)  # the generated tokens' log-probs, for seqprob
        return payload

    def _probe_chat(self) -> None:
        answer = self.probe(self._first_token_payload([{"role": "user", "content": "Say A."}]))
        self._first_token_top(answer)

    @staticmethod
    def _first_token_top(answer: dict[str, Any]) -> list[dict]:
        try:
            top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            top = None
        if not top:
            raise EndpointResponseError(
                "the chat endpoint returned no top_logprobs for the answer token (got "
                f"{str(answer.get('choices'))[:200]}); the server must honour `logprobs: true, "
                "top_logprobs: k` "
                "(vLLM: --max-logprobs at least k; hosted APIs: a model that returns log-probs)"
            )
        return top

    # -- multiple choice ----------------------------------------------------------------------------------
    def _messages(self, context: Any) -> list[dict]:
        prompt = getattr(context, "prompt", None)
        if prompt is None:
            raise EndpointError(
                f"{NAME} sends conversations: run lm_eval with --apply_chat_template (the task's prompt then "
                "becomes chat messages)"
            )
        return json.loads(prompt)

    def _check_options(self, requests: list) -> None:
        """Refuse, before any request, options that are not single tokens (named, with the alternatives)."""
        first: dict[str, tuple[str, Any]] = {}
        for req in requests:
            first.setdefault(req.args[1], (req.task_name, req.doc_id))
        bad = {option: where for option, where in first.items() if not self._single_token(option)}
        if bad:
            shown = ", ".join(f"{o!r} ({t}, doc {d})" for o, (t, d) in list(bad.items())[:5])
            raise EndpointError(
                f"{NAME} reads options from the first answer token's top_logprobs, so every option must be "
                f"one token; these are not: {shown}{' ...' if len(bad) > 5 else ''}. Use a completions "
                "endpoint (--model completions-calib or local-completions) for this task, or a "
                "generate_until task with the generation estimators (calib_<task> of a generative task)."
            )

    def _single_token(self, option: str) -> bool:
        text = option.strip()
        if not text:
            return False
        if self.tokenizer is not None and hasattr(self.tokenizer, "encode"):
            return any(
                len(self.tokenizer.encode(form, add_special_tokens=False)) == 1 for form in (text, " " + text)
            )
        return len(text) <= MAX_LABEL_CHARS and not any(ch.isspace() for ch in text)

    @guarded
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[FlooredLoglikelihood]:
        if not requests:
            return []
        self._check_options(requests)
        by_context: dict[str, list[int]] = {}
        contexts: dict[str, Any] = {}
        for i, req in enumerate(requests):
            context = req.args[0]
            key = str(getattr(context, "prompt", context))
            by_context.setdefault(key, []).append(i)
            contexts[key] = context
        messages = {key: self._messages(contexts[key]) for key in by_context}  # refuses plain text first
        results: list[FlooredLoglikelihood | None] = [None] * len(requests)

        def score(key: str) -> None:
            answer = self.post_json(self._first_token_payload(messages[key]))
            top = self._first_token_top(answer)
            indices = by_context[key]
            read = option_logprobs_from_top(top, [requests[i].args[1] for i in indices], self.fold_case)
            best = int(np.argmax(read.logprobs))
            for n, i in enumerate(indices):
                result = FlooredLoglikelihood(read.logprobs[n], n == best, read.floored[n])
                results[i] = result
                self.cache_hook.add_partial("loglikelihood", requests[i].args, result)

        self.in_parallel(score, list(by_context))
        floored = sum(bool(r.floored) for r in results if r is not None)
        if floored:
            eval_logger.warning(
                f"{NAME}: {floored} of {len(requests)} option log-probs were not in the top "
                f"{self.top_logprobs} "
                "and got the floor (docs/endpoints.md); the records count them per document"
            )
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise EndpointError(
            f"{NAME}: chat endpoints return no prompt log-probs, so loglikelihood_rolling tasks (calib_clm, "
            "wikitext) cannot run; use --model completions-calib with the server's /v1/completions route"
        )

    # -- generation ------------------------------------------------------------------------------------
    @guarded
    def generate_until(self, requests, disable_tqdm: bool = False):
        parent = super().generate_until
        return self.generate_with_n(requests, lambda reqs: parent(reqs, disable_tqdm=disable_tqdm))

    def parse_generations(self, outputs=None, **kwargs) -> list:
        texts = super().parse_generations(outputs, **kwargs)
        if not isinstance(outputs, list):
            outputs = [outputs]
        choices = [c for out in outputs for c in sorted(out.get("choices", []), key=lambda c: c["index"])]
        if len(choices) != len(texts):
            return texts
        return [self._with_logprobs(text, choice) for text, choice in zip(texts, choices, strict=True)]

    @staticmethod
    def _with_logprobs(text: Any, choice: dict) -> Any:
        if not isinstance(text, str):
            return text
        tokens = generated_logprobs_from_chat(choice)
        if tokens is None:
            return text
        n = spelled_length([piece for piece, _ in tokens], text)
        if n is None:
            return text
        # Chat responses name tokens by text, not id: the ids are unknown (-1); only the log-probs are read.
        return GeneratedText(text, [-1] * n, [lp for _, lp in tokens[:n]])


register_backend(NAME, ChatCalibLM)
