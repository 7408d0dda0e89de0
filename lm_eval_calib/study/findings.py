"""Check a study's claims ("SFT makes ECE higher on MMLU") on its own runs, with paired intervals.

Both runs are read back from their ``--log_samples`` files and paired by lm-eval's ``doc_id``: only documents
scored for both models count, and a document's items (one question, or the tokens of an article) are
resampled together (:mod:`lm_eval_calib.metrics.paired`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_eval_calib.metrics import METRICS, CalibrationData
from lm_eval_calib.metrics.paired import PairedDifference, paired_difference
from lm_eval_calib.records import RECORD_LOG_KEY, records_to_data
from lm_eval_calib.study.config import FindingSpec

MIN_DOCUMENTS = 10
"""Below this many shared documents a percentile bootstrap has too few distinct resamples to trust its
interval (2 documents give 3), so the verdict is withheld ("inconclusive") whatever the interval says."""


class FindingInputError(ValueError):
    """A finding cannot be checked: a run is missing or its samples were not logged."""


def read_documents(folder: Path, task: str) -> dict[object, dict]:
    """``doc_id -> record`` from the newest ``samples_<task>_*.jsonl`` under ``folder``."""
    files = sorted(Path(folder).rglob(f"samples_{task}_*.jsonl"))
    if not files:
        raise FindingInputError(
            f"{folder}: no samples for {task}; the evaluation did not finish or lacked --log_samples"
        )
    documents = {}
    for line in files[-1].read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            documents[row["doc_id"]] = row[RECORD_LOG_KEY]
    return documents


def _side(records: list[dict]) -> tuple[CalibrationData, np.ndarray]:
    data = records_to_data(records)
    sizes = [np.atleast_1d(np.asarray(r["confidence"])).shape[0] for r in records]
    return data, np.repeat(np.arange(len(records)), sizes)


def check_finding(
    spec: FindingSpec, baseline: Path, treatment: Path, n_resamples: int = 1000
) -> PairedDifference:
    """The treatment-minus-baseline difference of ``spec.metric`` on the documents both runs scored."""
    docs_a, docs_b = read_documents(baseline, spec.task), read_documents(treatment, spec.task)
    shared = sorted(set(docs_a) & set(docs_b), key=str)
    if not shared:
        raise FindingInputError(f"{baseline} and {treatment} share no {spec.task} documents")
    data_a, groups_a = _side([docs_a[d] for d in shared])
    data_b, groups_b = _side([docs_b[d] for d in shared])
    return paired_difference(spec.metric, data_a, data_b, groups_a, groups_b, n_resamples=n_resamples)


@dataclass(frozen=True)
class FindingResult:
    spec: FindingSpec
    result: PairedDifference | None
    verdict: str  # supported | contradicted | inconclusive | not run
    note: str = ""


def judge(spec: FindingSpec, result: PairedDifference) -> FindingResult:
    """The verdict of ``spec`` on ``result``, withheld when too few documents back the interval."""
    if result.n_documents < MIN_DOCUMENTS:
        note = (
            f"only {result.n_documents} documents; the interval needs at least {MIN_DOCUMENTS}: "
            f"raise {spec.task}'s limit"
        )
        return FindingResult(spec, result, "inconclusive", note)
    return FindingResult(spec, result, result.verdict(spec.expect, spec.margin))


def findings_markdown(results: list[FindingResult]) -> str:
    """One row per claim: what it expects, both values, the difference with its 95% interval, the verdict."""
    lines = [
        "| claim | task | metric | baseline | treatment | expected | baseline value | treatment value "
        "| difference [95% CI] | documents | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        s, r = item.spec, item.result
        name = METRICS[s.metric].display_name
        if r is None:
            values = ["", "", "", ""]
        else:
            interval = f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]"
            values = [f"{r.value_a:.4f}", f"{r.value_b:.4f}", interval, str(r.n_documents)]
        verdict = item.verdict + (f" ({item.note})" if item.note else "")
        expected = f"same (within ±{s.margin:g})" if s.expect == "same" else s.expect
        lines.append(f"| {s.claim} | {s.task} | {name} | {s.baseline} | {s.treatment} | {expected} | "
                     + " | ".join(values)
                     + f" | {verdict} |")  # fmt: skip
    return "\n".join(lines) + "\n"
