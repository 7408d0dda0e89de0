"""Trainer callbacks shared by the stages: the step log, wall time at each checkpoint, adaptive KL control."""

from __future__ import annotations

import json
import math

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lm_eval_calib_train.output import StageOutput, note


class StepLog(TrainerCallback):
    """Append every logged step to ``train_log.jsonl`` (kept in the finished checkpoint); echo a short line.

    ``step_offset`` is for PPO, whose trainer counts from 0 again after a resume.
    """

    def __init__(
        self,
        output: StageOutput,
        stage: str,
        keys: tuple[str, ...],
        step_offset: int = 0,
        max_steps: int | None = None,
    ):
        self.output, self.stage, self.keys = output, stage, keys
        self.step_offset, self.max_steps = step_offset, max_steps
        self.extra: dict[str, float] = {}  # values another callback wants in the same line (kl_coef)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        step = state.global_step + self.step_offset
        entry = {"step": step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}, **self.extra}
        entry["elapsed_s"] = round(self.output.elapsed(), 2)
        self.output.work.mkdir(parents=True, exist_ok=True)
        with self.output.log_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        shown = [f"{k.rsplit('/', 1)[-1]} {entry[k]:.4g}" for k in self.keys if k in entry]
        if shown:
            total = f"/{self.max_steps}" if self.max_steps else ""
            note(f"{self.stage} step {step}{total}: " + ", ".join(shown))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # one writer of the work folder's files
            self.output.save_elapsed()


class SkipFinalSave(TrainerCallback):
    """No trainer checkpoint after the last step: the stage writes the finished model itself right away, so a
    last resumable copy (weights plus optimizer state: three times the model) would only be written and
    deleted. Must come after transformers' own flow callback, which asks for that save."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = False


class AdaptiveKL(TrainerCallback):
    """Ziegler et al. (2019)'s adaptive KL controller for trl's PPO, which reads ``args.kl_coef`` each step.

    After each step: ``e = clip(KL / target - 1, -0.2, 0.2)``, ``kl_coef *= 1 + e * batch / horizon``.
    """

    def __init__(self, target: float, horizon: int, batch_size: int, log: StepLog):
        self.target, self.horizon, self.batch_size, self.log = target, horizon, batch_size, log

    def on_log(self, args, state, control, logs=None, **kwargs):
        kl = (logs or {}).get("objective/kl")
        if kl is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        args.kl_coef = float(args.kl_coef * (1.0 + error * self.batch_size / self.horizon))
        self.log.extra["kl_coef"] = args.kl_coef


class StopAfter(TrainerCallback):
    """Raise ``KeyboardInterrupt`` once ``step`` is done: an interruption at a known point (used by the tests
    and handy to try ``--resume``)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {self.step}")


def quiet(trainer) -> None:
    """Drop transformers' printer / progress bar: :class:`StepLog` prints one short line per logged step."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
