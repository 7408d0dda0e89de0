"""How a stage is trained: the opening every stage shares (:func:`start_stage`), the ``TrainingArguments``
recipe, and :func:`fit`.

Kept apart from :mod:`lm_eval_calib_train.output` (the checkpoint folder and its manifest) so the import
graph stays one-way: ``recipe`` uses ``callbacks`` and ``output``; ``callbacks`` uses ``output``; ``output``
uses neither. torch and transformers (which ``callbacks`` imports) load only inside the functions, so a
stage module that imports this one still imports cheaply and can check its input before loading them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_calib_train.config import TrainInputError
from lm_eval_calib_train.data import DataSource, read_data
from lm_eval_calib_train.output import StageOutput, run_inputs
from lm_eval_calib_train.ranks import is_main, process_group_arguments

if TYPE_CHECKING:
    from lm_eval_calib_train.config import _StageConfig
    from lm_eval_calib_train.models import ModelRef


def precision_flags(precision: str) -> dict[str, bool]:
    """``bf16``/``fp16`` trainer flags: mixed precision only where it helps (a GPU), fp32 weights always."""
    import torch

    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not on_gpu:
        raise TrainInputError(f"--precision {precision} needs a GPU; use fp32 (or auto) on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def optimiser_arguments(config: _StageConfig, flags: dict[str, bool]) -> dict[str, Any]:
    """The ``TrainingArguments`` of every stage, PPO's included: batch, optimiser, schedule, activation
    checkpointing, precision ``flags``, and no reporting, workers or progress bars."""
    return dict(
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.resolved_learning_rate(),
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        report_to="none",
        **checkpointing_flag(config.gradient_checkpointing),
        dataloader_num_workers=0,
        disable_tqdm=True,
        **process_group_arguments(),
        **flags,
    )


def trainer_arguments(config: _StageConfig, work: Path, flags: dict[str, bool]) -> dict[str, Any]:
    """The arguments SFT and reward share: :func:`optimiser_arguments` plus seeds, logging and resumable
    checkpoints in ``work`` (two kept); a stage adds only its own (e.g. ``packing``). PPO saves its own
    checkpoints, so it takes :func:`optimiser_arguments` only."""
    import torch

    return dict(
        **optimiser_arguments(config, flags),
        output_dir=str(work),
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=None,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def fit(trainer: Any, out: StageOutput, resume_from: Path | None) -> Any:
    """Train ``trainer`` (SFT or reward) quietly, from ``resume_from`` (a ``checkpoint-N`` folder) when given,
    after cutting the step log back to step N so the resumed steps are not logged twice."""
    from lm_eval_calib_train.callbacks import quiet  # loads transformers: only once training starts

    quiet(trainer)
    if is_main():
        out.start_work()
        if resume_from is not None:
            out.trim_log(int(resume_from.name.rsplit("-", 1)[1]))
    trainer.accelerator.wait_for_everyone()  # the work folder is ready before any rank saves there
    if resume_from is None:
        return trainer.train()
    return trainer.train(resume_from_checkpoint=str(resume_from))


def checkpointing_flag(enabled: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing under this transformers' name (trl turns it on by default)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing": enabled
    }


@dataclass(frozen=True)
class StageStart:
    """What every stage has checked and read before it loads a tokenizer or any weights."""

    out: StageOutput
    resume_from: Path | None
    """The checkpoint ``--resume`` continues from (None: a fresh run)."""
    models: dict[str, ModelRef]
    """Each model flag (``--model``, ``--policy``, ...) and the model it names."""
    data: DataSource


def start_stage(config: _StageConfig, models: Callable[[], dict[str, ModelRef]]) -> StageStart:
    """The opening all stages share, in this order so that the cheapest refusal comes first: the output folder
    (is it free, or a run to resume?), the models (``models()`` resolves and checks each flag's model), the
    data, and, with ``--resume``, that these are the inputs the interrupted run had."""
    out = StageOutput(config.output, overwrite=config.overwrite, resume=config.resume)
    resume_from = out.preflight()
    refs = models()
    data = read_data(config.data, config.data_format, config.data_name)
    out.check_inputs(run_inputs(config, data, refs))  # --resume: only the same run
    return StageStart(out, resume_from, refs, data)
