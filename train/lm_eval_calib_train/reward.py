"""A reward model: trl's ``RewardTrainer`` (Bradley-Terry loss on chosen/rejected pairs) on a one-output
sequence classifier started from the given model; pairwise accuracy on held-out pairs at the end.

Each side is tokenised here as prompt + answer + end-of-turn token (see
:meth:`~lm_eval_calib_train.formatting.Formatter.reward_ids`), with a pad token distinct from EOS, so the
score is read at the end-of-turn token: the same place PPO reads it on the policy's own answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import RewardStageConfig, TrainInputError
from lm_eval_calib_train.data import Conversation, preference_pairs
from lm_eval_calib_train.formatting import Formatter
from lm_eval_calib_train.models import (
    ensure_pad_token,
    load_sequence_classifier,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)
from lm_eval_calib_train.output import build_manifest, note
from lm_eval_calib_train.ranks import global_batch, sharded_weights
from lm_eval_calib_train.recipe import fit, precision_flags, start_stage, trainer_arguments


def split_pairs(pairs: list, eval_rows: int, max_rows: int | None) -> tuple[list, list]:
    """Held-out pairs from the end of the file, training pairs from its start (disjoint, deterministic)."""
    if eval_rows >= len(pairs):
        raise TrainInputError(
            f"the data hold {len(pairs)} pairs, not more than --eval-rows {eval_rows}; lower --eval-rows"
        )
    train = pairs[: len(pairs) - eval_rows]
    held_out = pairs[len(pairs) - eval_rows :]
    return (train[:max_rows] if max_rows else train), held_out


def tokenize_pairs(formatter: Formatter, pairs: list[tuple[Conversation, Conversation]], max_length: int):
    return [
        {
            "chosen_ids": formatter.reward_ids(chosen, max_length),
            "rejected_ids": formatter.reward_ids(rejected, max_length),
        }
        for chosen, rejected in pairs
    ]


def train_reward(config: RewardStageConfig, callbacks: list[Any] | None = None) -> Path:
    """Run the reward stage; return the checkpoint folder (a ``*ForSequenceClassification`` model)."""
    config.validate()
    require_train_extra()
    start = start_stage(config, lambda: {"--model": resolve_model(config.model, config.gguf_file)})
    out, resume_from, ref, data = start.out, start.resume_from, start.models["--model"], start.data
    train_pairs, held_out = split_pairs(preference_pairs(data), config.eval_rows, config.max_rows)
    tokenizer = load_tokenizer(ref, config.trust_remote_code)
    ensure_pad_token(tokenizer, distinct=True)
    formatter = Formatter(tokenizer, config.prompt_format)
    train_rows = tokenize_pairs(formatter, train_pairs, config.max_length)
    eval_rows = tokenize_pairs(formatter, held_out, config.max_length)
    flags = precision_flags(config.precision)

    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from lm_eval_calib_train.callbacks import SkipFinalSave, StepLog

    set_seed(config.seed)  # the new score head is initialised from this seed
    model = load_sequence_classifier(ref, config.trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        **trainer_arguments(config, out.work, flags),
        per_device_eval_batch_size=config.batch_size,
        eval_strategy="no",
    )
    log = StepLog(out, "reward", ("loss", "accuracy", "margin"), max_steps=config.max_steps)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        callbacks=[log, SkipFinalSave(), *(callbacks or [])],
    )
    result = fit(trainer, out, resume_from)
    held_out_accuracy = None
    if eval_rows:
        metrics = trainer.evaluate(Dataset.from_list(eval_rows))
        held_out_accuracy = metrics.get("eval_accuracy")
        note(f"reward: pairwise accuracy on {len(eval_rows)} held-out pairs: {held_out_accuracy:.3f}")

    weights = sharded_weights(trainer)  # all ranks: a collective under DeepSpeed / FSDP

    def write_model(folder: Path) -> None:
        trainer.model.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)

    extra = {
        "learning_rate": config.resolved_learning_rate(),
        "prompt_format": formatter.mode,
        "train_rows": len(train_rows),
        "held_out_rows": len(eval_rows),
        "data_source": data.source,
        "data_format": data.format,
        "pad_token": tokenizer.pad_token,
        "effective_batch_size": global_batch(config.batch_size, config.gradient_accumulation_steps),
    }
    manifest = build_manifest(
        config, ref, data.summary(len(train_rows)), title="RM", extra_hyperparameters=extra
    )
    results = {
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "held_out_accuracy": held_out_accuracy,
        "held_out_pairs": len(eval_rows),
    }
    folder = out.finalize(write_model, manifest, results)
    note(f"reward checkpoint written to {folder}")
    return folder
