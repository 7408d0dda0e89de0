"""Checks before the model loads and before inference.

Before the model (the "tasks before the model" patch of :mod:`lm_eval_calib.lm_eval_patches` wraps
``lm_eval.evaluator.simple_evaluate``): the tasks are built first, then :func:`check_model_folder` names a
``pretrained=`` folder that does not exist. Before inference (only the evaluator sees the model and the
tasks together, so the "check before inference" patch wraps ``lm_eval.evaluator.evaluate``):
:func:`check_token_stats` and :func:`bind_models`. The wrappers only look; everything else passes through.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lm_eval_calib.models.token_stats import model_provides_token_stats
from lm_eval_calib.paths import looks_like_local_path

REQUIRES_TOKEN_STATS = "requires_token_stats"


class MissingTokenStatsError(ValueError):
    """A task needs per-token statistics that the chosen model does not return."""


def _tasks(task_dict: Any) -> Iterator[Any]:
    if isinstance(task_dict, dict):
        for value in task_dict.values():
            yield from _tasks(value)
    elif task_dict is not None:
        yield task_dict


def check_token_stats(lm: Any, task_dict: Any) -> None:
    needing = sorted(
        getattr(task, "task_name", type(task).__name__)
        for task in _tasks(task_dict)
        if getattr(task, REQUIRES_TOKEN_STATS, False)
    )
    if needing and not model_provides_token_stats(lm):
        raise MissingTokenStatsError(
            f"task(s) {', '.join(needing)} need per-token statistics (top-1 token and its probability at "
            f"every position), which model {type(lm).__name__} does not return. Run them with "
            "`--model hf-calib` (same --model_args as `hf`) or `--model vllm-calib` (needs vLLM); for a "
            "model served behind /v1/completions, `--model completions-calib` (same --model_args as "
            "`local-completions`)."
        )


def bind_models(lm: Any, task_dict: Any) -> None:
    """Hand the model to tasks that ask for it (``bind_model``: generation calibration runs second passes
    after the task's own generation, and refuses estimators the model cannot serve before any request)."""
    for task in _tasks(task_dict):
        bind = getattr(task, "bind_model", None)
        if callable(bind):
            bind(lm)


class NoSuchModelFolderError(ValueError):
    """``pretrained=`` names a local folder that does not exist."""


def check_model_folder(model_args: Mapping[str, Any]) -> None:
    """Refuse a ``pretrained=`` that is a local path and exists nowhere, naming it: without this,
    transformers takes it for a repo id and says "Repo id must be in the form ...", after the hub retries."""
    value = model_args.get("pretrained")
    if not isinstance(value, str) or not looks_like_local_path(value):
        return
    folder = Path(value).expanduser()
    if folder.exists():
        return
    raise NoSuchModelFolderError(
        f"--model_args pretrained={value}: no such folder ({folder.absolute()} does not exist). Give the "
        "folder of a saved model (its config.json inside), or a Hugging Face repo id such as "
        "HuggingFaceTB/SmolLM2-135M-Instruct; `lm-eval-calib model-args smollm2` prints the arguments of "
        "the bundled model."
    )
