"""Aggregation speed: every calibration metric and its bootstrap stderr on MMLU-sized and token-sized input.

Run by hand: ``python bench/bench_aggregation.py [--items 14042 1000000] [--resamples 1000] [--extended]``.
Prints one Markdown table row per (items, metric) and a total per item count; results go in the README. CPU
seconds are printed beside wall seconds because the wall clock of a shared machine includes other jobs' time.
``--extended`` adds the post-hoc analyses of issue 25 on the same item counts (4-option documents): each
recalibration map cross-fitted (5 folds) with the stderrs of its ECE, Brier and NLL after, the
calibration/refinement decompositions, and LAC and APS conformal sets cross-fitted with the stderrs of their
coverage and set size.
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
    compute_metric,
    conformal_cross_fitted,
    cross_fitted_decompositions,
    recalibrate_cross_fitted,
)
from lm_eval_calib.metrics.recalibration import METHODS, TOP_LABEL_METHODS


def _timed(label: str, n: int, resamples: int, work) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"| {n:,} | {label} | | {resamples} | {wall:.3f} | {cpu:.3f} |")
    return wall, cpu


def extended(n: int, resamples: int) -> None:
    """Recalibration maps, decompositions and conformal sets on ``n`` synthetic 4-option documents."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, 4)) * 2.0
    p = np.exp(logits / 1.7)
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    scores = OptionScores.build(logits, targets)
    data = CalibrationData.from_option_logprobs(logits, targets)
    top = TopLabel(data.confidence, data.correct)
    for method in METHODS:

        def recalibrate(method: str = method) -> None:
            result = recalibrate_cross_fitted(method, top if method in TOP_LABEL_METHODS else scores)
            for key in ("ece", "brier", "nll"):
                bootstrap_stderr(key, result.after, n_resamples=resamples)

        _timed(f"{method} (5-fold cross-fit + 3 stderrs)", n, resamples, recalibrate)
    _timed(
        "calibration/refinement (5 maps cross-fitted)", n, 0, lambda: cross_fitted_decompositions(top, scores)
    )
    for score in ("lac", "aps"):

        def conformal(score: str = score) -> None:
            conformal_cross_fitted(scores, score).summary(n_resamples=resamples)

        _timed(f"conformal {score.upper()} (5-fold cross-fit + 2 stderrs)", n, resamples, conformal)


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
