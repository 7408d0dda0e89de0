"""Typed values from lm-eval's ``--model_args``: one parser per type, with errors that name the option.

lm-eval turns ``--model_args a=1,b=true`` into Python values by guessing (``"true"`` -> ``True``, ``"3"`` ->
``3``, anything else stays a string), and the same options also arrive as real Python values from code. The
backends of this package read every option through these functions, so ``share_context=no`` means the same
to ``hf-calib`` as ``prefix_caching=no`` to ``vllm-calib``, and a misspelt value (``single_prefill=ture``)
is an error before any model loads instead of silently meaning ``False``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "parse_bool", "parse_float", "parse_int", "parse_optional"]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(value: Any, name: str = "value") -> bool:
    """``True``/``False`` from a bool, 0/1, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(
        f"{name}={value!r} is not a boolean; write one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}"
    )


def parse_int(value: Any, name: str = "value", minimum: int | None = None) -> int:
    """An integer (``"8"`` and ``8.0`` too, not ``8.5`` or ``True``), at least ``minimum`` when given."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise ValueError(f"{name}={value!r} is not an integer")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name}={number} must be at least {minimum}")
    return number


def parse_float(
    value: Any, name: str = "value", low: float | None = None, high: float | None = None
) -> float:
    """A real number (``"0.9"`` too), within ``[low, high]`` when given."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name}={number} must lie in [{low}, {high}]")
    return number


def parse_optional(value: Any, parse, name: str, **bounds: Any) -> Any:
    """``None`` stays ``None`` (the option's default); anything else goes through ``parse``."""
    return None if value is None else parse(value, name, **bounds)
