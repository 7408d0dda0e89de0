"""A stage config from its sources: defaults, then a YAML file (``--config FILE``), then command-line flags;
a later source wins. The schemas themselves are :mod:`lm_eval_calib_train.config`; this module turns YAML
values and flag strings into their field types and builds the argparse flags from their fields. The study
runner (:mod:`lm_eval_calib.study.config`) uses :func:`coerce` and :func:`build_config` to check a stage's
``args:`` the same way, and :func:`load_yaml_file` to read the study file within the same bounds. Imports
nothing heavy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from lm_eval_calib.models.model_args import FALSE_WORDS, TRUE_WORDS, parse_bool
from lm_eval_calib_train.config import TrainInputError, _StageConfig

if typing.TYPE_CHECKING:
    import yaml


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


YAML_MAX_BYTES = 1 << 20
"""A settings or study file is a few kilobytes; a megabyte is generous and keeps every later step small."""
YAML_MAX_DEPTH = 32
"""Nesting deeper than this (after following aliases) is no settings file: PyYAML's composer and every walk
over the values recurse once per level, so ``[[[[...]]]]`` 5,000 deep raised RecursionError."""
YAML_MAX_VALUES = 100_000
"""Values after alias expansion. Aliases share one object in the loaded data, but a study expands
``${VAR}``s, fingerprints and prints its values as trees: a "billion laughs" file (anchors nested 9 levels,
10 copies each: 10**9 values from 1 KB) ran a dry run to 16 GB and an out-of-memory kill."""


class YAMLInputError(ValueError):
    """A YAML file that is not UTF-8, not valid YAML, or beyond the bounds above; the message names the
    file, the place and the fix."""


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YAMLInputError(
            f"{what} is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def _check_depth(text: str, what: str) -> None:
    """Refuse deep nesting from the event stream (PyYAML's parser keeps its own stack, so this walk is
    safe at any depth; its composer, which builds the nodes, recurses)."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > YAML_MAX_DEPTH:
                mark = event.start_mark
                raise YAMLInputError(
                    f"{what}: values nested more than {YAML_MAX_DEPTH} levels deep (line {mark.line + 1}); "
                    "a settings file needs a few"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, what: str) -> None:
    """Refuse an anchor that contains itself, and aliases that expand past the bounds, before any value
    is built: each node's expanded size and depth are computed once (memoised), so the check costs the
    size of the file, not of its expansion."""
    import yaml

    too_deep = f"{what}: aliases nest values more than {YAML_MAX_DEPTH} levels deep; write the values out"
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            mark = node.start_mark
            raise YAMLInputError(
                f"{what}: an anchor refers to itself (line {mark.line + 1}); its value would be infinite"
            )
        if level > YAML_MAX_DEPTH:
            raise YAMLInputError(too_deep)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        open_nodes.add(key)
        size, depth = 1, 0
        for child in children:
            child_size, child_depth = visit(child, level + 1)
            size, depth = size + child_size, max(depth, child_depth)
            if level + child_depth > YAML_MAX_DEPTH:
                raise YAMLInputError(too_deep)
            if size > YAML_MAX_VALUES:
                raise YAMLInputError(
                    f"{what}: its aliases (*name) expand to more than {YAML_MAX_VALUES:,} values; a settings "
                    "file needs a few hundred (is it a 'billion laughs' file?)"
                )
        open_nodes.discard(key)
        sizes[key] = (size, depth + 1)
        return sizes[key]

    visit(root, 1)


def load_yaml_text(text: str, what: str) -> Any:
    """``yaml.safe_load`` within bounds (depth, values after alias expansion); ``what`` names the source
    in messages. Raises :class:`YAMLInputError` for anything it cannot load."""
    import yaml

    try:
        _check_depth(text, what)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, what)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"{what} is not valid YAML: {exc}") from None
    except ValueError as exc:  # a value PyYAML cannot build, e.g. an integer of 5,000 digits
        if isinstance(exc, YAMLInputError):
            raise
        raise YAMLInputError(f"{what}: a value cannot be read: {exc}") from None


def load_yaml_file(path: str | Path, what: str | None = None) -> Any:
    """A YAML file read as UTF-8 and loaded by :func:`load_yaml_text`; at most :data:`YAML_MAX_BYTES`."""
    path = Path(path)
    what = what or str(path)
    size = path.stat().st_size
    if size > YAML_MAX_BYTES:
        raise YAMLInputError(
            f"{what} is {size:,} bytes; a settings file is a few KB (limit {YAML_MAX_BYTES:,})"
        )
    return load_yaml_text(_decode(path.read_bytes(), what), what)


def coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` (from YAML or a flag string) as the type of field ``name``; a clear error otherwise."""
    tp, optional = _unwrap_optional(_field_types(cls)[name])
    flag = "--" + name.replace("_", "-")
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise TrainInputError(f"{flag} cannot be empty")
    try:
        return _coerce_value(tp, value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TrainInputError(f"{flag}: {exc}") from None


def _coerce_value(tp: Any, value: Any) -> Any:
    """One value as type ``tp``. Checks the value's own type first: ``int([1])``, ``int(inf)`` or
    ``list(5)`` from a YAML file or a study's ``args:`` raised TypeError/OverflowError past the message."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if tp is bool:
        # the words of ``--model_args`` (parse_bool); not its 0/1 integers: YAML ``resume: 1`` stays an error
        if isinstance(value, (bool, str)):
            with contextlib.suppress(ValueError):
                return parse_bool(value)
        raise ValueError(
            f"expected true or false ({', '.join(TRUE_WORDS)} / {', '.join(FALSE_WORDS)}), got {value!r}"
        )
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number, got {value!r}")
        number = float(value) if tp is float or isinstance(value, float) else value
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        if tp is float:
            return float(number)  # YAML reads 2e-5 as a string: float() takes it
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)) and all(isinstance(i, (str, int, float)) for i in value):
            items = list(value)
        else:
            raise ValueError(f"expected names (a list, or text separated by commas), got {value!r}")
        items = [str(item).strip() for item in items if str(item).strip()]
        if not items:
            raise ValueError("expected at least one name")
        return items
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    raise TypeError(f"unsupported type {tp}")  # pragma: no cover - a programming error


def load_yaml_config(path: str | Path, cls: type[_StageConfig]) -> dict[str, Any]:
    """The settings of a ``--config`` YAML file, keys checked against the stage's fields."""
    path = Path(path)
    if not path.is_file():
        raise TrainInputError(f"--config {path}: no such file")
    try:
        raw = load_yaml_file(path, f"--config {path}") or {}
    except YAMLInputError as exc:
        raise TrainInputError(str(exc)) from None
    if not isinstance(raw, dict):
        raise TrainInputError(f"--config {path} must be a mapping of settings (key: value)")
    names = {f.name for f in dataclasses.fields(cls)}
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise TrainInputError(
                f"--config {path}: key {key!r} is not a setting name (YAML reads unquoted on/off/yes/no as "
                "booleans and digits as numbers)"
            )
        name = key.replace("-", "_")
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
