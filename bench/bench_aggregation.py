"""Aggregation speed: every calibration metric and its bootstrap stderr on MMLU-sized and token-sized input.

Run by hand: ``python bench/bench_aggregation.py [--items 14042 1000000] [--resamples 1000]``. Prints one
Markdown table row per (items, metric) and a total per item count; results go in the README. CPU seconds are
printed beside wall seconds because the wall clock of a shared machine includes other jobs' time.
Synthetic, reproducible data (seed 0): the speed of these estimators does not depend on what the numbers mean.
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


if __name__ == "__main__":
    main()
