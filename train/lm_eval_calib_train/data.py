"""Training data: read local JSON / JSONL / gzipped JSONL files (or a hub data set), detect the record
format, and turn every record into messages (``{"role", "content"}``) before any model is loaded.

Formats (``--data-format``; ``auto`` looks at the first record's keys):

- ``alpaca``: ``instruction``, optional ``input``, ``output`` (optional ``system``, and ``history``: earlier
  ``[user, assistant]`` turns, as in LLaMA-Factory's LIMA copy). The user turn is the instruction, then a
  blank line and the input when there is one.
- ``dolly``: ``instruction``, optional ``context``, ``response``.
- ``conversations``: ``conversations`` as alternating strings (LIMA on the hub, user first), or as
  ``{"from", "value"}`` turns (ShareGPT), or ``messages`` as ``{"role", "content"}`` turns.
- ``pairs``: ``chosen`` / ``rejected``, either whole HH-RLHF dialogues (``"\\n\\nHuman: ...\\n\\nAssistant:
  ..."``; the prompt is everything before the last ``Assistant:`` turn) or with an explicit ``prompt``
  (strings or message lists, trl's preference format).
- ``prompts``: ``prompt`` (a string or a message list): PPO prompts.

Every problem is an error naming the file, the record and the fix; nothing here needs torch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import TrainInputError

Message = dict[str, str]
Conversation = list[Message]

DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
GENERIC_STEMS = {"train", "test", "validation", "valid", "val", "dev", "data", "eval"}
FORMAT_KEYS = {
    "alpaca": "instruction, input (optional), output",
    "dolly": "instruction, context (optional), response",
    "conversations": "conversations (strings or from/value turns) or messages (role/content turns)",
    "pairs": "chosen, rejected (HH-RLHF dialogues, or with a prompt)",
    "prompts": "prompt",
}


@dataclass(frozen=True)
class DataSource:
    """The records of one data file or hub data set, with what the manifest needs to identify it."""

    name: str
    source: str
    sha256: str
    format: str
    records: list[dict[str, Any]]

    def summary(self, rows: int) -> DataSummary:
        """What the manifest records of this data when ``rows`` of it (after any cut) trained the model."""
        return DataSummary(self.name, rows, self.sha256)


@dataclass(frozen=True)
class DataSummary:
    """The manifest's ``data`` block: the data set's name, the rows that trained the model, the file hash."""

    name: str
    rows: int
    sha256: str


# ---------------------------------------------------------------------------------------------------------
# Reading


def _is_local(spec: str) -> bool:
    return (
        Path(spec).expanduser().exists()
        or spec.startswith(("/", "./", "../", "~"))
        or spec.endswith(DATA_SUFFIXES + (".gz",))
    )


def _find_data_file(folder: Path) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if len(files) == 1:
        return files[0]
    if not files:
        raise TrainInputError(
            f"data folder {folder} holds no .json, .jsonl or .jsonl.gz file; pass the data file itself"
        )
    listing = ", ".join(str(p.relative_to(folder)) for p in files)
    raise TrainInputError(f"data folder {folder} holds several data files ({listing}); pass one of them")


def _default_name(path: Path) -> str:
    stem = path.name
    for suffix in DATA_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return f"{path.parent.name}/{stem}"
    return stem


def _parse_lines(text: str, path: Path) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TrainInputError(
                f"{path} line {number} is not valid JSON ({exc.msg}); a .jsonl file needs one JSON object "
                "per line"
            ) from None
    return records


def read_local(path: Path) -> tuple[list[Any], str]:
    """The records of a local data file and the SHA-256 of its bytes as stored (compressed if gzipped)."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    name = path.name
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise TrainInputError(f"{path} is not a readable gzip file ({exc})") from None
        name = name[:-3]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainInputError(f"{path} is not UTF-8 text ({exc})") from None
    if name.endswith(".jsonl"):
        return _parse_lines(text, path), digest
    if name.endswith(".json"):
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainInputError(
                f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); a .json file must hold one "
                "array of records (use .jsonl for one record per line)"
            ) from None
        if not isinstance(body, list):
            raise TrainInputError(f"{path} must hold a JSON array of records, found a {type(body).__name__}")
        return body, digest
    raise TrainInputError(f"{path}: unsupported data file type; use .json, .jsonl, .json.gz or .jsonl.gz")


def read_hub(spec: str) -> tuple[list[Any], str]:
    """Records of a hub data set ``name`` or ``name:split`` (default split ``train``)."""
    name, _, split = spec.partition(":")
    try:
        import datasets

        rows = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise TrainInputError(
            f"data {spec!r} is not a local file and could not be loaded from the hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, pass a local .json/.jsonl/.jsonl.gz "
            "file"
        ) from None
    records = [dict(row) for row in rows]
    digest = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
    return records, digest


def read_data(spec: str, data_format: str = "auto", name: str | None = None) -> DataSource:
    """Read ``spec`` (file, folder with one data file, or hub name) and check every record's format."""
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise TrainInputError(f"data file {path} does not exist; pass a .json, .jsonl or .jsonl.gz file")
        if path.is_dir():
            path = _find_data_file(path)
        records, digest = read_local(path)
        source, default = str(path.resolve()), _default_name(path)
    else:
        records, digest = read_hub(spec)
        source, default = spec, spec.partition(":")[0].rsplit("/", 1)[-1]
    if not records:
        raise TrainInputError(f"data {source} holds no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TrainInputError(
                f"data {source} record {index} is a {type(record).__name__}, not a JSON object"
            )
    fmt = detect_format(records[0], source) if data_format == "auto" else data_format
    if fmt not in FORMAT_KEYS:
        raise TrainInputError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMAT_KEYS)}")
    data = DataSource(name=name or default, source=source, sha256=digest, format=fmt, records=records)
    for index, record in enumerate(records):  # every record, before any model is loaded
        _CONVERTERS[fmt](record, f"data {source} record {index}")
    return data


def detect_format(record: dict[str, Any], source: str) -> str:
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        return "pairs"
    if "conversations" in keys or "messages" in keys:
        return "conversations"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if "prompt" in keys:
        return "prompts"
    known = "; ".join(f"{fmt}: {fields}" for fmt, fields in FORMAT_KEYS.items())
    raise TrainInputError(
        f"unknown data format in {source}: the first record has keys {sorted(keys)}; expected one of {known} "
        "(or pass --data-format)"
    )


# ---------------------------------------------------------------------------------------------------------
# Records -> messages


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise TrainInputError(f"{where} lacks {key!r}")
        return ""
    if not isinstance(value, str):
        raise TrainInputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _user_turn(main: str, extra: str) -> str:
    return f"{main}\n\n{extra}" if extra.strip() else main


def _alpaca(record: dict, where: str) -> Conversation:
    instruction = _text(record, "instruction", where)
    if not instruction.strip():
        raise TrainInputError(f"{where}: 'instruction' is empty")
    messages: Conversation = []
    system = _text(record, "system", where, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise TrainInputError(f"{where}: 'history' must be a list of [user, assistant] turns")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise TrainInputError(
                f"{where}: every 'history' entry must be a [user, assistant] pair of strings"
            )
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    messages.append(
        {"role": "user", "content": _user_turn(instruction, _text(record, "input", where, False))}
    )
    messages.append({"role": "assistant", "content": _text(record, "output", where)})
    return messages


def _dolly(record: dict, where: str) -> Conversation:
    instruction = _text(record, "instruction", where)
    if not instruction.strip():
        raise TrainInputError(f"{where}: 'instruction' is empty")
    user = _user_turn(instruction, _text(record, "context", where, required=False))
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _text(record, "response", where)},
    ]


ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


def _turns(turns: Any, where: str) -> Conversation:
    if not isinstance(turns, list) or not turns:
        raise TrainInputError(f"{where}: the conversation must be a non-empty list of turns")
    if all(isinstance(t, str) for t in turns):  # LIMA: alternating user / assistant strings
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    messages: Conversation = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise TrainInputError(f"{where}: turn {i} must be a string or an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in ROLE_NAMES or not isinstance(content, str):
            raise TrainInputError(
                f"{where}: turn {i} needs a role (user/assistant/system, or from: human/gpt) and string "
                "content"
            )
        messages.append({"role": ROLE_NAMES[role], "content": content})
    return messages


def _conversation(record: dict, where: str) -> Conversation:
    messages = _turns(record.get("conversations", record.get("messages")), where)
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainInputError(f"{where}: the conversation has no assistant turn to learn")
    return messages


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_dialogue(text: str, where: str) -> Conversation:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` as messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise TrainInputError(
            f"{where}: a pair without 'prompt' must be an HH-RLHF dialogue "
            "('\\n\\nHuman: ...\\n\\nAssistant: ...')"
        )
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": content}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _side(record: dict, key: str, prompt: Conversation | None, where: str) -> Conversation:
    value = record.get(key)
    if value is None:
        raise TrainInputError(f"{where} lacks {key!r}")
    if prompt is None:
        messages = (
            parse_hh_dialogue(value, f"{where} {key!r}") if isinstance(value, str) else _turns(value, where)
        )
    elif isinstance(value, str):
        messages = [*prompt, {"role": "assistant", "content": value}]
    else:
        messages = [*prompt, *_turns(value, where)]
    if messages[-1]["role"] != "assistant":
        raise TrainInputError(f"{where}: {key!r} must end with an assistant turn")
    return messages


def _pair(record: dict, where: str) -> tuple[Conversation, Conversation]:
    prompt = None
    if record.get("prompt") is not None:
        prompt = _prompt(record, where)
    return _side(record, "chosen", prompt, where), _side(record, "rejected", prompt, where)


def _prompt(record: dict, where: str) -> Conversation:
    value = record.get("prompt")
    if isinstance(value, str):
        if not value.strip():
            raise TrainInputError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if value is None:
        raise TrainInputError(f"{where} lacks 'prompt'")
    return _turns(value, where)


_CONVERTERS = {
    "alpaca": _alpaca,
    "dolly": _dolly,
    "conversations": _conversation,
    "pairs": _pair,
    "prompts": _prompt,
}


def conversations(data: DataSource) -> list[Conversation]:
    """SFT examples: each record as a conversation ending with the assistant turn(s) to learn.

    Pairs give their chosen dialogue; a plain prompts file has nothing to learn and is refused.
    """
    if data.format == "prompts":
        raise TrainInputError(f"data {data.source} holds prompts only; sft needs responses to learn")
    out = []
    for index, record in enumerate(data.records):
        where = f"data {data.source} record {index}"
        out.append(
            _pair(record, where)[0] if data.format == "pairs" else _CONVERTERS[data.format](record, where)
        )
    return out


def preference_pairs(data: DataSource) -> list[tuple[Conversation, Conversation]]:
    """(chosen, rejected) dialogues, each ending with the assistant turn that is compared."""
    if data.format != "pairs":
        raise TrainInputError(
            f"data {data.source} is in format {data.format!r}; a reward model needs chosen/rejected pairs "
            "(for example HH-RLHF)"
        )
    return [_pair(record, f"data {data.source} record {index}") for index, record in enumerate(data.records)]


def prompts(data: DataSource) -> list[Conversation]:
    """PPO prompts: the messages before the (last) assistant turn of any format, or the prompts themselves."""
    out = []
    for index, record in enumerate(data.records):
        where = f"data {data.source} record {index}"
        if data.format == "prompts":
            out.append(_prompt(record, where))
            continue
        messages = (
            _pair(record, where)[0] if data.format == "pairs" else _CONVERTERS[data.format](record, where)
        )
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = messages[:last]
        if not any(m["role"] == "user" for m in prompt):
            raise TrainInputError(f"{where}: no user turn before the assistant turn, so no prompt")
        out.append(prompt)
    return out
