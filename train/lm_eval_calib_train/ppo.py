"""PPO with trl 1.12's ``trl.experimental.ppo.PPOTrainer`` (trl removed ``PPOTrainer`` in 1.13).

The SFT checkpoint is the policy and, frozen, the reference; the reward checkpoint scores the answers and
initialises the value model (trl's convention). The reward is the score minus ``kl_coef`` times the
per-token KL to the reference (trl's KL penalty); ``--target-kl`` adds Ziegler et al.'s adaptive controller
on top. Every step logs the score (``objective/scores``), the KL (``objective/kl``) and the entropy
(``objective/entropy``) to ``train_log.jsonl``.

trl's ``PPOTrainer.train`` cannot resume, so this stage writes its own resumable checkpoints
(``checkpoint-<step>/``: policy, value model, optimizer, step and KL coefficient; built in a temp folder and
renamed). A resumed run continues the weights, optimizer and learning-rate schedule; its prompts and samples
come from a new random stream (seed + step), not the one the interrupted run would have used.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import PPOStageConfig, TrainInputError
from lm_eval_calib_train.models import (
    ModelRef,
    load_causal_lm,
    load_sequence_classifier,
    require_train_extra,
)
from lm_eval_calib_train.output import build_manifest, note
from lm_eval_calib_train.recipe import optimiser_arguments, precision_flags
from lm_eval_calib_train.rl_inputs import prepare_rl_stage

PPO_KEYS = ("objective/scores", "objective/kl", "objective/entropy", "loss/policy_avg")


def _summary(log: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [entry[key] for entry in log if key in entry]
    return {"first": values[0] if values else None, "last": values[-1] if values else None}


def require_ppo_trainer() -> None:
    """trl 1.13 removed ``PPOTrainer`` (PR #7020): say which extra brings it back before any work starts."""
    import importlib.util

    try:
        found = importlib.util.find_spec("trl.experimental.ppo") is not None
    except ImportError:  # trl.experimental itself is missing
        found = False
    if not found:
        from importlib.metadata import version

        raise TrainInputError(
            f"train ppo needs trl's PPOTrainer, which trl removed in 1.13 (installed: trl {version('trl')}); "
            "install the PPO extra in an environment of its own: pip install 'lm-eval-calib[train-ppo]' "
            "(trl 1.12), or use `lm-eval-calib train rloo`, the RL stage on trl's supported API"
        )


def train_ppo(config: PPOStageConfig, callbacks: list[Any] | None = None) -> Path:
    """Run the PPO stage; return the finished checkpoint folder (the trained policy)."""
    config.validate()
    require_train_extra()
    require_ppo_trainer()
    inputs = prepare_rl_stage(config)
    out, resume_from, data, prompt_messages = inputs.out, inputs.resume_from, inputs.data, inputs.prompts
    policy_ref, reward_ref, tokenizer, formatter = (
        inputs.policy,
        inputs.reward,
        inputs.tokenizer,
        inputs.formatter,
    )
    queries = [formatter.prompt_ids(m, config.max_prompt_length) for m in prompt_messages]
    if any(tokenizer.pad_token_id in q for q in queries):
        raise TrainInputError(
            f"some prompts contain the pad token {tokenizer.pad_token!r}, which PPO treats as padding; "
            "remove it"
        )
    rollout = config.batch_size * config.gradient_accumulation_steps
    if len(queries) < rollout:
        raise TrainInputError(
            f"{len(queries)} prompts are fewer than one batch of rollouts ({rollout} = --batch-size x "
            "--gradient-accumulation-steps); give more prompts or a smaller batch"
        )
    flags = precision_flags(config.precision)

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback, get_scheduler, set_seed

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from lm_eval_calib_train.callbacks import AdaptiveKL, StepLog, quiet

    state: dict[str, Any] = {}
    if resume_from is not None:
        state = json.loads((resume_from / "ppo_state.json").read_text())
        out.trim_log(int(state["global_step"]))
    done = int(state.get("global_step", 0))
    kl_coef = float(state.get("kl_coef", config.kl_coef))
    set_seed(config.seed + done)

    def local(folder: Path) -> ModelRef:
        return ModelRef(str(folder), str(folder), None, folder.name)

    policy = load_causal_lm(
        local(resume_from / "policy") if resume_from else policy_ref, config.trust_remote_code
    )
    reference = load_causal_lm(policy_ref, config.trust_remote_code)
    reward_model = load_sequence_classifier(reward_ref, config.trust_remote_code)
    value_model = load_sequence_classifier(
        local(resume_from / "value") if resume_from else reward_ref, config.trust_remote_code
    )
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    remaining = config.max_steps - done
    log = StepLog(out, "ppo", PPO_KEYS, step_offset=done, max_steps=config.max_steps)
    log.extra["kl_coef"] = kl_coef

    class Checkpoint(TrainerCallback):
        """A resumable checkpoint every ``save_steps`` (not at the last step: the final folder follows)."""

        trainer: Any = None

        def on_step_end(self, args, st, control, **kwargs):
            step = st.global_step + done
            if step % config.save_steps or step >= config.max_steps:
                return
            tmp = out.work / f".checkpoint-{step}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            unwrapped = self.trainer.accelerator.unwrap_model(self.trainer.model)
            unwrapped.policy.save_pretrained(tmp / "policy")
            unwrapped.value_model.save_pretrained(tmp / "value")
            torch.save(self.trainer.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "ppo_state.json").write_text(json.dumps({"global_step": step, "kl_coef": args.kl_coef}))
            os.rename(tmp, out.work / f"checkpoint-{step}")
            for old in out.work.glob("checkpoint-*"):
                if old.name != f"checkpoint-{step}":
                    shutil.rmtree(old, ignore_errors=True)
            out.save_elapsed()

    trained = policy
    if remaining > 0:
        args = PPOConfig(
            **optimiser_arguments(config, flags),
            output_dir=str(out.work),
            seed=config.seed + done,
            total_episodes=remaining * rollout,
            num_ppo_epochs=config.num_ppo_epochs,
            num_mini_batches=config.num_mini_batches,
            response_length=config.response_length,
            temperature=config.temperature,
            kl_coef=kl_coef,
            kl_estimator=config.kl_estimator,
            cliprange=config.cliprange,
            cliprange_value=config.cliprange_value,
            vf_coef=config.vf_coef,
            gamma=config.gamma,
            lam=config.lam,
            whiten_rewards=config.whiten_rewards,
            missing_eos_penalty=config.missing_eos_penalty,
            stop_token_id=formatter.turn_end_id,
            local_rollout_forward_batch_size=rollout,
            num_sample_generations=0,
            logging_steps=1,
            save_strategy="no",
            per_device_eval_batch_size=1,
        )
        checkpoint = Checkpoint()
        extra_callbacks: list[Any] = [log, checkpoint]
        if config.target_kl is not None:
            extra_callbacks.append(AdaptiveKL(config.target_kl, config.kl_horizon, rollout, log))
        rows = [{"input_ids": q} for q in queries]
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows[:1]),
            callbacks=[*extra_callbacks, *(callbacks or [])],
        )
        checkpoint.trainer = trainer
        quiet(trainer)
        out.start_work()
        if resume_from is not None:
            trainer.optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=True))
            base_optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            scheduler = get_scheduler(
                config.lr_scheduler_type,
                base_optimizer,
                num_warmup_steps=config.warmup_steps,
                num_training_steps=config.max_steps,
            )
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(done):
                    scheduler.step()
            trainer.lr_scheduler = scheduler  # the schedule of the whole run, at the resumed step
        trainer.train()
        trained = trainer.accelerator.unwrap_model(trainer.model).policy

    inputs.restore_tokenizer()

    def write_model(folder: Path) -> None:
        trained.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    entries = out.read_log()
    extra = {
        "learning_rate": config.resolved_learning_rate(),
        "prompt_format": formatter.mode,
        "train_rows": len(queries),
        "data_source": data.source,
        "data_format": data.format,
        "reward_model": reward_ref.describe(),
        "stop_token_id": formatter.turn_end_id,
        "rollouts_per_step": rollout,
        "final_kl_coef": log.extra.get("kl_coef"),
    }
    manifest = build_manifest(
        config, policy_ref, data.summary(len(queries)), title="PPO", extra_hyperparameters=extra
    )
    results = {
        "global_step": config.max_steps,
        **{f"{key.split('/')[-1]}": _summary(entries, key) for key in PPO_KEYS},
    }
    folder = out.finalize(write_model, manifest, results)
    note(f"ppo checkpoint written to {folder}")
    return folder
