"""A stage config from its sources: defaults, then a YAML file (``--config FILE``), then command-line flags;
a later source wins. The schemas themselves are :mod:`lm_eval_calib_train.config`; this module turns YAML
values and flag strings into their field types and builds the argparse flags from their fields. The study
runner (:mod:`lm_eval_calib.study.config`) uses :func:`coerce` and :func:`build_config` to check a stage's
``args:`` the same way. Imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

from lm_eval_calib_train.config import TrainInputError, _StageConfig


def _parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` (from YAML or a flag string) as the type of field ``name``; a clear error otherwise."""
    tp, optional = _unwrap_optional(_field_types(cls)[name])
    flag = "--" + name.replace("_", "-")
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise TrainInputError(f"{flag} cannot be empty")
    try:
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
            return value
        if tp is bool:
            return _parse_bool(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)  # YAML reads 2e-5 as a string: float() takes it
        if typing.get_origin(tp) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [str(item).strip() for item in items if str(item).strip()]
            if not items:
                raise ValueError("expected at least one name")
            return items
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError(f"expected a string, got {type(value).__name__}")
            return str(value)
    except ValueError as exc:
        raise TrainInputError(f"{flag}: {exc}") from None
    raise TrainInputError(f"{flag}: unsupported type {tp}")  # pragma: no cover - a programming error


def load_yaml_config(path: str | Path, cls: type[_StageConfig]) -> dict[str, Any]:
    """The settings of a ``--config`` YAML file, keys checked against the stage's fields."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainInputError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainInputError(f"--config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TrainInputError(f"--config {path} must be a mapping of settings (key: value)")
    names = {f.name for f in dataclasses.fields(cls)}
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise TrainInputError(
                f"--config {path}: unknown key {key!r} for `train {cls.stage}`; "
                f"known: {', '.join(sorted(names))}"
            )
        settings[name] = coerce(cls, name, value)
    return settings


def build_config(cls: type[_StageConfig], settings: dict[str, Any]) -> _StageConfig:
    """A validated stage config from already-coerced settings (defaults fill the rest)."""
    config = cls(**settings)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------------------
# argparse glue: one flag per field, all defaulting to "not given" so YAML values survive


def add_stage_arguments(parser: argparse.ArgumentParser, cls: type[_StageConfig]) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (keys as below, _ or -)")
    base = {f.name for f in dataclasses.fields(_StageConfig)}
    fields = sorted(dataclasses.fields(cls), key=lambda f: (f.name not in cls.required, f.name in base))
    for f in fields:
        tp, _ = _unwrap_optional(_field_types(cls)[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        shown = f"{help_text} (default: {default})" if default not in (None, "") else help_text
        if tp is bool:
            parser.add_argument(
                flag,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=shown.replace("%", "%%"),
            )
            parser.add_argument(
                "--no-" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_const",
                const="false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
            parser.add_argument(
                flag,
                default=argparse.SUPPRESS,
                choices=choices,
                metavar=None if choices else f.name.upper(),
                help=shown.replace("%", "%%"),
            )


def config_from_args(cls: type[_StageConfig], args: argparse.Namespace) -> _StageConfig:
    """Defaults, then ``--config FILE``, then flags given on the command line."""
    settings: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        settings.update(load_yaml_config(config_file, cls))
    for f in dataclasses.fields(cls):
        if f.name in vars(args):
            settings[f.name] = coerce(cls, f.name, getattr(args, f.name))
    return build_config(cls, settings)
