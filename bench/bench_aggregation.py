"""Aggregation speed: every calibration metric and its bootstrap stderr on MMLU-sized and token-sized input.

Run by hand: ``python bench/bench_aggregation.py [--items 14042 1000000] [--resamples 1000]``. Prints one
Markdown table row per (items, metric); results go in the README. Synthetic, reproducible data (seed 0):
the speed of these estimators does not depend on what the numbers mean.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lm_eval_calib.metrics import METRICS, CalibrationData, bootstrap_stderr, compute_metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, nargs="+", default=[14_042])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    args = parser.parse_args()
    print("| items | metric | value (s) | bootstrap resamples | bootstrap (s) |")
    print("|---:|---|---:|---:|---:|")
    for n in args.items:
        rng = np.random.default_rng(0)
        confidence = rng.uniform(0.25, 1.0, n)
        data = CalibrationData.from_top_label(confidence, rng.random(n) < confidence)
        for key in args.metrics:
            start = time.perf_counter()
            compute_metric(key, data)
            value_s = time.perf_counter() - start
            resamples = min(args.resamples, 100) if key == "smece" else args.resamples
            start = time.perf_counter()
            bootstrap_stderr(key, data, n_resamples=resamples)
            print(f"| {n:,} | {key} | {value_s:.4f} | {resamples} | {time.perf_counter() - start:.3f} |")


if __name__ == "__main__":
    main()
