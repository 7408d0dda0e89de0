"""WikiText-2 test documents from the data root, split like the hub copy lm-eval's `wikitext` task uses."""

from __future__ import annotations

import re

import pytest

from lm_eval_calib.data.root import DATA_ENV, DataNotFoundError
from lm_eval_calib.data.wikitext import (
    is_document_start,
    load_local,
    load_wikitext,
    restore_layout,
    split_documents,
)


@pytest.fixture(scope="module")
def docs(data_root):
    return load_local(data_root)["test"]


def test_documents_and_word_count(docs):
    assert docs.column_names == ["page", "title"]
    assert len(docs) == 62  # 60 articles; "Constant k filter" is cut in three, as in the hub copy
    assert docs["title"][:2] == ["Robert Boulter", "Du Fu"] and docs["title"][-1] == "The Hustler ( film )"
    k_filter = docs["title"].index("Constant k filter")
    assert docs["title"][k_filter + 1 : k_filter + 3] == [
        "1 rad / s and a nominal impedance k",
        "1 henry and capacitance C",
    ]
    assert sum(len(page.split()) for page in docs["page"]) == 241211  # SOURCE.md's whitespace tokens
    # lm-eval's word count (re.split on the page) adds one empty string at each end of every page
    assert sum(len(re.split(r"\s+", page)) for page in docs["page"]) == 241211 + 2 * 62
    for page, title in zip(docs["page"], docs["title"], strict=True):
        assert page.startswith(f" = {title} = \n") and is_document_start(page.split("\n")[0])
        assert sum(is_document_start(line) for line in page.split("\n")) == 1
    assert docs["page"][0].startswith(" = Robert Boulter = \n \n Robert Boulter is an English film")
    assert docs["page"][0].endswith(" \n = = = Theatre = = = \n \n \n ")
    assert docs["page"][-1].endswith(" Ed Parker , and Eddie Pelkey . \n \n")


def test_concatenation_reproduces_raw_file_and_original_layout(data_root, docs):
    raw_lines = (data_root / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8").splitlines()
    # the original file is " " (the blank line before the first title), then the pages joined by "\n"
    original = " \n" + "\n".join(docs["page"])
    lines = original.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 4358  # the original release's line count
    # dropping the blank separator lines (all exactly " ") gives back wiki.test.raw line for line
    assert {line for line in lines[:-1] if not line.strip()} == {" "}
    assert [line for line in lines if line.strip()] == raw_lines and len(raw_lines) == 2891
    # the blank lines sit where the tokenized release (same layout, 4,358 lines) has its blank lines
    tokens = (data_root / "wikitext2" / "wiki.test.tokens").read_text(encoding="utf-8").split("\n")
    assert [bool(t.strip()) for t in tokens] == [bool(line.strip()) for line in lines]
    assert split_documents(original) == docs["page"]


def test_layout_rule_and_document_start():
    assert is_document_start(" = Robert Boulter = ")
    assert not is_document_start(" = = Career = = ") and not is_document_start(" = = = 2000 – 2005 = = = ")
    assert not is_document_start(" = = = = North America = = = = ")
    lines = [" = A = ", " text . ", " = = S = = ", " = = = T = = = ", " more . ", " = B = ", " end . "]
    assert restore_layout(lines) == [
        " ", " = A = ", " ", " text . ", " ", " = = S = = ", " ", " ", " = = = T = = = ", " ", " more . ",
        " ", " ", " = B = ", " ", " end . ", " ",
    ]  # fmt: skip
    pages = split_documents("\n".join(restore_layout(lines)) + "\n")
    assert pages == [
        " = A = \n \n text . \n \n = = S = = \n \n \n = = = T = = = \n \n more . \n \n ",
        " = B = \n \n end . \n \n",
    ]


def test_original_layout_and_crlf_copies_give_same_documents(data_root, docs, tmp_path):
    (tmp_path / "orig" / "wikitext2").mkdir(parents=True)
    (tmp_path / "orig" / "wikitext2" / "wiki.test.raw").write_text(" \n" + "\n".join(docs["page"]))
    assert load_local(tmp_path / "orig")["test"]["page"] == docs["page"]
    (tmp_path / "crlf" / "wikitext2").mkdir(parents=True)
    raw = (data_root / "wikitext2" / "wiki.test.raw").read_bytes()
    (tmp_path / "crlf" / "wikitext2" / "wiki.test.raw").write_bytes(raw.replace(b"\n", b"\r\n"))
    assert load_wikitext(str(tmp_path / "crlf"))["test"]["page"] == docs["page"]


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="missing wikitext2/wiki.test.raw"):
        load_local(tmp_path)
    (tmp_path / "wikitext2").mkdir()
    path = tmp_path / "wikitext2" / "wiki.test.raw"
    path.write_text(" \n\n")
    with pytest.raises(DataNotFoundError, match="wiki.test.raw: empty"):
        load_local(tmp_path)
    path.write_text(" some text without titles \n")
    with pytest.raises(DataNotFoundError, match="no article title lines"):
        load_wikitext(str(tmp_path))


def test_hub_failure_explains_offline_route(monkeypatch):
    # The tests run with HF_DATASETS_OFFLINE=1 (conftest), as on this project's machines.
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataNotFoundError, match="wikitext_document_level.*LM_EVAL_CALIB_DATA=ROOT"):
        load_wikitext(None)
