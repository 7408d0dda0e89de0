"""The checkpoint folder a stage writes, written so that a killed run never leaves one that looks complete.

For ``--output PARENT/NAME``:

- ``PARENT/.NAME.work/`` holds the resumable trainer checkpoints (``checkpoint-<step>``), the step log and
  the wall time so far. It survives an interruption; ``--resume`` continues from its last complete
  checkpoint (one whose ``trainer_state.json``, written last, exists).
- the finished model is written to ``PARENT/.NAME.tmp-<pid>/`` (model, tokenizer, ``train_log.jsonl``,
  ``train_results.json``, then the manifest) and renamed to ``PARENT/NAME`` in one step; only then is the
  work folder removed. ``PARENT/NAME`` therefore exists only when it is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lm_eval_calib.manifest import MANIFEST_NAME, write_manifest
from lm_eval_calib_train.config import TrainInputError

CHECKPOINT_MARKERS = ("config.json", "adapter_config.json", MANIFEST_NAME, "model.safetensors")
LOG_NAME = "train_log.jsonl"
RESULTS_NAME = "train_results.json"
ELAPSED_NAME = "elapsed.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def note(message: str) -> None:
    print(f"lm-eval-calib train: {message}", file=sys.stderr, flush=True)


class StageOutput:
    """Where one stage writes, and the rules for an existing output or an interrupted run."""

    def __init__(self, output: str | Path, overwrite: bool = False, resume: bool = False):
        self.final = Path(output).expanduser().absolute()
        self.parent = self.final.parent
        self.work = self.parent / f".{self.final.name}.work"
        self.overwrite, self.resume = overwrite, resume
        self.started = time.time()
        self.elapsed_before = 0.0

    def preflight(self) -> Path | None:
        """Check the output before anything is loaded; return the checkpoint to resume from, if any."""
        final = self.final
        if final.exists():
            if not final.is_dir():
                raise TrainInputError(f"--output {final} exists and is not a folder; choose another --output")
            contents = list(final.iterdir())
            is_checkpoint = any((final / marker).exists() for marker in CHECKPOINT_MARKERS)
            if contents and not is_checkpoint:
                raise TrainInputError(
                    f"--output {final} exists and holds files that are not a checkpoint; choose another "
                    "--output (nothing there is deleted, even with --overwrite)"
                )
            if is_checkpoint and not self.overwrite:
                if self.resume and self.last_checkpoint() is not None:
                    pass  # an interrupted --overwrite run: finish it, then replace the old checkpoint
                elif self.resume:
                    raise TrainInputError(
                        f"--output {final} already holds a finished checkpoint: nothing to resume; pass "
                        "--overwrite to train it again"
                    )
                else:
                    raise TrainInputError(
                        f"--output {final} already holds a checkpoint; pass --overwrite to replace it, or "
                        "choose another --output"
                    )
        self.parent.mkdir(parents=True, exist_ok=True)
        if self.work.exists():
            if self.resume:
                last = self.last_checkpoint()
                if last is None:
                    note(f"no complete checkpoint in {self.work} to resume from; starting from the beginning")
                    shutil.rmtree(self.work)
                else:
                    note(f"resuming from {last}")
                    self.elapsed_before = self._read_elapsed()
                    return last
            elif self.overwrite:
                shutil.rmtree(self.work)
            else:
                raise TrainInputError(
                    f"an interrupted run left checkpoints in {self.work}; pass --resume to continue it or "
                    "--overwrite to start over"
                )
        elif self.resume:
            note(f"no interrupted run at {self.work}; starting from the beginning")
        return None

    def last_checkpoint(self) -> Path | None:
        """The newest complete ``checkpoint-<step>`` in the work folder."""
        best: tuple[int, Path] | None = None
        if not self.work.is_dir():
            return None
        for path in self.work.iterdir():
            match = _CHECKPOINT.match(path.name)
            complete = (path / "trainer_state.json").is_file() or (path / "ppo_state.json").is_file()
            if match and path.is_dir() and complete and (best is None or int(match.group(1)) > best[0]):
                best = (int(match.group(1)), path)
        return best[1] if best else None

    # -- wall time across interruptions --------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.started)

    def _read_elapsed(self) -> float:
        try:
            return float(json.loads((self.work / ELAPSED_NAME).read_text())["elapsed_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def save_elapsed(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.work / f".{ELAPSED_NAME}.tmp"
        tmp.write_text(json.dumps({"elapsed_s": self.elapsed()}))
        os.replace(tmp, self.work / ELAPSED_NAME)

    # -- the step log ---------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.work / LOG_NAME

    def trim_log(self, upto_step: int) -> None:
        """Drop log lines of steps after the resumed checkpoint (the interrupted run's unsaved steps)."""
        if not self.log_path.is_file():
            return
        kept = [
            line
            for line in self.log_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= upto_step
        ]
        self.log_path.write_text("".join(line + "\n" for line in kept))

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    # -- finishing ------------------------------------------------------------------------------------
    def finalize(self, write_model, manifest: dict[str, Any], results: dict[str, Any]) -> Path:
        """Write the model with ``write_model(folder)``, then logs and manifest, then rename into place."""
        tmp = self.parent / f".{self.final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            write_model(tmp)
            if self.log_path.is_file():
                shutil.copyfile(self.log_path, tmp / LOG_NAME)
            (tmp / RESULTS_NAME).write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
            manifest = {**manifest, "wall_time_s": round(self.elapsed(), 2)}
            write_manifest(tmp, manifest)  # last: a folder with a manifest is a finished one
            if self.final.exists():  # --overwrite (checked in preflight) or an empty folder
                old = self.parent / f".{self.final.name}.old-{os.getpid()}"
                os.rename(self.final, old)
                os.rename(tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, self.final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.work, ignore_errors=True)
        return self.final


# ---------------------------------------------------------------------------------------------------------
# Manifest


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in ("lm-eval-calib", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


NOT_HYPERPARAMETERS = {
    "output",
    "data",
    "data_name",
    "label",
    "overwrite",
    "resume",
    "model",
    "policy",
    "gguf_file",
    "trust_remote_code",
    "logging_steps",
    "save_steps",
}


def build_manifest(
    config: Any,
    *,
    stage: str,
    method: str,
    label: str,
    base_model: str,
    parent: str | None,
    data_name: str,
    rows: int,
    sha256: str,
    extra_hyperparameters: dict[str, Any],
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    hyper = {k: v for k, v in asdict(config).items() if k not in NOT_HYPERPARAMETERS and k not in exclude}
    hyper.update(extra_hyperparameters)
    return {
        "stage": stage,
        "method": method,
        "label": config.label or label,
        "base_model": base_model,
        "parent": parent,
        "data": {"name": data_name, "rows": rows, "sha256": sha256},
        "hyperparameters": hyper,
        "versions": library_versions(),
        "seed": config.seed,
        "wall_time_s": None,  # filled in by finalize
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def precision_flags(precision: str) -> dict[str, bool]:
    """``bf16``/``fp16`` trainer flags: mixed precision only where it helps (a GPU), fp32 weights always."""
    import torch

    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not on_gpu:
        raise TrainInputError(f"--precision {precision} needs a GPU; use fp32 (or auto) on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def optimiser_arguments(config, flags: dict) -> dict:
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
        **flags,
    )


def trainer_arguments(config, work: Path, flags: dict) -> dict:
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


def fit(trainer, out: StageOutput, resume_from: Path | None):
    """Train ``trainer`` (SFT or reward) quietly, from ``resume_from`` (a ``checkpoint-N`` folder) when given,
    after cutting the step log back to step N so the resumed steps are not logged twice."""
    from lm_eval_calib_train.callbacks import quiet

    quiet(trainer)
    if resume_from is None:
        return trainer.train()
    out.trim_log(int(resume_from.name.rsplit("-", 1)[1]))
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
