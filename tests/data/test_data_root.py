"""A data root that is not a folder path is one clear error (issue 29, item 2:
``--metadata '{"data_dir": 5}'`` gave a bare ``TypeError`` from ``pathlib``)."""

from __future__ import annotations

import pytest

from lm_eval_calib.data.root import DATA_ENV, DataNotFoundError, resolve_data_root


@pytest.mark.parametrize("data_dir", [5, 1.5, False, ["/data"], {"path": "/data"}])
def test_a_data_dir_that_is_not_text_is_named(data_dir, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(
        DataNotFoundError, match=r"data_dir in --metadata must be a folder path \(text\), got"
    ) as info:
        resolve_data_root(data_dir)
    assert repr(data_dir) in str(info.value) and type(data_dir).__name__ in str(info.value)


@pytest.mark.parametrize("data_dir", ["~nosuchuser_lm_eval_calib/data", "a\x00b"])
def test_a_data_dir_that_cannot_be_a_folder_is_not_a_directory(data_dir, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        resolve_data_root(data_dir)


def test_the_environment_variable_is_named_when_it_is_the_bad_one(monkeypatch):
    monkeypatch.setenv(DATA_ENV, "~nosuchuser_lm_eval_calib/data")
    with pytest.raises(DataNotFoundError, match=rf"from \${DATA_ENV}\) is not a directory"):
        resolve_data_root(None)
