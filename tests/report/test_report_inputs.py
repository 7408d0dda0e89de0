"""The report over hand-made lm-eval folders (no model, seconds): what an earlier report's folder keeps
(issue 28, item 5) and the messages for damaged records and runs that are not comparable (item 6)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_eval_calib.metrics import CalibrationData, compute_metric
from lm_eval_calib.records import make_record
from lm_eval_calib.report.build import MARKER, build_report

STAMP = "2026-12-07T10-00-00.000000"
TASK = "calib_facts"


def write_run(
    folder: Path, model: str = "m", n: int = 60, n_bins: int = 10, seed: int = 0, edit=None
) -> Path:
    """An lm-eval ``--output_path`` folder for one calibration task: real option records (``make_record``)
    from random log-likelihoods, and a results file whose numbers those records reproduce. ``edit(records)``
    changes the logged records afterwards (the results keep the original numbers)."""
    rng = np.random.default_rng(seed)
    records = [
        make_record(rng.normal(0.0, 2.0, size=4).tolist(), int(rng.integers(4)), category=f"r{i % 3}")
        for i in range(n)
    ]
    data = CalibrationData(
        confidence=np.array([r["confidence"] for r in records]),
        correct=np.array([r["correct"] for r in records], dtype=float),
        brier=np.array([r["brier"] for r in records]),
        nll=np.array([r["nll"] for r in records]),
    )
    numbers = {f"{k},none": compute_metric(k, data, n_bins=n_bins) for k in ("acc", "ece", "brier", "nll")}
    if edit is not None:
        edit(records)
    target = folder / model
    target.mkdir(parents=True, exist_ok=True)
    results = {
        "results": {TASK: {"alias": TASK, **numbers}},
        "configs": {
            TASK: {
                "task": TASK,
                "output_type": "multiple_choice",
                "metadata": {"calibration": {"n_bins": n_bins}},
            }
        },
        "versions": {TASK: 1.0},
        "n-shot": {TASK: 0},
        "config": {"model": "hf", "model_args": f"pretrained={model}", "bootstrap_iters": 0},
    }
    (target / f"results_{STAMP}.json").write_text(json.dumps(results))
    with (target / f"samples_{TASK}_{STAMP}.jsonl").open("w") as handle:
        for doc_id, record in enumerate(records):
            handle.write(json.dumps({"doc_id": doc_id, "filter": "none", "ece": record}) + "\n")
    return folder


def _report(folders: list[Path], out: Path) -> tuple[list[str], list[dict]]:
    said: list[str] = []
    build_report(folders, out, log=said.append)
    with (out / "leaderboard.csv").open() as handle:
        return said, list(csv.DictReader(handle))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 5: an earlier report's folder keeps what the user added -------------------------------------------


def test_a_new_report_replaces_only_the_files_the_earlier_report_wrote(tmp_path):
    first, second = write_run(tmp_path / "a", "first"), write_run(tmp_path / "b", "second", seed=1)
    out = tmp_path / "rep1"
    _report([first], out)
    (out / "mynotes.txt").write_text("my notes")
    (out / "analysis").mkdir()
    (out / "analysis" / "table.csv").write_text("x,y\n")
    (out / "figures" / "mine.png").write_bytes(b"not the report's")
    old_figures = {p.name for p in (out / "figures").iterdir() if p.name.startswith("first__")}
    assert old_figures
    _, rows = _report([second], out)  # another model: other figure names
    assert {r["model"] for r in rows} == {"second"}
    assert (out / "mynotes.txt").read_text() == "my notes"
    assert (out / "analysis" / "table.csv").read_text() == "x,y\n"
    assert (out / "figures" / "mine.png").read_bytes() == b"not the report's"
    assert not old_figures & {p.name for p in (out / "figures").iterdir()}  # the first report's are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "rep1"]  # no temporary folder left


def test_out_dot_over_an_earlier_report_keeps_the_users_files(tmp_path):
    run = write_run(tmp_path / "run", "m")
    here = tmp_path / "here"
    here.mkdir()
    cli = [sys.executable, "-m", "lm_eval_calib.cli", "report", str(run), "--out", ".", "--quiet"]
    for run_number in range(2):
        proc = subprocess.run(cli, cwd=here, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if run_number == 0:  # the user adds files to the first report; the second must keep them
            (here / "mynotes.txt").write_text("mine")
            (here / "analysis").mkdir()
            (here / "analysis" / "a.txt").write_text("mine too")
    assert (here / "mynotes.txt").read_text() == "mine" and (
        here / "analysis" / "a.txt"
    ).read_text() == "mine too"
    assert (here / "index.html").is_file() and (here / MARKER).is_file()


def test_a_report_written_before_the_file_list_keeps_files_with_other_names(tmp_path):
    run = write_run(tmp_path / "run", "m")
    out = tmp_path / "old"
    _report([run], out)
    (out / MARKER).write_text("written by lm-eval-calib report; replaced as a whole on the next run\n")
    (out / "mynotes.txt").write_text("mine")
    _report([run], out)
    assert (out / "mynotes.txt").read_text() == "mine" and (out / "leaderboard.md").is_file()


def test_a_users_file_under_a_name_the_report_writes_is_never_overwritten(tmp_path):
    run = write_run(tmp_path / "run", "m")
    out = tmp_path / "rep"
    _report([run], out)
    listed = json.loads((out / MARKER).read_text())
    listed["files"].remove("breakdown.md")  # as if the user had put it there
    (out / MARKER).write_text(json.dumps(listed))
    (out / "breakdown.md").write_text("my own breakdown")
    before = _tree(out)
    with pytest.raises(ValueError, match="breakdown.md.*not written by lm-eval-calib report"):
        build_report([run], out, log=lambda message: None)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["rep", "run"]


# -- item 6: damaged records and runs that are not comparable get a message ---------------------------------


def _drop(key: str, index: int = 7):
    def edit(records: list[dict]) -> None:
        del records[index][key]

    return edit


def _marked(rows: list[dict], model: str) -> str:
    (row,) = [r for r in rows if r["model"] == model]
    return row["caveats"]


@pytest.mark.parametrize("key", ["loglik", "target"])
def test_a_record_without_loglik_or_target_is_named_not_a_silent_loss_of_temperature_scaling(tmp_path, key):
    run = write_run(tmp_path / "run", "m", edit=_drop(key))
    said, rows = _report([run], tmp_path / "out")
    assert any(
        "m / calib_facts: 1 of 60 records (e.g. doc_id 7) lack loglik or target" in m
        and "no temperature scaling" in m
        for m in said
    ), said
    assert rows[0]["recal_method"] == "platt" and "no temperature scaling" in _marked(rows, "m")
    assert "m ⚠" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_loglik_or_target_that_contradict_probs_and_correct_are_named(tmp_path):
    def edit(records: list[dict]) -> None:
        for index in (3, 11):  # the gold option moved: correct no longer follows from loglik and target
            record = records[index]
            record["target"] = (record["prediction"] + 1) % 4 if record["correct"] else record["prediction"]
        records[20]["loglik"] = [v + (5.0 if i == 0 else 0.0) for i, v in enumerate(records[20]["loglik"])]

    run = write_run(tmp_path / "run", "m", edit=edit)
    said, rows = _report([run], tmp_path / "out")
    assert any(
        "m / calib_facts: 3 of 60 records (e.g. doc_id 3) have loglik/target that disagree with their "
        "confidence/correct" in m
        for m in said
    ), said
    assert rows[0]["recal_method"] == "platt" and "disagree" in _marked(rows, "m")


def test_a_task_in_the_samples_but_not_in_the_results_file_is_named(tmp_path):
    run = write_run(tmp_path / "run", "m")
    (results_file,) = run.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    results["results"]["calib_mmlu_anatomy"] = dict(results["results"][TASK])
    results["configs"]["calib_mmlu_anatomy"] = dict(results["configs"][TASK])
    results_file.write_text(json.dumps(results))
    (samples,) = run.rglob(f"samples_{TASK}_*.jsonl")
    (samples.parent / samples.name.replace(TASK, "calib_mmlu_anatomy")).write_text(samples.read_text())
    del results["results"][TASK]  # the task's samples stay, its results entry is gone
    results_file.write_text(json.dumps(results))
    said, rows = _report([run], tmp_path / "out")
    assert [r["task"] for r in rows] == ["calib_mmlu_anatomy"]
    assert any(
        f"samples_{TASK}_{STAMP}.jsonl" in m and f"{TASK} is not in results_{STAMP}.json" in m for m in said
    ), said
    (samples.parent / f"results_{STAMP}.json").rename(samples.parent / "kept.json")
    samples.parent.joinpath("other").mkdir()
    write_run(samples.parent / "other", "again")  # a folder that still reports something
    said, _ = _report([run], tmp_path / "out2")
    assert any(f"no results_{STAMP}.json beside it" in m for m in said), said


def test_runs_with_different_n_bins_side_by_side_are_named_and_marked(tmp_path):
    ten, fifteen = write_run(tmp_path / "a", "ten"), write_run(tmp_path / "b", "fifteen", n_bins=15, seed=1)
    said, rows = _report([ten, fifteen], tmp_path / "out")
    assert any(
        "calib_facts: the runs use different n_bins (10: ten; 15: fifteen)" in m and "not comparable" in m
        for m in said
    ), said
    assert "n_bins 15" in _marked(rows, "fifteen") and "n_bins 10" in _marked(rows, "ten")
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| ten ⚠ |" in board and "| fifteen ⚠ |" in board and "⚠ fifteen / calib_facts: n_bins 15" in board
    page = (tmp_path / "out" / "index.html").read_text()
    assert "fifteen ⚠" in page
    alone, _ = _report([ten], tmp_path / "alone")  # one run alone: nothing to compare, no mark
    assert not [m for m in alone if "n_bins" in m]
