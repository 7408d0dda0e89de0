"""Conformal coverage and set size per category in the report's breakdown (issue 25, item 3).

Split-conformal coverage holds on average over documents, not per category; the breakdown shows each
category's coverage and mean set size with bootstrap stderrs and flags a category whose coverage is more
than two stderrs below 1 - alpha. Checked on a real run's records (calib_mmlu over two subjects) against
the report's own per-document sets, and on a run built so that one category is badly under-covered.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import run_lm_eval

from lm_eval_calib.metrics import CalibrationData, OptionScores, conformal_cross_fitted
from lm_eval_calib.report.breakdown import breakdown_rows, to_markdown
from lm_eval_calib.report.build import build_report
from lm_eval_calib.report.runs import TaskRun

MMLU = [*range(40), *range(100, 140)]  # 40 abstract_algebra, 40 anatomy questions


def test_a_real_run_shows_coverage_per_category_from_the_reports_sets(tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "run"
    args = ["--model", "hf-calib", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--device", "cpu", "--batch_size", "8", "--num_fewshot", "0"]
    args += ["--metadata", json.dumps({"data_dir": str(data_root)})]
    args += ["--tasks", "calib_mmlu", "--samples", json.dumps({"calib_mmlu": MMLU})]
    run_lm_eval([*args, "--output_path", str(run), "--log_samples"])
    out = tmp_path / "report"
    build_report([run], out, log=lambda message: None)
    with (out / "breakdown.csv").open() as handle:
        rows = {row["category"]: row for row in csv.DictReader(handle) if row["task"] == "calib_mmlu"}
    assert set(rows) == {"abstract_algebra", "anatomy"}
    sets = [json.loads(line) for line in (out / "conformal_sets.jsonl").read_text().splitlines()]
    category_of = {}
    (samples,) = run.rglob("samples_calib_mmlu_*.jsonl")
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        category_of[record["doc_id"]] = record["ece"]["category"]
    for score in ("lac", "aps"):
        for category, row in rows.items():
            mine = [s for s in sets if s["score"] == score and category_of[s["doc_id"]] == category]
            assert int(row["n"]) == len(mine) == 40
            coverage = np.mean([s["covered"] for s in mine])
            size = np.mean([len(s["set"]) for s in mine])
            assert float(row[f"coverage_{score}"]) == pytest.approx(coverage, abs=1e-12)
            assert float(row[f"set_size_{score}"]) == pytest.approx(size, abs=1e-12)
            stderr = float(row[f"coverage_{score}_stderr"])
            if 0.0 < coverage < 1.0:  # the bootstrap of a mean of 0/1 values: near the binomial stderr
                assert stderr == pytest.approx(math.sqrt(coverage * (1 - coverage) / 40), rel=0.15)
            below = coverage < 0.9 - 2 * stderr
            assert row[f"coverage_{score}_below"] == str(below)
    text = (out / "breakdown.md").read_text()
    assert "coverage LAC" in text and "set size APS" in text and "target coverage 0.9" in text


def _category_run(n: int = 1000) -> TaskRun:
    """Two categories: in 'fine' (4 documents in 5) the gold option is drawn from the model's own softmax
    (calibrated), in 'hard' it is the least likely option, so sets calibrated on both miss it far more often
    than alpha there (and less often in 'fine': coverage holds on average only)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, 4)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    category = (np.arange(n) % 5 == 0).astype(np.int64)
    hard = category == 1
    targets[hard] = np.argmin(logits[hard], axis=1)
    return TaskRun(
        label="model",
        task="calib_mmlu",
        results={},
        data=CalibrationData.from_option_logprobs(logits, targets),
        source=Path("records.jsonl"),
        scores=OptionScores.build(logits, targets),
        item_record=np.arange(n),
        item_category=category,
        categories=["fine", "hard"],
        group="calib_mmlu",
    )


def test_a_category_far_below_the_target_is_flagged():
    run = _category_run()
    sets = [conformal_cross_fitted(run.scores, score, 0.1, 5, 0) for score in ("lac", "aps")]
    rows = {row["category"]: row for row in breakdown_rows(run, sets)}
    for score in ("lac", "aps"):
        assert rows["hard"][f"coverage_{score}"] < 0.9 - 2 * rows["hard"][f"coverage_{score}_stderr"]
        assert rows["hard"][f"coverage_{score}_below"] is True
        assert rows["fine"][f"coverage_{score}_below"] is False
        overall = sets[0 if score == "lac" else 1].coverage
        assert rows["hard"][f"coverage_{score}"] < overall < rows["fine"][f"coverage_{score}"]
    text = to_markdown([(run, list(rows.values()))])
    (hard_line,) = [line for line in text.splitlines() if line.startswith("| hard ")]
    assert hard_line.count("**!**") == 2


def test_without_sets_the_breakdown_is_as_before():
    run = _category_run(100)
    rows = breakdown_rows(run)
    assert all(not any(key.startswith("coverage_") for key in row) for row in rows)
    assert "coverage" not in to_markdown([(run, rows)])
