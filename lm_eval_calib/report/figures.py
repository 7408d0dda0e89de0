"""Reliability diagrams: per-bin accuracy against confidence, drawn from exactly the bins the ECE uses.

Every figure is written as PNG and SVG plus a JSON file with the numbers it shows (the metric core's
:class:`~lm_eval_calib.metrics.BinStats`), so a plot can be checked or redrawn without the records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lm_eval_calib.metrics import BinStats, CalibrationData, bin_statistics, compute_metric  # noqa: E402

FIGSIZE = (5.0, 5.0)
OVERLAY_FIGSIZE = (6.0, 6.0)
DPI = 100
SCHEMES = {"width": ("ece", "equal-width"), "mass": ("ece_em", "equal-mass")}
MARKERS = "osD^vP*Xh<>p"
plt.rcParams["svg.hashsalt"] = "lm-eval-calib"  # identical inputs give identical SVG files


@dataclass(frozen=True)
class Curve:
    """One model's binned reliability data in an overlay."""

    label: str
    stats: BinStats
    ece: float
    n: int


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def bins_json(stats: BinStats) -> list[dict]:
    """The per-bin numbers as JSON-able dicts (``null`` for an empty bin's mean confidence and accuracy)."""
    return [
        {
            "lower": _finite(lo),
            "upper": _finite(hi),
            "count": int(c),
            "mean_confidence": _finite(mc),
            "accuracy": _finite(acc),
        }
        for lo, hi, c, mc, acc in zip(
            stats.lower, stats.upper, stats.count, stats.mean_confidence, stats.accuracy, strict=True
        )
    ]


def reliability_figure(stats: BinStats, ece: float, n: int, title: str, scheme: str) -> Figure:
    """Bars of per-bin accuracy at each bin's confidence, the gap to the diagonal shaded, counts below."""
    n_bins = len(stats.count)
    filled = stats.count > 0
    centres = np.where(filled, stats.mean_confidence, np.nan)
    widths = (stats.upper - stats.lower) if scheme == "width" else np.full(n_bins, 1.0 / n_bins)
    lefts = stats.lower if scheme == "width" else centres - widths / 2
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=FIGSIZE, dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(
        lefts[filled],
        stats.accuracy[filled],
        width=widths[filled],
        align="edge",
        edgecolor="black",
        color="#4c72b0",
        label="accuracy",
        gid="accuracy",
    )
    gap_bottom = np.minimum(stats.accuracy, centres)[filled]
    top.bar(
        lefts[filled],
        np.abs(stats.accuracy - centres)[filled],
        bottom=gap_bottom,
        width=widths[filled],
        align="edge",
        color="#dd8452",
        alpha=0.5,
        label="gap to mean confidence",
        gid="gap",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_title(f"{title}\nECE {ece:.4f} ({SCHEMES[scheme][1]}, {n_bins} bins), n = {n}", fontsize=9)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=7)
    bottom.bar(
        lefts[filled], stats.count[filled], width=widths[filled], align="edge", color="grey", gid="count"
    )
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("items per bin")
    fig.tight_layout()
    return fig


def _save(fig: Figure, stem: Path, numbers: dict) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    for path in paths:
        fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    json_path = stem.with_name(stem.name + ".json")
    json_path.write_text(json.dumps(numbers, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [*paths, json_path]


def reliability_diagram(
    data: CalibrationData, title: str, stem: Path, n_bins: int = 10, scheme: str = "width"
) -> list[Path]:
    """Write ``stem``.png, .svg and .json (the bins drawn); returns their paths."""
    stats = bin_statistics(data.confidence, data.correct, n_bins=n_bins, scheme=scheme)
    ece = compute_metric(SCHEMES[scheme][0], data, n_bins=n_bins)
    fig = reliability_figure(stats, ece, len(data), title, scheme)
    numbers = {
        "title": title,
        "scheme": scheme,
        "n_bins": n_bins,
        "n": len(data),
        "ece": ece,
        "bins": bins_json(stats),
    }
    return _save(fig, stem, numbers)


def overlay_figure(curves: Sequence[Curve], title: str) -> Figure:
    """Every model's equal-width reliability curve in one plot, their confidence histograms below."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=OVERLAY_FIGSIZE, dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    colours = plt.get_cmap("tab10").colors
    for i, curve in enumerate(curves):
        stats, colour, marker = curve.stats, colours[i % len(colours)], MARKERS[i % len(MARKERS)]
        filled = stats.count > 0
        sizes = 12 + 120 * np.sqrt(stats.count[filled] / max(1, stats.count.max()))
        top.plot(
            stats.mean_confidence[filled],
            stats.accuracy[filled],
            "-",
            color=colour,
            linewidth=1.5,
            label=f"{curve.label} (ECE {curve.ece:.3f}, n={curve.n})",
            gid=f"curve-{i}",
        )
        top.scatter(
            stats.mean_confidence[filled],
            stats.accuracy[filled],
            s=sizes,
            color=colour,
            marker=marker,
            edgecolor="black",
            linewidth=0.5,
            zorder=3,
        )
        share = stats.count / max(1, stats.count.sum())
        edges = np.append(stats.lower, stats.upper[-1])
        bottom.stairs(share, edges, color=colour, linewidth=1.5)
    top.set_title(
        f"{title}\naccuracy per equal-width confidence bin (marker area ~ items in bin)", fontsize=9
    )
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=7)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share of items")
    fig.tight_layout()
    return fig


def overlay_diagram(curves: Sequence[Curve], title: str, stem: Path) -> list[Path]:
    """Write the overlay of ``curves`` as ``stem``.png, .svg and .json; returns their paths."""
    fig = overlay_figure(curves, title)
    numbers = {
        "title": title,
        "scheme": "width",
        "curves": [{"label": c.label, "n": c.n, "ece": c.ece, "bins": bins_json(c.stats)} for c in curves],
    }
    return _save(fig, stem, numbers)
