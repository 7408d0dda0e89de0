"""``lm-eval-calib study --only PATTERN``: a long study run in steps that each fit the machine."""

from __future__ import annotations

import pytest

from lm_eval_calib.cli import main
from lm_eval_calib.study.config import StudyConfigError, parse_study
from lm_eval_calib.study.plan import build_plan, select_cells
from lm_eval_calib.study.runner import run_study


def _body(tmp_path) -> dict:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    return {
        "name": "steps",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf", "device": "cpu"},
        "tasks": {"calib_mmlu": {"limit": 2}, "calib_facts": {"limit": 2}},
        "models": {"base": {"pretrained": str(tmp_path / "base")}},
        "train": {
            "sft": {"kind": "sft", "from": "base", "method": "lora", "data": str(tmp_path / "d.jsonl"),
                    "max_steps": 2},
        },
    }  # fmt: skip


def test_patterns_choose_cells_in_plan_order(tmp_path):
    cells = build_plan(parse_study(_body(tmp_path), tmp_path / "s.yaml"))
    assert [c.name for c in select_cells(cells, [])] == [c.name for c in cells]
    chosen = select_cells(cells, ["eval/*/calib_facts", "train/*"])
    assert [c.name for c in chosen] == ["train/sft", "eval/base/calib_facts", "eval/sft/calib_facts"]
    with pytest.raises(StudyConfigError, match=r"--only eval/nope matches no cell.*eval/base/calib_mmlu"):
        select_cells(cells, ["eval/*/calib_facts", "eval/nope"])


def test_a_chosen_cell_whose_stage_is_not_done_nor_chosen_is_skipped_naming_it(tmp_path):
    config = parse_study(_body(tmp_path), tmp_path / "s.yaml")
    lines: list[str] = []
    assert run_study(config, log=lines.append, only=["eval/sft/calib_mmlu"]) == 1
    assert lines[0] == "study steps: 5 cells (1 chosen by --only), 1 to run, the rest done or blocked"
    assert lines[1] == "[1/1] eval/sft/calib_mmlu: skipped, needs train/sft: add it to --only"
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing ran, nothing trained


def test_the_cli_refuses_a_pattern_that_matches_nothing_before_any_cell(tmp_path, capsys):
    import yaml

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(_body(tmp_path)))
    assert main(["study", str(study), "--only", "eval/base/calib_clm"]) == 2
    assert "--only eval/base/calib_clm matches no cell" in capsys.readouterr().err
    assert main(["study", str(study), "--dry-run", "--only", "eval/base/*"]) == 0
    table = capsys.readouterr().out
    assert "eval/base/calib_mmlu" in table and "train/sft" not in table and "2 missing of 2 cells" in table
