"""hf-calib under several CPU processes (gloo): each rank scores its share, the gathered result is the same.

lm-eval's ``hf`` splits work across processes only when it counts GPUs; ``hf-calib`` takes the same
data-parallel path on CPU, so the gather and pooled-aggregation code runs here exactly as on a GPU cluster.
Launched as a user would: ``torchrun --nproc_per_node 2 -m lm_eval ...`` (``accelerate launch --multi_gpu
--num_processes 2 -m lm_eval ...`` reaches the same path; ``accelerate launch --cpu --num_processes 2``
starts ONE process). Covered: this package's tasks and a wrapped built-in task (``calib_<task>``), the
report built from the gathered records, and a run whose rank 1 fails mid-evaluation.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import OFFLINE_ENV, REPO, read_run, run_lm_eval

TASKS = ["calib_mmlu_anatomy", "calib_facts", "calib_clm", "calib_mmlu_anatomy_continuation"]
LIMIT = 4
"""Documents per task (--limit is per task); even, so both ranks get a share."""


def _args(model_dir: Path, out: Path, data_root: Path) -> list[str]:
    args = ["--model", "hf-calib", "--model_args", f"pretrained={model_dir}", "--tasks", ",".join(TASKS)]
    args += ["--num_fewshot", "0", "--device", "cpu", "--batch_size", "4", "--log_samples"]
    args += ["--output_path", str(out), "--metadata", json.dumps({"data_dir": str(data_root)})]
    return [*args, "--limit", str(LIMIT)]


@pytest.fixture(scope="module")
def run_dirs(tiny_model_dir, data_root, tmp_path_factory) -> tuple[Path, Path, str]:
    """The same run in one process and in two (torchrun): both output folders and the two-process log."""
    single = tmp_path_factory.mktemp("single")
    run_lm_eval(_args(tiny_model_dir, single, data_root))
    multi = tmp_path_factory.mktemp("multi")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("ACCELERATE_USE_CPU", None)  # hf-calib must find the CPU route by itself
    launch = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "lm_eval"]
    command = [*launch, *_args(tiny_model_dir, multi, data_root)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO.parent)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return single, multi, proc.stderr


@pytest.fixture(scope="module")
def runs(run_dirs):
    single, multi, log = run_dirs
    return read_run(single), read_run(multi), log


def test_each_rank_builds_and_scores_only_its_share(runs):
    _, _, log = runs
    for task in TASKS:
        assert f"Building contexts for {task} on rank 0" in log
        assert f"Building contexts for {task} on rank 1" in log
    # calib_mmlu_anatomy 4 x 4 options + calib_facts 4 x 10 + the wrapped continuation task 4 x 4 = 72
    # loglikelihood requests in all: 36 per rank
    totals = {int(total) for total in re.findall(r"hf-calib loglikelihood:\s+0%.*?\| 0/(\d+)", log)}
    assert totals == {36}, totals


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


def test_report_from_the_two_process_samples_equals_the_single_process_one(run_dirs, tmp_path):
    single, multi, _ = run_dirs
    out = tmp_path / "report"
    report = Path(sys.executable).parent / "lm-eval-calib"
    labels = ["--label", f"{single}=one", "--label", f"{multi}=two"]
    command = [str(report), "report", str(single), str(multi), "--out", str(out), "--quiet", *labels]
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (out / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    board = {(row["model"], row["task"]): row for row in rows}
    tasks = {task for _, task in board}
    assert set(TASKS) <= tasks
    compared: set[str] = set()
    for task in tasks:
        one, two = board[("one", task)], board[("two", task)]
        for column, value in one.items():
            if column in ("model", "source"):  # the label and the results file it was read from
                continue
            try:
                number = float(value)
            except ValueError:
                assert two[column] == value, (task, column)  # intervals, flags, counts as text
                continue
            assert float(two[column]) == pytest.approx(number, abs=1e-6, nan_ok=True), (task, column)
            compared.add(column)
    assert {"acc", "ece", "brier", "nll"} <= compared


PROBE_YAML = """task: rank_failure_probe
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function probe.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

PROBE_PY = '''"""Test-only: scoring fails on rank 1 (as a crashed node would), after its requests ran."""
import os


def process_results(doc, results):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank_failure_probe: injected failure on rank 1 while scoring")
    best = max(range(len(results)), key=lambda i: results[i][0])
    return {"acc": float(best == doc["answer"])}
'''


def test_a_failure_on_one_rank_fails_the_run_and_writes_no_results(tiny_model_dir, data_root, tmp_path):
    """Rank 1 raises mid-evaluation (in a test-only task's scoring, after inference); rank 0 is left waiting
    at the gather: torchrun stops it, names the failed rank, and no results or samples file is written."""
    include = tmp_path / "probe"
    include.mkdir()
    docs = [{"question": f"Is {n} even?", "choices": ["yes", "no"], "answer": n % 2} for n in range(4)]
    (include / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (include / "probe.yaml").write_text(PROBE_YAML.format(data=include / "docs.jsonl"))
    (include / "probe.py").write_text(PROBE_PY)
    out = tmp_path / "out"
    args = _args(tiny_model_dir, out, data_root)
    args[args.index("--tasks") + 1] = "calib_mmlu_anatomy,rank_failure_probe"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("ACCELERATE_USE_CPU", None)
    launch = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lm_eval"]
    command = [*launch, *args, "--include_path", str(include)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO.parent)
    assert proc.returncode != 0
    assert "rank_failure_probe: injected failure on rank 1 while scoring" in proc.stderr
    assert "ChildFailedError" in proc.stderr and "rank      : 1" in proc.stderr  # torchrun's summary
    assert "Building contexts for calib_mmlu_anatomy on rank 0" in proc.stderr  # it did start
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == []  # no results_*.json, no samples_*.jsonl: nothing partial


SMOLLM2_TASKS = ["calib_mmlu_anatomy", "calib_mmlu_anatomy_continuation"]


@pytest.mark.integration
def test_smollm2_under_two_processes_equals_one(smollm2_model_args, data_root, tmp_path):
    """The real model (SmolLM2-135M-Instruct, float32), our task and a wrapped built-in one, --limit 8."""
    base = ["--model", "hf-calib", "--model_args", smollm2_model_args, "--tasks", ",".join(SMOLLM2_TASKS)]
    base += ["--num_fewshot", "0", "--device", "cpu", "--batch_size", "8", "--limit", "8", "--log_samples"]
    base += ["--metadata", json.dumps({"data_dir": str(data_root)})]
    run_lm_eval([*base, "--output_path", str(tmp_path / "one")])
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("ACCELERATE_USE_CPU", None)
    launch = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29521", "-m", "lm_eval"]
    command = [*launch, *base, "--output_path", str(tmp_path / "two")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO.parent)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for task in SMOLLM2_TASKS:
        assert f"Building contexts for {task} on rank 1" in proc.stderr
    (results_1, samples_1), (results_2, samples_2) = read_run(tmp_path / "one"), read_run(tmp_path / "two")
    for task in SMOLLM2_TASKS:
        one, two = results_1["results"][task], results_2["results"][task]
        assert set(one) == set(two)
        for key, value in one.items():
            if isinstance(value, float):
                assert two[key] == pytest.approx(value, abs=1e-5, nan_ok=True), (task, key)
        assert sorted(row["doc_id"] for row in samples_1[task]) == sorted(
            row["doc_id"] for row in samples_2[task]
        )
