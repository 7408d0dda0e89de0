"""Where a task's data come from: a local data root, or the public hub copy.

One root serves every task of a run (``ROOT/mmlu/``, ``ROOT/lama_trex/``, ``ROOT/wikitext2/``, and
``ROOT/hub/<dataset_path>/`` for the lm-eval tasks that ``calib_<task>`` wraps), because
on offline clusters all data arrive together. The root is given per run with
``--metadata '{"data_dir": ROOT}'`` or for a whole shell with ``LM_EVAL_CALIB_DATA=ROOT``.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
from pathlib import Path

DATA_ENV = "LM_EVAL_CALIB_DATA"


class DataNotFoundError(FileNotFoundError):
    """The data root, or a file a task expects under it, is missing or malformed."""


def chosen_data_root(data_dir: str | os.PathLike | None = None) -> tuple[str | os.PathLike | None, str]:
    """The one precedence rule for the data root, unchecked: ``data_dir`` (from ``--metadata``) when given,
    else ``$LM_EVAL_CALIB_DATA``, else None (the hub copy); with where the value came from, for messages."""
    if data_dir not in (None, ""):
        return data_dir, "data_dir in --metadata"
    return os.environ.get(DATA_ENV) or None, f"${DATA_ENV}"


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the local data root to use, or None to use the hub copy.

    An explicit ``data_dir`` (from ``--metadata``) wins over the environment variable, so one run can be
    pointed elsewhere without touching the shell.
    """
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise DataNotFoundError(
            "data_dir in --metadata must be a folder path (text), got "
            f"{type(data_dir).__name__} {data_dir!r}; "
            """e.g. --metadata '{"data_dir": "/data/lm_eval_calib"}', or leave it out to use """
            f"${DATA_ENV} or the hub copy"
        )
    raw, source = chosen_data_root(data_dir)
    if raw is None:
        return None
    root = Path(raw)
    with contextlib.suppress(RuntimeError):  # `~nosuchuser/...`: no such home, so no such directory either
        root = root.expanduser()
    if not root.is_dir():  # False too for a path with a NUL character
        raise DataNotFoundError(
            f"data root {str(root)!r} (from {source}) is not a directory. Point it at a folder laid out like "
            "ROOT/mmlu/{test,dev,val}/<subject>_<split>.csv, or unset it to download the hub copy."
        )
    return root


def describe_missing(missing: list[Path], root: Path, shown: int = 5) -> str:
    """``a, b, c and N more``: the first missing files relative to ``root``, for error messages."""
    names = ", ".join(str(path.relative_to(root)) for path in missing[:shown])
    return names + (f" and {len(missing) - shown} more" if len(missing) > shown else "")


def read_text(path: Path, fix: str) -> str:
    """The text of a data file decoded as UTF-8 (a leading byte-order mark dropped), line endings untouched.

    Reading through ``open(encoding="utf-8")`` fails on a stray byte with a bare ``UnicodeDecodeError`` that
    names neither the file nor the line; decoding the bytes here lets the error say both, plus ``fix``.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise DataNotFoundError(
            f"{path}: line {line} is not valid UTF-8 (byte {data[offset : offset + 1]!r} at offset "
            f"{offset}). Save the file as UTF-8 or {fix}"
        ) from exc


# -- hub-layout snapshots for lm-eval's own tasks (calib_<task> wrappers) -----------------------------------
HUB_DIR = "hub"
"""``ROOT/hub/<dataset_path>/``: a snapshot of the hub dataset ``dataset_path`` (what
``huggingface-cli download --repo-type dataset ORG/NAME --local-dir ROOT/hub/ORG/NAME`` writes)."""


def _is_hub_dataset(dataset_path: str) -> bool:
    """Whether ``dataset_path`` names a hub dataset, not a local folder or one of ``datasets``' file builders
    (``json``, ``csv``, ``parquet``, ...), which read files the config names and never need a snapshot."""
    if Path(dataset_path).expanduser().exists() or Path(dataset_path).is_absolute():
        return False
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as builders
    except ImportError:  # a datasets release that moved it: the builders every release has
        builders = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}
    return dataset_path not in builders


def hub_snapshot(
    dataset_path: str | None, data_dir: str | os.PathLike | None = None, task: str = ""
) -> Path | None:
    """The local snapshot folder to read instead of the hub dataset ``dataset_path``, or None to use the hub.

    With a data root set (``data_dir`` from ``--metadata``, else ``$LM_EVAL_CALIB_DATA``), a hub dataset is
    read from ``ROOT/hub/<dataset_path>/`` (``datasets.load_dataset(that folder, dataset_name)``); a missing
    folder is an error naming it. Without a root, or for local files and file builders: None (lm-eval's own
    loading).
    """
    if not dataset_path or not _is_hub_dataset(dataset_path):
        return None
    root = resolve_data_root(data_dir)
    if root is None:
        return None
    folder = root / HUB_DIR / dataset_path
    if not folder.is_dir():
        _, source = chosen_data_root(data_dir)
        raise DataNotFoundError(
            f"{task + ': ' if task else ''}the data root {str(root)!r} (from {source}) has no snapshot of "
            f"the hub dataset {dataset_path!r}: expected the folder {str(folder)!r}. Put a hub-layout copy "
            f"there (`huggingface-cli download --repo-type dataset {dataset_path} --local-dir {folder}`), "
            "or unset the data root to read the hub."
        )
    return folder


# -- the datasets cache of a local snapshot, keyed by its contents -------------------------------------------
SNAPSHOT_CACHE = "lm_eval_calib_snapshots"
"""Folder under the ``datasets`` cache holding one cache per distinct content of a local snapshot."""

_fingerprints: dict[tuple, str] = {}


def _snapshot_files(folder: Path) -> list[Path]:
    """The data files of a snapshot: every regular file, without hidden ones (``.cache/`` of
    ``huggingface-cli download``, editor files), in a fixed order."""
    files = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [Path(directory) / name for name in sorted(names) if not name.startswith(".")]
    return files


def snapshot_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 of a snapshot folder's files (relative names and bytes).

    ``datasets`` caches a local hub-layout folder under a key built from its README's ``data_files``
    patterns, not from the files: after an edit (or a truncated parquet) it keeps serving the old rows, with
    no message. Keying the cache by this fingerprint makes what is loaded follow the files. Computed once per
    process for unchanged files (sizes and modification times).
    """
    folder = Path(folder)
    files = _snapshot_files(folder)
    stats = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    key = (str(folder.resolve()), stats)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]


def snapshot_cache_dir(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``datasets`` cache folder for a local snapshot as its files are now:
    ``<cache>/lm_eval_calib_snapshots/<fingerprint>`` (``cache``: ``cache_dir`` when given, else the
    ``datasets`` cache). Another content is another folder, so an edit is never served from a stale cache;
    the same content hits the cache again."""
    if cache_dir is None:
        import datasets

        cache_dir = datasets.config.HF_DATASETS_CACHE
    return Path(cache_dir) / SNAPSHOT_CACHE / snapshot_fingerprint(folder)[:16]
