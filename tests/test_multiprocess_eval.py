"""hf-calib under several CPU processes (gloo): each rank scores its share, the gathered result is the same.

lm-eval's ``hf`` splits work across processes only when it counts GPUs; ``hf-calib`` takes the same
data-parallel path on CPU, so the gather and pooled-aggregation code runs here exactly as on a GPU cluster.
Launched as a user would: ``torchrun --nproc_per_node 2 -m lm_eval ...`` (``accelerate launch --multi_gpu
--num_processes 2 -m lm_eval ...`` reaches the same path).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE_ENV, REPO, read_run, run_lm_eval

TASKS = ["calib_mmlu_anatomy", "calib_facts", "calib_clm"]
LIMIT = 4
"""Documents per task (--limit is per task); even, so both ranks get a share."""


def _args(model_dir: Path, out: Path, data_root: Path) -> list[str]:
    return ["--model", "hf-calib", "--model_args", f"pretrained={model_dir}", "--tasks", ",".join(TASKS),
            "--num_fewshot", "0", "--device", "cpu", "--batch_size", "4", "--log_samples",
            "--output_path", str(out), "--metadata", json.dumps({"data_dir": str(data_root)}),
            "--limit", str(LIMIT)]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_model_dir, data_root, tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    run_lm_eval(_args(tiny_model_dir, single, data_root))
    multi = tmp_path_factory.mktemp("multi")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("ACCELERATE_USE_CPU", None)  # hf-calib must find the CPU route by itself
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "lm_eval",
         *_args(tiny_model_dir, multi, data_root)],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    return read_run(single), read_run(multi), proc.stderr


def test_each_rank_builds_and_scores_only_its_share(runs):
    _, _, log = runs
    for task in TASKS:
        assert f"Building contexts for {task} on rank 0" in log
        assert f"Building contexts for {task} on rank 1" in log
    # calib_mmlu_anatomy 4 x 4 options + calib_facts 4 x 10 options = 56 loglikelihood requests in all
    totals = {int(total) for total in re.findall(r"hf-calib loglikelihood:\s+0%.*?\| 0/(\d+)", log)}
    assert totals == {28}, totals


def test_gathered_results_and_records_equal_the_single_process_run(runs):
    (results_1, samples_1), (results_2, samples_2), _ = runs
    for task in TASKS:
        one, two = results_1["results"][task], results_2["results"][task]
        assert set(one) == set(two)
        for key, value in one.items():
            if isinstance(value, float):
                # float32 log-likelihoods of differently composed batches differ by ~1e-8
                assert two[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (task, key)
        by_doc_1 = {row["doc_id"]: row["ece"] for row in samples_1[task]}
        by_doc_2 = {row["doc_id"]: row["ece"] for row in samples_2[task]}
        assert sorted(by_doc_1) == sorted(by_doc_2)
        for doc_id, record in by_doc_1.items():
            other = by_doc_2[doc_id]
            assert other["correct"] == record["correct"] and other["category"] == record["category"]
            assert other["confidence"] == pytest.approx(record["confidence"], abs=1e-6)
