"""Aggregation speed: every calibration metric and its bootstrap stderr on MMLU-sized and token-sized input.

Run by hand: ``python bench/bench_aggregation.py [--items 14042 1000000] [--resamples 1000] [--extended]``.
Prints one Markdown table row per (items, metric) and a total per item count; results go in the README. CPU
seconds are printed beside wall seconds because the wall clock of a shared machine includes other jobs' time.
``--extended`` adds every metric of issue 25 on the same item counts (4-option documents), each timed against
ECE's value + stderr on the same documents (P4 goal: within 3x): each recalibration map cross-fitted (5 folds)
with its ECE, Brier and NLL after and their stderrs (:func:`after_stderrs`, one shared sort and draw), the
calibration/refinement decompositions, LAC and APS conformal sets cross-fitted with the stderrs of their
coverage and set size, PRR with its stderr, and selective accuracy.
Synthetic, reproducible data (seed 0): the speed of these estimators does not depend on what the numbers mean.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lm_eval_calib.metrics import (
    METRICS,
    CalibrationData,
    OptionScores,
    TopLabel,
    bootstrap_stderr,
    calibration_refinement,
    compute_metric,
    conformal_cross_fitted,
    cross_fitted_decompositions,
    recalibrate_cross_fitted,
    selective_accuracies,
)
from lm_eval_calib.metrics.recalibration import METHODS, STDERR_KEYS, TOP_LABEL_METHODS, after_stderrs


def _timed(label: str, n: int, resamples: int, work, reference: float | None = None) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    ratio = f" {wall / reference:.2f}x |" if reference else ""
    print(f"| {n:,} | {label} | | {resamples} | {wall:.3f} | {cpu:.3f} |{ratio}")
    return wall, cpu


def extended(n: int, resamples: int) -> None:
    """Every metric of issue 25 on ``n`` synthetic 4-option documents, each against ECE + stderr of the same
    documents (the last column: wall-time ratio, the P4 goal is <= 3x)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, 4)) * 2.0
    p = np.exp(logits / 1.7)
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    scores = OptionScores.build(logits, targets)
    data = CalibrationData.from_option_logprobs(logits, targets)
    top = TopLabel(data.confidence, data.correct)
    print("| items | analysis | | bootstrap resamples | wall (s) | CPU (s) | vs ECE + stderr |")
    print("|---:|---|---|---:|---:|---:|---:|")

    def ece() -> None:
        compute_metric("ece", data)
        bootstrap_stderr("ece", data, n_resamples=resamples)

    reference, _ = _timed("ece value + stderr (reference)", n, resamples, ece)
    _timed("ece value + stderr (again: the noise of the reference)", n, resamples, ece, reference)
    fitted = {}
    for method in METHODS:

        def recalibrate(method: str = method) -> None:
            result = recalibrate_cross_fitted(method, top if method in TOP_LABEL_METHODS else scores)
            for key in STDERR_KEYS:
                compute_metric(key, result.after)
            after_stderrs(result.after, n_resamples=resamples, top_label=method in TOP_LABEL_METHODS)
            fitted[method] = result

        _timed(
            f"{method}: 5-fold cross-fit, ECE/Brier/NLL after + 3 stderrs",
            n,
            resamples,
            recalibrate,
            reference,
        )

    def decompose() -> None:  # as the report does it: from the maps it has already cross-fitted
        for kind in (TOP_LABEL_METHODS, [m for m in METHODS if m not in TOP_LABEL_METHODS]):
            for loss in ("brier", "nll"):
                calibration_refinement([fitted[m] for m in kind], loss)

    _timed("calibration/refinement of the 5 maps above (the report's way)", n, 0, decompose, reference)
    _timed(
        "calibration/refinement from scratch (5 maps cross-fitted)",
        n,
        0,
        lambda: cross_fitted_decompositions(top, scores),
        reference,
    )
    for score in ("lac", "aps"):

        def conformal(score: str = score) -> None:
            conformal_cross_fitted(scores, score).summary(n_resamples=resamples)

        _timed(
            f"conformal {score.upper()}: 5-fold cross-fit, coverage + size + 2 stderrs",
            n,
            resamples,
            conformal,
            reference,
        )

    def prr() -> None:
        compute_metric("prr", data)
        bootstrap_stderr("prr", data, n_resamples=resamples)

    _timed("prr value + stderr", n, resamples, prr, reference)
    _timed(
        "selective accuracy at 0.5, 0.8, 0.9, 1.0",
        n,
        0,
        lambda: selective_accuracies(data.confidence, data.correct),
        reference,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, nargs="+", default=[14_042])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    parser.add_argument("--extended", action="store_true", help="also time the post-hoc analyses")
    args = parser.parse_args()
    print("| items | metric | value (s) | bootstrap resamples | bootstrap (s) | bootstrap CPU (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in args.items:
        total_wall = total_cpu = 0.0
        rng = np.random.default_rng(0)
        confidence = rng.uniform(0.25, 1.0, n)
        data = CalibrationData.from_top_label(confidence, rng.random(n) < confidence)
        for key in args.metrics:
            start = time.perf_counter()
            compute_metric(key, data)
            value_s = time.perf_counter() - start
            resamples = min(args.resamples, 100) if key == "smece" else args.resamples
            start, start_cpu = time.perf_counter(), time.process_time()
            bootstrap_stderr(key, data, n_resamples=resamples)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            total_wall, total_cpu = total_wall + value_s + wall, total_cpu + cpu
            print(f"| {n:,} | {key} | {value_s:.4f} | {resamples} | {wall:.3f} | {cpu:.3f} |")
        print(f"| {n:,} | **all (values + stderrs)** | | | {total_wall:.3f} | {total_cpu:.3f} |")
        if args.extended:
            extended(n, args.resamples)


if __name__ == "__main__":
    main()
