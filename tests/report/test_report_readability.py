"""A report a reader can trust at a glance (issue 29, item 7).

Degenerate confidences (a long answer's sequence probability near 1e-10, answers all wrong) are flagged in the
leaderboard and drawn as a note, not as an empty frame; legends and titles stay inside the figure and off the
data; the footer says which rows' numbers the report computed. Fast: hand-made lm-eval folders whose records
come from the real record builders (:func:`generation_record`, and lm-eval's own plain multiple-choice log
format), drawn and built with the report's own functions; no model.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from lm_eval_calib.metrics import bin_statistics, compute_metric, degenerate_confidence
from lm_eval_calib.records import generation_record, records_to_data
from lm_eval_calib.report.build import build_report
from lm_eval_calib.report.figures import Curve, overlay_figure, reliability_figure, smooth_reliability

STAMP = "2026-12-07T11-00-00.000000"
GEN_TASK = "calib_gsm8k"
FILTER = "strict-match"
PLAIN_TASK = "plain_quiz"
LONG_TITLE = "SmolLM2-135M-Instruct [comp] · calib_mmlu_high_school_european_history (acc_norm rule)"


def _write(folder: Path, results: dict, task: str, samples: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"results_{STAMP}.json").write_text(json.dumps(results))
    with (folder / f"samples_{task}_{STAMP}.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in samples)
    return folder


def _model_config(model: str) -> dict:
    return {"model": "hf", "model_args": f"pretrained={model}", "bootstrap_iters": 0}


def write_generation_run(folder: Path, model: str, confidences: dict[str, np.ndarray], correct: np.ndarray):
    """A generation calibration task's lm-eval folder: one generation record per answer and estimator (as
    ``calib_gsm8k`` logs them under ``ece_<estimator>``), results whose numbers those records reproduce."""
    samples = [
        {
            "doc_id": i,
            "filter": FILTER,
            "exact_match": float(correct[i]),
            **{
                f"ece_{estimator}": generation_record(
                    float(confidence[i]), bool(correct[i]), estimator=estimator, n_tokens=64
                )
                for estimator, confidence in confidences.items()
            },
        }
        for i in range(len(correct))
    ]
    numbers = {}
    for estimator in confidences:
        data = records_to_data([row[f"ece_{estimator}"] for row in samples])
        for key in ("ece", "brier", "nll", "auroc"):
            numbers[f"{key}_{estimator},{FILTER}"] = compute_metric(key, data, n_bins=10)
    results = {
        "results": {
            GEN_TASK: {"alias": GEN_TASK, f"exact_match,{FILTER}": float(np.mean(correct)), **numbers}
        },
        "configs": {GEN_TASK: {"task": GEN_TASK, "output_type": "generate_until"}},
        "versions": {GEN_TASK: 1.0},
        "n-shot": {GEN_TASK: 0},
        "config": _model_config(model),
    }
    return _write(folder / model, results, GEN_TASK, samples)


def write_plain_run(folder: Path, model: str, n: int = 40, seed: int = 0) -> Path:
    """A plain lm-eval multiple-choice task (no lm-eval-calib task): lm-eval's own per-option
    log-likelihoods, acc and acc_norm as lm-eval 0.4 logs them; the report computes every calibration
    metric."""
    rng = np.random.default_rng(seed)
    choices = [" A", " Bb", " Ccc", " Dddd"]
    samples, acc, acc_norm = [], [], []
    for i in range(n):
        logliks = rng.normal(-4.0, 1.5, size=4)
        gold = int(rng.integers(4))
        lengths = np.array([len(c) - 1 for c in choices])
        acc.append(float(np.argmax(logliks) == gold))
        acc_norm.append(float(np.argmax(logliks / lengths) == gold))
        samples.append(
            {
                "doc_id": i,
                "filter": "none",
                "target": str(gold),
                "arguments": {
                    f"gen_args_{k}": {"arg_0": "Q?\nAnswer:", "arg_1": c} for k, c in enumerate(choices)
                },
                "filtered_resps": [[str(v), "False"] for v in logliks],
                "acc": acc[-1],
                "acc_norm": acc_norm[-1],
                "metrics": ["acc", "acc_norm"],
            }
        )
    results = {
        "results": {
            PLAIN_TASK: {"alias": PLAIN_TASK, "acc,none": np.mean(acc), "acc_norm,none": np.mean(acc_norm)}
        },
        "configs": {
            PLAIN_TASK: {"task": PLAIN_TASK, "output_type": "multiple_choice", "target_delimiter": " "}
        },
        "versions": {PLAIN_TASK: 1.0},
        "n-shot": {PLAIN_TASK: 0},
        "config": _model_config(model),
    }
    return _write(folder / model, results, PLAIN_TASK, samples)


def _seqprob_like(n: int = 40, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What a small model gives on GSM8K: sequence probabilities of 64-token answers (1e-17 to 1e-9), their
    length-normalised version spread over (0.5, 0.8), a third of the answers right."""
    rng = np.random.default_rng(seed)
    logprob = rng.uniform(-40.0, -20.0, size=n)
    correct = (np.arange(n) % 3 == 0).astype(float)
    return {"seqprob": np.exp(logprob), "seqprob_mean": np.exp(logprob / 64)}, correct


def _rows(out: Path) -> dict[str, dict]:
    with (out / "leaderboard.csv").open() as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def _bbox(fig: Figure, artist) -> Bbox:
    return artist.get_window_extent(fig.canvas.get_renderer())


def _inside(inner: Bbox, outer: Bbox, slack: float = 1.0) -> bool:
    return (
        inner.x0 >= outer.x0 - slack
        and inner.y0 >= outer.y0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y1 <= outer.y1 + slack
    )


# -- degenerate confidences ---------------------------------------------------------------------------------


def test_degenerate_confidences_are_flagged_in_the_leaderboard_and_the_figure(tmp_path):
    confidences, correct = _seqprob_like()
    build_report([write_generation_run(tmp_path / "runs", "m", confidences, correct)], tmp_path / "out")
    rows = _rows(tmp_path / "out")
    flagged, fine = rows["m · seqprob"], rows["m · seqprob_mean"]
    assert flagged["degenerate"] == "tiny_confidence" and fine["degenerate"] == ""
    assert "below 1e-06" in flagged["caveats"] and "seqprob_mean" in flagged["caveats"]
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    line = next(ln for ln in board.splitlines() if ln.startswith("| m · seqprob "))  # the main table
    cells = [c.strip() for c in line.split("|")]
    assert "m · seqprob ⚠" in cells and any(c.startswith("0.") and c.endswith("(degenerate)") for c in cells)
    assert "⚠ m · seqprob / calib_gsm8k: all 40 confidences are below 1e-06" in board
    page = (tmp_path / "out" / "index.html").read_text()
    assert "m · seqprob ⚠" in page and "(degenerate)" in page
    # The diagram's data and picture: the note, not an empty frame.
    drawn = json.loads((tmp_path / "out" / "figures" / "m_seqprob__calib_gsm8k__width.json").read_text())
    assert [d["code"] for d in drawn["degenerate"]] == ["tiny_confidence"]
    assert (
        json.loads((tmp_path / "out" / "figures" / "m_seqprob_mean__calib_gsm8k__width.json").read_text())[
            "degenerate"
        ]
        == []
    )
    conf = confidences["seqprob"]
    stats = bin_statistics(conf, correct, n_bins=10)
    fig = reliability_figure(stats, 0.33, len(conf), "t", "width", conf, degenerate_confidence(conf, correct))
    top = fig.axes[0]
    (note,) = [t for t in top.texts if t.get_gid() == "degenerate-note"]
    assert "ECE is just the accuracy" in note.get_text().replace("\n", " ")
    assert not top.axison and not top.containers  # no bars, no frame
    fig.canvas.draw()
    assert _inside(_bbox(fig, note), fig.bbox)


def test_answers_all_wrong_give_an_auroc_cell_that_says_why(tmp_path):
    confidences, correct = _seqprob_like()
    correct = np.zeros_like(correct)
    build_report([write_generation_run(tmp_path / "runs", "m", confidences, correct)], tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert rows["m · seqprob_mean"]["degenerate"] == "single_class"
    assert rows["m · seqprob"]["degenerate"] == "tiny_confidence; single_class"
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    cells = [c.strip() for ln in board.splitlines() if ln.startswith("| m") for c in ln.split("|")]
    assert not [c for c in cells if c.lower().startswith("nan")]
    assert board.count("undefined (one class)") == 2
    assert "AUROC is undefined (NaN): all 40 answers are wrong" in board


# -- legends and titles inside the figure, off the data -----------------------------------------------------


def _long_label_curves() -> list[Curve]:
    rng = np.random.default_rng(1)
    curves = []
    for estimator in ("consistency", "ptrue", "seqprob", "seqprob_mean", "verbal"):
        conf = rng.uniform(0.05, 0.95, 200)
        corr = (rng.uniform(size=200) < conf).astype(float)
        stats = bin_statistics(conf, corr, n_bins=10)
        label = f"SmolLM2-135M-Instruct [run-2026-12-07] · {estimator}"
        curves.append(Curve(label, stats, 0.05, 200, smooth_reliability(conf, corr, n_resamples=20), conf))
    return curves


def test_the_overlay_legend_stays_inside_the_figure_and_off_the_plots():
    fig = overlay_figure(_long_label_curves(), "calib_gsm8k (strict-match)")
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        box = _bbox(fig, legend)
        assert _inside(box, fig.bbox), (box, fig.bbox)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), (box, ax.get_window_extent())
    texts = " ".join(t.get_text() for legend in legends for t in legend.get_texts())
    assert texts.count("SmolLM2-135M-Instruct") == 5  # every curve named


def _small_equal_mass() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 0.9, 30)
    return conf, (rng.uniform(size=30) < conf).astype(float)


def test_a_small_equal_mass_diagrams_legend_covers_no_bar_or_whisker():
    conf, corr = _small_equal_mass()
    stats = bin_statistics(conf, corr, n_bins=10, scheme="mass")
    fig = reliability_figure(stats, 0.1, 30, "t", "mass", conf)
    fig.canvas.draw()
    legend = fig.axes[0].get_legend() or fig.legends[0]
    box = _bbox(fig, legend)
    assert _inside(box, fig.bbox)
    assert not box.overlaps(fig.axes[0].get_window_extent())  # off the plot: nothing drawn under it


def _titles(fig: Figure) -> list:
    return [ax.title for ax in fig.axes if ax.get_title()]


@pytest.mark.parametrize("which", ["diagram", "overlay"])
def test_a_long_acc_norm_title_keeps_its_closing_parenthesis(which):
    if which == "diagram":
        conf, corr = _small_equal_mass()
        stats = bin_statistics(conf, corr, n_bins=10, scheme="mass")
        fig = reliability_figure(stats, 0.1, 30, LONG_TITLE, "mass", conf)
    else:
        fig = overlay_figure(_long_label_curves()[:2], LONG_TITLE)
    fig.canvas.draw()
    titles = _titles(fig)
    assert titles
    for title in titles:
        text = title.get_text()
        assert " ".join(text.split()).startswith(" ".join(LONG_TITLE.split())), text
        assert text.count("(") == text.count(")")
        assert _inside(_bbox(fig, title), fig.bbox), (_bbox(fig, title), fig.bbox)


# -- the footer says where each row's numbers come from -----------------------------------------------------


def test_the_footer_names_the_rows_the_report_computed(tmp_path):
    confidences, correct = _seqprob_like()
    gen = write_generation_run(tmp_path / "gen", "g", confidences, correct)
    plain = write_plain_run(tmp_path / "plain", "p")
    build_report([gen, plain], tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    reading = page[page.index('id="reading"') :]
    assert "the numbers lm-eval wrote for each run." not in reading  # no longer said of every row
    assert re.search(r"p / plain_quiz: [^.]*\bece\b", reading), reading
    assert re.search(r"p / plain_quiz \(acc_norm rule\): [^.]*\bece\b", reading), reading
    assert re.search(
        r"g · seqprob / calib_gsm8k: acc[;.]", reading
    )  # a calibration task's own numbers but accuracy
    rows = _rows(tmp_path / "out")
    assert (
        "ece" in rows["p"]["computed_by_report"].split(", ") and "acc" not in rows["p"]["computed_by_report"]
    )
    assert rows["g · seqprob"]["computed_by_report"] == "acc"
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    line = next(ln for ln in board.splitlines() if ln.startswith("| p |"))
    assert "†" in line  # the computed cells are marked
    assert math.isfinite(float(rows["p"]["ece"]))
