"""The report's recalibration family, calibration/refinement, conformal sets and selective prediction,
post hoc from a run's records (built here as a TaskRun, as ``report.runs.load_run`` builds it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    CalibrationData,
    OptionScores,
    TopLabel,
    bootstrap_stderr,
    compute_metric,
    conformal_cross_fitted,
    conformal_held_out,
    prediction_rejection_ratio,
    recalibrate_cross_fitted,
    recalibrate_held_out,
    selective_accuracy,
)
from lm_eval_calib.report import html
from lm_eval_calib.report.build import _leaderboard_row
from lm_eval_calib.report.figures import risk_coverage_diagram
from lm_eval_calib.report.recalibrate import (
    STDERR_RESAMPLES,
    STDERR_SEED,
    conformal_fitted_on,
    conformal_markdown,
    conformal_rows,
    conformal_run,
    decomposition_markdown,
    decomposition_rows,
    recalibrate_run,
    recalibration_markdown,
    selective_markdown,
    selective_row,
)
from lm_eval_calib.report.runs import TaskRun

SUBJECTS = ["anatomy", "astronomy", "virology"]
MULTI = ("temperature", "option_histogram")


def _run(task: str, n: int, seed: int, label: str = "model") -> TaskRun:
    """A multiple-choice run of an over-confident model: 4 options, gold drawn from a flatter softmax."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * 2.5 - 8.0
    p = np.exp((logits - logits.max(axis=1, keepdims=True)) / 1.8)
    p /= p.sum(axis=1, keepdims=True)
    targets = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return TaskRun(
        label=label,
        task=task,
        results={},
        data=CalibrationData.from_option_logprobs(logits, targets),
        source=Path("records.jsonl"),
        n_shot=0,
        scores=OptionScores.build(logits, targets),
        item_record=np.arange(n),
        item_category=np.arange(n) % len(SUBJECTS),
        categories=list(SUBJECTS),
    )


def test_every_method_is_reported_with_stderrs_held_out_on_val():
    test, val = _run("calib_mmlu", 900, 0), _run("calib_mmlu_val", 600, 1)
    rows, notes = recalibrate_run(test, [test, val], n_folds=5, seed=0)
    methods = ["temperature", "option_histogram", "platt", "isotonic", "histogram"]
    assert [r.method for r in rows] == methods and not notes
    for row in rows:
        fit_on = val.scores if row.method in MULTI else TopLabel(val.data.confidence, val.data.correct)
        score_on = test.scores if row.method in MULTI else TopLabel(test.data.confidence, test.data.correct)
        expected = recalibrate_held_out(row.method, fit_on, score_on)
        summary = row.summary()
        assert summary["fitted_on"] == "calib_mmlu_val (600 items)"
        for key in ("ece", "brier", "nll"):
            assert summary[f"{key}_after"] == compute_metric(key, expected.after)
            assert summary[f"{key}_after_stderr"] == bootstrap_stderr(
                key, expected.after, STDERR_RESAMPLES, STDERR_SEED
            )
        assert summary["brier_after"] < summary["brier_before"]
    text = recalibration_markdown([r.summary() for r in rows])
    assert "| isotonic |" in text and "| histogram |" in text and " ± " in text and "Brier after" in text


def test_token_runs_get_the_top_label_maps_cross_fitted_by_document():
    run = _run("calib_clm", 600, 2)
    run = TaskRun(**{**run.__dict__, "scores": None, "item_record": np.arange(600) // 4})
    rows, _ = recalibrate_run(run, [run], n_folds=5, seed=3)
    assert [r.method for r in rows] == ["platt", "isotonic", "histogram"]
    top = TopLabel(run.data.confidence, run.data.correct)
    for row in rows:
        expected = recalibrate_cross_fitted(row.method, top, n_folds=5, seed=3, groups=run.item_record)
        np.testing.assert_array_equal(row.result.after.confidence, expected.after.confidence)
        assert row.fitted_on == "5-fold cross-fit over documents (seed 3)"


def test_decomposition_rows_split_each_kind_by_its_best_map():
    run = _run("calib_arc", 1500, 4)
    rows, _ = recalibrate_run(run, [run], n_folds=5, seed=0)
    found = {(r["kind"], r["loss"]): r for r in decomposition_rows(rows)}
    assert set(found) == {(k, loss) for k in ("multi-class", "top-label") for loss in ("brier", "nll")}
    for (kind, loss), r in found.items():
        candidates = [x.result for x in rows if (x.method in MULTI) == (kind == "multi-class")]
        best = min(float(getattr(c.after, loss).mean()) for c in candidates)
        assert r["refinement"] == pytest.approx(min(best, r["total"]))
        assert r["calibration"] + r["refinement"] == pytest.approx(r["total"])
        assert r["calibration"] > 0.0  # an over-confident model: recalibration helps
    assert found[("multi-class", "nll")]["total"] == pytest.approx(float(run.data.nll.mean()))
    assert "| calibration |" in decomposition_markdown(list(found.values()))


def test_conformal_sets_held_out_on_val_or_cross_fitted_with_the_worst_category():
    test, val = _run("calib_mmlu", 900, 5), _run("calib_mmlu_val", 600, 6)
    sets, notes = conformal_run(test, [test, val], n_folds=5, seed=1, alpha=0.1)
    assert [s.score for s in sets] == ["lac", "aps"] and not notes
    expected = conformal_held_out(val.scores, test.scores, "lac", 0.1, seed=1)
    np.testing.assert_array_equal(sets[0].members.values, expected.members.values)
    fitted_on = conformal_fitted_on(test, [test, val], sets)
    assert fitted_on == "calib_mmlu_val (600 documents)"
    rows = conformal_rows(test, sets, fitted_on)
    for row, result in zip(rows, sets, strict=True):
        assert row["coverage"] == result.coverage and row["set_size"] == result.mean_size
        per_subject = [result.covered[test.item_category == k].mean() for k in range(3)]
        assert row["worst_category"] == SUBJECTS[int(np.argmin(per_subject))]
        assert row["worst_category_coverage"] == pytest.approx(min(per_subject))
        assert 0.0 < row["coverage_stderr"] < 0.05
    assert "| LAC |" in conformal_markdown(rows) and "| APS |" in conformal_markdown(rows)

    alone, _ = conformal_run(test, [test], n_folds=5, seed=1)
    crossed = conformal_cross_fitted(test.scores, "aps", 0.1, 5, 1)
    np.testing.assert_array_equal(alone[1].members.values, crossed.members.values)
    assert conformal_fitted_on(test, [test], alone) == "5-fold cross-fit over documents"
    token_run = TaskRun(**{**test.__dict__, "scores": None})
    assert conformal_run(token_run, [token_run], 5, 1) == ([], [])


def test_selective_row_and_the_risk_coverage_figure(tmp_path):
    run = _run("calib_mmlu", 800, 7)
    row = selective_row(run)
    conf, correct = run.data.confidence, run.data.correct
    assert row["prr"] == prediction_rejection_ratio(conf, correct)
    assert row["prr_stderr"] == bootstrap_stderr("prr", run.data, STDERR_RESAMPLES, STDERR_SEED)
    assert row["sel_acc@0.8"] == selective_accuracy(conf, correct, 0.8)
    assert "| PRR |" in selective_markdown([row])
    paths = risk_coverage_diagram(run.data, "model · calib_mmlu", tmp_path / "risk")
    assert sorted(p.suffix for p in paths) == [".json", ".png", ".svg"] and all(
        p.stat().st_size for p in paths
    )
    numbers = json.loads((tmp_path / "risk.json").read_text())
    assert numbers["prr"] == row["prr"] and numbers["coverage"][-1] == 1.0
    k = np.rint(np.array(numbers["coverage"]) * 800).astype(int)
    order = np.argsort(-conf)
    expected = [1.0 - correct[order[:i]].mean() for i in k]
    np.testing.assert_allclose(numbers["model_risk"], expected, atol=1e-12)
    assert all(o <= m + 1e-12 for o, m in zip(numbers["oracle_risk"], numbers["model_risk"], strict=True))


def test_the_page_shows_the_new_sections_and_the_figure_beside_the_diagrams():
    test, val = _run("calib_mmlu", 300, 8), _run("calib_mmlu_val", 200, 9)
    recal, _ = recalibrate_run(test, [test, val], 5, 0)
    sets, _ = conformal_run(test, [test, val], 5, 0)
    page = html.PageContent(
        title="t",
        created="now",
        inputs=["runs"],
        leaderboard=[_leaderboard_row(test, (0.1, 0.2), recal)],
        recalibration=[r.summary() for r in recal],
        overlays={},
        diagrams=[html.Diagram("model", "calib_mmlu", {"width": "figures/w.png", "risk": "figures/r.png"})],
        breakdowns=[],
        decomposition=decomposition_rows(recal),
        conformal=conformal_rows(test, sets, conformal_fitted_on(test, [test, val], sets)),
        selective=[selective_row(test)],
    )
    text = html.render(page)
    assert "<h3>Conformal answer sets</h3>" in text and "<h3>Selective prediction</h3>" in text
    assert "Calibration and refinement" in text and "risk-coverage with oracle and random" in text


def test_a_run_of_one_class_gets_no_prr_and_no_warning():
    run = _run("calib_mmlu", 50, 10)
    everything_right = CalibrationData.from_top_label(run.data.confidence, np.ones(50))
    run = TaskRun(**{**run.__dict__, "data": everything_right})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = selective_row(run)
    assert np.isnan(row["prr"]) and row["sel_acc@0.5"] == 1.0
    assert "| – |" in selective_markdown([row])
