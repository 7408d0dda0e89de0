"""Reliability diagrams: per-bin accuracy against confidence, drawn from exactly the bins the ECE uses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lm_eval_calib.metrics import CalibrationData, bin_statistics, compute_metric  # noqa: E402

FIGSIZE = (5.0, 5.0)
DPI = 100


def reliability_diagram(
    data: CalibrationData, title: str, stem: Path, n_bins: int = 10, scheme: str = "width"
) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; returns their paths."""
    stats = bin_statistics(data.confidence, data.correct, n_bins=n_bins, scheme=scheme)
    filled = stats.count > 0
    centres = np.where(filled, stats.mean_confidence, np.nan)
    widths = (stats.upper - stats.lower) if scheme == "width" else np.full(n_bins, 1.0 / n_bins)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=FIGSIZE, dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lefts = stats.lower if scheme == "width" else centres - widths / 2
    top.bar(lefts[filled], stats.accuracy[filled], width=widths[filled], align="edge", edgecolor="black",
            color="#4c72b0", label="accuracy")  # fmt: skip
    gap_bottom = np.minimum(stats.accuracy, centres)[filled]
    top.bar(lefts[filled], np.abs(stats.accuracy - centres)[filled], bottom=gap_bottom, width=widths[filled],
            align="edge", color="#dd8452", alpha=0.5, label="gap")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ece = compute_metric("ece" if scheme == "width" else "ece_em", data, n_bins=n_bins)
    top.set_title(f"{title}\nECE {ece:.4f} ({scheme}, {n_bins} bins), n = {len(data)}", fontsize=9)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=7)
    bottom.bar(lefts[filled], stats.count[filled], width=widths[filled], align="edge", color="grey")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths
