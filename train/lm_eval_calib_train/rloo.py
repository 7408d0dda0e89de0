"""RLOO with trl's ``RLOOTrainer`` (stable API; Ahmadian et al. 2024, "Back to Basics: Revisiting
REINFORCE-Style Optimization for Learning from Human Feedback in LLMs"): the RL stage on trl's supported
API now that trl 1.13 removed ``PPOTrainer``.

Why RLOO rather than GRPO (both in trl's stable API, both take a reward model through ``reward_funcs``): trl
documents that RLOO applies the KL to the reference as a penalty on the reward, summed over the answer's
tokens with the k1 estimator (``reward - beta * KL``), the RLHF objective the paper's PPO stage optimises
(trl's ``PPOTrainer`` did the same); GRPO adds the KL to the per-token loss instead. RLOO's advantage is the
reward minus the mean reward of the other answers to the same prompt, in the reward model's own units (no
division by the group's standard deviation unless ``--normalize-advantages``); and RLOO was proposed for
RLHF with a learned reward model, GRPO for verifiable rewards.

The reward model is the scorer, handed to trl as a reward function (:class:`RewardModelScorer`) rather than
as a bare model: trl scores a bare sequence-classification model on the answer decoded without special
tokens and re-rendered through the chat template, which drops the end-of-turn token our reward model reads
its score at (:meth:`~lm_eval_calib_train.formatting.Formatter.reward_ids`), appends the template's trailing
newline, and scores an unfinished answer as if it had ended. The scorer reads the prompt's and answer's
token ids exactly as the policy saw and wrote them, the way ``train reward`` tokenised its pairs and PPO
scored its rollouts.

Prompts are given to trl as conversations (``--prompt-format chat``: trl renders them with the tokenizer's
template, as :class:`~lm_eval_calib_train.formatting.Formatter` does) or as text (``plain``); prompts longer
than ``--max-prompt-length`` tokens are skipped, not cut (cutting a chat prompt would drop its header). The
trainer is a ``transformers.Trainer``, so its checkpoints resume like SFT's (weights, optimizer, schedule
and random state). Every step logs the reward (``reward``), the KL to the reference per answer token
(``kl``) and the entropy to ``train_log.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval_calib_train.config import RLOOStageConfig, TrainInputError
from lm_eval_calib_train.models import (
    load_causal_lm,
    load_sequence_classifier,
    require_train_extra,
)
from lm_eval_calib_train.output import build_manifest, note
from lm_eval_calib_train.ranks import global_batch, sharded_weights
from lm_eval_calib_train.recipe import fit, precision_flags, trainer_arguments
from lm_eval_calib_train.rl_inputs import prepare_rl_stage

RLOO_KEYS = ("reward", "kl", "entropy", "loss")
REFERENCE_DIR = "reference"  # in the work folder: a GGUF policy saved as a plain folder trl can reload


def require_rloo_trainer() -> None:
    """``RLOOTrainer`` with reward functions that receive ``completion_ids`` (trl's stable API; tested with
    trl 1.12 and 1.16): checked from the installed version, without importing trl (seconds), so bad input
    is refused at once."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        installed = version("trl")
    except PackageNotFoundError:
        installed = None
    if installed is None or Version(installed) < Version("1.12"):
        raise TrainInputError(
            f"train rloo needs trl >= 1.12 (installed: {installed or 'none'}); install the training extra: "
            "pip install 'lm-eval-calib[train]'"
        )


class RewardModelScorer:
    """A trl reward function that scores each answer with our reward model on the exact token ids the policy
    saw (``prompt_token_ids``, a dataset column trl passes through) and wrote (``completion_ids``, cut by trl
    after the first stop token), the input ``train reward`` trained it on. ``missing_eos_penalty`` is taken
    off the score of an answer that hit ``--response-length`` without a stop token (as in trl's PPO)."""

    __name__ = "reward_model"  # trl logs ``rewards/<__name__>/mean``

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        stop_ids: list[int],
        missing_eos_penalty: float | None = None,
        batch_size: int = 8,
    ):
        self.model = model.eval()
        self.pad_token_id, self.stop_ids = pad_token_id, set(stop_ids)
        self.missing_eos_penalty, self.batch_size = missing_eos_penalty, batch_size

    def score(self, sequences: list[list[int]]) -> list[float]:
        """The reward model's score of each token sequence (right-padded, read at its last real token)."""
        import torch

        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(seq) for seq in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores += logits[:, 0].float().tolist()
        return scores

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        prompt_token_ids: list[list[int]],
        **kwargs: Any,
    ) -> list[float]:
        answers = [list(ids) for ids in completion_ids]
        scores = self.score([list(p) + a for p, a in zip(prompt_token_ids, answers, strict=True)])
        if self.missing_eos_penalty:
            scores = [
                s - self.missing_eos_penalty if not a or a[-1] not in self.stop_ids else s
                for s, a in zip(scores, answers, strict=True)
            ]
        return scores


def trl_prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    """The token ids trl's ``RLOOTrainer`` generates from for ``prompt``: a conversation goes through the chat
    template with the generation prompt; a text through the tokenizer with its special tokens."""
    if isinstance(prompt, list):
        rendered = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(rendered["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


def _summary(log: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [entry[key] for entry in log if key in entry]
    return {"first": values[0] if values else None, "last": values[-1] if values else None}


def train_rloo(config: RLOOStageConfig, callbacks: list[Any] | None = None) -> Path:
    """Run the RLOO stage; return the finished checkpoint folder (the trained policy)."""
    config.validate()
    require_train_extra()
    require_rloo_trainer()
    inputs = prepare_rl_stage(config)
    out, resume_from, data, prompt_messages = inputs.out, inputs.resume_from, inputs.data, inputs.prompts
    policy_ref, reward_ref, tokenizer, formatter = (
        inputs.policy,
        inputs.reward,
        inputs.tokenizer,
        inputs.formatter,
    )

    rows: list[dict[str, Any]] = []
    for messages in prompt_messages:
        prompt = messages if formatter.mode == "chat" else formatter.prompt_text(messages)
        ids = trl_prompt_ids(tokenizer, prompt)
        if len(ids) <= config.max_prompt_length:
            if not rows and ids != formatter.prompt_ids(messages):  # checked once: a property of the template
                raise TrainInputError(
                    f"trl tokenises the {formatter.mode} prompts differently from the SFT and reward stages; "
                    "use --prompt-format plain"
                )
            rows.append({"prompt": prompt, "prompt_token_ids": ids})
    needed = config.prompts_per_step()
    if len(rows) < needed:
        raise TrainInputError(
            f"{len(rows)} of {len(prompt_messages)} prompts fit in --max-prompt-length "
            f"{config.max_prompt_length}, fewer than one step needs ({needed} = --batch-size x "
            "--gradient-accumulation-steps / --num-generations); raise --max-prompt-length, give more "
            "prompts or a smaller batch"
        )
    flags = precision_flags(config.precision)

    import torch  # noqa: F401 - heavy imports only once the input is known to be good
    from datasets import Dataset
    from transformers import set_seed
    from trl import RLOOConfig, RLOOTrainer

    from lm_eval_calib_train.callbacks import SkipFinalSave, StepLog

    set_seed(config.seed)
    policy = load_causal_lm(policy_ref, config.trust_remote_code)
    if config.kl_coef > 0 and policy_ref.gguf_file:
        # trl builds the reference by reloading the policy from config.name_or_path, which cannot name a GGUF
        # file: give it the de-quantised weights as a plain folder (kept with the run's checkpoints)
        reference = out.work / REFERENCE_DIR
        if not (reference / "config.json").is_file():
            out.start_work()
            policy.save_pretrained(reference)
        policy.config.name_or_path = str(reference)
    reward_model = load_sequence_classifier(reward_ref, config.trust_remote_code)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward_model.requires_grad_(False)

    stop_ids = list(dict.fromkeys([formatter.turn_end_id, int(tokenizer.eos_token_id)]))
    saved_eos = policy.generation_config.eos_token_id
    policy.generation_config.eos_token_id = stop_ids  # trl stops and cuts answers at these
    scorer = RewardModelScorer(
        reward_model,
        tokenizer.pad_token_id,
        stop_ids,
        config.missing_eos_penalty,
        batch_size=config.batch_size,
    )
    arguments = trainer_arguments(config, out.work, flags)
    arguments.pop("max_length")  # RLOO's lengths are --max-prompt-length (checked here) and --response-length
    args = RLOOConfig(
        **arguments,
        num_generations=config.num_generations,
        max_completion_length=config.response_length,
        temperature=config.temperature,
        beta=config.kl_coef,
        num_iterations=config.num_iterations,
        epsilon=config.cliprange,
        normalize_advantages=config.normalize_advantages,
        disable_dropout=True,  # the policy's and reference's log-probabilities must agree at step 0
        remove_unused_columns=False,  # the scorer reads prompt_token_ids
        log_completions=False,
    )
    log = StepLog(out, "rloo", ("reward", "kl", "entropy"), max_steps=config.max_steps)
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=[scorer],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[log, SkipFinalSave(), *(callbacks or [])],
    )
    reward_model.to(trainer.accelerator.device)
    result = fit(trainer, out, resume_from)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    weights = sharded_weights(trainer)  # all ranks: a collective under DeepSpeed / FSDP
    trained.generation_config.eos_token_id = saved_eos  # the checkpoint keeps its parent's generation config
    trained.config.name_or_path = policy_ref.source

    inputs.restore_tokenizer()

    def write_model(folder: Path) -> None:
        trained.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)

    entries = out.read_log()
    extra = {
        "learning_rate": config.resolved_learning_rate(),
        "prompt_format": formatter.mode,
        "train_rows": len(rows),
        "skipped_long_prompts": len(prompt_messages) - len(rows),
        "data_source": data.source,
        "data_format": data.format,
        "reward_model": reward_ref.describe(),
        "stop_token_ids": stop_ids,
        "answers_per_step": global_batch(config.batch_size, config.gradient_accumulation_steps),
        "prompts_per_step": global_batch(config.batch_size, config.gradient_accumulation_steps)
        // config.num_generations,
    }
    manifest = build_manifest(
        config, policy_ref, data.summary(len(rows)), title="RLOO", extra_hyperparameters=extra
    )
    results = {
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        **{key: _summary(entries, key) for key in RLOO_KEYS},
    }
    folder = out.finalize(write_model, manifest, results)
    note(f"rloo checkpoint written to {folder}")
    return folder
