"""A study's finished evaluations, small enough to commit and to carry to the next machine.

A study too long for one sitting runs in steps, and the next step may run on another machine (or a fresh
one): the checkpoints (gigabytes) cannot travel, but the findings and the report need only the evaluations.
With ``archive: FOLDER`` in the study file, every finished evaluation cell is copied there in a compact form
(``FOLDER/<model>/<task>/``), and a later run takes back every archived cell whose fingerprint is still the
cell's before anything runs (the plan calls such a cell ``archived``), so only what is missing runs; a
training stage whose every user is done or archived is not trained again (:mod:`lm_eval_calib.study.plan`).

What a copy keeps: per logged document its ``doc_id``, its ``filter``, its calibration records (``ece``,
``ece_norm``, ``ece_<estimator>``: everything every number and diagram is rebuilt from, see docs/records.md)
and its other numeric per-document values (``acc``, ``exact_match``, ...); the results file; the cell file.
What it leaves out: the dataset's documents and gold answers (``doc``, ``target``), the prompts
(``arguments``), lm-eval's raw responses and their hashes: the data are not the study's to redistribute, and
the records do not need them. Machine paths in the results and cell files become placeholders
(:func:`machine_paths`: ``$PYTHON_ENV``, ``$LM_EVAL_CALIB_DATA``, ``$CWD``, ``$HOME``), and lm-eval's
description of the machine (``pretty_env_info``) is dropped. Samples files are stored gzip-compressed (a
document of ``calib_clm`` logs one record entry per token).

Both directions write a folder under a temporary name and rename it into place, so neither a killed archive
nor a killed restore leaves a copy that looks complete.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lm_eval_calib.atomic import replace_folder
from lm_eval_calib.records import RECORD_LOG_KEY
from lm_eval_calib.records_io import SAMPLES_NAME

DROPPED_RESULTS_KEYS = ("pretty_env_info",)
"""lm-eval's results-file keys that describe the machine, not the run."""
KEPT_ROW_KEYS = ("doc_id", "filter")
DROPPED_ROW_KEYS = ("target", "doc_hash", "prompt_hash", "target_hash")
"""Numbers lm-eval logs that are the data's, not the run's (the gold answer's index is in the record too)."""


def machine_paths(data_root: str | None = None) -> list[tuple[str, str]]:
    """``(absolute path, placeholder)`` pairs replaced in archived text, longest path first (so the
    environment inside the working directory becomes ``$PYTHON_ENV``, not ``$CWD/.venv``)."""
    pairs = {
        sys.prefix: "$PYTHON_ENV",
        os.getcwd(): "$CWD",
        str(Path.home()): "$HOME",
    }
    if data_root:
        pairs[str(Path(data_root).resolve())] = "$LM_EVAL_CALIB_DATA"
        pairs[data_root.rstrip("/")] = "$LM_EVAL_CALIB_DATA"
    pairs = {path: name for path, name in pairs.items() if len(path) > 1}  # never "/" itself
    return sorted(pairs.items(), key=lambda item: len(item[0]), reverse=True)


def scrub_name(relative: Path, paths: Iterable[tuple[str, str]]) -> Path:
    """A file's path inside an lm-eval output folder with the machine paths taken out of its folder names:
    lm-eval names the folder of a run after the model's path, ``/`` written ``__``
    (``__root__.cache__lm_eval_calib__models__qwen...``)."""
    parts = list(relative.parts)
    for index, part in enumerate(parts[:-1]):
        for path, name in paths:
            part = part.replace(path.replace("/", "__"), name.lstrip("$"))
        parts[index] = part
    return Path(*parts)


def scrub(value: Any, paths: Iterable[tuple[str, str]]) -> Any:
    """``value`` (JSON) with every occurrence of each machine path in its text replaced by its placeholder."""
    paths = list(paths)
    if isinstance(value, str):
        for path, name in paths:
            value = value.replace(path, name)
        return value
    if isinstance(value, list):
        return [scrub(item, paths) for item in value]
    if isinstance(value, dict):
        return {scrub(key, paths): scrub(item, paths) for key, item in value.items()}
    return value


def compact_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One logged document as the archive keeps it: its id, filter, records and numeric values."""
    kept = {}
    for key, value in row.items():
        record = key.startswith(RECORD_LOG_KEY) and isinstance(value, dict)
        number = isinstance(value, int | float) or value is None
        if key in KEPT_ROW_KEYS or record or (number and key not in DROPPED_ROW_KEYS):
            kept[key] = value
    return kept


def _work_folder(final: Path) -> Path:
    work = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def archive_cell(cell_folder: Path, archived: Path, data_root: str | None = None) -> None:
    """Write the compact copy of the finished evaluation in ``cell_folder`` to ``archived`` (replacing an
    archived cell there, never a folder of anything else), keeping the folder layout lm-eval wrote (``<model
    name>/results_*.json`` and samples)."""
    if archived.exists() and not (archived / "study_cell.json").is_file():
        raise FileExistsError(
            f"{archived} exists and is not an archived study cell (no study_cell.json); it is left as it is: "
            "point the study's `archive:` at a folder of its own"
        )
    paths = machine_paths(data_root)
    work = _work_folder(archived)
    try:
        for source in sorted(cell_folder.rglob("*")):
            if not source.is_file():
                continue
            target = work / scrub_name(source.relative_to(cell_folder), paths)
            target.parent.mkdir(parents=True, exist_ok=True)
            if SAMPLES_NAME.match(source.name):
                with source.open(encoding="utf-8") as lines, gzip.open(f"{target}.gz", "wt") as out:
                    for line in lines:
                        if line.strip():
                            out.write(json.dumps(scrub(compact_row(json.loads(line)), paths)) + "\n")
            elif source.suffix == ".json":
                body = json.loads(source.read_text())
                if isinstance(body, dict):
                    body = {k: v for k, v in body.items() if k not in DROPPED_RESULTS_KEYS}
                target.write_text(json.dumps(scrub(body, paths), indent=2) + "\n")
            # anything else lm-eval or a later version writes beside them is not needed to rebuild the numbers
        replace_folder(work, archived)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def restore_cell(archived: Path, cell_folder: Path) -> None:
    """Put the archived evaluation back as a finished cell folder (samples decompressed), which the report and
    the findings read like any other; ``cell_folder`` must not exist (a folder the user has is never
    replaced by an archived one)."""
    if cell_folder.exists():
        raise FileExistsError(f"{cell_folder} exists; an archived cell is restored only where none is")
    work = _work_folder(cell_folder)
    try:
        for source in sorted(archived.rglob("*")):
            if not source.is_file():
                continue
            target = work / source.relative_to(archived)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.name.endswith(".jsonl.gz"):
                with gzip.open(source, "rb") as packed, open(target.with_suffix(""), "wb") as out:
                    shutil.copyfileobj(packed, out)
            else:
                shutil.copyfile(source, target)
        work.rename(cell_folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
