"""LAMA T-REx fact completion (Petroni et al. 2019), as multiple choice over objects of the same relation.

Sources are the verbatim files of two pinned public commits (see ``ROOT/lama_trex/SOURCE.md``):

- ``relations.jsonl``: LAMA's manual templates (``princeton-nlp/OptiPrompt``,
  ``relation_metainfo/LAMA_relations.jsonl``), 46 relations with ``[X]`` (subject) and ``[Y]`` (object);
- ``facts/P<id>.jsonl``: ParaRel's single-token-object filter of the LAMA T-REx facts
  (``yanaiela/pararel``, ``data/trex_lms_vocab/``), 41 relations, 29,411 facts of
  ``{"sub_label", "obj_label", "uuid"}``.

With a data root (``--metadata '{"data_dir": ROOT}'`` or ``LM_EVAL_CALIB_DATA=ROOT``) they are read from
``ROOT/lama_trex/``. Without one there is no suitable hub copy, so the same files are downloaded once from
raw.githubusercontent.com at the pinned commits into ``$LM_EVAL_CALIB_CACHE/lama_trex`` (default
``~/.cache/lm_eval_calib/lama_trex``); each file is written to a temporary name and renamed, so an
interrupted download never leaves a file that looks complete. The derived ``lama_trex_facts.jsonl`` is not
used.

One row per fact (all 29,411, in ``relations.jsonl`` order, file order within a relation; the 17 exact
duplicate (subject, object) lines of the source are kept, each with its own uuid):

- ``prompt``: the template cut at ``[Y]``, ``[X]`` replaced by the subject, trailing whitespace stripped
  (``[X] was born in [Y] .`` -> ``Dante was born in``).
- ``suffix``: the template text after ``[Y]`` without the final `` .``, whitespace normalised and with one
  leading space (``[X] is [Y] citizen .`` -> `` citizen``); empty for the 35 relations whose template ends
  in ``[Y] .``. The task scores each option as the continuation ``" " + option + suffix``, so the six
  relations with text after ``[Y]`` (P27, P106, P136, P140, P190, P413) keep that context instead of
  losing it to a prefix-only prompt.
- ``options``: the gold object plus ``n_distractors`` other distinct objects of the same relation, drawn
  without replacement; ``"all"`` takes every other object of the relation. A relation with fewer other
  objects than requested gives all of them (P30 has 5 distinct objects and P1303 has 6, so they have 5 and 6
  options at the default 9). Multiple-choice scoring needs at least two options per fact: with
  ``min_options=2`` (what the ``calib_facts`` tasks pass), ``n_distractors=0`` and a relation with a single
  distinct object are errors, not facts that are "right" at confidence 1 by construction. The draw and the
  order of the options are deterministic per fact: a numpy Generator is seeded from a SHA-256 of
  ``(seed, uuid)`` (not Python's salted ``hash``), so the options do not depend on the process, on
  ``relations``, or on the order of rows. The option order is shuffled because argmax ties go to the first
  option. ``target`` is the index of the gold object. Options are
  distinct strings, and the gold object appears exactly once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import datasets
import numpy as np

from lm_eval_calib.atomic import write_file
from lm_eval_calib.data.root import (
    DATA_ENV,
    DataNotFoundError,
    describe_missing,
    read_text,
    resolve_data_root,
)

CACHE_ENV = "LM_EVAL_CALIB_CACHE"
FOLDER = "lama_trex"
RELATIONS_FILE = "relations.jsonl"
FACTS_FOLDER = "facts"

PARAREL_COMMIT = "cb5554678457beb5ac163d888f1ce8cf174b3f0b"
OPTIPROMPT_COMMIT = "9450bc96f28ac3df01337c79be079a2ac3defb5c"
# Base URL of the facts files (``<base>/P<id>.jsonl``) and URL of the templates file.
FACTS_URL = f"https://raw.githubusercontent.com/yanaiela/pararel/{PARAREL_COMMIT}/data/trex_lms_vocab"
RELATIONS_URL = (
    f"https://raw.githubusercontent.com/princeton-nlp/OptiPrompt/{OPTIPROMPT_COMMIT}"
    "/relation_metainfo/LAMA_relations.jsonl"
)

# The 41 relations with facts, in the order of relations.jsonl (the other 5 templates have no facts).
RELATIONS: tuple[str, ...] = (
    "P19", "P20", "P279", "P37", "P413", "P449", "P47", "P138", "P364", "P463", "P101", "P106", "P527",
    "P530", "P176", "P27", "P407", "P30", "P178", "P1376", "P131", "P1412", "P108", "P136", "P17", "P39",
    "P264", "P276", "P937", "P140", "P1303", "P127", "P103", "P190", "P1001", "P31", "P495", "P159", "P36",
    "P740", "P361",
)  # fmt: skip

COLUMNS = (
    "relation",
    "relation_label",
    "template",
    "subject",
    "object",
    "uuid",
    "prompt",
    "suffix",
    "options",
    "target",
)

_OFFLINE_HINT = (
    f"Offline? Set {DATA_ENV}=ROOT or --metadata '{{\"data_dir\": ROOT}}' with "
    f"ROOT/{FOLDER}/{RELATIONS_FILE} and ROOT/{FOLDER}/{FACTS_FOLDER}/P<id>.jsonl "
    "(the files named in SOURCE.md)."
)


def _check_relations(relations: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The wanted relations in ``RELATIONS`` order. ``None`` means all; an empty list is an error, not an
    empty dataset (which only fails later, inside ``datasets``, with an IndexError naming nothing)."""
    if relations is None:
        return RELATIONS
    if isinstance(relations, str):
        relations = [relations]
    if not isinstance(relations, (list, tuple)) or any(not isinstance(r, str) for r in relations):
        raise ValueError(
            f"relations must be a relation id such as 'P19' or a list of them, got {relations!r}; "
            "omit it (or null) for all 41 relations"
        )
    if not relations:
        raise ValueError(
            "relations is an empty list: no facts to score. Omit it (or null) for all 41 relations, or list "
            f"some of: {', '.join(RELATIONS)}"
        )
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ValueError(
            f"unknown LAMA T-REx relation(s) {', '.join(map(repr, unknown))}; known relations: "
            f"{', '.join(RELATIONS)}"
        )
    wanted = set(relations)
    return tuple(r for r in RELATIONS if r in wanted)


def _check_n_distractors(n_distractors: int | str, min_options: int = 1) -> int | None:
    """The number of distractors wanted, or None for all of them.

    ``min_options`` >= 2 (multiple-choice scoring) refuses 0 distractors: a fact with one option is always
    "right" at confidence 1, so acc would be 1 and ECE 0 whatever the model knows.
    """
    if n_distractors == "all":
        return None
    if (
        isinstance(n_distractors, bool)
        or not isinstance(n_distractors, (int, np.integer))
        or n_distractors < 0
    ):
        raise ValueError(f"n_distractors must be an int >= 0 or 'all', got {n_distractors!r}")
    if 1 + n_distractors < min_options:
        raise ValueError(
            f"n_distractors={n_distractors} gives every fact {1 + n_distractors} option(s), but "
            f"multiple-choice scoring needs at least {min_options} (with one option every answer is right at "
            "confidence 1: "
            "acc 1, ECE 0). Use n_distractors >= 1 (default 9) or 'all'."
        )
    return int(n_distractors)


def _check_seed(seed: int) -> int:
    """The seed as a Python int. The options are drawn from a hash of the seed's text, so ``1234.0`` (or
    ``"1234"``) would silently give other options than ``1234``: only integers are accepted."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"seed must be an integer such as 1234 (the default), got {type(seed).__name__} {seed!r}; "
            "write it without a decimal point or quotes"
        )
    return int(seed)


def _check_min_options(min_options: int) -> int:
    if isinstance(min_options, bool) or not isinstance(min_options, (int, np.integer)) or min_options < 1:
        raise ValueError(f"min_options must be an int >= 1, got {min_options!r}")
    return int(min_options)


def _read_jsonl(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """Parse a JSON-lines file, rejecting bad lines (or lines without ``keys``) with their line number."""
    rows = []
    text = read_text(path, "restore the verbatim file (see SOURCE.md).")
    # Only "\n" ends a line (str.splitlines would also split at U+2028 inside a JSON string).
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataNotFoundError(
                f"{path}: line {number} is not valid JSON ({exc.msg}). Restore the verbatim file "
                "(see SOURCE.md)."
            ) from exc
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
            raise DataNotFoundError(
                f"{path}: line {number} lacks string field(s) {', '.join(keys)}. Restore the verbatim "
                "file (see SOURCE.md)."
            )
        rows.append(row)
    if not rows:
        raise DataNotFoundError(f"{path}: no rows; restore the verbatim file (see SOURCE.md).")
    return rows


def split_template(template: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a LAMA template: the text before ``[Y]`` (with ``[X]``, trailing spaces
    stripped) and the text after it without the final `` .``, whitespace-normalised with one leading space
    (or ``""``). ``"[X] is [Y] citizen ."`` -> ``("[X] is", " citizen")``."""
    if (
        template.count("[X]") != 1
        or template.count("[Y]") != 1
        or template.index("[X]") > template.index("[Y]")
    ):
        raise ValueError(f"template {template!r} must hold one [X] before one [Y]")
    prefix, rest = template.split("[Y]")
    rest = rest.strip()
    if rest.endswith("."):
        rest = rest[:-1]
    rest = " ".join(rest.split())
    return prefix.rstrip(), (" " + rest if rest else "")


def _rng(seed: int, uuid: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{uuid}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _draw_options(
    gold: str, objects: list[str], index: dict[str, int], k: int | None, rng
) -> tuple[list, int]:
    """Gold plus ``k`` (None: all) of the other ``objects``, shuffled; returns (options, gold index)."""
    n_other = len(objects) - 1
    take = n_other if k is None else min(k, n_other)
    gold_at = index[gold]
    picks = rng.choice(n_other, size=take, replace=False) if take < n_other else np.arange(n_other)
    # positions 0..n_other-1 over the objects without the gold one
    options = [gold] + [objects[p + (p >= gold_at)] for p in picks.tolist()]
    order = rng.permutation(len(options)).tolist()
    return [options[i] for i in order], order.index(0)


def _expected_files(base: Path, relations: tuple[str, ...]) -> list[Path]:
    return [base / RELATIONS_FILE] + [base / FACTS_FOLDER / f"{r}.jsonl" for r in relations]


def load_folder(
    base: Path,
    n_distractors: int | str = 9,
    seed: int = 1234,
    relations: list[str] | tuple[str, ...] | None = None,
    min_options: int = 1,
) -> datasets.DatasetDict:
    """Load from a folder laid out like ``ROOT/lama_trex`` (``relations.jsonl``, ``facts/P<id>.jsonl``).

    ``min_options``: the fewest options a fact may have. Multiple-choice tasks pass 2; a relation whose facts
    would get fewer (a relation with a single distinct object) is then an error naming it, rather than
    facts scored "right" at confidence 1 by construction. The open-vocabulary task ignores options and
    keeps the default 1.
    """
    wanted = _check_relations(relations)
    min_options = _check_min_options(min_options)
    k = _check_n_distractors(n_distractors, min_options)
    seed = _check_seed(seed)
    missing = [p for p in _expected_files(base, wanted) if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"LAMA T-REx data under {base} is incomplete: missing {describe_missing(missing, base)}. "
            "Expected "
            f"{FOLDER}/{RELATIONS_FILE} (LAMA templates) and {FOLDER}/{FACTS_FOLDER}/P<id>.jsonl for the 41 "
            "relations, as described in SOURCE.md."
        )
    templates = {}
    for row in _read_jsonl(base / RELATIONS_FILE, ("relation", "template", "label")):
        templates[row["relation"]] = row
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for relation in wanted:
        path = base / FACTS_FOLDER / f"{relation}.jsonl"
        if relation not in templates:
            raise DataNotFoundError(
                f"{path}: relation {relation} has no template in {base / RELATIONS_FILE}. Restore the "
                "verbatim LAMA_relations.jsonl (see SOURCE.md)."
            )
        meta = templates[relation]
        try:
            prefix, suffix = split_template(meta["template"])
        except ValueError as exc:
            raise DataNotFoundError(f"{base / RELATIONS_FILE}: relation {relation}: {exc}") from exc
        facts = _read_jsonl(path, ("sub_label", "obj_label", "uuid"))
        objects = sorted({f["obj_label"] for f in facts})
        n_options = len(objects) if k is None else min(1 + k, len(objects))
        if n_options < min_options:
            raise ValueError(
                f"{path}: relation {relation} has {len(objects)} distinct object(s) "
                f"({', '.join(map(repr, objects[:3]))}), so its facts would get {n_options} option(s); "
                f"multiple-choice scoring needs at least {min_options}. Leave {relation} out with the "
                "relations option, or restore the verbatim file (see SOURCE.md)."
            )
        index = {obj: i for i, obj in enumerate(objects)}
        for fact in facts:
            options, target = _draw_options(fact["obj_label"], objects, index, k, _rng(seed, fact["uuid"]))
            columns["relation"].append(relation)
            columns["relation_label"].append(meta["label"])
            columns["template"].append(meta["template"])
            columns["subject"].append(fact["sub_label"])
            columns["object"].append(fact["obj_label"])
            columns["uuid"].append(fact["uuid"])
            columns["prompt"].append(prefix.replace("[X]", fact["sub_label"]))
            columns["suffix"].append(suffix)
            columns["options"].append(options)
            columns["target"].append(target)
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)})


def load_local(
    root: Path,
    n_distractors: int | str = 9,
    seed: int = 1234,
    relations: list[str] | tuple[str, ...] | None = None,
    min_options: int = 1,
) -> datasets.DatasetDict:
    """Load from a local data root (``root/lama_trex``)."""
    return load_folder(Path(root) / FOLDER, n_distractors, seed, relations, min_options)


def cache_dir() -> Path:
    """Where downloads go: ``$LM_EVAL_CALIB_CACHE/lama_trex``, else ``~/.cache/lm_eval_calib/lama_trex``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lm_eval_calib"
    return Path(base).expanduser() / FOLDER


def download_atomic(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file in the same folder and an atomic rename, so
    ``dest`` exists only once complete. Network errors propagate; the temporary file is removed."""

    def fetch(out) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)

    return write_file(dest, fetch, binary=True, fsync=True)


def source_urls(relations: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """Cache-relative path -> pinned upstream URL, for the templates and the wanted relations' facts."""
    urls = {RELATIONS_FILE: RELATIONS_URL}
    for relation in _check_relations(relations):
        urls[f"{FACTS_FOLDER}/{relation}.jsonl"] = f"{FACTS_URL}/{relation}.jsonl"
    return urls


def fetch(relations: list[str] | tuple[str, ...] | None = None, cache: Path | None = None) -> Path:
    """Download the files not yet in the cache folder; return that folder (laid out like ROOT/lama_trex)."""
    folder = cache_dir() if cache is None else Path(cache)
    for relative, url in source_urls(relations).items():
        dest = folder / relative
        if dest.is_file():
            continue
        try:
            download_atomic(url, dest)
        except Exception as exc:  # offline, proxy, HTTP error, unwritable cache
            raise DataNotFoundError(
                f"could not download {url} to {dest} ({type(exc).__name__}: {exc}). LAMA T-REx has no hub "
                f"copy, so without a data root it is fetched from GitHub. {_OFFLINE_HINT}"
            ) from exc
    return folder


def _folder(data_dir, relations) -> Path:
    root = resolve_data_root(data_dir)
    return fetch(relations) if root is None else root / FOLDER


def relation_ids(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The ids of the relations that have facts, in the order of ``relations.jsonl`` (equal to ``RELATIONS``
    for the verbatim files)."""
    base = _folder(data_dir, None)
    order = [row["relation"] for row in _read_jsonl(base / RELATIONS_FILE, ("relation", "template"))]
    return [r for r in order if (base / FACTS_FOLDER / f"{r}.jsonl").is_file()]


def load_lama(
    data_dir: str | os.PathLike | None = None,
    n_distractors: int | str = 9,
    seed: int = 1234,
    relations: list[str] | tuple[str, ...] | None = None,
    min_options: int = 1,
) -> datasets.DatasetDict:
    """LAMA T-REx from the local data root when one is configured, else from the download cache.

    Returns a DatasetDict with one split ``test`` and the columns in ``COLUMNS``. Options are checked before
    anything is downloaded; ``min_options`` as in :func:`load_folder`.
    """
    _check_relations(relations)
    _check_n_distractors(n_distractors, _check_min_options(min_options))
    _check_seed(seed)
    return load_folder(_folder(data_dir, relations), n_distractors, seed, relations, min_options)
