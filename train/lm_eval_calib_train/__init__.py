"""lm-eval-calib's training add-on: SFT (full or LoRA), a reward model, RLOO and PPO, each writing a
checkpoint folder that ``lm_eval --model hf --model_args pretrained=FOLDER`` loads, plus the manifest
(:mod:`lm_eval_calib.manifest`) that labels it in reports.

Python API (trl style: one config dataclass per stage)::

    from lm_eval_calib_train import SFTStageConfig, train_sft
    folder = train_sft(SFTStageConfig(model="smollm2", data="alpaca_1k.jsonl", method="lora",
                                      max_steps=20, output="runs/sft-lora"))

The command line is ``lm-eval-calib train sft|reward|rloo|ppo`` (``ppo`` needs the ``[train-ppo]``
extra: trl 1.12, the last trl with ``PPOTrainer``). Importing this package is cheap: torch, trl
and peft load only when a stage runs.
"""

from __future__ import annotations

from typing import Any

from lm_eval_calib_train.config import (
    PPOStageConfig,
    RewardStageConfig,
    RLOOStageConfig,
    SFTStageConfig,
    TrainInputError,
)

__all__ = [
    "PPOStageConfig",
    "RLOOStageConfig",
    "RewardStageConfig",
    "SFTStageConfig",
    "TrainInputError",
    "train_ppo",
    "train_reward",
    "train_rloo",
    "train_sft",
]


def train_sft(config: SFTStageConfig, callbacks: list[Any] | None = None):
    """Instruction tuning; returns the checkpoint folder. See :mod:`lm_eval_calib_train.sft`."""
    from lm_eval_calib_train.sft import train_sft as run

    return run(config, callbacks)


def train_reward(config: RewardStageConfig, callbacks: list[Any] | None = None):
    """A reward model on chosen/rejected pairs; returns the checkpoint folder."""
    from lm_eval_calib_train.reward import train_reward as run

    return run(config, callbacks)


def train_rloo(config: RLOOStageConfig, callbacks: list[Any] | None = None):
    """RLOO of an SFT checkpoint against a reward model (trl's stable API); returns the checkpoint folder."""
    from lm_eval_calib_train.rloo import train_rloo as run

    return run(config, callbacks)


def train_ppo(config: PPOStageConfig, callbacks: list[Any] | None = None):
    """PPO of an SFT checkpoint against a reward model (needs the ``[train-ppo]`` extra: trl 1.12); returns
    the checkpoint folder."""
    from lm_eval_calib_train.ppo import train_ppo as run

    return run(config, callbacks)
