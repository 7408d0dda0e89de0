"""A study resumes an interrupted training stage only when the stage is still the same (issue 28)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lm_eval_calib.study.config import parse_study
from lm_eval_calib.study.plan import build_plan, describe
from lm_eval_calib.study.runner import run_cell

# Stands in for `lm-eval-calib train ...`: records the flags it was given; exits 1 (an interrupted run) or
# writes the checkpoint folder (the last path before the flag) and exits 0.
FAKE_TRAIN = """import json, pathlib, sys
pathlib.Path(sys.argv[1]).write_text(json.dumps(sys.argv[3:]))
if sys.argv[2] == "fail":
    sys.exit(1)
pathlib.Path(sys.argv[-2]).mkdir(parents=True)
"""


def _config(tmp_path: Path, learning_rate: float = 1e-3):
    body = {
        "name": "resume",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf", "device": "cpu"},
        "tasks": {"calib_mmlu": {"limit": 2}},
        "models": {"base": {"pretrained": str(tmp_path / "base")}},
        "train": {
            "sft": {
                "kind": "sft",
                "from": "base",
                "method": "lora",
                "data": str(tmp_path / "d.jsonl"),
                "max_steps": 4,
                "args": {"learning_rate": learning_rate},
            }
        },
    }
    return parse_study(body, tmp_path / "study.yaml")


def _train_cell(tmp_path: Path, learning_rate: float = 1e-3):
    (cell,) = [c for c in build_plan(_config(tmp_path, learning_rate)) if c.kind == "train"]
    return cell


def _run(cell, tmp_path: Path, outcome: str) -> list[str]:
    """Run ``cell`` with the fake trainer in place of its command; the flags the trainer got."""
    seen = tmp_path / "argv.json"
    cell.command = [sys.executable, "-c", FAKE_TRAIN, str(seen), outcome, "--output", str(cell.folder)]
    assert run_cell(cell, tmp_path / "logs").ok == (outcome == "ok")
    return json.loads(seen.read_text())


def test_an_interrupted_stage_whose_data_changed_starts_over(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    first = _train_cell(tmp_path)
    assert _run(first, tmp_path, "fail")[-1] == "--resume"  # a first run: nothing to resume, starts fresh

    (tmp_path / "d.jsonl").write_text('{"instruction": "other", "output": "data"}\n')
    cells = build_plan(_config(tmp_path))
    (changed,) = [c for c in cells if c.kind == "train"]
    plan = describe(cells)
    assert _run(changed, tmp_path, "fail")[-1] == "--overwrite"  # never resumes the other data's steps
    assert changed.status == "missing" and changed.restart
    assert f"an interrupted run is started over: data changed since it ran: {tmp_path / 'd.jsonl'}" in plan

    same = _train_cell(tmp_path)  # interrupted again, nothing changed since: resumed this time
    assert not same.restart and _run(same, tmp_path, "ok")[-1] == "--resume"
    assert not list((tmp_path / "out" / "checkpoints").glob(".*.study_run.json"))  # finished: forgotten


def test_an_interrupted_stage_whose_settings_changed_starts_over(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    _run(_train_cell(tmp_path), tmp_path, "fail")
    changed = _train_cell(tmp_path, learning_rate=0.05)
    assert _run(changed, tmp_path, "ok")[-1] == "--overwrite"
    assert changed.restart and "settings changed since it ran" in changed.reason


def test_an_interrupted_stage_the_study_did_not_record_starts_over(tmp_path):
    """A work folder left by a study from before run records: its inputs are unknown, so never resumed."""
    (tmp_path / "base").mkdir()
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    cell = _train_cell(tmp_path)
    (cell.folder.parent / f".{cell.folder.name}.work").mkdir(parents=True)
    cell = _train_cell(tmp_path)
    assert _run(cell, tmp_path, "ok")[-1] == "--overwrite"
    assert cell.reason == "an interrupted run the study did not record is started over"


# Stands in for a cell whose real work happens in a process it starts (lm_eval's workers, the train CLI):
# the grandchild holds ~300 MiB of touched memory, the fake itself little, then the checkpoint folder appears.
FAKE_TRAIN_WITH_A_WORKER = """import pathlib, subprocess, sys
touch = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
subprocess.run([sys.executable, "-c", touch], check=True)
pathlib.Path(sys.argv[-2]).mkdir(parents=True)  # the folder after --output, before --resume
"""


def test_a_cell_records_the_peak_memory_of_its_whole_process_tree(tmp_path):
    """A study step's peak memory is known: the cell file keeps it, measured over the cell's processes (a
    worker's 300 MiB counts), not the study's own."""
    cell = _train_cell(tmp_path)
    cell.command = [sys.executable, "-c", FAKE_TRAIN_WITH_A_WORKER, "--output", str(cell.folder)]
    run = run_cell(cell, tmp_path / "logs")
    assert run.ok
    assert 300 <= run.peak_rss_mib < 1000
    recorded = json.loads((cell.folder / "study_cell.json").read_text())
    assert recorded["peak_rss_mib"] == round(run.peak_rss_mib, 1)
    assert recorded["seconds"] == round(run.seconds, 1)
