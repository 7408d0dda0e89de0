"""Instruction tuning (full or LoRA) with trl's ``SFTTrainer`` on examples tokenised here, so the loss
covers exactly the response tokens (see :mod:`lm_eval_calib_train.formatting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import SFTStageConfig, TrainInputError
from lm_eval_calib_train.data import conversations
from lm_eval_calib_train.formatting import Formatter
from lm_eval_calib_train.models import (
    check_lora_targets,
    ensure_pad_token,
    load_causal_lm,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)
from lm_eval_calib_train.output import build_manifest, note
from lm_eval_calib_train.ranks import global_batch, sharded_weights
from lm_eval_calib_train.recipe import fit, precision_flags, start_stage, trainer_arguments

LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora")


def tokenize_examples(
    config: SFTStageConfig, formatter: Formatter, examples: list
) -> list[dict[str, list[int]]]:
    rows = []
    for messages in examples:
        example = formatter.sft_example(messages, config.max_length, config.loss_on_prompt)
        if example is not None:
            rows.append({"input_ids": example[0], "labels": example[1]})
    if not rows:
        raise TrainInputError(
            f"no example keeps a response token within --max-length {config.max_length}; raise --max-length"
        )
    return rows


def train_sft(config: SFTStageConfig, callbacks: list[Any] | None = None) -> Path:
    """Run the SFT stage; return the finished checkpoint folder (a merged model, or an adapter folder)."""
    config.validate()
    require_train_extra()
    start = start_stage(config, lambda: {"--model": resolve_model(config.model, config.gguf_file)})
    out, resume_from, ref, data = start.out, start.resume_from, start.models["--model"], start.data
    examples = conversations(data)
    if config.max_rows:
        examples = examples[: config.max_rows]
    tokenizer = load_tokenizer(ref, config.trust_remote_code)
    ensure_pad_token(tokenizer, distinct=False)
    formatter = Formatter(tokenizer, config.prompt_format)
    rows = tokenize_examples(config, formatter, examples)
    flags = precision_flags(config.precision)

    import torch  # noqa: F401 - heavy imports only once the input is known to be good
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from lm_eval_calib_train.callbacks import SkipFinalSave, StepLog

    set_seed(config.seed)
    model = load_causal_lm(ref, config.trust_remote_code)
    extra: dict[str, Any] = {
        "learning_rate": config.resolved_learning_rate(),
        "prompt_format": formatter.mode,
        "train_rows": len(rows),
        "dropped_rows": len(examples) - len(rows),
        "data_source": data.source,
        "data_format": data.format,
        "effective_batch_size": global_batch(config.batch_size, config.gradient_accumulation_steps),
    }
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, config.lora_target_modules, ref.describe())
        targets = config.lora_target_modules
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise TrainInputError(f"LoRA cannot be applied to {ref.describe()}: {exc}") from None
        resolved = model.peft_config["default"].target_modules
        extra["lora_target_modules"] = sorted(resolved) if isinstance(resolved, (set, list)) else resolved
        extra["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    args = SFTConfig(**trainer_arguments(config, out.work, flags), packing=False)
    log = StepLog(out, "sft", ("loss", "mean_token_accuracy"), max_steps=config.max_steps)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[log, SkipFinalSave(), *(callbacks or [])],
    )
    result = fit(trainer, out, resume_from)
    losses = [e["loss"] for e in out.read_log() if "loss" in e]

    trained = trainer.model
    weights = sharded_weights(trainer) if config.method == "full" else None  # all ranks: a collective
    if config.method == "lora" and config.merge_lora:
        method = "lora"
        trained = trained.merge_and_unload()
    elif config.method == "lora":
        method = "lora-adapter"
    else:
        method = "full"

    def write_model(folder: Path) -> None:
        trained.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)

    kind = {"full": "full", "lora": "LoRA", "lora-adapter": "LoRA adapter"}[method]
    manifest = build_manifest(
        config,
        ref,
        data.summary(len(rows)),
        title=f"SFT {kind}",
        method=method,
        extra_hyperparameters=extra,
        exclude=() if config.method == "lora" else LORA_FIELDS,
    )
    results = {
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    folder = out.finalize(write_model, manifest, results)
    note(
        f"sft checkpoint written to {folder}"
        + (f" (adapter for base {ref.describe()})" if method == "lora-adapter" else "")
    )
    return folder
