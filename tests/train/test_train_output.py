"""``--output`` and ``--overwrite``: only a folder this tool wrote (it holds our manifest) may be replaced,
and then only the files the earlier stage wrote there (listed in its manifest) are replaced; anything else in
the folder stays. Issue 16: ``--overwrite`` used to delete a user folder that merely held a ``config.json``.

Most tests drive :class:`~lm_eval_calib_train.output.StageOutput` directly with a fake ``write_model`` (no
model, milliseconds); one runs the issue's reproduction through the real ``lm-eval-calib train sft`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lm_eval_calib_train.config import TrainInputError
from lm_eval_calib_train.output import OWNED_KEY, WORK_MARKER, StageOutput

from lm_eval_calib.cli import main as cli_main
from lm_eval_calib.manifest import MANIFEST_NAME, read_manifest

ALPACA = "alpaca/alpaca_1k.jsonl"
MANIFEST = {
    "stage": "sft",
    "method": "full",
    "label": "x SFT full (d)",
    "base_model": "x",
    "parent": "x",
    "data": {"name": "d", "rows": 1, "sha256": "0" * 64},
    "hyperparameters": {},
    "versions": {},
    "seed": 0,
    "wall_time_s": None,
    "created": "2026-11-30T00:00:00+00:00",
}


def _writer(files: dict[str, str]):
    def write_model(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text)

    return write_model


def _finish(output: Path, files: dict[str, str], overwrite: bool = False) -> Path:
    out = StageOutput(output, overwrite=overwrite)
    assert out.preflight() is None
    return out.finalize(_writer(files), dict(MANIFEST), {"global_step": 1})


def _user_files(folder: Path) -> None:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("print('mine')\n")
    (folder / "notes.txt").write_text("x\n")


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_user_folder_that_holds_a_checkpoint_file_name(
    tiny_model_dir, data_root, tmp_path
):
    """The issue's reproduction with the real CLI, model and data (so that only the folder rule can stop it):
    nothing in the folder may be touched, nothing trained."""
    folder = tmp_path / "P"
    _user_files(folder)
    (folder / "config.json").write_text("{}")
    before = _tree(folder)
    code = cli_main(
        ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data_root / ALPACA),
         "--max-rows", "4", "--max-steps", "1", "--batch-size", "2", "--max-length", "64",
         "--output", str(folder), "--overwrite"]
    )  # fmt: skip
    assert code == 2
    assert _tree(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P"]  # no work or temp folder beside it


@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "adapter_config.json", None])
def test_a_folder_without_our_manifest_is_never_replaced(tmp_path, marker):
    folder = tmp_path / "P"
    _user_files(folder)
    if marker:
        (folder / marker).write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(TrainInputError, match=rf"no {MANIFEST_NAME}.*nothing there is deleted"):
            StageOutput(folder, overwrite=overwrite).preflight()
    assert (folder / "notes.txt").read_text() == "x\n" and (folder / "src" / "train.py").is_file()


def test_overwrite_replaces_only_the_files_the_earlier_stage_wrote(tmp_path):
    folder = _finish(tmp_path / "P", {"config.json": "old", "model.safetensors": "old", "README.md": "peft"})
    assert read_manifest(folder)[OWNED_KEY] == sorted(
        ["config.json", "model.safetensors", "README.md", "train_results.json", MANIFEST_NAME]
    )
    _user_files(folder)  # the user adds files to a finished checkpoint folder
    with pytest.raises(TrainInputError, match="already holds a checkpoint; pass --overwrite"):
        StageOutput(folder).preflight()
    # the new stage writes an adapter: the old full model goes, the user's files stay
    _finish(folder, {"adapter_config.json": "new", "adapter_model.safetensors": "new"}, overwrite=True)
    tree = _tree(folder)
    assert tree["notes.txt"] == "x\n" and tree["src/train.py"] == "print('mine')\n"
    assert tree["adapter_config.json"] == "new" and tree["adapter_model.safetensors"] == "new"
    assert "config.json" not in tree and "model.safetensors" not in tree and "README.md" not in tree
    assert read_manifest(folder)[OWNED_KEY] == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "train_results.json", MANIFEST_NAME]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["P"]  # no temp or old folder left beside it


def test_a_user_file_with_a_checkpoint_name_is_never_overwritten(tmp_path):
    folder = _finish(tmp_path / "P", {"config.json": "old"})
    (folder / "model.safetensors").write_text("the user's own")  # not listed in our manifest
    with pytest.raises(TrainInputError, match=r"holds model.safetensors, which its manifest does not list"):
        StageOutput(folder, overwrite=True).preflight()  # refused before training
    # ... and when it appears during training, the finished checkpoint is set aside instead
    out = StageOutput(folder, overwrite=True)
    (folder / "model.safetensors").rename(tmp_path / "away")
    assert out.preflight() is None
    (tmp_path / "away").rename(folder / "model.safetensors")
    with pytest.raises(TrainInputError, match=r"model.safetensors, not written by.*kept in"):
        out.finalize(_writer({"config.json": "new", "model.safetensors": "new"}), dict(MANIFEST), {})
    assert (folder / "model.safetensors").read_text() == "the user's own"
    assert (folder / "config.json").read_text() == "old" and read_manifest(folder) is not None
    (kept,) = [p for p in tmp_path.iterdir() if p.name != "P"]
    assert (kept / "model.safetensors").read_text() == "new" and (kept / MANIFEST_NAME).is_file()


def test_a_manifest_without_a_file_list_replaces_only_known_checkpoint_files(tmp_path):
    """Checkpoints written before the manifest listed its files: only names a stage writes are ours."""
    folder = _finish(tmp_path / "P", {"config.json": "old", "tokenizer.json": "old"})
    body = json.loads((folder / MANIFEST_NAME).read_text())
    del body[OWNED_KEY]
    (folder / MANIFEST_NAME).write_text(json.dumps(body))
    _user_files(folder)
    _finish(folder, {"config.json": "new"}, overwrite=True)
    tree = _tree(folder)
    assert tree["config.json"] == "new" and "tokenizer.json" not in tree
    assert tree["notes.txt"] == "x\n" and tree["src/train.py"] == "print('mine')\n"


def test_overwrite_leaves_a_foreign_work_folder_alone(tmp_path):
    work = tmp_path / ".P.work"
    work.mkdir()
    (work / "thesis.tex").write_text("mine")
    with pytest.raises(TrainInputError, match=r"\.P\.work.*not an interrupted run"):
        StageOutput(tmp_path / "P", overwrite=True).preflight()
    assert (work / "thesis.tex").read_text() == "mine"


def test_a_marked_work_folder_is_a_runs_own_whatever_the_trainer_wrote_there(tmp_path):
    out = StageOutput(tmp_path / "P")
    out.start_work()
    (out.work / "README.md").write_text("model card")  # trl's trainers write one beside their checkpoints
    with pytest.raises(TrainInputError, match="interrupted run left checkpoints"):
        StageOutput(tmp_path / "P").preflight()
    assert StageOutput(tmp_path / "P", overwrite=True).preflight() is None
    assert not out.work.exists() and (tmp_path / "P").exists() is False
    assert WORK_MARKER.startswith(".")


def test_an_empty_existing_folder_is_used_as_the_output(tmp_path):
    (tmp_path / "P").mkdir()
    folder = _finish(tmp_path / "P", {"config.json": "new"})
    assert read_manifest(folder)[OWNED_KEY] == ["config.json", MANIFEST_NAME, "train_results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["P"]
