"""Write files and folders so that a killed process never leaves one that looks complete (core: no lm-eval).

Every writer of this package that others read back uses these: the manifest and the LAMA download cache
(:func:`write_file`), a study's evaluation cells (:func:`replace_folder`), the report and a training
checkpoint (:func:`publish_folder`). All work by renames inside one folder, which are atomic on one file
system: the thing under its real name is either the old one, complete, or the new one, complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644
"""Mode of a file written by :func:`write_file` (``mkstemp`` creates 0600; what we write is read by others:
whoever evaluates a checkpoint, a second user of a shared cache)."""


def write_file(
    path: Path | str, write: Callable[[IO[Any]], None], *, binary: bool = False, fsync: bool = False
) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, then rename it into place.

    ``path`` exists only once complete (an interrupted write leaves at most a hidden ``.<name>.*.part`` file,
    removed when the error passes through here). ``fsync`` also flushes the data to disk before the rename
    (for downloads, which are costly to repeat). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` (if any) as a whole by ``tmp`` (same parent): at every moment ``final`` is
    the old folder or the new one, never a mix (the old one goes aside as ``.<name>.old`` for an instant)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def publish_folder(tmp: Path, out: Path, owned: Iterable[str], marker: str) -> list[str]:
    """Move the finished folder ``tmp`` to ``out``: one rename when ``out`` does not exist; otherwise replace,
    inside ``out``, exactly the entries the earlier run wrote (``owned``, relative paths) by ``tmp``'s.

    For an existing ``out``: the ``owned`` entries go aside (``marker``, the file that says the folder is
    finished, first, so the folder stops claiming to be finished), ``tmp``'s files move in (its ``marker``
    last), then the old entries are deleted. Everything else in ``out`` (a user's files) stays as it was. If a
    move fails, everything moved is put back and the error passes on. The caller checks beforehand that no
    file of ``tmp`` would land on a file of ``out`` it does not own. Returns the owned entries moved aside
    (their folders may be empty now)."""
    if not out.exists():
        tmp.rename(out)
        return []
    new = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir())
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in sorted(owned, key=lambda n: n != marker):  # the marker first
            source = out / name
            if source.exists() or source.is_symlink():
                (old / name).parent.mkdir(parents=True, exist_ok=True)
                source.rename(old / name)
                moved_old.append(name)
        for name in sorted(new, key=lambda n: n == marker):  # the new marker last
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).rename(out / name)
            moved_new.append(name)
    except BaseException:  # put the earlier folder back as it was
        for name in reversed(moved_new):
            (out / name).rename(tmp / name)
        for name in reversed(moved_old):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (old / name).rename(out / name)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(tmp)
    shutil.rmtree(old)
    return moved_old
