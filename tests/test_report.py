"""`lm-eval-calib report` on real lm_eval output folders (tiny random Llama, real MMLU data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_lm_eval
from PIL import Image

from lm_eval_calib.metrics import bin_statistics, compute_metric
from lm_eval_calib.report.figures import DPI, FIGSIZE
from lm_eval_calib.report.runs import load_run


@pytest.fixture(scope="module")
def runs(tiny_model_dir, data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    common = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32",
              "--device", "cpu", "--batch_size", "8",
              "--metadata", json.dumps({"data_dir": str(data_root)})]  # fmt: skip
    run_lm_eval([*common, "--tasks", "calib_mmlu_anatomy", "--limit", "30", "--num_fewshot", "0",
                 "--output_path", str(base / "logged"), "--log_samples"])  # fmt: skip
    run_lm_eval([*common, "--tasks", "calib_mmlu_virology", "--limit", "5", "--num_fewshot", "0",
                 "--output_path", str(base / "unlogged")])  # fmt: skip
    (base / "empty").mkdir()
    return base


def _report(*args: str):
    cli = Path(sys.executable).parent / "lm-eval-calib"
    return subprocess.run([str(cli), "report", *args], capture_output=True, text=True, timeout=300)


def test_report_numbers_equal_lm_eval_and_bad_folders_are_skipped(runs, tmp_path):
    out = tmp_path / "report"
    proc = _report(str(runs / "logged"), str(runs / "unlogged"), str(runs / "empty"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "no samples for calib_mmlu_virology; rerun lm_eval with --log_samples" in proc.stdout
    assert "no results_*.json found" in proc.stdout
    results = json.loads(next((runs / "logged").rglob("results_*.json")).read_text())["results"]
    (row,) = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert row["task"] == "calib_mmlu_anatomy" and int(row["n"]) == 30
    for key in ("acc", "ece", "brier", "nll", "auroc"):
        assert float(row[key]) == results["calib_mmlu_anatomy"][f"{key},none"]
        assert float(row[f"{key}_stderr"]) == results["calib_mmlu_anatomy"][f"{key}_stderr,none"]
    assert "| calib_mmlu_anatomy | 30 |" in (out / "leaderboard.md").read_text()
    for scheme in ("width", "mass"):
        png = next((out / "figures").glob(f"*calib_mmlu_anatomy__{scheme}.png"))
        with Image.open(png) as image:
            assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_diagram_bins_are_the_ece_bins(runs):
    (run,), _ = load_run(runs / "logged")
    stats = bin_statistics(run.data.confidence, run.data.correct, n_bins=10)
    filled = stats.count > 0
    assert stats.count.sum() == len(run.data) == 30
    gap = np.abs(stats.accuracy - stats.mean_confidence)[filled]
    assert float((stats.count[filled] * gap).sum() / 30) == pytest.approx(compute_metric("ece", run.data))


def test_nothing_reportable_is_an_error(runs, tmp_path):
    proc = _report(str(runs / "unlogged"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "no calibration task with logged samples" in proc.stderr
