"""Reliability diagrams: per-bin accuracy against confidence, drawn from exactly the bins the ECE uses;
and risk-coverage curves (:func:`risk_coverage_diagram`) for selective prediction.

Every figure is written as PNG and SVG plus a JSON file with the numbers it shows (the metric core's
:class:`~lm_eval_calib.metrics.BinStats`, and per bin the x-interval its bar is drawn over), so a plot can
be checked or redrawn without the records.

What the pictures are meant to say, and how they avoid saying more:

* Each bar covers its bin's own confidence interval and nothing else: the bin's edges (equal width), or
  the lowest to highest confidence in it (equal mass), widened to a minimum visible width only into the
  free space halfway to the neighbouring bins, so bars never overlap.
* A bin's accuracy carries its 95% Wilson interval; bins under :data:`MIN_BIN_COUNT` items are drawn
  hatched and faint (bars) or hollow (points), and no line passes through them: a single item makes an
  accuracy of 0 or 1 that says almost nothing.
* The overlay's default view is the smoothed reliability curve (the kernel regression behind smECE, at
  smECE's own bandwidth, via ``relplot``) with a 95% bootstrap band; the binned view stands beside it.
* The panel under a diagram shows where the confidences lie (a fine histogram),
  not a per-bin count that equal-mass binning makes flat by construction.
* Nothing covers the data and nothing runs past the edge: the legend sits under the panels (one for the
  whole overlay, naming each curve with its numbers), long titles wrap.
* Degenerate confidences (:func:`~lm_eval_calib.metrics.degenerate_confidence`) are said, not drawn as an
  empty frame: a diagram whose confidences collapsed (or whose bars would all be invisible) shows the note
  instead; answers all of one class add a title line; an overlay's legend names the condition.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import relplot  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lm_eval_calib.metrics import (  # noqa: E402
    BinStats,
    CalibrationData,
    Degeneracy,
    RiskCoverage,
    bin_statistics,
    compute_metric,
    degenerate_confidence,
    risk_coverage_points,
)

FIGSIZE = (5.0, 5.0)
OVERLAY_FIGSIZE = (11.0, 6.0)
DPI = 100
SCHEMES = {"width": ("ece", "equal-width"), "mass": ("ece_em", "equal-mass")}
MARKERS = "osD^vP*Xh<>p"
MIN_BIN_COUNT = 10
"""Bins with fewer items are "sparse": hatched bars, hollow points, no line through them (95% interval of
an accuracy from under 10 items is wider than +-0.25)."""
MIN_DRAW_WIDTH = 0.012
"""Narrowest bar drawn (confidence units): an equal-mass bin of tied confidences has no width of its own."""
HIST_BINS = 50
"""Equal-width bins of the confidence histogram under each diagram."""
WILSON_Z = 1.959963984540054
"""Two-sided 95% normal quantile of the per-bin Wilson intervals."""
SMOOTH_GRID = 1001
"""Grid the confidences are rounded to before smoothing (spacing 0.001, far below any smECE bandwidth)."""
SMOOTH_POINTS = 201
"""Points at which the smoothed curve is evaluated and drawn."""
BAND_RESAMPLES = 200
BAND_SEED = 0
MIN_SMOOTH_WEIGHT = 2.0
"""The smoothed curve is drawn only between the lowest and highest confidence observed, and only where
about this many items lie within its kernel (see :func:`smooth_reliability`); elsewhere it would be an
extrapolation from a distant item or two."""
TITLE_CHARS = {"diagram": 62, "overlay": 58}
"""Longest title line (characters) of a diagram (5 in wide, 8 pt) and of an overlay panel (9 pt, half of
11 in): longer titles wrap at spaces, so a long label and task (``... (acc_norm rule)``) stay inside
the figure."""
VISIBLE = 0.005
"""Bars (and gaps) lower than this are not visible in a diagram; one whose bars all are is drawn as a note."""
COLLAPSED = ("tiny_confidence", "saturated_confidence", "constant_confidence")
"""Degenerate conditions under which a reliability diagram holds one point: drawn as a note instead."""
SHORT_DEGENERACY = {
    "tiny_confidence": "confidences all < 1e-6",
    "saturated_confidence": "confidences all ~ 1",
    "constant_confidence": "one confidence value",
    "single_class": "answers all right or all wrong",
}
"""How an overlay's legend names a curve's degenerate conditions (the page's messages say more)."""
plt.rcParams["svg.hashsalt"] = "lm-eval-calib"  # identical inputs give identical SVG files


@dataclass(frozen=True)
class SmoothCurve:
    """Kernel-smoothed accuracy against confidence, with a pointwise 95% bootstrap band.

    ``drawn`` marks the points where enough items lie under the kernel for the curve to be shown.
    """

    sigma: float
    smece: float
    x: np.ndarray
    accuracy: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    drawn: np.ndarray


@dataclass(frozen=True)
class Curve:
    """One model's reliability data in an overlay: its bins and its smoothed curve."""

    label: str
    stats: BinStats
    ece: float
    n: int
    smooth: SmoothCurve | None = None
    confidence: np.ndarray | None = None
    """The items' confidences, for the histogram under the smoothed curves."""
    degenerate: tuple[str, ...] = ()
    """Codes of :func:`~lm_eval_calib.metrics.degenerate_confidence`: named in the legend."""


def wrap_title(title: str, width: int) -> str:
    """``title`` broken at spaces into lines of at most ``width`` characters (existing line breaks kept):
    matplotlib never wraps a title, so a long one runs past the figure's edge and loses its end."""
    return "\n".join(
        textwrap.fill(line, width, break_on_hyphens=False) if line else line for line in title.split("\n")
    )


def legend_below(fig: Figure, handles: list, labels: list[str], fontsize: float, ncols: int = 2) -> None:
    """One legend under the panels, never over the data, and as wide as the figure at most: the panels are
    laid out above it (the figure keeps its size). Columns drop to one, then labels wrap, until it fits."""
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width * 0.98
    for columns, wrap in [*((c, None) for c in range(min(ncols, len(labels)), 0, -1)), (1, 60), (1, 40)]:
        shown = labels if wrap is None else [textwrap.fill(label, wrap) for label in labels]
        legend = fig.legend(
            handles, shown, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=columns, fontsize=fontsize
        )
        box = legend.get_window_extent(renderer)
        if box.width <= width or (columns, wrap) == (1, 40):
            break
        legend.remove()
    fig.tight_layout(rect=(0.0, (box.height + 4) / fig.bbox.height, 1.0, 1.0))


def _degenerate_note(ax, flags: Sequence[Degeneracy]) -> None:
    """The top panel of a diagram whose confidences collapsed: what the numbers mean, in words, where an
    empty frame (one point at 0 or 1) would be."""
    ax.set_axis_off()
    text = "\n\n".join(textwrap.fill(f"\u26a0 {flag.message}", 68) for flag in flags)
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        fontsize=7.5,
        transform=ax.transAxes,
        wrap=False,
        gid="degenerate-note",
        bbox={"boxstyle": "round", "facecolor": "#fff8e1", "edgecolor": "#e0c060"},
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def wilson_interval(count: np.ndarray, accuracy: np.ndarray, z: float = WILSON_Z) -> np.ndarray:
    """95% Wilson score interval of each bin's accuracy, ``(2, n_bins)``; ``nan`` for an empty bin.

    Wilson rather than the normal interval: it stays inside [0, 1] and is not zero-width at 0 or 1, which is
    exactly where the accuracy of a bin of one or two items lands.
    """
    n = np.asarray(count, dtype=np.float64)
    p = np.nan_to_num(np.asarray(accuracy, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    empty = n <= 0
    return np.stack([np.where(empty, np.nan, low), np.where(empty, np.nan, high)])


def _whiskers(accuracy: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths below and above each accuracy (never negative from round-off at 0 or 1)."""
    return np.maximum(np.stack([accuracy - low, high - accuracy]), 0.0)


def draw_intervals(stats: BinStats, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """The x-interval each bin's bar is drawn over (``nan`` for an empty bin).

    Equal width: the bin's edges. Equal mass: the bin's own range [lowest, highest confidence], widened to
    :data:`MIN_DRAW_WIDTH` around its middle where narrower, but never past halfway to the neighbouring
    filled bins (ties are never split, so neighbouring ranges are disjoint), so bars never overlap and each
    always covers the confidences it holds.
    """
    if scheme == "width":
        filled = stats.count > 0
        return np.where(filled, stats.lower, np.nan), np.where(filled, stats.upper, np.nan)
    x0, x1 = np.full(len(stats.count), np.nan), np.full(len(stats.count), np.nan)
    filled = np.flatnonzero(stats.count > 0)
    lows, highs = stats.lower[filled], stats.upper[filled]
    left_limit = np.concatenate([[0.0], (highs[:-1] + lows[1:]) / 2])
    right_limit = np.concatenate([(highs[:-1] + lows[1:]) / 2, [1.0]])
    middle, half = (lows + highs) / 2, MIN_DRAW_WIDTH / 2
    x0[filled] = np.maximum(left_limit, np.minimum(lows, middle - half))
    x1[filled] = np.minimum(right_limit, np.maximum(highs, middle + half))
    return x0, x1


def bin_boundaries(stats: BinStats, scheme: str) -> np.ndarray:
    """Where one bin ends and the next begins: the inner edges (equal width), or the midpoints between
    neighbouring filled bins (equal mass; the edges of Kumar et al.'s ``calibration`` package)."""
    if scheme == "width":
        return stats.lower[1:].copy()
    filled = stats.count > 0
    lows, highs = stats.lower[filled], stats.upper[filled]
    return (highs[:-1] + lows[1:]) / 2


def confidence_histogram(confidence: np.ndarray, n_bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Edges and item counts of an equal-width histogram of the confidences (1.0 in the last bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, _ = np.histogram(np.asarray(confidence, dtype=np.float64), bins=edges)
    return edges, counts


def _reflected_kernel(x: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian kernel weights ``(len(x), len(grid))`` reflected at 0 and 1 (relplot's default kernel)."""
    scale = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
    k = np.zeros((x.shape[0], grid.shape[0]))
    for mirrored in (grid, -grid, 2.0 - grid):
        k += np.exp(-0.5 * ((x[:, None] - mirrored[None, :]) / sigma) ** 2)
    return k * scale


def smooth_reliability(
    confidence: np.ndarray,
    correct: np.ndarray,
    n_resamples: int = BAND_RESAMPLES,
    seed: int = BAND_SEED,
) -> SmoothCurve:
    """The smoothed reliability curve behind smECE and a seeded 95% bootstrap band around it.

    The bandwidth is the one ``relplot.smECE`` chooses (the fixed point of Blasiok & Nakkiran's smooth ECE),
    and the curve is the same reflected-Gaussian kernel regression of correctness on confidence. Items are
    first rounded to a 0.001 grid; the band redraws the items (a multinomial bootstrap of the per-cell counts
    of right and wrong answers, exact for the rounded data), so it costs the same for a million tokens as
    for a hundred questions.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    n = conf.shape[0]
    smece, sigma = relplot.smECE(conf, corr, return_width=True)
    sigma = max(float(sigma), 1e-3)
    grid = np.linspace(0.0, 1.0, SMOOTH_GRID)
    x = np.linspace(0.0, 1.0, SMOOTH_POINTS)
    kernel = _reflected_kernel(x, grid, sigma)
    # Main curve: each item split linearly between its two neighbouring grid points (as relplot does).
    position = conf * (SMOOTH_GRID - 1)
    cell = np.clip(position.astype(np.int64), 0, SMOOTH_GRID - 2)
    frac = position - cell
    total = np.bincount(cell, 1 - frac, SMOOTH_GRID) + np.bincount(cell + 1, frac, SMOOTH_GRID)
    right = np.bincount(cell, (1 - frac) * corr, SMOOTH_GRID) + np.bincount(
        cell + 1, frac * corr, SMOOTH_GRID
    )
    weight = kernel @ total
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(weight > 0, (kernel @ right) / weight, np.nan)
    # Band: resample items as (nearest grid cell, right or wrong) pairs.
    nearest = np.rint(position).astype(np.int64)
    cells = np.concatenate(
        [np.bincount(nearest, 1 - corr, SMOOTH_GRID), np.bincount(nearest, corr, SMOOTH_GRID)]
    )
    draws = np.random.default_rng(seed).multinomial(n, cells / cells.sum(), size=n_resamples)
    wrong_b, right_b = draws[:, :SMOOTH_GRID], draws[:, SMOOTH_GRID:]
    weight_b = kernel @ (wrong_b + right_b).T
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = np.where(weight_b > 0, (kernel @ right_b.T) / weight_b, np.nan)
    lower, upper = np.nanpercentile(curves, [2.5, 97.5], axis=1)
    # Items "under the kernel": the kernel weight at x divided by the weight one item gets at its own point.
    effective = weight / (1.0 / (math.sqrt(2.0 * math.pi) * sigma))
    drawn = (effective >= MIN_SMOOTH_WEIGHT) & (x >= conf.min()) & (x <= conf.max())
    return SmoothCurve(sigma, float(smece), x, accuracy, lower, upper, drawn)


def bins_json(stats: BinStats, x0: np.ndarray | None = None, x1: np.ndarray | None = None) -> list[dict]:
    """The per-bin numbers as JSON-able dicts (``null`` where a bin is empty).

    ``lower``/``upper`` are the data range (equal mass) or edges (equal width); ``draw_x0``/``draw_x1``
    the interval the bar is actually drawn over; ``acc_low``/``acc_high`` the 95% Wilson interval.
    """
    interval = wilson_interval(stats.count, stats.accuracy)
    nans = np.full(len(stats.count), np.nan)
    x0 = nans if x0 is None else x0
    x1 = nans if x1 is None else x1
    return [
        {
            "lower": _finite(stats.lower[k]),
            "upper": _finite(stats.upper[k]),
            "count": int(stats.count[k]),
            "mean_confidence": _finite(stats.mean_confidence[k]),
            "accuracy": _finite(stats.accuracy[k]),
            "acc_low": _finite(interval[0, k]),
            "acc_high": _finite(interval[1, k]),
            "sparse": bool(0 < stats.count[k] < MIN_BIN_COUNT),
            "draw_x0": _finite(x0[k]),
            "draw_x1": _finite(x1[k]),
        }
        for k in range(len(stats.count))
    ]


def reliability_figure(
    stats: BinStats,
    ece: float,
    n: int,
    title: str,
    scheme: str,
    confidence: np.ndarray,
    degenerate: Sequence[Degeneracy] = (),
) -> Figure:
    """Accuracy bars over each bin's interval, the gap to the mean confidence shaded, Wilson whiskers,
    sparse bins hatched; the confidence histogram with the bin boundaries below; the legend under both.

    ``degenerate`` (:func:`~lm_eval_calib.metrics.degenerate_confidence`): when the confidences collapsed
    (:data:`COLLAPSED`) the top panel is a note saying what the numbers mean; answers of one class only add
    a line to the title.
    """
    n_bins = len(stats.count)
    head = wrap_title(title, TITLE_CHARS["diagram"]) + (
        f"\nECE {ece:.4f} ({SCHEMES[scheme][1]}, {n_bins} bins), n = {n}; hatched: < {MIN_BIN_COUNT} items"
    )
    if any(flag.code == "single_class" for flag in degenerate):
        head += "\n\u26a0 answers all of one class: AUROC undefined, ECE only distance to 0 or 1"
    if degenerate and (any(flag.code in COLLAPSED for flag in degenerate) or _shows_nothing(stats)):
        return _collapsed_figure(head, degenerate, stats, scheme, confidence)
    filled = stats.count > 0
    x0, x1 = draw_intervals(stats, scheme)
    sparse = (stats.count < MIN_BIN_COUNT)[filled]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=FIGSIZE, dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lefts, widths, accuracy = x0[filled], (x1 - x0)[filled], stats.accuracy[filled]
    bars = top.bar(
        lefts,
        accuracy,
        width=widths,
        align="edge",
        edgecolor="black",
        linewidth=0.6,
        color="#4c72b0",
        label="accuracy",
        gid="accuracy",
    )
    means = stats.mean_confidence[filled]
    gaps = top.bar(
        lefts,
        np.abs(accuracy - means),
        bottom=np.minimum(accuracy, means),
        width=widths,
        align="edge",
        color="#dd8452",
        alpha=0.5,
        label="gap to mean confidence",
        gid="gap",
    )
    for bar, gap, thin in zip(bars, gaps, sparse, strict=True):
        if thin:
            bar.set_alpha(0.35)
            bar.set_hatch("///")
            gap.set_alpha(0.2)
    interval = wilson_interval(stats.count, stats.accuracy)[:, filled]
    top.errorbar(
        means,
        accuracy,
        yerr=_whiskers(accuracy, *interval),
        fmt="none",
        ecolor="black",
        elinewidth=0.8,
        capsize=2,
        label="95% interval",
        gid="interval",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_title(head, fontsize=8)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    handles, labels = top.get_legend_handles_labels()
    handles[labels.index("accuracy")] = Patch(facecolor="#4c72b0", edgecolor="black", linewidth=0.6)
    handles[labels.index("gap to mean confidence")] = Patch(facecolor="#dd8452", alpha=0.5)
    if sparse.any():  # the legend shows the dense style; the sparse one gets its own entry
        handles.append(Patch(facecolor="#4c72b0", alpha=0.35, hatch="///", edgecolor="black", linewidth=0.6))
        labels.append(f"accuracy, < {MIN_BIN_COUNT} items")
    _histogram_panel(bottom, stats, scheme, confidence)
    legend_below(fig, handles, labels, fontsize=7)
    return fig


def _shows_nothing(stats: BinStats) -> bool:
    """Every bar and every gap to the mean confidence is under a pixel high (answers all wrong at confidences
    near 0, e.g. the sequence probability of long answers just above the degenerate floor)."""
    filled = stats.count > 0
    return bool(np.nanmax(np.maximum(stats.accuracy[filled], stats.mean_confidence[filled])) < VISIBLE)


def _histogram_panel(bottom, stats: BinStats, scheme: str, confidence: np.ndarray) -> None:
    edges, counts = confidence_histogram(confidence)
    bottom.stairs(counts, edges, fill=True, color="grey", gid="histogram")
    for boundary in bin_boundaries(stats, scheme):
        bottom.axvline(boundary, color="#4c72b0", linewidth=0.6, linestyle=":")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel(f"items per 1/{HIST_BINS}", fontsize=8)


def _collapsed_figure(
    head: str, flags: Sequence[Degeneracy], stats: BinStats, scheme: str, confidence: np.ndarray
) -> Figure:
    """The diagram of collapsed confidences: the note where the bars would be, the histogram below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=FIGSIZE, dpi=DPI, gridspec_kw={"height_ratios": [3, 1]})
    top.set_title(head, fontsize=8)
    _degenerate_note(top, flags)
    _histogram_panel(bottom, stats, scheme, confidence)
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
    flags = degenerate_confidence(data.confidence, data.correct)
    fig = reliability_figure(stats, ece, len(data), title, scheme, data.confidence, flags)
    x0, x1 = draw_intervals(stats, scheme)
    edges, counts = confidence_histogram(data.confidence)
    numbers = {
        "title": title,
        "scheme": scheme,
        "n_bins": n_bins,
        "n": len(data),
        "ece": ece,
        "min_count": MIN_BIN_COUNT,
        "bins": bins_json(stats, x0, x1),
        "bin_boundaries": bin_boundaries(stats, scheme).tolist(),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "degenerate": [{"code": flag.code, "message": flag.message} for flag in flags],
    }
    return _save(fig, stem, numbers)


def dense_line(stats: BinStats) -> tuple[np.ndarray, np.ndarray]:
    """The binned overlay's line: x and y per bin, ``nan`` at every bin under :data:`MIN_BIN_COUNT` items
    (empty included), so a segment only joins two neighbouring bins that both hold enough items."""
    dense = stats.count >= MIN_BIN_COUNT
    return np.where(dense, stats.mean_confidence, np.nan), np.where(dense, stats.accuracy, np.nan)


def overlay_figure(curves: Sequence[Curve], title: str) -> Figure:
    """Left: every model's smoothed reliability curve with its 95% bootstrap band, the histograms of their
    confidences below. Right: the equal-width bins, marker area ~ items, Wilson whiskers, hollow markers and
    no line for sparse bins, the share of items per bin below. One legend under all four panels names each
    curve once with both its numbers (it would cover the curves inside a panel, and run past it with a
    generation task's several estimators)."""
    fig, axes = plt.subplots(
        2, 2, figsize=OVERLAY_FIGSIZE, dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    (smooth_ax, binned_ax), (hist_ax, share_ax) = axes
    colours = plt.get_cmap("tab10").colors
    for ax in (smooth_ax, binned_ax):
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    handles: list = [Line2D([], [], color="black", linestyle="--", linewidth=1)]
    labels = ["perfect calibration"]
    for i, curve in enumerate(curves):
        stats, colour, marker = curve.stats, colours[i % len(colours)], MARKERS[i % len(MARKERS)]
        smooth = curve.smooth
        if smooth is not None:
            y = np.where(smooth.drawn, smooth.accuracy, np.nan)
            smooth_ax.fill_between(
                smooth.x,
                smooth.lower,
                smooth.upper,
                where=smooth.drawn,
                color=colour,
                alpha=0.2,
                linewidth=0,
                gid=f"band-{i}",
            )
            smooth_ax.plot(
                smooth.x,
                y,
                "-",
                color=colour,
                linewidth=2,
                gid=f"smooth-{i}",
            )
        handles.append(Line2D([], [], color=colour, marker=marker, markeredgecolor="black", linewidth=2))
        labels.append(_curve_label(curve))
        if curve.confidence is not None:
            edges, counts = confidence_histogram(curve.confidence)
            hist_ax.stairs(counts / max(1, counts.sum()), edges, color=colour, linewidth=1.5)
        filled = stats.count > 0
        sparse = filled & (stats.count < MIN_BIN_COUNT)
        sizes = 12 + 120 * np.sqrt(stats.count / max(1, stats.count.max()))
        low, high = wilson_interval(stats.count, stats.accuracy)[:, filled]
        accuracy = stats.accuracy[filled]
        binned_ax.errorbar(
            stats.mean_confidence[filled],
            accuracy,
            yerr=_whiskers(accuracy, low, high),
            fmt="none",
            ecolor=colour,
            elinewidth=1,
            capsize=2,
            alpha=0.8,
        )
        line_x, line_y = dense_line(stats)
        binned_ax.plot(
            line_x,
            line_y,
            "-",
            color=colour,
            linewidth=1.5,
            gid=f"curve-{i}",
        )
        for mask, face in ((filled & ~sparse, colour), (sparse, "none")):
            binned_ax.scatter(
                stats.mean_confidence[mask],
                stats.accuracy[mask],
                s=sizes[mask],
                marker=marker,
                facecolors=face,
                edgecolors=colour if face == "none" else "black",
                linewidth=0.8,
                zorder=3,
            )
        share = stats.count / max(1, stats.count.sum())
        share_ax.stairs(share, np.append(stats.lower, stats.upper[-1]), color=colour, linewidth=1.5)
    # The task's name on a line of its own: long names (a wrapped task and its filter) fit the panel.
    shown = wrap_title(title, TITLE_CHARS["overlay"])
    smooth_ax.set_title(f"{shown}\nsmoothed reliability (smECE's kernel), 95% bootstrap band", fontsize=9)
    binned_ax.set_title(
        f"{shown}\nequal-width bins; marker area ~ items, whiskers 95% Wilson,\n"
        f"hollow and unjoined: < {MIN_BIN_COUNT} items",
        fontsize=9,
    )
    for ax in (smooth_ax, binned_ax):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
    hist_ax.set_ylabel(f"share of items per 1/{HIST_BINS}", fontsize=8)
    share_ax.set_ylabel("share of items per bin", fontsize=8)
    for ax in (hist_ax, share_ax):
        ax.set_xlabel("confidence")
    legend_below(fig, handles, labels, fontsize=7.5)
    return fig


def _curve_label(curve: Curve) -> str:
    """``model (n=...): smECE ..., bandwidth ...; ECE ...`` and, for degenerate confidences, what is wrong."""
    smooth = curve.smooth
    numbers = f"smECE {smooth.smece:.3f}, bandwidth {smooth.sigma:.2g}; " if smooth is not None else ""
    label = f"{curve.label} (n={curve.n}): {numbers}ECE {curve.ece:.3f}"
    if curve.degenerate:
        label += " \u26a0 " + ", ".join(SHORT_DEGENERACY.get(code, code) for code in curve.degenerate)
    return label


def _smooth_json(smooth: SmoothCurve | None) -> dict | None:
    if smooth is None:
        return None

    def masked(values: np.ndarray) -> list[float | None]:
        return [_finite(v) if shown else None for v, shown in zip(values, smooth.drawn, strict=True)]

    return {
        "sigma": smooth.sigma,
        "smece": smooth.smece,
        "x": smooth.x.tolist(),
        "accuracy": masked(smooth.accuracy),
        "lower": masked(smooth.lower),
        "upper": masked(smooth.upper),
    }


def overlay_diagram(curves: Sequence[Curve], title: str, stem: Path) -> list[Path]:
    """Write the overlay of ``curves`` as ``stem``.png, .svg and .json; returns their paths."""
    fig = overlay_figure(curves, title)
    numbers = {
        "title": title,
        "scheme": "width",
        "min_count": MIN_BIN_COUNT,
        "curves": [
            {
                "label": c.label,
                "n": c.n,
                "ece": c.ece,
                "degenerate": list(c.degenerate),
                "bins": [  # points, not bars: draw_x0 / draw_x1 stay null
                    {**b, "on_line": bool(b["count"] >= MIN_BIN_COUNT)} for b in bins_json(c.stats)
                ],
                "smooth": _smooth_json(c.smooth),
            }
            for c in curves
        ],
    }
    return _save(fig, stem, numbers)


def risk_coverage_figure(curve: RiskCoverage, title: str) -> Figure:
    """The model's risk-coverage curve between the oracle's (reject every wrong answer first) and a random
    ranking's (the error rate at every coverage); the area between model and random, over the area between
    oracle and random, is the PRR in the title."""
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    ax.fill_between(curve.coverage, curve.model, curve.random, color="#4c72b0", alpha=0.15, linewidth=0)
    ax.plot(curve.coverage, curve.random, color="#888888", linestyle=":", linewidth=1.2, label="random")
    ax.plot(curve.coverage, curve.oracle, color="black", linestyle="--", linewidth=1.0, label="oracle")
    ax.plot(curve.coverage, curve.model, color="#4c72b0", linewidth=1.6, label="model", gid="model")
    prr = "undefined (one class)" if not math.isfinite(curve.prr) else f"{curve.prr:.3f}"
    ax.set_title(
        wrap_title(title, TITLE_CHARS["diagram"]) + f"\nAURC {curve.aurc:.4f}, PRR {prr}, n = {curve.n}",
        fontsize=8,
    )
    ax.set_xlabel("coverage (share of items answered, most confident first)")
    ax.set_ylabel("risk (error rate of the answered items)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(np.nanmax([curve.model.max(), curve.random.max()])) * 1.05))
    handles, labels = ax.get_legend_handles_labels()
    legend_below(fig, handles, labels, fontsize=7, ncols=3)
    return fig


def risk_coverage_diagram(data: CalibrationData, title: str, stem: Path) -> list[Path]:
    """Write ``stem``.png, .svg and .json (the three curves' points); returns their paths."""
    curve = risk_coverage_points(data.confidence, data.correct)
    numbers = {
        "title": title,
        "n": curve.n,
        "aurc": curve.aurc,
        "prr": curve.prr if math.isfinite(curve.prr) else None,
        "coverage": curve.coverage.tolist(),
        "model_risk": curve.model.tolist(),
        "oracle_risk": curve.oracle.tolist(),
        "random_risk": curve.random.tolist(),
    }
    return _save(risk_coverage_figure(curve, title), stem, numbers)
