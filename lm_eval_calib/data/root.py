"""Where a task's data come from: a local data root, or the public hub copy.

One root serves every task of a run (``ROOT/mmlu/``, ``ROOT/lama_trex/``, ``ROOT/wikitext2/``), because
on offline clusters all data arrive together. The root is given per run with
``--metadata '{"data_dir": ROOT}'`` or for a whole shell with ``LM_EVAL_CALIB_DATA=ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LM_EVAL_CALIB_DATA"


class DataNotFoundError(FileNotFoundError):
    """The data root, or a file a task expects under it, is missing or malformed."""


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the local data root to use, or None to use the hub copy.

    An explicit ``data_dir`` (from ``--metadata``) wins over the environment variable, so one run can be
    pointed elsewhere without touching the shell.
    """
    raw = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV) or None
    if raw is None:
        return None
    root = Path(raw).expanduser()
    if not root.is_dir():
        source = "data_dir in --metadata" if data_dir not in (None, "") else f"${DATA_ENV}"
        raise DataNotFoundError(
            f"data root {str(root)!r} (from {source}) is not a directory. Point it at a folder laid out like "
            "ROOT/mmlu/{test,dev,val}/<subject>_<split>.csv, or unset it to download the hub copy."
        )
    return root


def describe_missing(missing: list[Path], root: Path, shown: int = 5) -> str:
    """``a, b, c and N more``: the first missing files relative to ``root``, for error messages."""
    names = ", ".join(str(path.relative_to(root)) for path in missing[:shown])
    return names + (f" and {len(missing) - shown} more" if len(missing) > shown else "")
