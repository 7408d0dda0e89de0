"""``lm-eval-calib train sft|reward|rloo|ppo``: flags are generated from the stage dataclasses (see
:mod:`lm_eval_calib_train.config`), so the command line, ``--config`` YAML files and the Python API take the
same settings under the same names."""

from __future__ import annotations

import argparse
import sys

from lm_eval_calib_train.config import STAGES, TrainInputError
from lm_eval_calib_train.config_parsing import add_stage_arguments, config_from_args
from lm_eval_calib_train.ranks import is_main

DESCRIPTIONS = {
    "sft": "instruction tuning (full or LoRA) -> a checkpoint lm_eval --model hf loads",
    "reward": "a reward model on chosen/rejected pairs (trl RewardTrainer), with held-out pairwise accuracy",
    "rloo": "RLOO of an SFT checkpoint against a reward model (trl RLOOTrainer), KL-penalised",
    "ppo": "PPO of an SFT checkpoint against a reward model (trl 1.12 PPOTrainer, extra [train-ppo]), "
    "KL-penalised",
}

EXAMPLES = {
    "sft": "lm-eval-calib train sft --model smollm2 --data alpaca_1k.jsonl --method lora --max-steps 20 "
    "--output runs/sft-lora",
    "reward": "lm-eval-calib train reward --model runs/sft-lora --data hh_rlhf/harmless-base/test.jsonl.gz "
    "--max-steps 20 --output runs/rm",
    "rloo": "lm-eval-calib train rloo --policy runs/sft-lora --reward-model runs/rm --data "
    "hh_rlhf/harmless-base/test.jsonl.gz --max-steps 10 --output runs/rloo",
    "ppo": "lm-eval-calib train ppo --policy runs/sft-lora --reward-model runs/rm --data "
    "hh_rlhf/harmless-base/test.jsonl.gz --max-steps 10 --output runs/ppo",
}


def add_train_parser(commands) -> argparse.ArgumentParser:
    """Add ``train`` (with its four stages) to an ``add_subparsers()`` object."""
    train = commands.add_parser(
        "train", help="train a stage: sft, reward, rloo or ppo (needs the [train] extra)", description=__doc__
    )
    stages = train.add_subparsers(dest="stage", required=True, metavar="{sft,reward,rloo,ppo}")
    for name, cls in STAGES.items():
        parser = stages.add_parser(
            name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name], epilog=f"example: {EXAMPLES[name]}"
        )
        add_stage_arguments(parser, cls)
        parser.set_defaults(run=run_stage, stage_class=cls)
    return train


def run_stage(args: argparse.Namespace) -> int:
    """Run the stage ``args`` selected; bad input becomes one error line and exit status 2."""
    from lm_eval_calib_train import train_ppo, train_reward, train_rloo, train_sft

    try:
        config = config_from_args(args.stage_class, args)
        runner = {"sft": train_sft, "reward": train_reward, "rloo": train_rloo, "ppo": train_ppo}[args.stage]
        folder = runner(config)
    except TrainInputError as exc:
        print(f"lm-eval-calib train {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"lm-eval-calib train {args.stage}: error: {exc}; install the extra: pip install "
            "'lm-eval-calib[train]'",
            file=sys.stderr,
        )
        return 2
    if is_main():  # under several processes every rank returns the same folder
        print(folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lm-eval-calib")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
