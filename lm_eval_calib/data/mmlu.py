"""MMLU (Hendrycks et al. 2021) in the schema of the hub copy ``cais/mmlu``.

Local data are the authors' per-subject CSVs (``ROOT/mmlu/{test,dev,val}/<subject>_<split>.csv``, no
header, columns question, A, B, C, D, answer letter). Both sources give the same columns (question,
subject, choices, answer index) and split names (test, dev, validation), so the task YAMLs do not care
where the data came from.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import datasets

from lm_eval_calib.data.root import DataNotFoundError, describe_missing, read_text, resolve_data_root

HUB_PATH = "cais/mmlu"

# lm-eval's subject names (lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml), in the hub's order.
SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management",
    "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

# hub split name -> (local folder, file suffix)
_SPLITS = {"test": "test", "dev": "dev", "validation": "val"}
_LETTERS = ("A", "B", "C", "D")  # a tuple, not "ABCD": `in` must test the whole answer, not a substring
_RESTORE = "Restore the file from the MMLU release (data.tar)."


def _check_subject(subject: str | None) -> None:
    if subject is not None and subject not in SUBJECTS:
        raise ValueError(f"unknown MMLU subject {subject!r}; known subjects: {', '.join(SUBJECTS)}")


def read_subject_csv(path: Path, subject: str) -> dict[str, list]:
    """Parse one per-subject CSV into hub-schema columns, rejecting malformed rows with their line.

    The answer must be exactly one of A, B, C, D (surrounding spaces allowed): an empty answer or ``CD`` is a
    broken row, not a question to score as A or C.
    """
    columns: dict[str, list] = {"question": [], "subject": [], "choices": [], "answer": []}
    text = read_text(path, "restore the file from the MMLU release (data.tar).")
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": quoted fields may hold line breaks
    for row in reader:
        if len(row) != 6:
            raise DataNotFoundError(
                f"{path}: malformed MMLU row ending at line {reader.line_num}: expected 6 fields "
                f"(question, A, B, C, D, answer letter A-D), got {len(row)} field(s). " + _RESTORE
            )
        answer = row[5].strip()
        if answer not in _LETTERS:
            raise DataNotFoundError(
                f"{path}: malformed MMLU row ending at line {reader.line_num}: the answer (6th field) must "
                f"be exactly one of A, B, C, D; got answer {row[5]!r}. " + _RESTORE
            )
        columns["question"].append(row[0])
        columns["subject"].append(subject)
        columns["choices"].append(row[1:5])
        columns["answer"].append(_LETTERS.index(answer))
    if not columns["question"]:
        raise DataNotFoundError(f"{path}: no rows. " + _RESTORE)
    return columns


def load_local(root: Path, subject: str | None = None) -> datasets.DatasetDict:
    """Load MMLU from ``root/mmlu``: all 57 subjects in the hub's order, or just ``subject``."""
    _check_subject(subject)
    base = root / "mmlu"
    subjects = SUBJECTS if subject is None else (subject,)
    expected = [base / folder / f"{s}_{folder}.csv" for folder in _SPLITS.values() for s in subjects]
    missing = [p for p in expected if not p.is_file()]
    if missing:
        scope = (
            "the pooled calib_mmlu task needs all 57 subjects" if subject is None else f"subject {subject}"
        )
        raise DataNotFoundError(
            f"MMLU data under {root} is incomplete ({scope}): missing {describe_missing(missing, root)}. "
            "Expected "
            "ROOT/mmlu/{test,dev,val}/<subject>_{test,dev,val}.csv as in the authors' data.tar."
        )
    splits = {}
    for split, folder in _SPLITS.items():
        merged: dict[str, list] = {"question": [], "subject": [], "choices": [], "answer": []}
        for s in subjects:
            part = read_subject_csv(base / folder / f"{s}_{folder}.csv", s)
            for key, values in part.items():
                merged[key].extend(values)
        splits[split] = datasets.Dataset.from_dict(merged)
    return datasets.DatasetDict(splits)


def load_hub(subject: str | None = None) -> datasets.DatasetDict:
    """Load the public hub copy (``cais/mmlu``), config ``all`` or one subject."""
    _check_subject(subject)
    try:
        loaded = datasets.load_dataset(HUB_PATH, subject or "all")
    except Exception as exc:  # offline, or the hub copy moved
        raise DataNotFoundError(
            f"could not load {HUB_PATH!r} from the hub ({type(exc).__name__}: {exc}). Offline? Set "
            "LM_EVAL_CALIB_DATA=ROOT or --metadata '{\"data_dir\": ROOT}' with the CSVs under ROOT/mmlu/."
        ) from exc
    config = subject or "all"
    columns = ["question", "subject", "choices", "answer"]
    splits = {}
    for split in _SPLITS:
        where = f"{HUB_PATH!r} config {config!r} split {split!r}"
        if split not in loaded:
            raise DataNotFoundError(f"{where}: missing; expected splits {', '.join(_SPLITS)}.")
        missing = [c for c in columns if c not in loaded[split].column_names]
        if missing:
            raise DataNotFoundError(f"{where}: missing column(s) {', '.join(missing)}.")
        splits[split] = loaded[split].select_columns(columns)
        check_hub_rows(splits[split], where)
    return datasets.DatasetDict(splits)


def check_hub_rows(split: datasets.Dataset, where: str) -> None:
    """Reject a hub-copy row without exactly 4 choices and an answer index 0-3, naming the row.

    The CSV path checks the answer letter; a hub copy (or a local snapshot of one) can be broken the same
    way, and an out-of-range index would be scored against the wrong option or crash mid-run.
    """
    for row, (choices, answer) in enumerate(zip(split["choices"], split["answer"], strict=True)):
        problems = []
        if not isinstance(choices, list) or len(choices) != 4:
            count = len(choices) if isinstance(choices, list) else type(choices).__name__
            problems.append(f"{count} choices")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < 4:
            problems.append(f"answer {answer!r}")
        if problems:
            raise DataNotFoundError(
                f"{where} row {row}: {' and '.join(problems)}; every MMLU row needs 4 choices and an answer "
                "index 0-3. Re-download the hub copy, or use the CSVs with LM_EVAL_CALIB_DATA=ROOT."
            )


def load_mmlu(data_dir: str | None = None, subject: str | None = None) -> datasets.DatasetDict:
    """MMLU from the local data root when one is configured, else from the hub."""
    root = resolve_data_root(data_dir)
    return load_hub(subject) if root is None else load_local(root, subject)
