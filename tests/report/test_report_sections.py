"""The report's recalibration family, conformal, selective-prediction and risk-coverage sections, built by
``build_report`` from a real lm_eval run (tiny random Llama, real MMLU test and val and WikiText) and checked
against the metric core run straight on the logged records, and against lm-eval's own results file: the
same records give the same numbers both ways."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import read_run, run_lm_eval
from PIL import Image

from lm_eval_calib.metrics import OptionScores, conformal_held_out, conformal_results
from lm_eval_calib.metrics.conformal import DEFAULT_ALPHA, SCORES
from lm_eval_calib.report.build import MARKER, REPORT_FILES, build_report

SAMPLES = {
    "calib_mmlu": [*range(30), *range(100, 130)],  # 30 abstract_algebra, 30 anatomy questions
    "calib_mmlu_val": list(range(60)),
    "calib_clm": [0, 1],  # token-level: two WikiText articles
}


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sections-run")
    args = ["--model", "hf-calib", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--device", "cpu", "--batch_size", "8", "--num_fewshot", "0"]
    args += ["--metadata", json.dumps({"data_dir": str(data_root)})]
    args += ["--tasks", ",".join(SAMPLES), "--samples", json.dumps(SAMPLES)]
    run_lm_eval([*args, "--output_path", str(out), "--log_samples"])
    return out


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The report folder and its runs by task."""
    out = tmp_path_factory.mktemp("sections-report") / "report"
    runs = build_report([run_dir], out, log=lambda message: None)
    return out, {run.task: run for run in runs}


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _scores(samples: list[dict]) -> OptionScores:
    return OptionScores.build([s["ece"]["loglik"] for s in samples], [s["ece"]["target"] for s in samples])


def test_conformal_table_is_the_metric_core_on_the_logged_records(report, run_dir):
    out, runs = report
    rows = {(r["task"], r["score"]): r for r in _rows(out / "conformal.csv")}
    assert {task for task, _ in rows} == {runs["calib_mmlu"].group, runs["calib_mmlu_val"].group}  # no clm
    _, samples = read_run(run_dir)
    # The val run has no held-out partner: cross-fitted, exactly what a task reports from its records.
    val = samples["calib_mmlu_val"]
    numbers, _ = conformal_results([s["ece"]["loglik"] for s in val], [s["ece"]["target"] for s in val])
    for score in SCORES:
        row = rows[(runs["calib_mmlu_val"].group, score)]
        assert row["fitted_on"] == "5-fold cross-fit over documents"
        for quantity in ("coverage", "set_size"):
            key = f"conformal_{quantity}_{score}"
            assert float(row[quantity]) == numbers[key]
            assert float(row[f"{quantity}_stderr"]) == numbers[key + "_stderr"]
    # MMLU test: calibrated on the val run of the same model, scored on the test documents.
    test = samples["calib_mmlu"]
    for score in SCORES:
        expected = conformal_held_out(_scores(val), _scores(test), score, DEFAULT_ALPHA, seed=0)
        row = rows[(runs["calib_mmlu"].group, score)]
        assert row["fitted_on"] == "calib_mmlu_val (60 documents)" and int(row["n_scored"]) == 60
        assert float(row["coverage"]) == expected.coverage
        assert float(row["set_size"]) == expected.mean_size
        assert row["worst_category"] in {"abstract_algebra", "anatomy"}
    # Each document's set, in the samples file's order: the cross-fitted sets conformal_results gives.
    _, val_sets = conformal_results([s["ece"]["loglik"] for s in val], [s["ece"]["target"] for s in val])
    lines = [json.loads(line) for line in (out / "conformal_sets.jsonl").read_text().splitlines()]
    for score in SCORES:
        got = [x for x in lines if x["task"] == runs["calib_mmlu_val"].group and x["score"] == score]
        assert [x["record"] for x in got] == list(range(len(val)))
        assert [x["doc_id"] for x in got] == [s["doc_id"] for s in val]
        assert [x["set"] for x in got] == val_sets[score]
        covered = [s["ece"]["target"] in x["set"] for s, x in zip(val, got, strict=True)]
        assert [x["covered"] for x in got] == covered
    text = (out / "conformal.md").read_text()
    assert "| LAC |" in text and "| APS |" in text
    assert "<h3>Conformal answer sets</h3>" in (out / "index.html").read_text()


def test_prr_in_the_selective_table_is_lm_evals_prr(report, run_dir):
    out, runs = report
    results, _ = read_run(run_dir)
    rows = {r["task"]: r for r in _rows(out / "selective.csv")}
    assert set(rows) == {run.group for run in runs.values()}
    for task, run in runs.items():
        reported = results["results"][task]["prr,none"]
        assert math.isfinite(reported)
        assert float(rows[run.group]["prr"]) == pytest.approx(reported, abs=1e-9), task
        aurc = results["results"][task]["aurc,none"]
        assert float(rows[run.group]["aurc"]) == pytest.approx(aurc, abs=1e-9), task
        assert 0.0 < float(rows[run.group]["prr_stderr"]) < 1.0
    assert "| PRR |" in (out / "selective.md").read_text()
    assert "<h3>Selective prediction</h3>" in (out / "index.html").read_text()


def test_risk_coverage_figures_are_drawn_and_shown(report):
    out, runs = report
    page = (out / "index.html").read_text()
    listed = json.loads((out / MARKER).read_text())["files"]
    for run in runs.values():
        (png,) = (out / "figures").glob(f"*__{run.group}__risk.png")
        with Image.open(png) as image:
            image.verify()
        assert f'src="figures/{png.name}"' in page
        numbers = json.loads(png.with_suffix(".json").read_text())
        assert numbers["n"] == len(run.data) and numbers["coverage"][-1] == 1.0
        assert {f"figures/{png.stem}{suffix}" for suffix in (".png", ".svg", ".json")} <= set(listed)
    assert set(REPORT_FILES) <= set(listed)  # conformal, selective, decomposition tables in the manifest


def test_every_run_gets_isotonic_and_histogram_with_stderrs_and_a_decomposition(report):
    out, runs = report
    recal = _rows(out / "recalibration.csv")
    for run in runs.values():
        methods = {r["method"]: r for r in recal if r["task"] == run.group}
        expected = {"platt", "isotonic", "histogram"}
        if run.scores is not None:
            expected |= {"temperature", "option_histogram"}
        assert set(methods) == expected, run.task
        for method in ("isotonic", "histogram"):
            for key in ("ece", "brier", "nll"):
                stderr = float(methods[method][f"{key}_after_stderr"])
                assert np.isfinite(stderr) and stderr > 0.0, (run.task, method, key)
    text = (out / "recalibration.md").read_text()
    assert "| isotonic |" in text and "| histogram |" in text and " ± " in text
    decomposition = _rows(out / "decomposition.csv")
    for row in decomposition:
        total, calibration, refinement = (float(row[k]) for k in ("total", "calibration", "refinement"))
        assert calibration >= 0.0 and calibration + refinement == pytest.approx(total)
    kinds = {(r["task"], r["kind"]) for r in decomposition}
    assert (runs["calib_mmlu"].group, "multi-class") in kinds
    assert (runs["calib_clm"].group, "top-label") in kinds
    assert "Calibration and refinement" in (out / "index.html").read_text()
