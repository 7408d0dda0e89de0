"""The stage schemas: one dataclass per training stage (as trl's ``SFTConfig`` / ``RewardConfig`` /
``PPOConfig``), each field with its default, type and help text, each stage with its own checks.

Filling them from a YAML file and command-line flags is :mod:`lm_eval_calib_train.config_parsing`'s job.
This module imports nothing heavy: ``lm-eval-calib --help`` and ``lm-eval-calib train sft --help`` build
their flags from these dataclasses without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class TrainInputError(ValueError):
    """Bad input to a training stage, found before training starts; the message names the fix."""


def _f(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse's keyword
    """A dataclass field that carries its command-line help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


DATA_FORMATS = ("auto", "alpaca", "dolly", "conversations", "pairs", "prompts")


@dataclass
class _StageConfig:
    """Settings every stage shares."""

    output: str | None = _f(
        None, "checkpoint folder to write (required); built beside it, renamed at the end"
    )
    data: str | None = _f(
        None, "data: a JSON / JSONL / gzipped JSONL file, a folder holding one, or a hub dataset name[:split]"
    )
    data_format: Literal["auto", "alpaca", "dolly", "conversations", "pairs", "prompts"] = _f(
        "auto", "record format; auto detects it from the first record's keys"
    )
    data_name: str | None = _f(
        None, "name of the data set in the manifest and label (default: from the file)"
    )
    max_rows: int | None = _f(None, "use at most this many training rows (file order)")
    gguf_file: str | None = _f(
        None, "GGUF file inside the model folder (sft/reward: --model; rloo/ppo: --policy)"
    )
    max_steps: int = _f(100, "optimizer steps")
    batch_size: int = _f(4, "examples per device per step (before gradient accumulation)")
    gradient_accumulation_steps: int = _f(1, "micro-batches accumulated per optimizer step")
    learning_rate: float | None = _f(None, "peak learning rate (default depends on the stage and method)")
    lr_scheduler_type: str = _f("linear", "transformers scheduler name: linear, cosine, constant, ...")
    warmup_steps: int = _f(0, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    seed: int = _f(0, "random seed (data order, initialisation of new heads, sampling)")
    save_steps: int = _f(
        50, "write a resumable checkpoint every N steps (in the work folder beside --output)"
    )
    logging_steps: int = _f(1, "log every N steps (train_log.jsonl in the checkpoint)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "auto: bf16 mixed precision on a GPU that supports it, else fp32 (always fp32 on CPU)"
    )
    gradient_checkpointing: bool = _f(False, "trade compute for memory on large models")
    prompt_format: Literal["auto", "chat", "plain"] = _f(
        "auto",
        "chat: the tokenizer's chat template; plain: '### Instruction:' / '### Response:'; auto: chat "
        "when the tokenizer has a template",
    )
    label: str | None = _f(None, "label in the manifest (default: '<base> <STAGE> (<data>)')")
    overwrite: bool = _f(False, "replace an existing checkpoint at --output (and any interrupted run)")
    resume: bool = _f(False, "continue an interrupted run from its last checkpoint")
    trust_remote_code: bool = _f(False, "let transformers run code from the model folder (off unless asked)")

    stage: ClassVar[str] = "base"
    required: ClassVar[tuple[str, ...]] = ("output", "data")

    def validate(self) -> None:
        """Checks that need no files or models: required keys, ranges, combinations."""
        missing = [name for name in self.required if getattr(self, name) in (None, "")]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise TrainInputError(
                f"{self.stage}: missing {flags} (give it as a flag or in the --config file)"
            )
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise TrainInputError(f"{self.stage}: --{name.replace('_', '-')} must be >= 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise TrainInputError(f"{self.stage}: --max-rows must be >= 1")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise TrainInputError(f"{self.stage}: --learning-rate must be > 0")
        if self.overwrite and self.resume:
            raise TrainInputError(f"{self.stage}: --overwrite and --resume exclude each other; pick one")


@dataclass
class SFTStageConfig(_StageConfig):
    """Instruction tuning: full fine-tuning or LoRA on instruction/response data, loss on responses."""

    model: str | None = _f(None, "base model: a bundled name (smollm2), a folder, a .gguf file or a hub id")
    method: Literal["full", "lora"] = _f("full", "full fine-tuning or LoRA")
    max_length: int = _f(512, "tokens per example (longer examples are cut at the end)")
    loss_on_prompt: bool = _f(False, "also train on prompt tokens (default: loss on responses only)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] | None = _f(
        None, "comma-separated module names to adapt, or all-linear (default: peft's choice for the model)"
    )
    merge_lora: bool = _f(
        True, "merge the adapter into the weights (false: write an adapter folder for peft=)"
    )

    stage = "sft"
    required = ("model", "output", "data")

    def validate(self) -> None:
        super().validate()
        if self.method == "lora" and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise TrainInputError("sft: --lora-r must be >= 1 and --lora-alpha > 0")
        if self.max_length < 8:
            raise TrainInputError("sft: --max-length must be >= 8")
        if self.method == "lora" and not 0 <= self.lora_dropout < 1:
            raise TrainInputError("sft: --lora-dropout must be in [0, 1) (a probability)")

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.method == "lora" else 2e-5


@dataclass
class RewardStageConfig(_StageConfig):
    """A reward model (trl ``RewardTrainer``) on chosen/rejected pairs, with held-out pairwise accuracy."""

    model: str | None = _f(
        None, "model to start from: usually the SFT checkpoint; a bundled name, folder, ..."
    )
    max_length: int = _f(512, "tokens per sequence (longer dialogues keep their end)")
    eval_rows: int = _f(200, "pairs held out (taken from the end of the file) for pairwise accuracy; 0: none")

    stage = "reward"
    required = ("model", "output", "data")

    def validate(self) -> None:
        super().validate()
        if self.eval_rows < 0:
            raise TrainInputError("reward: --eval-rows must be >= 0")
        if self.max_length < 8:
            raise TrainInputError("reward: --max-length must be >= 8")

    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else 1e-5


@dataclass
class PPOStageConfig(_StageConfig):
    """PPO (trl 1.12 ``trl.experimental.ppo.PPOTrainer``): the SFT checkpoint is policy and reference."""

    policy: str | None = _f(None, "the SFT checkpoint: policy and (frozen) reference model")
    reward_model: str | None = _f(
        None, "the reward checkpoint (`lm-eval-calib train reward`); also the value init"
    )
    response_length: int = _f(48, "tokens generated per prompt")
    max_prompt_length: int = _f(256, "prompt tokens (longer prompts keep their end)")
    temperature: float = _f(0.7, "sampling temperature of the rollouts")
    kl_coef: float = _f(0.05, "KL penalty coefficient (initial value when --target-kl is set)")
    kl_estimator: Literal["k1", "k3"] = _f("k1", "KL estimator (trl): k1 unbiased, k3 lower variance")
    target_kl: float | None = _f(
        None, "adaptive KL control (Ziegler et al. 2019): steer the coefficient towards this KL per sequence"
    )
    kl_horizon: int = _f(10000, "horizon (episodes) of the adaptive KL controller")
    num_ppo_epochs: int = _f(4, "PPO epochs over each batch of rollouts")
    num_mini_batches: int = _f(1, "mini-batches per PPO epoch")
    cliprange: float = _f(0.2, "policy ratio clip range")
    cliprange_value: float = _f(0.2, "value clip range")
    vf_coef: float = _f(0.1, "value loss coefficient")
    gamma: float = _f(1.0, "discount factor")
    lam: float = _f(0.95, "GAE lambda")
    whiten_rewards: bool = _f(False, "whiten rewards (needs >= 8 rollouts per mini-batch)")
    missing_eos_penalty: float | None = _f(None, "subtract this from the score of a response that never ends")

    stage = "ppo"
    required = ("policy", "reward_model", "output", "data")

    def validate(self) -> None:
        super().validate()
        if self.response_length < 1 or self.max_prompt_length < 1:
            raise TrainInputError("ppo: --response-length and --max-prompt-length must be >= 1")
        for name in ("num_mini_batches", "num_ppo_epochs", "kl_horizon"):
            if getattr(self, name) < 1:  # num_mini_batches 0 was a ZeroDivisionError just below
                raise TrainInputError(f"ppo: --{name.replace('_', '-')} must be >= 1")
        if (self.batch_size * self.gradient_accumulation_steps) % self.num_mini_batches:
            raise TrainInputError(
                "ppo: --batch-size x --gradient-accumulation-steps must be a multiple of --num-mini-batches"
            )
        if (
            self.whiten_rewards
            and self.batch_size * self.gradient_accumulation_steps // self.num_mini_batches < 8
        ):
            raise TrainInputError("ppo: --whiten-rewards needs at least 8 rollouts per mini-batch")
        if self.target_kl is not None and not self.target_kl > 0:
            raise TrainInputError("ppo: --target-kl must be > 0")
        if not self.temperature > 0:
            raise TrainInputError("ppo: --temperature must be > 0")

    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else 3e-6


@dataclass
class RLOOStageConfig(_StageConfig):
    """RLOO (trl ``RLOOTrainer``, Ahmadian et al. 2024): the SFT checkpoint is policy and, frozen,
    reference; the reward checkpoint scores each sampled answer; the reward minus ``kl_coef`` times the
    answer's KL to the reference (as in PPO-RLHF) is compared with the mean reward of the other answers to
    the same prompt."""

    policy: str | None = _f(None, "the SFT checkpoint: policy and (frozen) reference model")
    reward_model: str | None = _f(None, "the reward checkpoint (`lm-eval-calib train reward`)")
    num_generations: int = _f(
        2, "answers sampled per prompt (k >= 2: each is compared with the mean of the other k-1)"
    )
    response_length: int = _f(48, "tokens generated per answer at most")
    max_prompt_length: int = _f(
        256, "prompts longer than this many tokens are skipped (counted in the manifest)"
    )
    temperature: float = _f(0.7, "sampling temperature of the answers")
    kl_coef: float = _f(0.05, "KL penalty coefficient (trl's beta; 0: no reference model, no KL penalty)")
    num_iterations: int = _f(1, "optimisation passes over each batch of answers (trl's mu)")
    cliprange: float = _f(0.2, "policy ratio clip range (trl's epsilon; matters when --num-iterations > 1)")
    normalize_advantages: bool = _f(False, "standardise advantages over each batch")
    missing_eos_penalty: float | None = _f(None, "subtract this from the score of an answer that never ends")

    stage = "rloo"
    required = ("policy", "reward_model", "output", "data")

    def validate(self) -> None:
        super().validate()
        if self.response_length < 1 or self.max_prompt_length < 1:
            raise TrainInputError("rloo: --response-length and --max-prompt-length must be >= 1")
        if self.num_generations < 2:
            raise TrainInputError(
                "rloo: --num-generations must be >= 2 (the baseline is the other answers' mean)"
            )
        if (self.batch_size * self.gradient_accumulation_steps) % self.num_generations:
            raise TrainInputError(
                "rloo: --batch-size x --gradient-accumulation-steps (answers per step) must be a multiple of "
                f"--num-generations ({self.num_generations})"
            )
        if self.num_iterations < 1:
            raise TrainInputError("rloo: --num-iterations must be >= 1")
        if self.kl_coef < 0:
            raise TrainInputError("rloo: --kl-coef must be >= 0")
        if not self.temperature > 0:
            raise TrainInputError("rloo: --temperature must be > 0")
        if not self.cliprange > 0:
            raise TrainInputError("rloo: --cliprange must be > 0")

    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else 3e-6

    def prompts_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps // self.num_generations


STAGES: dict[str, type[_StageConfig]] = {
    "sft": SFTStageConfig,
    "reward": RewardStageConfig,
    "rloo": RLOOStageConfig,
    "ppo": PPOStageConfig,
}
