"""The HTTP side of ``completions-calib`` and ``chat-calib``: one probe before the run, then guarded calls.

lm-eval's ``TemplateAPI`` already sends requests (concurrency, retries with backoff, timeouts). This mixin
adds what calibration needs around it:

- before any scoring request, one small probe request of the same kind: a wrong model name, a refused key
  or a server that returns no log-probs gives ONE message naming the server's answer and the setting to
  change (:mod:`~lm_eval_calib.models.endpoint_checks`), instead of retries and a log line per request;
- whether the server names tokens by id (``return_tokens_as_token_ids``, vLLM and SGLang): asked in the
  probe and dropped for servers that refuse the field;
- a server that stops answering mid-run ends the run with one clear error (lm-eval writes no results file
  then; with ``--use_cache`` the answers already received stay in its cache, so a rerun sends only the
  missing requests);
- :meth:`post_json` for the requests this package sends itself (chat multiple choice, ``n`` samples), with
  lm-eval's retry policy: connection errors and HTTP 5xx/429 are retried, other HTTP errors are not;
- K identical sampling requests as ONE request with ``n: K`` (:meth:`generate_with_n`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lm_eval_calib.models.endpoint_checks import EndpointError, describe_http_error, stopped_answering

__all__ = ["EndpointMixin", "guarded"]

eval_logger = logging.getLogger(__name__)

_RETRY_STATUS = (429, 500, 502, 503, 504)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the server did not answer" (aiohttp and requests, when installed)."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, asyncio.TimeoutError]
    try:
        import aiohttp

        kinds.append(aiohttp.ClientConnectionError)
        kinds.append(aiohttp.ServerTimeoutError)
    except ImportError:
        pass
    try:
        import requests

        kinds.append(requests.ConnectionError)
        kinds.append(requests.Timeout)
    except ImportError:
        pass
    return tuple(kinds)


def _http_error(exc: BaseException) -> tuple[int, str] | None:
    """``(status, body)`` of an HTTP error raised by aiohttp or requests, else None."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return int(response.status_code), str(getattr(response, "text", ""))
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status, str(getattr(exc, "message", ""))
    return None


def _samples(kwargs: Any) -> bool:
    """Whether generation arguments ask for sampling (``do_sample`` or a temperature above 0)."""
    if not isinstance(kwargs, Mapping):
        return False
    try:
        return bool(kwargs.get("do_sample")) or float(kwargs.get("temperature") or 0) > 0
    except (TypeError, ValueError):
        return False


def guarded(method: Callable) -> Callable:
    """Run a scoring method; turn "the server went away" and HTTP refusals into one :class:`EndpointError`."""

    @functools.wraps(method)
    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except EndpointError:
            raise
        except Exception as exc:
            cause = exc
            retry_last = getattr(exc, "last_attempt", None)  # tenacity.RetryError
            if retry_last is not None and retry_last.exception() is not None:
                cause = retry_last.exception()
            http = _http_error(cause)
            if http is not None:
                raise EndpointError(describe_http_error(*http, self.base_url, self.model)) from exc
            if isinstance(cause, _connection_errors()):
                raise stopped_answering(self.base_url, cause) from exc
            raise

    return run


class EndpointMixin:
    """Probe and guarded calls for an lm-eval ``TemplateAPI`` subclass (see the module docstring)."""

    base_url: str
    model: str
    timeout: int
    max_retries: int
    header: dict
    verify_certificate: bool
    tokenized_requests: bool
    add_bos_token: bool
    eos_string: str | None
    _seed: int
    _concurrent: int

    #: The model name used in messages.
    model_name: str = "endpoint"

    def post_json(self, payload: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
        """POST ``payload`` to ``base_url``: the JSON answer, or an :class:`EndpointError`.

        Connection errors and HTTP 429/5xx are retried ``max_retries`` times with exponential backoff (as
        lm-eval does); any other HTTP error is the server's final word and is not retried.
        """
        import requests
        from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

        class _Retry(Exception):
            pass

        def once() -> dict[str, Any]:
            try:
                response = requests.post(
                    self.base_url,
                    json=payload,
                    headers=self.header,
                    verify=self.verify_certificate,
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Retry(exc) from exc
            if response.status_code in _RETRY_STATUS:
                raise _Retry(f"HTTP {response.status_code}: {response.text[:200]}")
            if not response.ok:
                raise EndpointError(
                    describe_http_error(response.status_code, response.text, self.base_url, self.model)
                )
            return response.json()

        attempts = self.max_retries if retries is None else retries
        try:
            return retry(
                stop=stop_after_attempt(max(attempts, 1)),
                wait=wait_exponential(multiplier=0.5, min=1, max=10),
                retry=retry_if_exception_type(_Retry),
                reraise=True,
            )(once)()
        except _Retry as exc:
            cause = exc.__cause__ or exc
            raise stopped_answering(self.base_url, cause) from exc

    def generate_with_n(self, requests: list, generate: Callable[[list], list]) -> list:
        """``generate_until`` where K identical sampling requests (what the ``consistency`` estimator asks)
        become ONE request with ``n: K``; everything else goes to ``generate`` (lm-eval's own path).

        K separate requests would carry lm-eval's one fixed ``seed`` each, and a seeded server returns the
        same sample K times; one request with ``n`` draws K different samples from that seed, reproducibly.
        """
        groups: dict[tuple[str, str], list[int]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args[0], req.args[1]
            if _samples(kwargs):
                key = (
                    str(getattr(context, "prompt", context)),
                    json.dumps(kwargs, sort_keys=True, default=str),
                )
                groups.setdefault(key, []).append(i)
        multi = [indices for indices in groups.values() if len(indices) > 1]
        taken = {i for indices in multi for i in indices}
        rest = [i for i in range(len(requests)) if i not in taken]
        results: list[Any] = [None] * len(requests)
        if rest:
            for i, text in zip(rest, generate([requests[i] for i in rest]), strict=True):
                results[i] = text

        def draw(indices: list[int]) -> None:
            context, kwargs = requests[indices[0]].args[0], requests[indices[0]].args[1]
            payload = self._create_payload(
                self.create_message([self._generation_prompt(context)]),
                generate=True,
                gen_kwargs=copy.deepcopy(kwargs),
                seed=self._seed,
                eos=self.eos_string,
            )
            payload["n"] = len(indices)
            texts = self.parse_generations(outputs=self.post_json(payload))
            if len(texts) != len(indices):
                raise EndpointError(
                    f"{self.base_url} returned {len(texts)} samples where n={len(indices)} were asked; the "
                    "server does not support `n`: use a server that does (vLLM, TGI, SGLang do)"
                )
            for i, text in zip(indices, texts, strict=True):
                results[i] = text

        self.in_parallel(draw, multi)
        return results

    def in_parallel(self, fn: Callable[[Any], None], items: Any) -> None:
        """``fn(item)`` for every item, ``num_concurrent`` at a time (the requests this package sends itself);
        the first error is raised once all have ended."""
        with ThreadPoolExecutor(max_workers=max(1, int(self._concurrent))) as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()

    def _generation_prompt(self, context: Any) -> Any:
        """One request's prompt as lm-eval's ``create_message`` takes it (token ids, or the chat JSON)."""
        if getattr(context, "prompt", None) is not None or not self.tokenized_requests:
            return context
        return self.tok_encode(context, add_special_tokens=self.add_bos_token)

    def probe(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one small request before the run: the server's refusal (model, key, route) surfaces here once.

        Where the server refuses ``return_tokens_as_token_ids`` (not vLLM or SGLang), the probe is repeated
        without it and the model stops asking for it.
        """
        try:
            return self.post_json(payload, retries=2)
        except EndpointError as exc:
            if payload.get("return_tokens_as_token_ids") and "return_tokens_as_token_ids" in str(exc):
                self.tokens_as_ids = False
                return self.post_json({k: v for k, v in payload.items() if k != "return_tokens_as_token_ids"})
            raise
