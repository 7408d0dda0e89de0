"""MMLU loading from a local data root: real CSVs, hub schema, clear errors for broken folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lm_eval_calib.data.mmlu import SUBJECTS, load_local, load_mmlu
from lm_eval_calib.data.root import DATA_ENV, DataNotFoundError, resolve_data_root


def _copy_subjects(data_root: Path, target: Path, subjects) -> Path:
    for folder in ("test", "dev", "val"):
        (target / "mmlu" / folder).mkdir(parents=True)
        for subject in subjects:
            name = f"{subject}_{folder}.csv"
            shutil.copy(data_root / "mmlu" / folder / name, target / "mmlu" / folder / name)
    return target


def test_all_subjects_pooled_with_published_counts(data_root):
    ds = load_local(data_root)
    assert {split: len(ds[split]) for split in ds} == {"test": 14042, "dev": 285, "validation": 1531}
    assert set(ds["test"].unique("subject")) == set(SUBJECTS) and len(SUBJECTS) == 57
    assert ds["test"].column_names == ["question", "subject", "choices", "answer"]
    first = ds["test"][0]
    assert (
        first["subject"] == "abstract_algebra" and len(first["choices"]) == 4 and first["answer"] in range(4)
    )
    assert all(len(ds["dev"].filter(lambda d, s=s: d["subject"] == s)) == 5 for s in ("anatomy", "virology"))


def test_one_subject(data_root):
    ds = load_local(data_root, "anatomy")
    assert (len(ds["test"]), len(ds["dev"]), len(ds["validation"])) == (135, 5, 14)
    assert ds["test"][0]["question"].startswith("A lesion causing compression of the facial nerve")
    assert ds["test"][0]["answer"] == 0  # the CSV says "A"


def test_data_dir_argument_beats_environment(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    assert resolve_data_root(str(data_root)) == data_root
    with pytest.raises(DataNotFoundError, match=DATA_ENV):
        resolve_data_root(None)
    monkeypatch.delenv(DATA_ENV)
    assert resolve_data_root(None) is None
    assert len(load_mmlu(str(data_root), "virology")["test"]) == 166


def test_pooled_task_needs_every_subject(data_root, tmp_path):
    root = _copy_subjects(data_root, tmp_path, ["anatomy", "virology"])
    assert len(load_local(root, "anatomy")["test"]) == 135  # its own subject is enough
    with pytest.raises(
        DataNotFoundError, match=r"needs all 57 subjects\): missing mmlu/test/abstract_algebra_test"
    ):
        load_local(root)
    with pytest.raises(DataNotFoundError, match=r"\(subject astronomy\): missing"):
        load_local(root, "astronomy")


def test_malformed_row_names_file_and_line(data_root, tmp_path):
    root = _copy_subjects(data_root, tmp_path, ["anatomy"])
    path = root / "mmlu" / "test" / "anatomy_test.csv"
    path.write_text(path.read_text() + "broken question,only two fields\n")
    with pytest.raises(DataNotFoundError, match=r"anatomy_test.csv: malformed MMLU row ending at line 136"):
        load_local(root, "anatomy")
    path.write_text("q,a,b,c,d,E\n")
    with pytest.raises(DataNotFoundError, match="answer 'E'"):
        load_local(root, "anatomy")


def test_unknown_subject_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown MMLU subject 'anatomyy'"):
        load_local(tmp_path, "anatomyy")
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        resolve_data_root(str(tmp_path / "missing"))


def test_hub_failure_explains_offline_route():
    # The tests run with HF_DATASETS_OFFLINE=1 (conftest), as on this project's machines.
    with pytest.raises(DataNotFoundError, match="LM_EVAL_CALIB_DATA"):
        load_mmlu(None, "anatomy")
