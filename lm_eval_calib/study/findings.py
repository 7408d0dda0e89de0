"""Check a study's claims ("SFT makes ECE higher on MMLU") on its own runs, with paired intervals.

Both runs are read back from their ``--log_samples`` files (:mod:`lm_eval_calib.records_io`, the reader the
report uses too) and paired by lm-eval's ``doc_id``: only documents scored for both models count, and a
document's items (one question, or the tokens of an article) are resampled together
(:mod:`lm_eval_calib.metrics.paired`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lm_eval_calib.metrics import METRICS
from lm_eval_calib.metrics.paired import PairedDifference, holm_adjust, paired_difference
from lm_eval_calib.records_io import SamplesError, TaskRecords, read_folder_task
from lm_eval_calib.study.config import FindingSpec

MIN_DOCUMENTS = 10
"""Below this many shared documents a percentile bootstrap has too few distinct resamples to trust its
interval (2 documents give 3), so the verdict is withheld ("inconclusive") whatever the interval says."""


class FindingInputError(ValueError):
    """A finding cannot be checked: a run is missing or its samples were not logged."""


def read_documents(folder: Path, task: str) -> TaskRecords:
    """The newest logged run of exactly ``task`` under ``folder``, with that run's calibration options."""
    try:
        return read_folder_task(folder, task)
    except SamplesError as exc:
        raise FindingInputError(str(exc)) from exc


def check_finding(
    spec: FindingSpec, baseline: Path, treatment: Path, n_resamples: int = 1000
) -> PairedDifference:
    """The treatment-minus-baseline difference of ``spec.metric`` on the documents both runs scored.

    Bins and bootstrap seed are the runs' own (``--metadata '{"calibration": {...}}'``), so the values match
    the report and lm-eval's results; two runs with different options cannot be compared.
    """
    side_a, side_b = read_documents(baseline, spec.task), read_documents(treatment, spec.task)
    options = side_a.options
    if (options.n_bins, options.bootstrap_seed) != (side_b.options.n_bins, side_b.options.bootstrap_seed):
        raise FindingInputError(
            f"{baseline} and {treatment} ran {spec.task} with different calibration options "
            f"({options} vs {side_b.options}); rerun one with the other's --metadata calibration options"
        )
    shared = sorted(set(side_a.doc_ids) & set(side_b.doc_ids), key=str)
    if not shared:
        raise FindingInputError(f"{baseline} and {treatment} share no {spec.task} documents")
    a, b = side_a.select(shared), side_b.select(shared)
    return paired_difference(
        spec.metric,
        a.data,
        b.data,
        a.item_document,
        b.item_document,
        n_resamples=n_resamples,
        seed=options.bootstrap_seed,
        n_bins=options.n_bins,
    )


@dataclass(frozen=True)
class FindingResult:
    """One claim's outcome: the raw verdict from its own 95% interval, and the verdict after correction.

    A study states many claims at once, so some raw verdicts are decisive by chance; ``p_holm`` and
    ``holm_verdict`` (filled by :func:`with_holm`) hold the family-wise view, next to the raw one.
    """

    spec: FindingSpec
    result: PairedDifference | None
    verdict: str  # supported | contradicted | inconclusive | not run
    note: str = ""
    p_value: float | None = None  # PairedDifference.p_value: where the interval becomes decisive
    p_holm: float | None = None  # Holm-adjusted over the claims that were checked
    holm_verdict: str = ""  # the verdict at the family-wise level; "" when not checked


def judge(spec: FindingSpec, result: PairedDifference) -> FindingResult:
    """The verdict of ``spec`` on ``result``, withheld when too few documents back the interval."""
    p = result.p_value(spec.expect, spec.margin) if result.differences is not None else None
    if result.n_documents < MIN_DOCUMENTS:
        note = (
            f"only {result.n_documents} documents; the interval needs at least {MIN_DOCUMENTS}: "
            f"raise {spec.task}'s limit"
        )
        return FindingResult(spec, result, "inconclusive", note, p_value=p)
    return FindingResult(spec, result, result.verdict(spec.expect, spec.margin), p_value=p)


def with_holm(results: list[FindingResult]) -> list[FindingResult]:
    """``results`` with Holm-adjusted p-values and verdicts over the family of claims that were checked.

    The family is every claim with a p-value (a claim that did not run is no test and is left out; one whose
    verdict is withheld for too few documents stays in, which only makes the others' correction stricter,
    and keeps its withheld verdict). ``expect: same`` claims are in the family with their equivalence (TOST)
    p-value, so "RLHF keeps calibration" needs the same family-wise evidence as "SFT hurts it". A claim holds
    after correction when its adjusted p-value is below ``1 - level`` (0.05 for 95% intervals); it then takes
    the decisive verdict its p-value is evidence for.
    """
    family = [i for i, item in enumerate(results) if item.p_value is not None and item.result is not None]
    adjusted = holm_adjust([results[i].p_value for i in family])
    out = list(results)
    for index, p_holm in zip(family, adjusted, strict=True):
        item = results[index]
        spec, result = item.spec, item.result
        if item.note or p_holm >= round(1.0 - result.level, 12):  # withheld, or not decisive family-wise
            verdict = "inconclusive"
        else:
            verdict = result.decision(spec.expect, spec.margin)
        out[index] = replace(item, p_holm=p_holm, holm_verdict=verdict)
    return out


def findings_markdown(results: list[FindingResult]) -> str:
    """One row per claim: what it expects, both values, the difference with its 95% interval and the raw
    verdict, then the claim's p-value, its Holm-adjusted p-value over all the claims checked, and the verdict
    after that correction (side by side, so a reader sees which verdicts survive ten claims at once)."""
    results = with_holm(results)
    family = sum(item.p_holm is not None for item in results)
    lines = [
        "| claim | task | metric | baseline | treatment | expected | baseline value | treatment value "
        f"| difference [95% CI] | documents | verdict | p | p (Holm, {family} claims) | verdict after Holm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
        holm = [
            "" if item.p_value is None else f"{item.p_value:.3f}",
            "" if item.p_holm is None else f"{item.p_holm:.3f}",
            item.holm_verdict,
        ]
        lines.append(
            f"| {s.claim} | {s.task} | {name} | {s.baseline} | {s.treatment} | {expected} | "
            f"{' | '.join(values)} | {verdict} | {' | '.join(holm)} |"
        )
    return "\n".join(lines) + "\n"
