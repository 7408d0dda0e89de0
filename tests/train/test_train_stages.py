"""Training add-on, every stage for real on the tiny random Llama (conftest) and real data rows: SFT (full,
LoRA merged, LoRA adapter), reward model, RLOO (PPO: test_train_ppo, in the [train-ppo] environment);
checkpoints load in lm-eval (one calib_mmlu run per stage), resume after an interruption, and the bad input
that needs a model (LoRA targets, tokenizer mismatch)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
from pathlib import Path

import pytest
from helpers import read_run, run_lm_eval
from lm_eval_calib_train import (
    RewardStageConfig,
    RLOOStageConfig,
    SFTStageConfig,
    TrainInputError,
    train_reward,
    train_rloo,
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


def make_sft(tiny_model_dir: Path, data_root: Path, tmp_path_factory) -> Path:
    """The full SFT checkpoint of the tiny model the later stages start from (also used by test_train_ppo)."""
    return train_sft(_sft_config(tiny_model_dir, data_root, tmp_path_factory.mktemp("sft") / "full"))


def make_rm(sft_dir: Path, data_root: Path, tmp_path_factory) -> Path:
    """A reward model on 8 HH-RLHF pairs, started from ``sft_dir`` (also used by test_train_ppo)."""
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


@pytest.fixture(scope="module")
def sft_dir(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    return make_sft(tiny_model_dir, data_root, tmp_path_factory)


@pytest.fixture(scope="module")
def rm_dir(sft_dir, data_root, tmp_path_factory) -> Path:
    return make_rm(sft_dir, data_root, tmp_path_factory)


# -- SFT --------------------------------------------------------------------------------------------------


def test_sft_checkpoint_has_manifest_and_loads_in_lm_eval(sft_dir, tiny_model_dir, data_root, tmp_path):
    manifest = read_manifest(sft_dir)
    assert manifest["stage"] == "sft" and manifest["method"] == "full"
    assert manifest["label"] == "tiny-llama0 SFT full (alpaca_1k)".replace("tiny-llama0", tiny_model_dir.name)
    assert manifest["data"]["rows"] == 32 and len(manifest["data"]["sha256"]) == 64
    assert manifest["parent"] == str(tiny_model_dir) and manifest["wall_time_s"] > 0
    assert (
        manifest["versions"]["trl"] == importlib.metadata.version("trl")
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


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A 2-layer random GPT-2: its attention and MLP are transformers' ``Conv1D``, not ``nn.Linear``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lora_target_error_lists_conv1d_layers_of_gpt2(tiny_gpt2_dir, data_root, tmp_path):
    config = _sft_config(
        tiny_gpt2_dir, data_root, tmp_path / "bad", method="lora", lora_target_modules=["q_proj"]
    )
    with pytest.raises(TrainInputError, match=r"q_proj not found") as error:
        train_sft(config)
    listed = str(error.value).split("layers LoRA can adapt are ", 1)[1].split(":", 1)[0].split(", ")
    assert listed == ["c_attn (Conv1D)", "c_fc (Conv1D)", "c_proj (Conv1D)", "lm_head (Linear)"]
    assert not (tmp_path / "bad").exists()


def test_lora_on_a_gpt2_conv1d_layer_trains_and_merges(tiny_gpt2_dir, data_root, tmp_path):
    import torch

    config = _sft_config(
        tiny_gpt2_dir, data_root, tmp_path / "gpt2-lora", method="lora", lora_target_modules=["c_attn"],
        max_steps=2, learning_rate=1e-2,
    )  # fmt: skip
    folder = train_sft(config)
    base, tuned = _state_dict(tiny_gpt2_dir), _state_dict(folder)
    changed = {key for key in base if not torch.equal(base[key], tuned[key])}
    assert changed == {key for key in base if key.endswith("attn.c_attn.weight")}


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


def test_sft_resume_refuses_other_data_or_settings_and_names_the_difference(
    tiny_model_dir, data_root, tmp_path
):
    """Issue 28: ``--resume`` with other data and learning rate once continued the interrupted run and wrote a
    manifest claiming the new data and rate for the whole run."""
    output = tmp_path / "resumed"
    config = _sft_config(tiny_model_dir, data_root, output)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config, callbacks=[StopAfter(3)])  # killed after step 3; last checkpoint: step 2
    changed = _sft_config(
        tiny_model_dir, data_root, output, data=str(data_root / "dolly_open_qa/dolly_open_qa.jsonl"),
        learning_rate=0.05, resume=True,
    )  # fmt: skip
    with pytest.raises(TrainInputError) as refused:
        train_sft(changed)
    message = str(refused.value)
    assert "--learning-rate: 0.001 (interrupted run) -> 0.05 (now)" in message, message
    assert "--data: " in message and "alpaca_1k.jsonl" in message and "dolly_open_qa.jsonl" in message
    assert "--overwrite" in message
    assert not output.exists() and (tmp_path / ".resumed.work" / "checkpoint-2").is_dir()  # nothing lost
    # the same data under another path is the same data: the run resumes
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(data_root / ALPACA, copy)
    folder = train_sft(_sft_config(tiny_model_dir, data_root, output, data=str(copy), resume=True))
    assert [entry["step"] for entry in _log(folder) if "loss" in entry] == [1, 2, 3, 4]


def test_resume_refuses_an_interrupted_run_that_did_not_record_its_inputs(
    tiny_model_dir, data_root, tmp_path
):
    """A work folder from before run_inputs.json cannot be shown to match: refused, with the way out."""
    output = tmp_path / "old"
    config = _sft_config(tiny_model_dir, data_root, output)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config, callbacks=[StopAfter(3)])
    (tmp_path / ".old.work" / "run_inputs.json").unlink(missing_ok=True)
    config.resume = True
    with pytest.raises(TrainInputError, match="did not record its settings and data.*--overwrite"):
        train_sft(config)


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


# -- RLOO ---------------------------------------------------------------------------------------------------


def _rloo_config(sft_dir: Path, rm_dir: Path, data_root: Path, output: Path, **overrides) -> RLOOStageConfig:
    settings = dict(
        policy=str(sft_dir),
        reward_model=str(rm_dir),
        data=str(data_root / HH),
        max_rows=16,
        max_steps=3,
        batch_size=2,  # one prompt, two answers per step
        response_length=6,
        max_prompt_length=96,
        save_steps=1,
        learning_rate=1e-3,
        output=str(output),
    )
    settings.update(overrides)
    return RLOOStageConfig(**settings)


def test_rloo_kl_starts_at_zero_resumes_to_the_same_weights_and_loads_in_lm_eval(
    sft_dir, rm_dir, data_root, tmp_path
):
    import torch

    straight = train_rloo(_rloo_config(sft_dir, rm_dir, data_root, tmp_path / "straight"))
    log = [entry for entry in _log(straight) if "kl" in entry]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    for entry in log:
        for key in ("kl", "reward", "entropy", "rewards/reward_model/mean"):
            assert math.isfinite(entry[key]), (key, entry)
    tuned, parent = _state_dict(straight), _state_dict(sft_dir)
    assert any(not torch.equal(tuned[key], parent[key]) for key in parent)  # the policy moved

    config = _rloo_config(sft_dir, rm_dir, data_root, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train_rloo(config, callbacks=[StopAfter(2)])  # killed after step 2; last checkpoint: step 1
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / ".resumed.work" / "checkpoint-1" / "trainer_state.json").is_file()
    config.resume = True
    resumed = train_rloo(config)
    assert [entry["kl"] for entry in _log(resumed) if "kl" in entry] == [entry["kl"] for entry in log]
    weights = _state_dict(resumed)
    assert all(torch.allclose(weights[key], tuned[key], atol=1e-6) for key in tuned)

    manifest = read_manifest(straight)
    assert (manifest["stage"], manifest["method"], manifest["parent"]) == ("rloo", "rloo", str(sft_dir))
    assert manifest["label"].endswith("RLOO (harmless-base/test)")
    hyper = manifest["hyperparameters"]
    assert (hyper["num_generations"], hyper["kl_coef"], hyper["prompts_per_step"]) == (2, 0.05, 1)
    assert hyper["reward_model"] == str(rm_dir) and hyper["skipped_long_prompts"] >= 0
    assert json.loads((straight / RESULTS_NAME).read_text())["kl"]["first"] == log[0]["kl"]
    _calib_mmlu(straight, data_root, tmp_path / "eval")


def test_rloo_scorer_scores_what_the_reward_stage_trained_on(rm_dir, data_root):
    """The scorer reads prompt + answer + end-of-turn ids, as ``train reward`` tokenised its pairs; an answer
    that never ended loses ``missing_eos_penalty``."""
    import torch
    from lm_eval_calib_train.data import preference_pairs, read_data
    from lm_eval_calib_train.formatting import Formatter
    from lm_eval_calib_train.rloo import RewardModelScorer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    formatter = Formatter(tokenizer, "auto")
    chosen, rejected = preference_pairs(read_data(str(data_root / HH)))[0]
    prompts = [formatter.prompt_ids(side[:-1]) for side in (chosen, rejected)]
    answers = [
        tokenizer(side[-1]["content"], add_special_tokens=False).input_ids + [formatter.turn_end_id]
        for side in (chosen, rejected)
    ]
    scorer = RewardModelScorer(model, model.config.pad_token_id, [formatter.turn_end_id], 1.5)
    scores = scorer(
        prompts=[None] * 2, completions=[None] * 2, completion_ids=answers, prompt_token_ids=prompts
    )
    with torch.no_grad():
        direct = [
            model(torch.tensor([formatter.reward_ids(side, 10_000)])).logits.item()
            for side in (chosen, rejected)
        ]
    assert scores == pytest.approx(direct, abs=1e-4)
    unfinished = scorer(
        prompts=[None], completions=[None], completion_ids=[answers[0][:-1]], prompt_token_ids=prompts[:1]
    )
    assert unfinished[0] == pytest.approx(scorer.score([prompts[0] + answers[0][:-1]])[0] - 1.5)


def test_rloo_refuses_bad_input_before_training(sft_dir, rm_dir, data_root, tmp_path):
    from transformers import AutoTokenizer

    other = shutil.copytree(rm_dir, tmp_path / "other-rm")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(TrainInputError, match="tokenizer .* differs from the policy's"):
        train_rloo(_rloo_config(sft_dir, other, data_root, tmp_path / "out"))
    with pytest.raises(TrainInputError, match=r"0 of 16 prompts fit in --max-prompt-length 8"):
        train_rloo(_rloo_config(sft_dir, rm_dir, data_root, tmp_path / "out", max_prompt_length=8))
    with pytest.raises(TrainInputError, match="must be a multiple of --num-generations"):
        train_rloo(_rloo_config(sft_dir, rm_dir, data_root, tmp_path / "out", batch_size=3))
    with pytest.raises(TrainInputError, match="is not a reward model"):
        train_rloo(_rloo_config(sft_dir, sft_dir, data_root, tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-rm"]  # no output, no work folder
