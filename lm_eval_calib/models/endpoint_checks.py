"""What ``completions-calib`` and ``chat-calib`` check before their first scoring request, and how they fail.

An endpoint run can go wrong in ways a local model cannot: a key in ``--model_args`` (lm-eval writes
``model_args`` into every results file), a wrong model name or key (lm-eval would retry each request and log
a traceback per request), a server that returns no log-probs (vLLM's ``--max-logprobs``), a server that dies
mid-run. Each gets one clear message here, before inference where it can be known then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "API_KEY_ENV",
    "EndpointError",
    "describe_http_error",
    "refuse_secrets",
    "stopped_answering",
]

#: The environment variable lm-eval's OpenAI-compatible models read the key from (never ``--model_args``).
API_KEY_ENV = "OPENAI_API_KEY"

#: ``--model_args`` names that would carry a secret into lm-eval's results files.
_SECRET_ARGS = ("api_key", "openai_api_key", "key", "token", "auth_token", "bearer", "authorization")


class EndpointError(RuntimeError):
    """The endpoint cannot serve the run; the message says what the server answered and what to change."""


def refuse_secrets(model: str, model_args: Mapping[str, Any]) -> None:
    """Refuse a key given in ``--model_args``: lm-eval copies ``model_args`` into results JSON and logs.

    ``header`` is refused when it holds an ``Authorization`` entry, for the same reason.
    """
    named = sorted(k for k in model_args if k.lower() in _SECRET_ARGS)
    header = model_args.get("header")
    if isinstance(header, str):
        try:
            header = json.loads(header)
        except ValueError:
            header = {"?": header}
    if isinstance(header, Mapping) and any(str(k).lower() == "authorization" for k in header):
        named.append("header (Authorization)")
    if named:
        raise EndpointError(
            f"{model}: {', '.join(named)} in --model_args would be written into lm-eval's results files and "
            f"logs. Put the API key in the environment variable {API_KEY_ENV} instead (export "
            f"{API_KEY_ENV}=...); it is sent as 'Authorization: Bearer <key>' and never written anywhere."
        )


def describe_http_error(status: int, body: str, base_url: str, model: str) -> str:
    """One sentence for an HTTP error of the server: its own answer plus what to change."""
    answer = _server_message(body)
    if status in (401, 403):
        hint = f"the server refused the API key: set {API_KEY_ENV} to the key it was started with"
    elif status == 404 and "model" in answer.lower():
        hint = f"the server does not serve model={model!r}: pass the name it lists at /v1/models"
    elif status == 404:
        hint = "no such route: base_url must end in /v1/completions or /v1/chat/completions"
    elif "logprob" in answer.lower():
        hint = (
            "the server limits log-probs: start it with a higher limit (vLLM: --max-logprobs 20) or ask for "
            "fewer (top_logprobs=...)"
        )
    else:
        hint = "the request was refused"
    return f"{base_url} answered HTTP {status}: {answer} ({hint})"


def stopped_answering(base_url: str, exc: BaseException) -> EndpointError:
    """The error for a server that stopped answering mid-run (after lm-eval's retries)."""
    return EndpointError(
        f"the server at {base_url} stopped answering ({type(exc).__name__}: {exc}). No results were written. "
        "Answers received before it stopped are kept in lm-eval's request cache when the run used "
        "--use_cache PATH: rerun the same command once the server is back and only the missing requests are "
        "sent."
    )


def _server_message(body: str) -> str:
    """The ``message`` of an OpenAI-style error body, else the body itself (shortened)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "(empty answer)"
    if isinstance(data, Mapping):
        error = data.get("error", data)
        if isinstance(error, Mapping) and "message" in error:
            return str(error["message"])[:300]
        if "message" in data:
            return str(data["message"])[:300]
    return json.dumps(data)[:300]
