"""A held-out run must be of the task it recalibrates (issue 25: "a held-out run of another task" is a clear
error before any work).

``build_report(..., held_out=[folder])`` (the CLI's ``--held-out``) takes runs used only to fit the
recalibration maps and conformal thresholds: ``calib_mmlu_val`` for ``calib_mmlu``, another run of the same
task for any other. A held-out ``calib_facts`` run for a ``calib_mmlu`` report fits nothing that is scored:
refused, naming both tasks and the fix, before any run is recalibrated and before anything is written.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from helpers import run_lm_eval

from lm_eval_calib.report.build import build_report
from lm_eval_calib.report.runs import ReportInputError

MMLU = [*range(10), *range(100, 110)]  # 10 abstract_algebra, 10 anatomy questions


@pytest.fixture(scope="module")
def folders(tiny_model_dir, data_root, tmp_path_factory):
    """One real run of calib_mmlu, calib_mmlu_val and calib_facts, split into one folder per task (the
    other tasks' samples removed, as a run of that task alone would be)."""
    base = tmp_path_factory.mktemp("held-out")
    samples = {
        "calib_mmlu": MMLU,
        "calib_mmlu_val": list(range(30)),
        "calib_facts": list(range(0, 29411, 1500)),
    }
    args = ["--model", "hf-calib", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--device", "cpu", "--batch_size", "8", "--num_fewshot", "0"]
    args += ["--metadata", json.dumps({"data_dir": str(data_root)})]
    args += ["--tasks", ",".join(samples), "--samples", json.dumps(samples)]
    run_lm_eval([*args, "--output_path", str(base / "all"), "--log_samples"])
    found = {}
    for task in samples:
        folder = base / task
        shutil.copytree(base / "all", folder)
        for path in folder.rglob("samples_*.jsonl"):
            if not path.name.startswith(f"samples_{task}_2"):
                path.unlink()
        assert len(list(folder.rglob("samples_*.jsonl"))) == 1
        found[task] = folder
    return found


def test_a_held_out_run_of_another_task_is_refused_before_any_work(folders, tmp_path):
    out = tmp_path / "report"
    said: list[str] = []
    with pytest.raises(ReportInputError) as info:
        build_report([folders["calib_mmlu"]], out, log=said.append, held_out=[folders["calib_facts"]])
    message = str(info.value)
    assert "held-out run" in message and "calib_facts" in message and "calib_mmlu" in message
    assert "calib_mmlu_val for calib_mmlu" in message  # the fix: which run to pass instead
    assert "--held-out" in message
    assert not out.exists()  # nothing written
    assert not any(m.startswith("[1/") for m in said)  # no run was recalibrated


def test_a_held_out_run_of_the_scored_task_fits_it(folders, tmp_path):
    out = tmp_path / "report"
    runs = build_report(
        [folders["calib_mmlu"]], out, log=lambda m: None, held_out=[folders["calib_mmlu_val"]]
    )
    assert [r.task for r in runs] == ["calib_mmlu"]  # the held-out run fits, it is not reported
    with (out / "recalibration.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["fitted_on"].startswith("calib_mmlu_val (30 items)") for row in rows)
    with (out / "conformal.csv").open() as handle:
        conformal = list(csv.DictReader(handle))
    assert [row["fitted_on"] for row in conformal] == ["calib_mmlu_val (30 documents)"] * 2
    with (out / "leaderboard.csv").open() as handle:
        assert {row["task"] for row in csv.DictReader(handle)} == {"calib_mmlu"}


def test_the_cli_passes_held_out_runs_and_reports_the_refusal(folders, tmp_path, capsys):
    from lm_eval_calib.cli import main

    refused = tmp_path / "refused"
    status = main(
        [
            "report",
            str(folders["calib_mmlu"]),
            "--out",
            str(refused),
            "--held-out",
            str(folders["calib_facts"]),
        ]
    )
    assert status == 2
    assert "calib_facts" in capsys.readouterr().err
    assert not refused.exists()
    fitted = tmp_path / "fitted"
    args = ["report", str(folders["calib_mmlu"]), "--out", str(fitted), "--quiet"]
    assert main([*args, "--held-out", str(folders["calib_mmlu_val"])]) == 0
    with (fitted / "recalibration.csv").open() as handle:
        assert all(row["fitted_on"].startswith("calib_mmlu_val") for row in csv.DictReader(handle))
