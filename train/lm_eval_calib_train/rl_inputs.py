"""What the two RL stages (``rloo`` on trl's stable API, ``ppo`` on trl 1.12) share before training.

Both read the same kind of prompts, pair a policy with a reward model that must read the very tokens the
policy writes, and pad on the left with a pad token distinct from the stop token; both hand the tokenizer
back unchanged to the checkpoint. Kept free of trl imports, so it serves either trl version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import TrainInputError
from lm_eval_calib_train.data import DataSource, prompts
from lm_eval_calib_train.formatting import Formatter
from lm_eval_calib_train.models import (
    ModelRef,
    ensure_pad_token,
    load_tokenizer,
    require_reward_model,
    resolve_model,
    same_tokenizer,
)
from lm_eval_calib_train.output import StageOutput
from lm_eval_calib_train.recipe import start_stage


@dataclass
class RLInputs:
    """The checked inputs of an RL stage: output folder, models, prompts and the prepared tokenizer."""

    out: StageOutput
    resume_from: Path | None
    policy: ModelRef
    reward: ModelRef
    data: DataSource
    prompts: list
    tokenizer: Any
    formatter: Formatter
    saved_pad: str | None
    saved_side: str

    def restore_tokenizer(self) -> None:
        """Undo the RL padding set-up, so the checkpoint keeps the policy's tokenizer as it was."""
        self.tokenizer.padding_side = self.saved_side
        if self.saved_pad is not None:
            self.tokenizer.pad_token = self.saved_pad


def prepare_rl_stage(config: Any) -> RLInputs:
    """Resolve and check everything an RL stage reads, before any model weights are loaded.

    ``config`` is an RLOO or PPO stage config (policy, reward model, data and prompt options).
    """

    def models() -> dict[str, ModelRef]:
        policy = resolve_model(config.policy, config.gguf_file, "--policy")
        reward = resolve_model(config.reward_model, None, "--reward-model")
        require_reward_model(reward)
        return {"--policy": policy, "--reward-model": reward}

    start = start_stage(config, models)
    out, resume_from, data = start.out, start.resume_from, start.data
    policy_ref, reward_ref = start.models["--policy"], start.models["--reward-model"]
    prompt_messages = prompts(data)
    if config.max_rows:
        prompt_messages = prompt_messages[: config.max_rows]
    tokenizer = load_tokenizer(policy_ref, config.trust_remote_code)
    reward_tokenizer = load_tokenizer(reward_ref, config.trust_remote_code)
    if not same_tokenizer(tokenizer, reward_tokenizer):
        raise TrainInputError(
            f"the reward model's tokenizer ({reward_ref.describe()}, {len(reward_tokenizer)} tokens) differs "
            f"from the policy's ({policy_ref.describe()}, {len(tokenizer)} tokens): the reward model would "
            "read other tokens than the policy writes; train the reward model from the policy (or its base "
            "model)"
        )
    saved_pad, saved_side = tokenizer.pad_token, tokenizer.padding_side
    ensure_pad_token(tokenizer, distinct=True)  # padding must not look like the stop token
    tokenizer.padding_side = "left"  # answers are appended at the prompts' right end
    formatter = Formatter(tokenizer, config.prompt_format)
    return RLInputs(
        out, resume_from, policy_ref, reward_ref, data, prompt_messages, tokenizer, formatter, saved_pad,
        saved_side,
    )  # fmt: skip
