"""A disk cache of parsed task YAML files, keyed by each file's (and its includes') stat, for lm-eval's index.

Why: every ``TaskManager()`` (each ``lm_eval`` run, and again in every ``simple_evaluate`` without a task
manager) parses all of lm-eval's ~14,000 task YAML files to build its task index; on two CPU cores that is
6-12 s a run, 95% of it in ``yaml.load``. The parsed configs of files that did not change are the same every
time, so this module keeps them, one pickled config per file, in one store file per lm-eval version.

What makes a hit safe: an entry holds the (mtime_ns, size, inode) of the file and of every file its
``include:`` chain read; a hit needs all of them unchanged, so editing a task YAML or anything it includes
re-parses it. Only the index's fast parse (``resolve_func=False``: ``!function`` tags kept as path strings, no
code imported) is cached; loading a task still parses its YAML the normal way. Configs are unpickled afresh
on every hit, so no two task managers share a mutable dict.

The store lives under ``$LM_EVAL_CALIB_CACHE/yaml_index`` (default ``~/.cache/lm_eval_calib/yaml_index``),
written whole to a temporary file and renamed (concurrent runs lose at most each other's additions).
A damaged or unreadable store is ignored and rebuilt. ``LM_EVAL_CALIB_NO_YAML_CACHE=1`` turns the cache off.
The patch that puts it in lm-eval's index is in :mod:`lm_eval_calib.lm_eval_patches`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_calib.models.model_args import TRUE_WORDS

logger = logging.getLogger("lm_eval_calib")

NO_CACHE_ENV = "LM_EVAL_CALIB_NO_YAML_CACHE"
CACHE_ENV = "LM_EVAL_CALIB_CACHE"
_FORMAT = 1  # bump when the entry layout changes

Stamp = tuple[int, int, int]
# ((path, stamp) of the file and of each file its includes read, the pickled config)
Entry = tuple[tuple[tuple[str, Stamp], ...], bytes]


def cache_enabled() -> bool:
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() not in TRUE_WORDS


def store_path(lm_eval_version: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lm_eval_calib")
    return root / "yaml_index" / f"lm_eval-{lm_eval_version}-v{_FORMAT}.pickle"


_reading = threading.local()  # the files the miss being parsed has read so far, per thread
_caches: dict[Path, YamlCache] = {}


def record_read(path: str | os.PathLike) -> None:
    """Called for every file lm-eval's YAML loader opens: the files the miss being parsed depends on."""
    reading = getattr(_reading, "files", None)
    if reading is not None:
        reading.add(str(Path(path).expanduser().resolve()))


def current_cache(lm_eval_version: str) -> YamlCache | None:
    """The cache for the current environment (``LM_EVAL_CALIB_CACHE`` read now, not at import), or None
    when it is switched off."""
    if not cache_enabled():
        return None
    path = store_path(lm_eval_version)
    if path not in _caches:
        _caches[path] = YamlCache(path)
    return _caches[path]


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class YamlCache:
    """Parsed YAML configs by resolved path, valid while the files they were read from are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Entry] | None = None
        self._dirty = False
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _load_store(self) -> dict[str, Entry]:
        if self._entries is None:
            try:
                with open(self.path, "rb") as handle:
                    entries = pickle.load(handle)
                if not isinstance(entries, dict):
                    raise ValueError("not a dict")
            except FileNotFoundError:
                entries = {}
            except Exception as exc:  # damaged or from another Python: rebuild it
                logger.debug("lm-eval-calib: ignoring the YAML index cache %s (%r)", self.path, exc)
                entries = {}
            self._entries = entries
        return self._entries

    def load(self, path: str | os.PathLike, parse: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The config of ``path``: from the store when it and its includes are unchanged, else ``parse()``."""
        key = os.path.abspath(os.path.expanduser(os.fspath(path)))  # no realpath: 10x the stat calls
        with self._lock:
            entry = self._load_store().get(key)
        if entry is not None:
            files, blob = entry
            if all(_stamp(name) == stamp for name, stamp in files):
                self.hits += 1
                return pickle.loads(blob)
        self.misses += 1
        outer = getattr(_reading, "files", None)
        _reading.files = {key}
        try:
            cfg = parse()
            read = _reading.files
        finally:
            _reading.files = outer
        if outer is not None:
            outer.update(read)
        stamps = tuple((name, _stamp(name)) for name in sorted(read))
        if all(stamp is not None for _, stamp in stamps):
            try:
                blob = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # something YAML built that does not pickle: just not cached
                return cfg
            with self._lock:
                self._load_store()[key] = (stamps, blob)
                self._dirty = True
            return pickle.loads(blob)  # the caller may mutate its copy; the stored one stays as parsed
        return cfg

    def save(self) -> None:
        """Write the store if anything was added, dropping entries of files that no longer exist."""
        with self._lock:
            if not self._dirty or self._entries is None:
                return
            entries = {key: entry for key, entry in self._entries.items() if os.path.exists(key)}
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".yaml-index-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    pickle.dump(entries, handle, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:  # a read-only home: the run goes on, uncached
            logger.debug("lm-eval-calib: could not write the YAML index cache %s (%r)", self.path, exc)
