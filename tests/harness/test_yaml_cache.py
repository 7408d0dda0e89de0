"""The cache of parsed task YAML files behind lm-eval's task index (lm_eval_calib/yaml_cache.py).

Real lm-eval ``TaskManager`` indexes over real task folders (lm-eval's mmlu and bbh, our task folder), each
built three ways: uncached, cold (parsing and storing) and warm (from the store file alone): the indices must
be equal entry by entry, and editing a file or anything it includes must be seen at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager, _index

from lm_eval_calib import yaml_cache
from lm_eval_calib.lm_eval_patches import _flagged
from lm_eval_calib.task_folder import task_dir

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
FOLDERS = [LM_EVAL_TASKS / "mmlu", LM_EVAL_TASKS / "bbh", Path(task_dir())]


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """A fresh store for this test, and no cache object left over from another test."""
    monkeypatch.setenv(yaml_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(yaml_cache.NO_CACHE_ENV, raising=False)
    monkeypatch.setattr(yaml_cache, "_caches", {})
    return tmp_path / "cache"


def _index_of(folders) -> dict:
    """The index entries from these folders (the plugin adds its own task folder to every index)."""
    manager = TaskManager(include_defaults=False, include_path=[str(f) for f in folders])
    return {
        name: (entry.kind, str(entry.yaml_path), entry.cfg, sorted(entry.tags))
        for name, entry in manager.task_index.items()
        if any(str(entry.yaml_path).startswith(str(folder)) for folder in folders)
    }


def _fresh_process(monkeypatch) -> None:
    """What a new ``lm_eval`` process sees: nothing in memory, only the store file."""
    monkeypatch.setattr(yaml_cache, "_caches", {})


def test_the_patch_is_on_for_lm_evals_index():
    assert _flagged(_index.TaskIndex.build)


def test_cached_index_equals_the_uncached_one_entry_by_entry(cache_root, monkeypatch):
    monkeypatch.setenv(yaml_cache.NO_CACHE_ENV, "1")
    uncached = _index_of(FOLDERS)
    assert not cache_root.exists()  # switched off: nothing written
    monkeypatch.delenv(yaml_cache.NO_CACHE_ENV)
    cold = _index_of(FOLDERS)
    stores = list(cache_root.rglob("*.pickle"))
    assert len(stores) == 1 and stores[0].stat().st_size > 0
    _fresh_process(monkeypatch)
    warm = _index_of(FOLDERS)
    n_yaml = sum(1 for folder in FOLDERS for _ in folder.rglob("*.yaml"))
    (cache,) = yaml_cache._caches.values()
    assert cache.hits == n_yaml and cache.misses == 0  # every file from the store, none parsed
    assert len(uncached) > 100 and "calib_mmlu" in uncached and "mmlu_anatomy" in uncached
    assert warm == cold == uncached


def _write(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(text)
    if before is not None and path.stat().st_mtime_ns == before:  # a coarse clock: make the change visible
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_an_edited_file_or_include_is_read_again(cache_root, monkeypatch, tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write(folder / "_base.yaml.inc", "dataset_path: first\noutput_type: multiple_choice\n")
    _write(folder / "one.yaml", "include: _base.yaml.inc\ntask: one\n")
    assert _index_of([folder])["one"][2]["dataset_path"] == "first"

    _fresh_process(monkeypatch)
    _write(folder / "_base.yaml.inc", "dataset_path: second_value\noutput_type: multiple_choice\n")
    assert _index_of([folder])["one"][2]["dataset_path"] == "second_value"  # the include changed

    _fresh_process(monkeypatch)
    _write(folder / "one.yaml", "include: _base.yaml.inc\ntask: renamed\n")
    index = _index_of([folder])
    assert "renamed" in index and "one" not in index  # the file itself changed

    _fresh_process(monkeypatch)
    (folder / "one.yaml").unlink()
    assert _index_of([folder]) == {}  # a removed file is gone from the index (and from the store)


def test_a_config_changed_by_its_reader_leaves_the_next_index_alone(cache_root):
    folder = FOLDERS[-1]
    manager = TaskManager(include_defaults=False, include_path=str(folder))
    manager.task_index["calib_mmlu_anatomy"].cfg["dataset_path"] = "changed by a reader"
    again = TaskManager(include_defaults=False, include_path=str(folder))
    assert again.task_index["calib_mmlu_anatomy"].cfg.get("dataset_path") != "changed by a reader"


def test_a_damaged_store_is_ignored_and_rewritten(cache_root, monkeypatch):
    folder = FOLDERS[-1]
    expected = _index_of([folder])
    (store,) = cache_root.rglob("*.pickle")
    store.write_bytes(b"not a pickle")
    _fresh_process(monkeypatch)
    assert _index_of([folder]) == expected
    _fresh_process(monkeypatch)
    assert _index_of([folder]) == expected
    (cache,) = yaml_cache._caches.values()
    assert cache.misses == 0 and cache.hits > 0  # rewritten whole by the run that found it damaged
