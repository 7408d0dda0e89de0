"""The report's pictures say what the bins say, and no more (issue 17).

Fast: synthetic records with the shapes that broke the old pictures (tied confidences, one lonely item in
a bin), drawn with the report's own functions; no model and no lm_eval run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import relplot
from relplot.kernels import ReflectedGaussianKernel
from scipy.stats import binomtest

from lm_eval_calib.metrics import CalibrationData, bin_statistics
from lm_eval_calib.report.figures import (
    MIN_BIN_COUNT,
    MIN_DRAW_WIDTH,
    Curve,
    overlay_diagram,
    overlay_figure,
    reliability_diagram,
    reliability_figure,
    smooth_reliability,
    wilson_interval,
)


def _records(seed: int = 0) -> CalibrationData:
    """A small model on MMLU: most answers tied at its lowest confidence (one equal-mass bin of zero width,
    empty bins after it), the rest spread above, one very sure answer alone in the top bin."""
    rng = np.random.default_rng(seed)
    tied = np.full(88, 0.34)
    spread = rng.uniform(0.36, 0.6, size=40)
    confidence = np.concatenate([tied, spread, [0.97]])
    correct = np.concatenate([rng.uniform(size=128) < 0.3, [True]]).astype(float)
    return CalibrationData.from_top_label(confidence, correct)


def _json(stem: Path) -> dict:
    return json.loads(stem.with_name(stem.name + ".json").read_text())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_mass_bars_cover_their_own_bins_and_never_overlap(tmp_path, seed):
    data = _records(seed)
    stem = tmp_path / "mass"
    reliability_diagram(data, "t", stem, n_bins=10, scheme="mass")
    bins = [b for b in _json(stem)["bins"] if b["count"]]
    assert sum(b["count"] for b in bins) == len(data)
    for b in bins:  # each bar covers exactly its items' range, widened only when narrower than the minimum
        assert 0.0 <= b["draw_x0"] <= b["lower"] <= b["upper"] <= b["draw_x1"] <= 1.0
        assert b["draw_x1"] - b["draw_x0"] > 0.0
        if b["upper"] - b["lower"] >= MIN_DRAW_WIDTH:
            assert (b["draw_x0"], b["draw_x1"]) == (b["lower"], b["upper"])
    for left, right in zip(bins, bins[1:], strict=False):
        assert left["draw_x1"] <= right["draw_x0"], (left, right)  # no overlap
    tied = next(b for b in bins if b["lower"] == b["upper"] == 0.34)  # 88 ties: one bin, still visible
    assert tied["count"] >= 88 and tied["draw_x1"] - tied["draw_x0"] > 0.0
    # The figure draws the bars over exactly those intervals.
    stats = bin_statistics(data.confidence, data.correct, n_bins=10, scheme="mass")
    fig = reliability_figure(stats, 0.0, len(data), "t", "mass", data.confidence)
    bars = fig.axes[0].containers[0]
    drawn = [x for bar in bars for x in (bar.get_x(), bar.get_x() + bar.get_width())]
    assert drawn == pytest.approx([x for b in bins for x in (b["draw_x0"], b["draw_x1"])])
    # Below: the confidence histogram (every item counted), not a flat per-bin count.
    histogram = _json(stem)["histogram"]
    assert sum(histogram["counts"]) == len(data) and len(histogram["edges"]) == 51


def test_equal_width_bars_are_drawn_over_their_edges(tmp_path):
    data = _records()
    reliability_diagram(data, "t", tmp_path / "width", n_bins=10, scheme="width")
    for k, b in enumerate(_json(tmp_path / "width")["bins"]):
        if b["count"]:
            assert (b["draw_x0"], b["draw_x1"]) == pytest.approx((k / 10, (k + 1) / 10))
        else:
            assert b["draw_x0"] is None and b["draw_x1"] is None


def test_sparse_bins_are_marked_carry_their_interval_and_no_line_runs_through_them(tmp_path):
    data = _records()
    reliability_diagram(data, "t", tmp_path / "width", scheme="width")
    bins = _json(tmp_path / "width")["bins"]
    lonely = bins[9]  # the one answer at 0.97, right: accuracy 1 from a single item
    assert lonely["count"] == 1 and lonely["accuracy"] == 1.0 and lonely["sparse"]
    assert (lonely["acc_low"], lonely["acc_high"]) == pytest.approx(
        binomtest(1, 1).proportion_ci(0.95, "wilson")
    )
    for b in bins:
        assert b["sparse"] == (0 < b["count"] < MIN_BIN_COUNT)
    stats = bin_statistics(data.confidence, data.correct, scheme="width")
    fig = reliability_figure(stats, 0.0, len(data), "t", "width", data.confidence)
    filled = [b for b in bins if b["count"]]
    for bar, b in zip(fig.axes[0].containers[0], filled, strict=True):  # sparse bars hatched and faint
        assert (bar.get_hatch() == "///") == b["sparse"]
    # Overlay: no line reaches the lonely bin (nor any bin under the minimum); it is a hollow marker.
    curve = Curve(
        "m", stats, 0.0, len(data), smooth_reliability(data.confidence, data.correct), data.confidence
    )
    overlay_diagram([curve], "t", tmp_path / "overlay")
    (shown,) = _json(tmp_path / "overlay")["curves"]
    assert [b["on_line"] for b in shown["bins"]] == [b["count"] >= MIN_BIN_COUNT for b in bins]
    fig = overlay_figure([curve], "t")
    (line,) = [ln for ln in fig.axes[1].lines if ln.get_gid() == "curve-0"]
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(y[9]) and not np.isnan(y[3])  # the dense bin (0.34, 88 items) is on the line
    assert np.isfinite(y).sum() == sum(b["count"] >= MIN_BIN_COUNT for b in bins)


def test_wilson_intervals_are_scipys():
    count = np.array([1, 1, 7, 40, 0])
    accuracy = np.array([1.0, 0.0, 3 / 7, 0.25, np.nan])
    interval = wilson_interval(count, accuracy)
    for k in range(4):
        ci = binomtest(round(count[k] * accuracy[k]), count[k]).proportion_ci(0.95, "wilson")
        assert interval[:, k] == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert np.isnan(interval[:, 4]).all()


def test_the_smooth_curve_is_relplots_with_a_band_and_only_where_there_are_items():
    rng = np.random.default_rng(3)
    confidence = rng.beta(5, 3, size=400) * 0.7 + 0.25
    correct = (rng.uniform(size=400) < confidence**2).astype(float)
    smooth = smooth_reliability(confidence, correct)
    smece, sigma = relplot.smECE(confidence, correct, return_width=True)
    assert (smooth.smece, smooth.sigma) == (pytest.approx(smece), pytest.approx(sigma))
    reference, _ = ReflectedGaussianKernel(sigma).smooth(confidence, correct, smooth.x)
    assert np.abs(reference - smooth.accuracy)[smooth.drawn].max() < 1e-3  # the curve behind smECE
    inside = smooth.drawn
    assert inside.any() and not inside[smooth.x < confidence.min()].any()
    assert not inside[smooth.x > confidence.max()].any()
    assert (smooth.lower[inside] <= smooth.accuracy[inside] + 0.02).all()
    assert (smooth.accuracy[inside] <= smooth.upper[inside] + 0.02).all()
    assert 0.05 < np.median((smooth.upper - smooth.lower)[inside]) < 0.4  # about +-2 stderr of ~100 items
    again = smooth_reliability(confidence, correct)  # seeded: the same picture every time
    np.testing.assert_array_equal(again.lower, smooth.lower)


def test_no_interval_when_the_run_turned_stderrs_off():
    """``calibration.max_bootstrap: 0`` means no stderr: the report's ECE interval is n/a, not a crash."""
    from pathlib import Path

    import numpy as np

    from lm_eval_calib.metrics import CalibrationData
    from lm_eval_calib.options import CalibrationOptions
    from lm_eval_calib.report.build import _interval
    from lm_eval_calib.report.runs import TaskRun

    confidence = np.array([0.3, 0.6, 0.9, 0.5])
    correct = np.array([0.0, 1.0, 1.0, 0.0])
    data = CalibrationData(
        confidence=confidence, correct=correct, brier=(confidence - correct) ** 2, nll=np.ones(4)
    )
    run = TaskRun(label="m", task="calib_x", results={}, data=data, source=Path("r.json"))
    run.options = CalibrationOptions(max_bootstrap=0)
    assert all(np.isnan(_interval(run)))
    run.options = CalibrationOptions(max_bootstrap=50)
    low, high = _interval(run)
    assert 0.0 <= low <= high <= 1.0
