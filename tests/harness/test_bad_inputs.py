"""Bad data files: every loader names the file and line of bytes that are not UTF-8, never a bare
UnicodeDecodeError, and reads a UTF-8 file with a byte-order mark as if it had none."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lm_eval_calib.data import lama, mmlu, wikitext
from lm_eval_calib.data.root import DataNotFoundError

BAD_BYTES = [b"\xff", b"\xe9", b"\xc3(", b"\x80"]  # invalid start byte, Latin-1 e-acute, bad continuation


def _mmlu(data_root: Path, root: Path) -> tuple[Path, Callable]:
    for folder in ("test", "dev", "val"):
        (root / "mmlu" / folder).mkdir(parents=True)
        name = f"anatomy_{folder}.csv"
        shutil.copy(data_root / "mmlu" / folder / name, root / "mmlu" / folder / name)
    return root / "mmlu" / "test" / "anatomy_test.csv", lambda: mmlu.load_local(root, "anatomy")


def _lama_facts(data_root: Path, root: Path) -> tuple[Path, Callable]:
    (root / "lama_trex" / "facts").mkdir(parents=True)
    shutil.copy(data_root / "lama_trex" / "relations.jsonl", root / "lama_trex" / "relations.jsonl")
    shutil.copy(data_root / "lama_trex" / "facts" / "P30.jsonl", root / "lama_trex" / "facts" / "P30.jsonl")
    return root / "lama_trex" / "facts" / "P30.jsonl", lambda: lama.load_local(root, relations=["P30"])


def _lama_relations(data_root: Path, root: Path) -> tuple[Path, Callable]:
    _, load = _lama_facts(data_root, root)
    return root / "lama_trex" / "relations.jsonl", load


def _wikitext(data_root: Path, root: Path) -> tuple[Path, Callable]:
    (root / "wikitext2").mkdir(parents=True)
    shutil.copy(data_root / "wikitext2" / "wiki.test.raw", root / "wikitext2" / "wiki.test.raw")
    return root / "wikitext2" / "wiki.test.raw", lambda: wikitext.load_local(root)


LOADERS = {
    "mmlu_csv": _mmlu,
    "lama_facts": _lama_facts,
    "lama_relations": _lama_relations,
    "wikitext": _wikitext,
}


def _insert_on_line(path: Path, line: int, blob: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:5] + blob + lines[line - 1][5:]
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("bad", BAD_BYTES, ids=lambda b: b.hex())
@pytest.mark.parametrize("kind", LOADERS)
def test_non_utf8_bytes_name_file_and_line(kind, bad, data_root, tmp_path):
    path, load = LOADERS[kind](data_root, tmp_path)
    _insert_on_line(path, 3, bad)
    with pytest.raises(DataNotFoundError) as info:
        load()
    message = str(info.value)
    assert f"{path}: line 3 is not valid UTF-8" in message and "Save the file as UTF-8" in message
    assert not isinstance(info.value, UnicodeDecodeError)


@pytest.mark.parametrize("kind", LOADERS)
def test_utf8_with_byte_order_mark_reads_as_without(kind, data_root, tmp_path):
    path, load = LOADERS[kind](data_root, tmp_path)
    reference = load()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load()["test"].to_list() == reference["test"].to_list()
