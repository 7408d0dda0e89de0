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


def test_hub_failure_explains_offline_route(monkeypatch):
    # The tests run with HF_DATASETS_OFFLINE=1 (conftest), as on this project's machines; no data root here.
    monkeypatch.delenv("LM_EVAL_CALIB_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="LM_EVAL_CALIB_DATA"):
        load_mmlu(None, "anatomy")


def _one_subject_root(data_root: Path, tmp_path: Path, last_row: str) -> tuple[Path, Path]:
    """anatomy with a test CSV of three good rows and ``last_row`` on line 4."""
    root = _copy_subjects(data_root, tmp_path, ["anatomy"])
    path = root / "mmlu" / "test" / "anatomy_test.csv"
    path.write_text('q1,a,b,c,d,A\nq2,a,b,c,d,B\n"q3",a,b,c,d, D \n' + last_row + "\n", encoding="utf-8")
    return root, path


@pytest.mark.parametrize("answer", ["", " ", "CD", "ABCD", "AB", "BC", "a", "E", "1", "A B", "A.", '"A,B"'])
def test_answer_must_be_exactly_one_letter(answer, data_root, tmp_path):
    """A substring test accepted "" (scored as A), "CD" and "ABCD"; each is now a broken row."""
    root, path = _one_subject_root(data_root, tmp_path, f"q4,a,b,c,d,{answer}")
    with pytest.raises(DataNotFoundError) as info:
        load_local(root, "anatomy")
    message = str(info.value)
    assert f"{path}: malformed MMLU row ending at line 4" in message
    assert "must be exactly one of A, B, C, D" in message and "got answer" in message


@pytest.mark.parametrize(("answer", "index"), [("A", 0), ("B", 1), (" C", 2), ("D ", 3)])
def test_each_single_letter_is_its_index(answer, index, data_root, tmp_path):
    root, _ = _one_subject_root(data_root, tmp_path, f"q4,a,b,c,d,{answer}")
    assert load_local(root, "anatomy")["test"]["answer"] == [0, 1, 3, index]


def _hub_copy(folder: Path, test_rows: dict[str, list]) -> Path:
    """A hub-layout snapshot of cais/mmlu with one config, ``anatomy``, as ``load_dataset`` reads offline."""
    import datasets

    good = {"question": ["q"], "subject": ["anatomy"], "choices": [["a", "b", "c", "d"]], "answer": [0]}
    for split, rows in (("test", test_rows), ("validation", good), ("dev", good)):
        (folder / "anatomy").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows).to_parquet(folder / "anatomy" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: anatomy\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: anatomy/{s}-*\n" for s in ("test", "validation", "dev"))
        + "---\n"
    )
    return folder


def test_hub_copy_of_the_shared_root_loads(data_root, monkeypatch):
    from lm_eval_calib.data import mmlu

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(mmlu, "HUB_PATH", str(data_root / "hub" / "cais" / "mmlu"))  # the hub, offline
    hub = load_mmlu(None, "anatomy")
    assert hub["test"].to_list() == load_local(data_root, "anatomy")["test"].to_list()


@pytest.mark.parametrize(
    ("choices", "answer", "problem"),
    [
        (["a", "b", "c", "d"], 4, "answer 4"),
        (["a", "b", "c", "d"], -1, "answer -1"),
        (["a", "b", "c"], 0, "3 choices"),
        (["a", "b", "c", "d", "e"], 0, "5 choices"),
    ],
)
def test_hub_copy_rows_are_checked_too(choices, answer, problem, monkeypatch, tmp_path):
    from lm_eval_calib.data import mmlu

    rows = {
        "question": ["q1", "q2", "q3"],
        "subject": ["anatomy"] * 3,
        "choices": [["a", "b", "c", "d"], ["a", "b", "c", "d"], choices],
        "answer": [1, 2, answer],
    }
    monkeypatch.delenv(DATA_ENV, raising=False)
    # a folder name of its own: `datasets` caches a local snapshot by its name, not by its content
    hub = _hub_copy(tmp_path / f"hub_{problem.replace(' ', '_')}", rows)
    monkeypatch.setattr(mmlu, "HUB_PATH", str(hub))
    with pytest.raises(DataNotFoundError) as info:
        load_mmlu(None, "anatomy")
    message = str(info.value)
    assert "config 'anatomy' split 'test' row 2" in message and problem in message
    assert "4 choices and an answer index 0-3" in message
