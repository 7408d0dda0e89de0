"""A study checks everything it can before its first cell runs, and never reuses results of other data.

Two classes of input: (1) a study file that would fail later (a task or backend typo, a missing file, an
unknown training argument, a claim comparing a model with itself) is refused up front, `--dry-run` included,
with one message listing every problem; (2) a finished cell is done only while the data it read are the
same bytes: the data root's folder for the task, the training file, the local model folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_eval_calib.study.checks import check_study
from lm_eval_calib.study.config import StudyConfigError, parse_study
from lm_eval_calib.study.plan import CELL_FILE, build_plan

DATA_ENV = "LM_EVAL_CALIB_DATA"


@pytest.fixture(autouse=True)
def _data_env(tmp_path, monkeypatch):
    """The study files below say ``${LM_EVAL_CALIB_DATA}``; tests that read the data make the folder."""
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))


def _data_root(folder: Path) -> Path:
    """A data root laid out like ../shared/data, with tiny stand-in files (the plan only hashes them)."""
    files = {
        "mmlu/test/anatomy_test.csv": "q,a,b,c,d,A\n",
        "lama_trex/P17.jsonl": '{"sub": "x"}\n',
        "wikitext2/test.txt": "text\n",
        "hub/allenai/ai2_arc/README.md": "configs: []\n",
        "alpaca/alpaca.json": '[{"instruction": "i", "output": "o"}]',
        "hh/pairs.jsonl": '{"chosen": "a", "rejected": "b"}\n',
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _study(tmp_path: Path, tasks: tuple[str, ...] = ("calib_mmlu", "calib_facts")) -> dict:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "base" / "config.json").write_text("{}")
    return {
        "name": "v",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf-calib", "device": "cpu"},
        "tasks": {task: {"limit": 4} for task in tasks},
        "models": {"base": {"pretrained": str(tmp_path / "base")}},
        "train": {
            "sft": {
                "kind": "sft",
                "from": "base",
                "method": "lora",
                "max_steps": 2,
                "data": "${LM_EVAL_CALIB_DATA}/alpaca/alpaca.json",
                "args": {"lora_r": 4},
            },
            "rm": {
                "kind": "reward",
                "from": "base",
                "data": "${LM_EVAL_CALIB_DATA}/hh/pairs.jsonl",
                "max_steps": 2,
            },
            "ppo": {
                "kind": "ppo",
                "policy": "sft",
                "reward_model": "rm",
                "max_steps": 1,
                "data": "${LM_EVAL_CALIB_DATA}/hh/pairs.jsonl",
            },
        },
        "findings": [
            {
                "claim": "SFT raises ECE",
                "task": "calib_mmlu",
                "metric": "ece",
                "baseline": "base",
                "treatment": "sft",
                "expect": "higher",
            }
        ],
    }


def _finish_all(config) -> None:
    """Pretend every cell ran, recording what the runner records."""
    from lm_eval_calib.study.runner import _write_cell_file

    for cell in build_plan(config):
        cell.folder.mkdir(parents=True)
        _write_cell_file(cell.folder, cell, 1.0, 100.0)


def _stale(body: dict, tmp_path: Path) -> dict[str, str]:
    return {
        c.name: c.reason for c in build_plan(parse_study(body, tmp_path / "s.yaml")) if c.status != "done"
    }


# --- (2) the data a cell read are part of its fingerprint ------------------------------------------------


def _edit(path: Path, text: str = "changed\n") -> None:
    with path.open("a") as handle:
        handle.write(text)


def _same_size_same_mtime(path: Path) -> None:
    """Rewrite a file with other bytes of the same length and put its old modification time back."""
    stat = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[::-1] if data[::-1] != data else data.upper())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


EVAL_MMLU = {f"eval/{m}/calib_mmlu" for m in ("base", "sft", "ppo")}
EVAL_FACTS = {f"eval/{m}/calib_facts" for m in ("base", "sft", "ppo")}
SFT_AND_DOWNSTREAM = {"train/sft", "train/ppo"} | {
    f"eval/{m}/{t}" for m in ("sft", "ppo") for t in ("calib_mmlu", "calib_facts")
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda root: _edit(root / "mmlu/test/anatomy_test.csv"), EVAL_MMLU),
        (lambda root: (root / "lama_trex/P19.jsonl").write_text("{}\n"), EVAL_FACTS),  # a file added
        (lambda root: (root / "lama_trex/P17.jsonl").unlink(), EVAL_FACTS),  # a file removed
        (lambda root: _same_size_same_mtime(root / "mmlu/test/anatomy_test.csv"), EVAL_MMLU),
        (lambda root: _edit(root / "alpaca/alpaca.json", " "), SFT_AND_DOWNSTREAM),
        (lambda root: _edit(root / "wikitext2/test.txt"), set()),  # no task of this study reads it
        (lambda root: None, set()),
    ],
    ids=[
        "task-file-edited",
        "task-file-added",
        "task-file-removed",
        "same-size-and-mtime",
        "training-file-edited",
        "unread-folder-edited",
        "nothing",
    ],
)
def test_changed_data_reruns_exactly_the_cells_that_read_them(tmp_path, monkeypatch, change, expected):
    root = _data_root(tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(root))
    body = _study(tmp_path)
    _finish_all(parse_study(body, tmp_path / "s.yaml"))
    assert _stale(body, tmp_path) == {}  # and the file hashes are now remembered under the output folder
    change(root)
    stale = _stale(body, tmp_path)
    assert set(stale) == expected
    if "train/sft" in expected:
        assert "data changed since it ran: " + str(root / "alpaca/alpaca.json") in stale["train/sft"]
    else:
        assert all("data changed since it ran" in reason for reason in stale.values())


def test_another_data_root_is_other_data_but_a_copy_of_the_same_bytes_is_not(tmp_path, monkeypatch):
    """The fingerprint is the content: a root moved or copied elsewhere reuses the results (73 minutes of
    training are not redone because a path changed); a root with other content, or none, does not."""
    root = _data_root(tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(root))
    body = _study(tmp_path)
    _finish_all(parse_study(body, tmp_path / "s.yaml"))

    copy = shutil.copytree(root, tmp_path / "copy")
    monkeypatch.setenv(DATA_ENV, str(copy))
    assert _stale(_study(tmp_path), tmp_path) == {}

    _edit(copy / "mmlu/test/anatomy_test.csv")
    assert set(_stale(_study(tmp_path), tmp_path)) == EVAL_MMLU

    monkeypatch.delenv(DATA_ENV)  # the hub copy of the data: not the local bytes the cells read
    hub = _study(tmp_path)
    for stage in hub["train"].values():
        stage["data"] = stage["data"].replace("${LM_EVAL_CALIB_DATA}", str(root))
    assert set(_stale(hub, tmp_path)) == EVAL_MMLU | EVAL_FACTS


def test_a_task_this_package_does_not_ship_fingerprints_the_whole_data_root(tmp_path, monkeypatch):
    """A ``calib_<task>`` wrapper may read ROOT/hub/...: without a known folder, any change counts."""
    root = _data_root(tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(root))
    body = _study(tmp_path, tasks=("calib_mmlu", "calib_arc_easy"))
    _finish_all(parse_study(body, tmp_path / "s.yaml"))
    _edit(root / "hub/allenai/ai2_arc/README.md")
    assert set(_stale(body, tmp_path)) == {f"eval/{m}/calib_arc_easy" for m in ("base", "sft", "ppo")}


def test_a_rewritten_local_model_folder_reruns_its_cells(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    _finish_all(parse_study(body, tmp_path / "s.yaml"))
    (tmp_path / "base" / "model.safetensors").write_bytes(b"new weights")
    assert set(_stale(body, tmp_path)) == {c.name for c in build_plan(parse_study(body, tmp_path / "s.yaml"))}


def test_the_cell_file_records_which_data_were_fingerprinted(tmp_path, monkeypatch):
    root = _data_root(tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(root))
    config = parse_study(_study(tmp_path), tmp_path / "s.yaml")
    _finish_all(config)
    cell = json.loads((tmp_path / "out/evals/base/calib_mmlu" / CELL_FILE).read_text())
    assert str(root / "mmlu") in cell["inputs"] and str(tmp_path / "base") in cell["inputs"]
    sft = json.loads((tmp_path / "out/checkpoints/sft" / CELL_FILE).read_text())
    assert str(root / "alpaca/alpaca.json") in sft["inputs"]


# --- (1) everything the study can check, before the first cell -------------------------------------------


def _check(body: dict, tmp_path: Path) -> None:
    check_study(parse_study(body, tmp_path / "s.yaml"))


def test_a_valid_study_passes_the_full_check(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    _check(_study(tmp_path), tmp_path)


def _set(path: str, value):
    """A change to the study body at a dotted path (``train.sft.data``)."""

    def change(body: dict, tmp_path: Path) -> None:
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[key]
        target[last] = value(tmp_path) if callable(value) else value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b, t: b["tasks"].update(calib_mmlux={}),
            "tasks.calib_mmlux: lm_eval has no task 'calib_mmlux'",
        ),
        (
            _set("eval.backend", "hf-calbi"),
            "backend 'hf-calbi' is not a model lm_eval knows.*did you mean hf-calib",
        ),
        (_set("tasks.calib_facts", {"backend": "vlm-calib"}), "tasks.calib_facts.backend 'vlm-calib'"),
        (
            _set("train.sft.data", lambda t: str(t / "data/alpaca/missing.json")),
            "train.sft.data: .*does not exist",
        ),
        (
            _set("models.base.pretrained", lambda t: str(t / "no-such-model")),
            "models.base.pretrained: .*does not exist",
        ),
        (  # a hub id has at most one '/': lm_eval's preflight and the train CLI refuse this as a folder
            _set("models.base.pretrained", "no-such-org/no-such-model/extra"),
            "models.base.pretrained: .*no-such-org/no-such-model/extra does not exist",
        ),
        (lambda b, t: shutil.rmtree(t / "data/mmlu"), "has no mmlu/ folder, which calib_mmlu reads"),
        (
            _set("tasks.calib_mmlu", {"metadata": {"data_dir": "/no/such/root"}}),
            "tasks.calib_mmlu: data root",
        ),
    ],
    ids=[
        "task-typo",
        "backend-typo",
        "task-backend-typo",
        "missing-training-file",
        "missing-model-folder",
        "missing-model-folder-nested-relative",
        "data-root-lacks-task-folder",
        "data-dir-not-a-folder",
    ],
)
def test_what_would_fail_later_is_refused_before_any_cell(tmp_path, monkeypatch, change, message):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    change(body, tmp_path)
    with pytest.raises(StudyConfigError, match=message):
        _check(body, tmp_path)


def test_every_problem_is_listed_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    body["eval"]["backend"] = "hf-calbi"
    body["tasks"]["calib_mmlux"] = {}
    body["train"]["rm"]["data"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(StudyConfigError) as info:
        _check(body, tmp_path)
    text = str(info.value)
    assert "3 problems" in text and "hf-calbi" in text and "calib_mmlux" in text and "nope.jsonl" in text


@pytest.mark.parametrize(
    ("stage", "args", "message"),
    [
        (
            "sft",
            {"lora_rank": 4},
            r"train.sft.args: unknown key 'lora_rank' for `train sft`; valid: .*lora_r",
        ),
        ("rm", {"lora_r": 4}, r"train.rm.args: unknown key 'lora_r' for `train reward`"),
        ("ppo", {"kl": 0.1}, r"train.ppo.args: unknown key 'kl' for `train ppo`; valid: .*kl_coef"),
        ("sft", {"lora_r": "eight"}, r"train.sft.args.lora_r: --lora-r: .*'eight'"),
        ("sft", {"method": "full"}, r"train.sft.args.method: give it as the stage's own key `method:`"),
        ("sft", {"max_steps": 5}, r"give it as the stage's own key `max_steps:`"),
        ("sft", {"output": "x"}, r"train.sft.args.output: the study sets it"),
        ("sft", {"lora_r": 0}, r"train.sft.args: sft: --lora-r must be >= 1"),
        ("ppo", {"whiten_rewards": True, "batch_size": 2}, r"--whiten-rewards needs at least 8 rollouts"),
    ],
)
def test_stage_args_are_checked_against_the_stage_schema(tmp_path, stage, args, message):
    body = _study(tmp_path)
    body["train"][stage]["args"] = args
    with pytest.raises(StudyConfigError, match=message):
        parse_study(body, tmp_path / "s.yaml")


def test_stage_args_take_dashes_and_lists_reach_the_command_as_the_train_cli_reads_them(tmp_path):
    body = _study(tmp_path)
    body["train"]["sft"]["args"] = {
        "learning-rate": 1e-4,
        "lora_target_modules": ["q_proj", "v_proj"],
        "merge_lora": False,
    }
    (sft, *_) = build_plan(parse_study(body, tmp_path / "s.yaml"))
    command = sft.command
    assert command[command.index("--learning-rate") + 1] == "0.0001"
    assert command[command.index("--lora-target-modules") + 1] == "q_proj,v_proj"
    assert command[command.index("--merge-lora") + 1] == "false"


@pytest.mark.parametrize("who", ["base", "sft"])
def test_a_finding_that_compares_a_model_with_itself_is_refused(tmp_path, who):
    body = _study(tmp_path)
    body["findings"][0].update(baseline=who, treatment=who)
    with pytest.raises(StudyConfigError, match=f"findings\\[0\\]: compares {who} with itself"):
        parse_study(body, tmp_path / "s.yaml")


def test_dry_run_refuses_a_backend_typo_before_anything_is_written(tmp_path):
    root = _data_root(tmp_path / "data")
    body = _study(tmp_path)
    body["eval"]["backend"] = "hf-calbi"
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(body, sort_keys=False))
    env = {**os.environ, DATA_ENV: str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_calib.cli", "study", str(study), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "backend 'hf-calbi'" in proc.stderr and "did you mean hf-calib" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("task", "known"),
    [
        ("calib_mmlu", True),  # this package's tasks, through the start-up hook
        ("calib_mmlu_anatomy", True),
        ("arc_easy", True),  # lm-eval's own
        ("calib_mmlu_anatomy_continuation", True),  # a calib_<task> wrapper (the patched TaskManager)
        ("calib_mmlux", False),
        ("mmlux", False),
    ],
)
def test_task_names_are_asked_of_lm_evals_task_manager(task, known, data_root, monkeypatch):
    from lm_eval_calib.study.checks import task_is_known

    monkeypatch.setenv(DATA_ENV, str(data_root))  # a wrapper finds its data under ROOT/hub/
    assert task_is_known(task) is known


def test_a_task_lm_eval_refuses_to_build_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    """``match_tasks`` itself may refuse (a ``calib_<task>`` that cannot be wrapped): one more line."""
    from lm_eval_calib.study import checks

    def refuse(name: str) -> bool:
        raise ValueError(f"{name} cannot be wrapped: it has several correct answers")

    monkeypatch.setattr(checks, "task_is_known", refuse)
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    with pytest.raises(StudyConfigError, match="tasks.calib_mmlu: lm_eval refuses it: calib_mmlu cannot be"):
        _check(_study(tmp_path), tmp_path)


# --- a launcher prefix for several processes ------------------------------------------------------------


def test_a_launcher_prefixes_the_evaluation_and_is_part_of_its_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    _finish_all(parse_study(body, tmp_path / "s.yaml"))
    body["tasks"]["calib_facts"]["launcher"] = "torchrun --nproc_per_node 2"
    cells = {c.name: c for c in build_plan(parse_study(body, tmp_path / "s.yaml"))}
    facts, mmlu = cells["eval/base/calib_facts"], cells["eval/base/calib_mmlu"]
    assert facts.command[:5] == ["torchrun", "--nproc_per_node", "2", "-m", "lm_eval"]
    assert facts.status == "stale" and mmlu.status == "done"  # only the relaunched cell runs again
    assert mmlu.command[:3] == [sys.executable, "-m", "lm_eval"]


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        ("torchrun --nproc_per_node 2 -m lm_eval", "give only the launcher"),
        ("", "give only the launcher"),
        (3, "must be a command line"),
        ("no-such-launcher-xyz --n 2", "'no-such-launcher-xyz' is not on PATH"),
    ],
)
def test_a_bad_launcher_is_refused_before_anything_runs(tmp_path, monkeypatch, launcher, message):
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    body["eval"]["launcher"] = launcher
    with pytest.raises(StudyConfigError, match=message):
        check_study(parse_study(body, tmp_path / "s.yaml"))


# --- issue 29.4: the dry run asks the code each cell runs about the cell's settings ----------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("tasks.calib_mmlu.metadata", {"calibration": {"n_bins": 1000000}}),
            r"tasks.calib_mmlu.metadata: calibration option 'n_bins' must be a positive integer",
        ),
        (
            _set("tasks.calib_facts.metadata", {"calibration": {"confidence": ["verbose"]}}),
            r"tasks.calib_facts.metadata: .*verbose",
        ),
        (_set("eval.model_args", {"dtype": "float33"}), "model_args dtype 'float33' is not a torch dtype"),
        (_set("models.base.model_args", {"dtype": "nn"}), "model_args dtype 'nn' is not a torch dtype"),
        (_set("eval.device", "gpu"), "device 'gpu' is not a torch device"),
        (
            _set("tasks.calib_facts.metadata", {"facts": {"n_distractors": 0}}),
            r"tasks.calib_facts.metadata: facts n_distractors: n_distractors=0 gives every fact 1 option",
        ),
        (
            _set("tasks.calib_facts.metadata", {"facts": {"relations": []}}),
            r"tasks.calib_facts.metadata: facts relations: relations is an empty list",
        ),
        (
            _set("tasks.calib_facts.metadata", {"facts": {"relations": ["P999"]}}),
            r"unknown LAMA T-REx relation\(s\) 'P999'",
        ),
        (
            _set("tasks.calib_facts.metadata", {"facts": {"n_distractor": 3}}),
            r"unknown facts option\(s\) 'n_distractor' for calib_facts; known: n_distractors",
        ),
        (_set("tasks.calib_facts.metadata", {"facts": [1]}), r"facts must be a mapping"),
        (
            _set("tasks.calib_facts.metadata", {"facts": {"seed": 1234.0}}),
            r"facts seed: seed must be an integer",
        ),
        (_set("tasks.calib_mmlu.metadata", {"data_dir": 5}), r"metadata.data_dir must be a folder name"),
        (
            _set("eval.model_args", {"revision": "main,step1000"}),
            r"do not survive lm_eval's key=value,... parsing",
        ),
    ],
    ids=[
        "n_bins-1e6",
        "unknown-estimator",
        "dtype-float33",
        "dtype-not-a-dtype",
        "device-gpu",
        "n_distractors-0",
        "relations-empty",
        "relation-unknown",
        "facts-option-typo",
        "facts-not-a-mapping",
        "facts-seed-float",
        "data_dir-number",
        "model_args-comma",
    ],
)
def test_dry_run_refuses_what_the_cell_would_refuse_after_training(tmp_path, monkeypatch, change, message):
    """Each of these passed ``--dry-run`` and failed only in its evaluation cell, after every stage had
    trained (issue 29, item 4)."""
    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    change(body, tmp_path)
    with pytest.raises(StudyConfigError, match=message):
        _check(body, tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("tasks.calib_mmlu.limit", float("nan")), r"tasks.calib_mmlu.limit must be a positive number"),
        (_set("tasks.calib_mmlu.limit", float("inf")), r"tasks.calib_mmlu.limit must be a positive number"),
        (_set("eval.batch_size", -5), r"eval.batch_size must be an integer >= 1, auto or auto:N"),
        (_set("eval.batch_size", "auto:x"), r"eval.batch_size must be an integer >= 1, auto or auto:N"),
        (_set("output", None), r"output must be a folder"),
        (_set("models.base.evaluate", "perhaps"), r"models.base.evaluate='perhaps' is not a boolean"),
        (_set("tasks.calib_mmlu", {"samples": {"stop": 10**9}}), r"selects 1,000,000,000 documents"),
        (_set("train.ppo.args", {"num_mini_batches": 0}), r"--num-mini-batches must be >= 1"),
        (_set("train.sft.args", {"lora_dropout": 2}), r"--lora-dropout must be in \[0, 1\)"),
        (_set("train.sft.args", {"learning_rate": float("inf")}), r"--learning-rate: expected a finite"),
    ],
    ids=[
        "limit-nan",
        "limit-inf",
        "batch_size-negative",
        "batch_size-auto-x",
        "output-null",
        "evaluate-not-a-boolean",
        "samples-too-many",
        "ppo-zero-mini-batches",
        "lora-dropout-2",
        "learning-rate-inf",
    ],
)
def test_settings_the_cell_would_refuse_are_refused_when_the_file_is_read(tmp_path, change, message):
    body = _study(tmp_path)
    change(body, tmp_path)
    with pytest.raises(StudyConfigError, match=message):
        parse_study(body, tmp_path / "s.yaml")


def test_evaluate_false_written_as_text_means_false(tmp_path):
    """``evaluate: "false"`` was ``bool("false")``: True, and the model was evaluated."""
    body = _study(tmp_path)
    body["models"]["base"]["evaluate"] = "false"
    body["train"]["sft"]["evaluate"] = "no"
    body["findings"] = []
    config = parse_study(body, tmp_path / "s.yaml")
    assert config.evaluated() == ["ppo"]


@pytest.mark.parametrize("value", [8, "8", "auto", "auto:4"])
def test_batch_sizes_lm_eval_accepts_pass(tmp_path, value):
    body = _study(tmp_path)
    body["eval"]["batch_size"] = value
    assert parse_study(body, tmp_path / "s.yaml").eval.batch_size == value


def test_lora_targets_the_model_lacks_are_refused_before_training(tmp_path, monkeypatch):
    """The train CLI's own check, on the starting model's architecture (meta device: no weights read)."""
    from transformers import LlamaConfig

    monkeypatch.setenv(DATA_ENV, str(_data_root(tmp_path / "data")))
    body = _study(tmp_path)
    LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path / "base")
    body["train"]["sft"]["args"] = {"lora_target_modules": ["q_proj", "query_key_value"]}
    with pytest.raises(StudyConfigError, match=r"train.sft.args.lora_target_modules: .*query_key_value not"):
        _check(body, tmp_path)
    body["train"]["sft"]["args"] = {"lora_target_modules": ["q_proj", "v_proj"]}
    _check(body, tmp_path)
