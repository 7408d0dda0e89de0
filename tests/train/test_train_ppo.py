"""PPO (trl 1.12's ``trl.experimental.ppo.PPOTrainer``; trl removed it in 1.13): the ``[train-ppo]`` extra,
run by ``.ci/run_train_ppo`` in an environment of its own. Where the installed trl has no PPOTrainer (the
``[train]`` extra installs the current trl) these tests skip, and ``train ppo`` must name the extra."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from lm_eval_calib_train import PPOStageConfig, TrainInputError, train_ppo
from lm_eval_calib_train.callbacks import StopAfter
from test_train_stages import HH, _calib_mmlu, _log, make_rm, make_sft

from lm_eval_calib.cli import main as cli_main
from lm_eval_calib.manifest import read_manifest


def _has_ppo() -> bool:
    try:
        return importlib.util.find_spec("trl.experimental.ppo") is not None
    except ImportError:
        return False


needs_ppo = pytest.mark.skipif(not _has_ppo(), reason="trl without PPOTrainer: the [train-ppo] extra has it")
pytestmark = pytest.mark.ppo


@pytest.fixture(scope="module")
def sft_dir(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    return make_sft(tiny_model_dir, data_root, tmp_path_factory)


@pytest.fixture(scope="module")
def rm_dir(sft_dir, data_root, tmp_path_factory) -> Path:
    return make_rm(sft_dir, data_root, tmp_path_factory)


@pytest.mark.skipif(_has_ppo(), reason="this trl still has PPOTrainer")
def test_ppo_without_ppotrainer_names_the_extra_before_any_work(tmp_path, capsys):
    code = cli_main(
        [
            "train",
            "ppo",
            "--policy",
            "p",
            "--reward-model",
            "r",
            "--data",
            "d",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "removed in 1.13" in err and "lm-eval-calib[train-ppo]" in err and "train rloo" in err
    )
    assert list(tmp_path.iterdir()) == []


@needs_ppo
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


@needs_ppo
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
