"""Training stages under two CPU processes (gloo), launched with ``torchrun`` as a user would, against the
same stage in one process on the tiny random Llama (conftest) and real data rows (alpaca, hh-rlhf).

``--batch-size`` is per process: two processes at ``--batch-size 2`` take the same global batch of 4 as one
process at ``--batch-size 4`` (the trainer's sampler deals the same shuffled examples out to the ranks), so
the logged loss (the mean over both ranks) and the trained weights must match the one-process run. They
match to float32 round-off: the two ranks' gradients are summed in a different order and padded to other
lengths, which moves the loss by ~1e-7 relative here; 1e-5 relative is the tolerance, far below the change
one step makes (~1e-3). The one-process run at ``--batch-size 2`` (what each rank would do alone) differs.

This file is also the worker script of the launches that need a callback in the trainer (an interruption,
an injected failure on one rank): ``torchrun ... tests/train/test_train_multiprocess.py MODE ...`` runs
:func:`worker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALPACA = "alpaca/alpaca_1k.jsonl"
HH = "hh_rlhf/harmless-base/test.jsonl.gz"
LOSS_TOLERANCE = 1e-5  # relative; see the module docstring
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def sft_settings(model: str, data_root: str, output: str, batch_size: int, **overrides) -> dict:
    settings = dict(model=model, data=f"{data_root}/{ALPACA}", max_rows=32, max_steps=4,
                    batch_size=batch_size, max_length=128, save_steps=2, learning_rate=1e-3,
                    output=output)  # fmt: skip
    return {**settings, **overrides}


def reward_settings(model: str, data_root: str, output: str, batch_size: int) -> dict:
    return dict(model=model, data=f"{data_root}/{HH}", max_rows=16, eval_rows=8, max_length=96,
                batch_size=batch_size, max_steps=3, save_steps=2, learning_rate=3e-3,
                output=output)  # fmt: skip


LORA = dict(method="lora", lora_dropout=0.0)  # no dropout: its masks depend on how the batch is split


def rloo_settings(policy: str, reward_model: str, data_root: str, output: str) -> dict:
    return dict(policy=policy, reward_model=reward_model, data=f"{data_root}/{HH}", max_rows=16, max_steps=2,
                batch_size=2, response_length=6, max_prompt_length=96, save_steps=1, learning_rate=1e-3,
                output=output)  # fmt: skip


# -- the worker (run by torchrun on each rank) ---------------------------------------------------------


def worker(mode: str, model: str, data_root: str, out: str) -> None:
    """``stages``: LoRA SFT (then again with ``--overwrite``, beside a user's file in the folder), a reward
    model, RLOO from them, and a full SFT interrupted after step 3 (resumed later through the CLI).
    ``fail``: a full SFT whose rank 1 raises after step 3."""
    from lm_eval_calib_train import (
        RewardStageConfig,
        RLOOStageConfig,
        SFTStageConfig,
        train_reward,
        train_rloo,
        train_sft,
    )
    from lm_eval_calib_train.callbacks import StopAfter
    from transformers import TrainerCallback

    if mode == "stages":
        train_sft(SFTStageConfig(**sft_settings(model, data_root, f"{out}/lora", 2, **LORA)))
        if int(os.environ["RANK"]) == 0:
            Path(f"{out}/lora/notes.txt").write_text("mine")
        train_sft(SFTStageConfig(**sft_settings(model, data_root, f"{out}/lora", 2, overwrite=True, **LORA)))
        rm = train_reward(RewardStageConfig(**reward_settings(model, data_root, f"{out}/rm", 2)))
        train_rloo(RLOOStageConfig(**rloo_settings(model, str(rm), data_root, f"{out}/rloo")))
        # every rank stops after step 3; checkpoint-2 is the last one saved
        with contextlib.suppress(KeyboardInterrupt):
            train_sft(SFTStageConfig(**sft_settings(model, data_root, f"{out}/full", 2)), [StopAfter(3)])
    elif mode == "fail":

        class FailOnRankOne(TrainerCallback):
            """An error on one rank only, mid-run: the other rank is left waiting in the next step."""

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3 and int(os.environ["RANK"]) == 1:
                    raise RuntimeError("injected failure on rank 1 after step 3")

        train_sft(SFTStageConfig(**sft_settings(model, data_root, f"{out}/failed", 2)), [FailOnRankOne()])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    worker(*sys.argv[1:])
    sys.exit(0)


# -- the tests -----------------------------------------------------------------------------------------


def torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` in fresh interpreters, offline, as a user runs it."""
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, **OFFLINE}
    env.pop("ACCELERATE_USE_CPU", None)  # the stages must find the CPU process group by themselves
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-8000:]}")
    return proc


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def _losses(folder: Path) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in _log(folder) if "loss" in entry]


def _weights(folder: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def _assert_same_losses(one: Path, two: Path) -> None:
    steps_1, steps_2 = _losses(one), _losses(two)
    assert [s for s, _ in steps_1] == [s for s, _ in steps_2]
    for (step, loss_1), (_, loss_2) in zip(steps_1, steps_2, strict=True):
        assert loss_2 == pytest.approx(loss_1, rel=LOSS_TOLERANCE), step


def _assert_same_weights(one: Path, two: Path, name: str = "model.safetensors") -> None:
    first, second = _weights(one, name), _weights(two, name)
    assert first.keys() == second.keys()
    worst = max((first[key] - second[key]).abs().max().item() for key in first)
    assert worst < 1e-5, worst  # Adam steps of 1e-3; round-off moved weights by ~1e-7 here


@pytest.fixture(scope="module")
def two_process_runs(tiny_model_dir, data_root, tmp_path_factory) -> tuple[Path, str]:
    """One launch of the worker (LoRA SFT, reward, RLOO, interrupted full SFT), then ``--resume`` of the full
    SFT through the CLI. Returns the output root and the resume launch's log."""
    out = tmp_path_factory.mktemp("two")
    torchrun(__file__, "stages", str(tiny_model_dir), str(data_root), str(out))
    settings = sft_settings(str(tiny_model_dir), str(data_root), str(out / "full"), 2)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    resumed = torchrun("-m", "lm_eval_calib_train", "sft", *flags, "--resume")
    return out, resumed.stderr


@pytest.fixture(scope="module")
def one_process_runs(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    """The same stages in this process at twice the per-process batch (and full SFT at the same one)."""
    from lm_eval_calib_train import RewardStageConfig, SFTStageConfig, train_reward, train_sft

    out = tmp_path_factory.mktemp("one")
    model, root = str(tiny_model_dir), str(data_root)
    train_sft(SFTStageConfig(**sft_settings(model, root, f"{out}/full", 4)))
    train_sft(SFTStageConfig(**sft_settings(model, root, f"{out}/full-batch2", 2)))
    train_sft(SFTStageConfig(**sft_settings(model, root, f"{out}/lora", 4, **LORA)))
    train_reward(RewardStageConfig(**reward_settings(model, root, f"{out}/rm", 4)))
    return out


def test_full_sft_on_two_processes_resumes_and_matches_one_process(two_process_runs, one_process_runs):
    out, log = two_process_runs
    two, one = out / "full", one_process_runs / "full"
    _assert_same_losses(one, two)
    _assert_same_weights(one, two)
    # one process at the per-process batch (each rank's share) is another trajectory: the ranks did split
    alone = _losses(one_process_runs / "full-batch2")
    assert alone[1][1] != pytest.approx(_losses(two)[1][1], rel=1e-3)
    manifest = json.loads((two / "lm_eval_calib_manifest.json").read_text())
    hyper = manifest["hyperparameters"]
    assert (hyper["processes"], hyper["batch_size"], hyper["effective_batch_size"]) == (2, 2, 4)
    # written once, by the main process: one progress line per step and one "written" line
    assert log.count("resuming from") == 1 and log.count("sft checkpoint written to") == 1
    assert log.count("sft step 4/4") == 1


def test_lora_and_reward_on_two_processes_match_one_process(two_process_runs, one_process_runs):
    out, _ = two_process_runs
    _assert_same_losses(one_process_runs / "lora", out / "lora")
    _assert_same_weights(one_process_runs / "lora", out / "lora")
    _assert_same_losses(one_process_runs / "rm", out / "rm")
    _assert_same_weights(one_process_runs / "rm", out / "rm")
    results = [json.loads((r / "rm" / "train_results.json").read_text()) for r in (one_process_runs, out)]
    # held-out pairwise accuracy: evaluated on both ranks' halves and gathered
    assert results[1]["held_out_accuracy"] == results[0]["held_out_accuracy"]
    assert results[1]["held_out_pairs"] == results[0]["held_out_pairs"] == 8


def test_rloo_runs_on_two_processes(two_process_runs):
    out, _ = two_process_runs
    manifest = json.loads((out / "rloo" / "lm_eval_calib_manifest.json").read_text())
    assert manifest["hyperparameters"]["answers_per_step"] == 4  # 2 per process x 2 processes
    assert manifest["hyperparameters"]["prompts_per_step"] == 2
    log = _log(out / "rloo")
    assert [entry["step"] for entry in log if "kl" in entry] == [1, 2]
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference at step 1


def test_each_stage_leaves_one_checkpoint_folder_and_nothing_else(two_process_runs):
    out, _ = two_process_runs
    assert sorted(p.name for p in out.iterdir()) == ["full", "lora", "rloo", "rm"]
    for name in ("full", "lora", "rloo", "rm"):
        manifest = json.loads((out / name / "lm_eval_calib_manifest.json").read_text())
        user_files = {"notes.txt"} if name == "lora" else set()  # --overwrite left the user's file alone
        assert set(manifest["files"]) | user_files == {p.name for p in (out / name).iterdir()}
    assert (out / "lora" / "notes.txt").read_text() == "mine"


def test_a_failure_on_one_rank_fails_the_run_and_leaves_no_checkpoint(tiny_model_dir, data_root, tmp_path):
    proc = torchrun(__file__, "fail", str(tiny_model_dir), str(data_root), str(tmp_path), check=False)
    assert proc.returncode != 0
    assert "injected failure on rank 1 after step 3" in proc.stderr
    assert "rank      : 1" in proc.stderr or "rank: 1" in proc.stderr  # torchrun names the failed rank
    # no finished-looking folder, no temporary one: only the resumable work folder with complete checkpoints
    assert sorted(p.name for p in tmp_path.iterdir()) == [".failed.work"]
    work = tmp_path / ".failed.work"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert (work / "checkpoint-2" / "trainer_state.json").is_file()
    # each rank's random state, for --resume under the same number of processes
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (work / "checkpoint-2").iterdir()}
