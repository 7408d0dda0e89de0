"""Training add-on, every stage for real on the tiny random Llama (conftest) and real data rows: SFT (full,
LoRA merged, LoRA adapter), reward model, PPO; checkpoints load in lm-eval (one calib_mmlu run per stage),
resume after an interruption, and the bad input that needs a model (LoRA targets, tokenizer mismatch)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import read_run, run_lm_eval
from lm_eval_calib_train import (
    PPOStageConfig,
    RewardStageConfig,
    SFTStageConfig,
    TrainInputError,
    train_ppo,
    train_reward,
    train_sft,
)
from lm_eval_calib_train.callbacks import StopAfter
from lm_eval_calib_train.output import LOG_NAME, RESULTS_NAME

from lm_eval_calib.manifest import manifest_for_model_args, read_manifest

ALPACA = "alpaca/alpaca_1k.jsonl"
HH = "hh_rlhf/harmless-base/test.jsonl.gz"


def _sft_config(tiny_model_dir: Path, data_root: Path, output: Path, **overrides) -> SFTStageConfig:
    settings = dict(
        model=str(tiny_model_dir),
        data=str(data_root / ALPACA),
        max_rows=32,
        max_steps=4,
        batch_size=2,
        max_length=128,
        save_steps=2,
        learning_rate=1e-3,
        output=str(output),
    )
    settings.update(overrides)
    return SFTStageConfig(**settings)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG_NAME).read_text().splitlines()]


def _state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _calib_mmlu(folder: Path, data_root: Path, out: Path, extra_args: str = "") -> dict:
    """One small calib_mmlu run through the real lm_eval CLI; the results JSON."""
    run_lm_eval(
        [
            "--model",
            "hf",
            "--model_args",
            f"pretrained={folder},dtype=float32{extra_args}",
            "--tasks",
            "calib_mmlu",
            "--limit",
            "2",
            "--num_fewshot",
            "0",
            "--device",
            "cpu",
            "--batch_size",
            "2",
            "--output_path",
            str(out),
        ],
        env={"LM_EVAL_CALIB_DATA": str(data_root)},
    )
    results, _ = read_run(out)
    task = results["results"]["calib_mmlu"]
    assert math.isfinite(task["acc,none"]) and math.isfinite(task["ece,none"])
    return results


@pytest.fixture(scope="module")
def sft_dir(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    return train_sft(_sft_config(tiny_model_dir, data_root, tmp_path_factory.mktemp("sft") / "full"))


@pytest.fixture(scope="module")
def rm_dir(sft_dir, data_root, tmp_path_factory) -> Path:
    config = RewardStageConfig(
        model=str(sft_dir),
        data=str(data_root / HH),
        max_rows=8,
        eval_rows=8,
        max_length=96,
        batch_size=8,
        max_steps=12,
        learning_rate=3e-3,
        output=str(tmp_path_factory.mktemp("rm") / "rm"),
    )
    return train_reward(config)


# -- SFT --------------------------------------------------------------------------------------------------


def test_sft_checkpoint_has_manifest_and_loads_in_lm_eval(sft_dir, tiny_model_dir, data_root, tmp_path):
    manifest = read_manifest(sft_dir)
    assert manifest["stage"] == "sft" and manifest["method"] == "full"
    assert manifest["label"] == "tiny-llama0 SFT full (alpaca_1k)".replace("tiny-llama0", tiny_model_dir.name)
    assert manifest["data"]["rows"] == 32 and len(manifest["data"]["sha256"]) == 64
    assert manifest["parent"] == str(tiny_model_dir) and manifest["wall_time_s"] > 0
    assert (
        manifest["versions"]["trl"].startswith("1.12")
        and manifest["hyperparameters"]["learning_rate"] == 1e-3
    )
    assert not sft_dir.with_name(f".{sft_dir.name}.work").exists()  # resumable checkpoints are cleaned up
    results = _calib_mmlu(sft_dir, data_root, tmp_path / "eval")
    assert manifest_for_model_args(results["config"]["model_args"])["label"] == manifest["label"]


def test_sft_loss_goes_down_on_a_fixed_batch(tiny_model_dir, data_root, tmp_path):
    # four rows and a batch of four: every step sees the same batch
    config = _sft_config(
        tiny_model_dir,
        data_root,
        tmp_path / "fixed",
        max_rows=4,
        batch_size=4,
        max_steps=6,
        lr_scheduler_type="constant",
        save_steps=100,
    )
    folder = train_sft(config)
    losses = [entry["loss"] for entry in _log(folder) if "loss" in entry]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses


def test_lora_changes_only_the_adapted_weights_and_the_adapter_loads_in_lm_eval(
    tiny_model_dir, data_root, tmp_path
):
    import torch
    from lm_eval.models.huggingface import HFLM

    lora = dict(method="lora", lora_target_modules=["q_proj", "v_proj"], max_steps=3, learning_rate=1e-2)
    merged = train_sft(_sft_config(tiny_model_dir, data_root, tmp_path / "merged", **lora))
    assert read_manifest(merged)["method"] == "lora" and "LoRA" in read_manifest(merged)["label"]
    base, tuned = _state_dict(tiny_model_dir), _state_dict(merged)
    assert base.keys() == tuned.keys()
    changed = {key for key in base if not torch.equal(base[key], tuned[key])}
    adapted = {key for key in base if key.endswith(("q_proj.weight", "v_proj.weight"))}
    assert changed == adapted  # every adapted matrix moved, nothing else did

    adapter = train_sft(
        _sft_config(tiny_model_dir, data_root, tmp_path / "adapter", merge_lora=False, **lora)
    )
    assert read_manifest(adapter)["method"] == "lora-adapter"
    weights = _state_dict(adapter) if (adapter / "model.safetensors").exists() else None
    assert weights is None  # an adapter folder holds no full model ...
    from safetensors.torch import load_file

    adapter_keys = load_file(str(adapter / "adapter_model.safetensors")).keys()
    assert adapter_keys and all("lora_A" in k or "lora_B" in k for k in adapter_keys)  # ... only LoRA factors
    # lm-eval's own loader: base + peft= adapter gives the same model as the merged checkpoint
    ids = torch.tensor([[1, 502, 3303, 28, 1345, 42]])
    with_adapter = HFLM(pretrained=str(tiny_model_dir), peft=str(adapter), dtype="float32", device="cpu")
    merged_lm = HFLM(pretrained=str(merged), dtype="float32", device="cpu")
    with torch.no_grad():
        a, b = with_adapter.model(ids).logits, merged_lm.model(ids).logits
        plain = HFLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu").model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain, atol=1e-4)


def test_lora_targets_absent_from_the_model_are_refused_before_training(tiny_model_dir, data_root, tmp_path):
    config = _sft_config(
        tiny_model_dir, data_root, tmp_path / "bad", method="lora", lora_target_modules=["qkv"]
    )
    with pytest.raises(TrainInputError, match=r"qkv not found.*q_proj.*--lora-target-modules"):
        train_sft(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sft_resumes_an_interrupted_run_to_the_same_weights(sft_dir, tiny_model_dir, data_root, tmp_path):
    output = tmp_path / "resumed"
    config = _sft_config(tiny_model_dir, data_root, output)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config, callbacks=[StopAfter(3)])  # killed after step 3; last checkpoint: step 2
    assert not output.exists()  # nothing that looks like a finished checkpoint
    work = tmp_path / ".resumed.work"
    assert (work / "checkpoint-2" / "trainer_state.json").is_file()
    with pytest.raises(TrainInputError, match="interrupted run"):
        train_sft(config)
    config.resume = True
    folder = train_sft(config)
    assert [entry["step"] for entry in _log(folder) if "loss" in entry] == [1, 2, 3, 4]
    import torch

    resumed, uninterrupted = _state_dict(folder), _state_dict(sft_dir)
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in resumed)
    with pytest.raises(TrainInputError, match="already holds a checkpoint"):
        train_sft(_sft_config(tiny_model_dir, data_root, output))


# -- reward model -------------------------------------------------------------------------------------------


def _pair_accuracy(folder: Path, pairs) -> float:
    import torch
    from lm_eval_calib_train.formatting import Formatter
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    formatter = Formatter(AutoTokenizer.from_pretrained(folder), "auto")
    wins = 0
    with torch.no_grad():
        for chosen, rejected in pairs:
            scores = [
                model(torch.tensor([formatter.reward_ids(side, 96)])).logits.item()
                for side in (chosen, rejected)
            ]
            wins += scores[0] > scores[1]
    return wins / len(pairs)


def test_reward_model_learns_its_training_pairs_and_loads_in_lm_eval(rm_dir, data_root, tmp_path):
    from lm_eval_calib_train.data import preference_pairs, read_data

    manifest = read_manifest(rm_dir)
    assert (manifest["stage"], manifest["method"], manifest["data"]["rows"]) == ("reward", "reward", 8)
    assert manifest["label"].endswith("RM (harmless-base/test)")
    results = json.loads((rm_dir / RESULTS_NAME).read_text())
    assert results["held_out_pairs"] == 8 and 0.0 <= results["held_out_accuracy"] <= 1.0
    train_pairs = preference_pairs(read_data(str(data_root / HH)))[:8]
    assert _pair_accuracy(rm_dir, train_pairs) >= 0.875  # well above chance (0.5) on the pairs it trained on
    _calib_mmlu(rm_dir, data_root, tmp_path / "eval")  # the classifier's backbone + tied head is a causal LM


# -- PPO ----------------------------------------------------------------------------------------------------


def test_ppo_kl_starts_at_zero_stays_finite_and_resumes(sft_dir, rm_dir, data_root, tmp_path):
    output = tmp_path / "ppo"
    config = PPOStageConfig(
        policy=str(sft_dir),
        reward_model=str(rm_dir),
        data=str(data_root / HH),
        max_rows=16,
        max_steps=3,
        batch_size=2,
        response_length=8,
        max_prompt_length=48,
        num_ppo_epochs=1,
        save_steps=1,
        target_kl=1.0,
        kl_horizon=10,
        output=str(output),
    )
    with pytest.raises(KeyboardInterrupt):
        train_ppo(config, callbacks=[StopAfter(2)])
    assert not output.exists()
    state = json.loads((tmp_path / ".ppo.work" / "checkpoint-2" / "ppo_state.json").read_text())
    assert state["global_step"] == 2
    config.resume = True
    folder = train_ppo(config)
    log = _log(folder)
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert abs(log[0]["objective/kl"]) < 1e-3  # the policy starts as its reference
    for entry in log:
        for key in ("objective/kl", "objective/scores", "objective/entropy"):
            assert math.isfinite(entry[key]), (key, entry)
    # adaptive KL control: a KL far below the target lowers the coefficient by the clipped 20% x batch /
    # horizon each step, and the resumed run continues from the saved coefficient
    assert [entry["kl_coef"] for entry in log] == pytest.approx([0.05, 0.05 * 0.96, 0.05 * 0.96**2])
    manifest = read_manifest(folder)
    assert (manifest["stage"], manifest["method"], manifest["parent"]) == ("ppo", "ppo", str(sft_dir))
    assert manifest["label"].endswith("PPO (harmless-base/test)")
    _calib_mmlu(folder, data_root, tmp_path / "eval")


def test_ppo_refuses_a_reward_model_with_another_tokenizer(sft_dir, rm_dir, data_root, tmp_path):
    from transformers import AutoTokenizer

    other = shutil.copytree(rm_dir, tmp_path / "other-rm")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    config = PPOStageConfig(
        policy=str(sft_dir), reward_model=str(other), data=str(data_root / HH), output=str(tmp_path / "ppo")
    )
    with pytest.raises(TrainInputError, match="tokenizer .* differs from the policy's"):
        train_ppo(config)
    assert not (tmp_path / "ppo").exists() and not (tmp_path / ".ppo.work").exists()
