"""Fail before inference when a task needs token statistics and the model does not provide them.

Only the evaluator sees the model and the tasks together, so the "check before inference" patch of
:mod:`lm_eval_calib.lm_eval_patches` wraps ``lm_eval.evaluator.evaluate`` to call :func:`check_token_stats`
and :func:`bind_models`. The wrapper only looks; everything else passes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lm_eval_calib.models.token_stats import model_provides_token_stats

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


def install() -> None:
    """Apply every lm-eval patch that can apply now, the wrapper of ``lm_eval.evaluator.evaluate`` that runs
    these checks included (:mod:`lm_eval_calib.lm_eval_patches`; idempotent)."""
    from lm_eval_calib.lm_eval_patches import install_all

    install_all()
