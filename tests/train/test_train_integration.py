"""Training add-on on the real SmolLM2-135M-Instruct (the bundled GGUF model), a few steps per stage: SFT
LoRA through the CLI (GGUF in, plain float32 checkpoint out), a reward model on it, one RLOO step through the
CLI (PPO, on trl 1.12 only, is tested on the tiny model in test_train_ppo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from lm_eval_calib_train import RewardStageConfig, train_reward
from lm_eval_calib_train.output import LOG_NAME, RESULTS_NAME

from lm_eval_calib.cli import main as cli_main
from lm_eval_calib.manifest import read_manifest

pytestmark = pytest.mark.integration

HH = "hh_rlhf/harmless-base/test.jsonl.gz"


@pytest.fixture(scope="module")
def smol_sft(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "sft-lora"
    code = cli_main(
        [
            "train",
            "sft",
            "--model",
            "smollm2",
            "--data",
            str(data_root / "alpaca" / "alpaca_1k.jsonl"),
            "--method",
            "lora",
            "--max-rows",
            "8",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def smol_rm(smol_sft, data_root, tmp_path_factory) -> Path:
    config = RewardStageConfig(
        model=str(smol_sft),
        data=str(data_root / HH),
        max_rows=4,
        eval_rows=2,
        max_steps=2,
        batch_size=2,
        max_length=64,
        output=str(tmp_path_factory.mktemp("smol") / "rm"),
    )
    return train_reward(config)


def test_smollm2_sft_lora_from_gguf_is_a_plain_merged_checkpoint(smol_sft):
    manifest = read_manifest(smol_sft)
    assert manifest["label"] == "SmolLM2-135M-Instruct SFT LoRA (alpaca_1k)"
    assert (manifest["base_model"], manifest["method"]) == ("smollm2", "lora")
    assert manifest["hyperparameters"]["prompt_format"] == "chat"
    assert sorted(manifest["hyperparameters"]["lora_target_modules"]) == ["q_proj", "v_proj"]
    config = json.loads((smol_sft / "config.json").read_text())
    assert "quantization_config" not in config  # de-quantised GGUF weights, saved as a normal model
    losses = [
        e["loss"] for e in map(json.loads, (smol_sft / LOG_NAME).read_text().splitlines()) if "loss" in e
    ]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)  # an instruction model: far below ln(V)


def test_smollm2_reward_model_reports_held_out_accuracy(smol_rm):
    results = json.loads((smol_rm / RESULTS_NAME).read_text())
    assert results["held_out_pairs"] == 2 and results["held_out_accuracy"] in (0.0, 0.5, 1.0)
    assert read_manifest(smol_rm)["label"] == "SmolLM2-135M-Instruct RM (harmless-base/test)"


def test_smollm2_rloo_step_through_the_cli(smol_sft, smol_rm, data_root, tmp_path, capsys):
    out = tmp_path / "rloo"
    code = cli_main(
        ["train", "rloo", "--policy", str(smol_sft), "--reward-model", str(smol_rm),
         "--data", str(data_root / HH), "--max-rows", "8", "--max-steps", "1", "--batch-size", "2",
         "--num-generations", "2", "--response-length", "4", "--max-prompt-length", "96",
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    (entry,) = [e for e in map(json.loads, (out / LOG_NAME).read_text().splitlines()) if "kl" in e]
    assert abs(entry["kl"]) < 1e-4  # the policy starts as its reference
    assert math.isfinite(entry["reward"]) and entry["completions/mean_length"] <= 4
    manifest = read_manifest(out)
    assert manifest["label"] == "SmolLM2-135M-Instruct RLOO (harmless-base/test)"
    assert manifest["hyperparameters"]["prompt_format"] == "chat"
