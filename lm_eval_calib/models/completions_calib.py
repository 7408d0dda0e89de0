"""``completions-calib``: lm-eval's ``local-completions`` plus token statistics and generation log-probs.

Same ``--model_args`` as ``local-completions`` (``model``, ``base_url``, ``tokenizer``, ``num_concurrent``,
``max_retries``, ``timeout``, ...). Its results are what ``local-completions`` returns (the same requests,
the same log-likelihoods) and also carry what calibration needs from a served model:

- per-token statistics on ``loglikelihood`` and ``loglikelihood_rolling`` results (the prompt log-probs the
  server echoes: ``echo: true, logprobs: 1``), so ``calib_clm`` and ``calib_facts_open`` run against an
  endpoint;
- the log-probs of generated tokens on ``generate_until`` results (``logprobs: 1`` with the generation), so
  ``seqprob`` / ``seqprob_mean`` cost no second request.

Questions whose options are single tokens (answer letters) cost ONE request each: the next-token
``top_logprobs`` of the context, read by token id, hold each option's exact log-probability, and the server
can reuse its prefix cache (echoing prompt log-probs disables it in vLLM and computes each option's whole
prompt again); options outside the top ``top_logprobs`` (default 20) fall back to the echo.
``one_request_per_question=false`` echoes every option as ``local-completions`` does.

Rolling documents are cut into the windows ``hf`` cuts for ``max_length - 1`` tokens: the API needs one
position for the generated token lm-eval's ``local-completions`` asks for (its own rule). Extra
``--model_args``: ``tokens_as_ids`` (default true: ask for ``return_tokens_as_token_ids``, which vLLM and
SGLang support; dropped automatically where the server refuses it), ``check_endpoint`` (default true: one
probe request before the run). The API key comes from ``OPENAI_API_KEY``, never from ``--model_args``.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from types import SimpleNamespace
from typing import Any

import numpy as np
from lm_eval.models.openai_completions import LocalCompletionsAPI

from lm_eval_calib.models.endpoint_checks import EndpointError, refuse_secrets
from lm_eval_calib.models.endpoint_client import EndpointMixin, guarded
from lm_eval_calib.models.endpoint_parsing import completion_token_stats, parse_token_id
from lm_eval_calib.models.generated import with_generation_logprobs
from lm_eval_calib.models.model_args import parse_bool, parse_int
from lm_eval_calib.models.plumbing import register_backend, rolling_results
from lm_eval_calib.models.requests import rolling_windows
from lm_eval_calib.models.token_stats import LoglikelihoodResult, TokenStats

__all__ = ["CompletionsCalibLM"]

eval_logger = logging.getLogger(__name__)

NAME = "completions-calib"


class CompletionsCalibLM(EndpointMixin, LocalCompletionsAPI):
    """``local-completions`` whose results carry token statistics and generation log-probs."""

    model_name = NAME
    provides_token_stats = True
    provides_generation_logprobs = True

    def __init__(
        self,
        tokens_as_ids: Any = True,
        check_endpoint: Any = True,
        one_request_per_question: Any = True,
        top_logprobs: Any = 20,
        **kwargs: Any,
    ) -> None:
        refuse_secrets(NAME, kwargs)
        self.one_request_per_question = parse_bool(one_request_per_question, "one_request_per_question")
        self.top_logprobs = parse_int(top_logprobs, "top_logprobs", minimum=1)
        if not kwargs.get("base_url"):
            raise EndpointError(
                f"{NAME}: base_url is required, e.g. base_url=http://HOST:PORT/v1/completions"
            )
        self.tokens_as_ids = parse_bool(tokens_as_ids, "tokens_as_ids")
        check = parse_bool(check_endpoint, "check_endpoint")
        if str(kwargs.get("tokenized_requests", True)).lower() in ("false", "0", "no"):
            raise EndpointError(
                f"{NAME}: tokenized_requests=False loses the token positions it reads; drop it"
            )
        # lm-eval's "auto" switches to the server's tokenizer route where one exists, and then encodes with
        # special tokens; with a tokenizer named, score exactly the tokens `hf` would.
        kwargs.setdefault("tokenizer_backend", "huggingface" if kwargs.get("tokenizer") else "auto")
        super().__init__(**kwargs)
        if self.tokenizer is None:
            raise EndpointError(f"{NAME}: needs a tokenizer (tokenizer=<the served model's tokenizer>)")
        if check:
            self._probe_completions()

    # -- requests ---------------------------------------------------------------------------------------
    def _create_payload(
        self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs
    ) -> dict:
        payload = super()._create_payload(
            messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos
        )
        if generate:
            payload.setdefault("logprobs", 1)
        if self.tokens_as_ids:
            payload["return_tokens_as_token_ids"] = True
        return payload

    def _probe_completions(self) -> None:
        ids = [self.prefix_token_id] + list(self.tok_encode("Hello"))
        answer = self.probe(self._create_payload([ids], generate=False))
        choices = answer.get("choices") or []
        if not choices:
            raise EndpointError(f"{self.base_url} answered without choices: {str(answer)[:300]}")
        completion_token_stats(choices[0], ids, 1)  # raises, naming the setting, when log-probs are missing

    # -- one request per question -------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, **kwargs) -> list:
        """Where a context's continuations are single tokens (answer letters), ONE request per context: the
        next-token ``top_logprobs`` (by token id) hold each option's exact log-probability, and without
        prompt log-probs the server can reuse its prefix cache (vLLM computes every prompt in full when
        prompt log-probs are asked). Options outside the top-k, multi-token continuations and over-long
        contexts take lm-eval's echo route. Same numbers either way (tested against ``hf-calib``)."""
        fast: dict[tuple[int, ...], list[int]] = {}
        rest: list[int] = []
        for i, (_, context, continuation) in enumerate(requests):
            single = len(continuation) == 1 and len(context) > 0 and len(context) + 1 <= self.max_length
            if self.one_request_per_question and self.tokens_as_ids and single:
                fast.setdefault(tuple(context), []).append(i)
            else:
                rest.append(i)
        results: list[Any] = [None] * len(requests)

        def score(context: tuple[int, ...]) -> None:
            payload = {
                "model": self.model,
                "prompt": [list(context)],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": self.top_logprobs,
                "seed": self._seed,
                "return_tokens_as_token_ids": True,
            }
            choice = (self.post_json(payload).get("choices") or [{}])[0]
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
            by_id = {parse_token_id(k): float(v) for k, v in (top or {}).items()}
            by_id.pop(None, None)
            if not by_id:
                rest.extend(fast[context])
                return
            best_id, best = max(by_id.items(), key=lambda kv: kv[1])
            for i in fast[context]:
                token = int(requests[i][2][0])
                if token not in by_id:
                    rest.append(i)
                    continue
                stats = TokenStats(
                    token_ids=np.asarray([token]),
                    token_logprobs=np.asarray([by_id[token]]),
                    top1_ids=np.asarray([best_id]),
                    top1_logprobs=np.asarray([best]),
                )
                results[i] = LoglikelihoodResult(by_id[token], token == best_id, stats)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])

        self.in_parallel(score, list(fast))
        if rest:
            rest.sort()
            echoed = super()._loglikelihood_tokens([requests[i] for i in rest])
            for i, result in zip(rest, echoed, strict=True):
                results[i] = result
        return results

    # -- parsing ----------------------------------------------------------------------------------------
    def parse_logprobs(self, outputs=None, tokens=None, ctxlens=None, **kwargs) -> list[LoglikelihoodResult]:
        results = []
        if not isinstance(outputs, list):
            outputs = [outputs]
        flat_tokens = list(tokens or [])
        k = 0
        for out in outputs:
            for choice in sorted(out["choices"], key=itemgetter("index")):
                ids, ctxlen = flat_tokens[k], ctxlens[k]
                k += 1
                stats = completion_token_stats(choice, ids, ctxlen)
                results.append(LoglikelihoodResult(stats.loglikelihood, stats.is_greedy, stats))
        return results

    def parse_generations(self, outputs=None, **kwargs) -> list:
        if not isinstance(outputs, list):
            outputs = [outputs]
        special = getattr(self.tokenizer, "all_special_ids", []) or []
        texts: list = []
        for out in outputs:
            batch: list = [None] * len(out["choices"])
            for choice in out["choices"]:
                batch[choice["index"]] = self._with_logprobs(choice, special)
            texts.extend(batch)
        return texts

    def _with_logprobs(self, choice: dict, special: list[int]) -> Any:
        text = choice.get("text")
        logprobs = choice.get("logprobs") or {}
        names, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
        if text is None or not isinstance(names, list) or not isinstance(values, list):
            return text
        ids = [parse_token_id(name) for name in names]
        if any(i is None for i in ids) or any(v is None for v in values):
            ids = [self.tokenizer.convert_tokens_to_ids(name) for name in names]  # text-named tokens
            if any(not isinstance(i, int) for i in ids):
                return text
        return with_generation_logprobs(text, [(ids, values)], self.tokenizer.decode, special)

    # -- scoring ----------------------------------------------------------------------------------------
    @guarded
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    @guarded
    def generate_until(self, requests, disable_tqdm: bool = False):
        parent = super().generate_until
        return self.generate_with_n(requests, lambda reqs: parent(reqs, disable_tqdm=disable_tqdm))

    @guarded
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """``hf``'s rolling windows for ``max_length - 1`` tokens, scored as echoed prompts; per document the
        sum of its windows and the token statistics of all of them in order."""
        if not requests:
            return []
        cutter = SimpleNamespace(
            tok_encode=self.tok_encode, prefix_token_id=self.prefix_token_id, max_length=self.max_length - 1
        )
        windows = rolling_windows(cutter, requests)
        pairs = [(None, tokens[: len(tokens) - len(scored)], list(scored)) for _, tokens, scored in windows]
        scored = self._loglikelihood_tokens(pairs, disable_tqdm=True)
        parts = [(float(result[0]), result.token_stats) for result in scored]
        return rolling_results(requests, [doc for doc, _, _ in windows], parts, self.cache_hook)


register_backend(NAME, CompletionsCalibLM)
