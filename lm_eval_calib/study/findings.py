"""Check a study's claims ("SFT makes ECE higher on MMLU") on its own runs, with paired intervals.

Both runs are read back from their ``--log_samples`` files (:mod:`lm_eval_calib.records_io`, the reader the
report uses too) and paired by lm-eval's ``doc_id``: only documents scored for both models count, and a
document's items (one question, or the tokens of an article) are resampled together
(:mod:`lm_eval_calib.metrics.paired`). A generation task is read for the claim's ``estimator`` (and
``filter``). When a stage has a seed replicate (``replicate_of:``), the replicate's paired difference to its
twin on the same documents is the claim's seed spread, shown beside its difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lm_eval_calib.metrics import METRICS
from lm_eval_calib.metrics.paired import PairedDifference, holm_adjust, paired_difference
from lm_eval_calib.records_io import SamplesError, TaskRecords, read_folder_task
from lm_eval_calib.study.config import FindingSpec, StudyConfig

MIN_DOCUMENTS = 10
"""Below this many shared documents a percentile bootstrap has too few distinct resamples to trust its
interval (2 documents give 3), so the verdict is withheld ("inconclusive") whatever the interval says."""


class FindingInputError(ValueError):
    """A finding cannot be checked: a run is missing or its samples were not logged."""


def read_documents(
    folder: Path, task: str, estimator: str | None = None, filter_key: str | None = None
) -> TaskRecords:
    """The newest logged run of exactly ``task`` under ``folder``, with that run's calibration options (a
    generation task: the records of one confidence ``estimator`` under one lm-eval filter)."""
    try:
        return read_folder_task(folder, task, estimator=estimator, filter_key=filter_key)
    except SamplesError as exc:
        hint = " (give the claim estimator: <one of them>)" if "estimator=" in str(exc) else ""
        raise FindingInputError(f"{exc}{hint}") from exc


def check_finding(
    spec: FindingSpec, baseline: Path, treatment: Path, n_resamples: int = 1000
) -> PairedDifference:
    """The treatment-minus-baseline difference of ``spec.metric`` on the documents both runs scored.

    Bins and bootstrap seed are the runs' own (``--metadata '{"calibration": {...}}'``), so the values match
    the report and lm-eval's results; two runs with different options cannot be compared.
    """
    side_a, side_b = (
        read_documents(folder, spec.task, spec.estimator, spec.filter) for folder in (baseline, treatment)
    )
    return compare_records(spec, side_a, side_b, str(baseline), str(treatment), n_resamples)


def compare_records(
    spec: FindingSpec,
    side_a: TaskRecords,
    side_b: TaskRecords,
    name_a: str = "baseline",
    name_b: str = "treatment",
    n_resamples: int = 1000,
) -> PairedDifference:
    """``spec.metric`` of ``side_b`` minus that of ``side_a`` on their shared documents, with its paired
    document-bootstrap interval (the runs' own bins and bootstrap seed)."""
    options = side_a.options
    if (options.n_bins, options.bootstrap_seed) != (side_b.options.n_bins, side_b.options.bootstrap_seed):
        raise FindingInputError(
            f"{name_a} and {name_b} ran {spec.task} with different calibration options "
            f"({options} vs {side_b.options}); rerun one with the other's --metadata calibration options"
        )
    shared = sorted(set(side_a.doc_ids) & set(side_b.doc_ids), key=str)
    if not shared:
        raise FindingInputError(f"{name_a} and {name_b} share no {spec.task} documents")
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
class SeedSpread:
    """How far a stage moves when only its training seed changes: ``replicate`` minus ``twin`` (its stage
    with the original seed) on the claim's task, metric and documents; ``result`` None when it could not be
    computed (``note`` says why)."""

    twin: str
    replicate: str
    result: PairedDifference | None
    note: str = ""


def seed_pairs(config: StudyConfig, spec: FindingSpec) -> list[tuple[str, str]]:
    """``(twin, replicate)`` of every seed replicate of the claim's baseline or treatment (also when the
    claim names the replicate itself), each pair once, in file order."""
    pairs: list[tuple[str, str]] = []
    for side in (spec.baseline, spec.treatment):
        stage = config.train.get(side)
        twin = stage.replicate_of if stage is not None and stage.replicate_of else side
        for replicate in config.replicates_of(twin):
            if (twin, replicate) not in pairs:
                pairs.append((twin, replicate))
    return pairs


def compare_to_spread(difference: float, spreads: Sequence[float]) -> str:
    """Whether a claim's difference is larger (in size) than every seed-to-seed difference of its stages:
    ``exceeds``, ``within``, or "" with no spread. One replicate is one draw of the seed spread, so this is
    a reading aid beside the interval, not a test."""
    if not spreads:
        return ""
    largest = max(abs(s) for s in spreads)
    word = "exceeds" if abs(difference) > largest else "within"
    return f"{word} (size {abs(difference):.4f} vs {largest:.4f})"  # no "|": it is a table cell


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
    spreads: tuple[SeedSpread, ...] = field(default_factory=tuple)  # seed replicates of its stages


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
    seeds = any(item.spreads for item in results)  # the seed columns only in a study with replicates
    lines = [
        "| claim | task | metric | baseline | treatment | expected | baseline value | treatment value "
        f"| difference [95% CI] | documents | verdict | p | p (Holm, {family} claims) | verdict after Holm |"
        + (" seed spread [95% CI] | difference vs seed spread |" if seeds else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if seeds else ""),
    ]
    for item in results:
        s, r = item.spec, item.result
        name = METRICS[s.metric].display_name
        if s.estimator or s.filter:
            name += f" ({', '.join(part for part in (s.estimator, s.filter) if part)})"
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
        row = (
            f"| {s.claim} | {s.task} | {name} | {s.baseline} | {s.treatment} | {expected} | "
            f"{' | '.join(values)} | {verdict} | {' | '.join(holm)} |"
        )
        if seeds:
            row += f" {spread_cell(item.spreads)} | {spread_verdict(item)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def spread_cell(spreads: Sequence[SeedSpread]) -> str:
    """``replicate - twin: +0.0100 [-0.0050, +0.0230]`` per seed pair (``; ``-separated)."""
    parts = []
    for spread in spreads:
        r = spread.result
        value = (
            f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]"
            if r is not None
            else f"not run ({spread.note})"
        )
        parts.append(f"{spread.replicate} - {spread.twin}: {value}")
    return "; ".join(parts)


def spread_verdict(item: FindingResult) -> str:
    """The claim's difference against its seed spreads (:func:`compare_to_spread`); "" when either is
    missing."""
    if item.result is None:
        return ""
    return compare_to_spread(
        item.result.difference, [s.result.difference for s in item.spreads if s.result is not None]
    )
