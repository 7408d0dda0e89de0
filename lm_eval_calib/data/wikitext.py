"""WikiText-2 test (Merity et al. 2016), one document per article, as in lm-eval's ``wikitext`` task.

The hub copy is ``EleutherAI/wikitext_document_level``, config ``wikitext-2-raw-v1``, split ``test``,
column ``page``. Its builder reads the original ``wiki.test.raw`` (4,358 lines, blank separator lines
``" "`` included) and starts a new document at every line that, after ``"= = ="`` -> ``"==="`` and
``"= ="`` -> ``"=="``, strips to ``"= ... ="``, i.e. a line `` = Title = `` with exactly one ``=`` on each
side. A document is its lines joined with ``"\\n"`` (the blank lines before the next heading included);
the blank line before the first heading is dropped. That gives 62 documents: the 60 articles, with
"Constant k filter" cut into three because two of its formula lines (`` = 1 rad / s and a nominal
impedance k = `` and `` = 1 henry and capacitance C = ``) look like headings. We keep that split, so that
documents, word counts and perplexities match lm-eval's.

Local data: ``ROOT/wikitext2/wiki.test.raw``. The copy in the shared data root holds the 2,891 non-empty
lines of the original without its blank separator lines. Those follow a fixed rule in the original,
which ``restore_layout`` re-applies: one ``" "`` line after every heading (`` = Title = ``,
`` = = Section = = ``, ...), one before every section heading, two before every article title (one at
the start of the file), and one at the end of the file. The original has two exceptions, written out in
this module: the two formula lines above are not headings for this rule, and the title
`` = The Hustler ( film ) = `` has one blank line before it, not two. The restored text equals the
original layout line for line (checked in the tests against the blank lines of ``wiki.test.tokens``),
so the local documents equal the hub's ``page`` documents. A ``wiki.test.raw`` that already has blank
lines (the original release) is used as it is.

Both sources give a split ``test`` with columns ``page`` and ``title`` (the first line without its
``=`` marks).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import datasets

from lm_eval_calib.data.root import DATA_ENV, DataNotFoundError, read_text, resolve_data_root

HUB_PATH = "EleutherAI/wikitext_document_level"
HUB_CONFIG = "wikitext-2-raw-v1"
FOLDER = "wikitext2"
RAW_FILE = "wiki.test.raw"

_HEADING = re.compile(r" (?:= )+.*(?: =)+ ")
# Formula lines of "Constant k filter" that look like headings but sit inside a paragraph.
_NOT_HEADINGS = frozenset({" = 1 rad / s and a nominal impedance k = ", " = 1 henry and capacitance C = "})
# The one article title that the original release precedes by a single blank line instead of two.
_ONE_BLANK_BEFORE = frozenset({" = The Hustler ( film ) = "})


def is_document_start(line: str) -> bool:
    """The hub builder's test for a line that starts a new document (an article title, `` = Title = ``)."""
    rline = line.replace("= = =", "===").replace("= =", "==").strip()
    return rline.startswith("= ") and rline.endswith(" =")


def _is_heading(line: str) -> bool:
    return _HEADING.fullmatch(line) is not None and line not in _NOT_HEADINGS


def restore_layout(lines: list[str]) -> list[str]:
    """Re-insert the original release's blank separator lines (``" "``) into the non-empty lines."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if _is_heading(line):
            two = is_document_start(line) and i > 0 and line not in _ONE_BLANK_BEFORE
            out.extend([" "] * (2 if two else 1))
            out.extend([line, " "])
        else:
            out.append(line)
    if not out or out[-1] != " ":
        out.append(" ")
    return out


def split_documents(text: str) -> list[str]:
    """Split the text of an original-layout ``wiki.*.raw`` into documents, exactly as the hub builder."""
    pages, current = [], []
    for line in text.split("\n"):
        if is_document_start(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def title_of(page: str) -> str:
    """The article title of a document: its first line without the ``=`` marks."""
    first = page.split("\n", 1)[0].strip()
    return first.strip("=").strip()


def read_raw(path: Path) -> list[str]:
    """The documents of one ``wiki.*.raw`` file (CRLF or LF, with or without blank separator lines)."""
    text = read_text(path, "restore wiki.test.raw as described in SOURCE.md.")
    text = io.StringIO(text, newline=None).read()  # universal newlines: CRLF copies read as LF
    if not text.strip():
        raise DataNotFoundError(f"{path}: empty; restore wiki.test.raw as described in SOURCE.md.")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if all(line.strip() for line in lines):  # blank separator lines stripped, as in the shared copy
        lines = restore_layout(lines)
    if not any(is_document_start(line) for line in lines):
        raise DataNotFoundError(
            f"{path}: no article title lines (' = Title = '); this is not a WikiText raw file."
        )
    return split_documents("\n".join(lines) + "\n")


def load_local(root: Path) -> datasets.DatasetDict:
    """Load the test documents from ``root/wikitext2/wiki.test.raw``."""
    path = Path(root) / FOLDER / RAW_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"WikiText-2 data under {root} is incomplete: missing {FOLDER}/{RAW_FILE}. Expected the raw "
            f"WikiText-2 test split at ROOT/{FOLDER}/{RAW_FILE} (from wikitext-2-raw-v1.zip)."
        )
    pages = read_raw(path)
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict({"page": pages, "title": [title_of(p) for p in pages]})}
    )


def load_hub() -> datasets.DatasetDict:
    """Load the hub copy lm-eval's ``wikitext`` task uses (``page`` column), adding ``title``."""
    try:
        loaded = datasets.load_dataset(HUB_PATH, HUB_CONFIG, split="test")
    except Exception as exc:  # offline, or the hub copy moved
        raise DataNotFoundError(
            f"could not load {HUB_PATH!r} ({HUB_CONFIG}) from the hub ({type(exc).__name__}: {exc}). "
            f"Offline? Set {DATA_ENV}=ROOT or --metadata '{{\"data_dir\": ROOT}}' with "
            f"ROOT/{FOLDER}/{RAW_FILE}."
        ) from exc
    pages = loaded["page"]
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict({"page": pages, "title": [title_of(p) for p in pages]})}
    )


def load_wikitext(data_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """WikiText-2 test documents from the local data root when one is configured, else from the hub."""
    root = resolve_data_root(data_dir)
    return load_hub() if root is None else load_local(root)
