"""Which model a stage starts from, and loading it so that it can be trained and saved.

``--model`` (or ``--policy``) may be a bundled model name (``smollm2``), a folder (with ``--gguf-file`` when
it holds a GGUF file), a ``.gguf`` file, or a hub id. transformers reads GGUF weights de-quantised, but such
a model refuses ``save_pretrained`` ("quantized with gguf and is not serializable"), so every GGUF-loaded
model is rebuilt from its config without the quantisation record and given the de-quantised weights: the
trained checkpoint is then a normal float32 folder that ``lm_eval --model hf`` (and vLLM) loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_calib.manifest import read_manifest
from lm_eval_calib.paths import looks_like_local_path
from lm_eval_calib_train.config import TrainInputError


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, resolved to what ``from_pretrained`` needs."""

    spec: str  # as given (bundled name, folder, file or hub id)
    source: str  # folder or hub id
    gguf_file: str | None
    display: str  # short name for labels
    bundled: bool = False  # a model installed from the package registry (smollm2, ...)

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def manifest(self) -> dict[str, Any] | None:
        folder = Path(self.source)
        return read_manifest(folder) if folder.is_dir() else None

    def base_model(self) -> str:
        """The model the chain of stages started from (this one, unless it came from a stage here)."""
        manifest = self.manifest()
        if manifest and manifest.get("base_model"):
            return str(manifest["base_model"])
        if self.bundled or not Path(self.source).is_dir():
            return self.spec  # a bundled name or a hub id: the same on every machine
        return self.describe()

    def describe(self) -> str:
        return f"{self.source} ({self.gguf_file})" if self.gguf_file else self.source

    def base_display(self) -> str:
        manifest = self.manifest()
        if manifest and manifest.get("label"):
            # labels are "<base> <STAGE ...> (<data>)"; the first word is the base's short name
            return str(manifest["label"]).split(" ", 1)[0]
        return self.display


_QUANT_SUFFIX = re.compile(r"[._-](?:I?Q\d[A-Z0-9_]*|BF16|F16|F32)$", re.IGNORECASE)


def _gguf_display(name: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct``; ``gemma-3-270m-q4_k_m.gguf`` ->
    ``gemma-3-270m``: the model, without its quantisation."""
    stem = name[: -len(".gguf")] if name.endswith(".gguf") else name
    return _QUANT_SUFFIX.sub("", stem) or stem


def resolve_model(spec: str, gguf_file: str | None = None, what: str = "--model") -> ModelRef:
    """Resolve a model reference without loading anything; errors say what to pass instead."""
    try:
        from lm_eval_calib.bundled_models import BUNDLED_MODELS
    except ImportError:  # pragma: no cover - the add-on always ships with lm_eval_calib
        BUNDLED_MODELS = {}
    if spec in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[spec]
        try:
            folder = bundled.folder()
        except FileNotFoundError as exc:
            raise TrainInputError(f"{what} {spec}: {exc.args[0]}") from None
        return ModelRef(spec, str(folder), bundled.gguf_file, _gguf_display(bundled.gguf_file), bundled=True)
    path = Path(spec).expanduser()
    if path.is_file():
        if not path.name.endswith(".gguf"):
            raise TrainInputError(f"{what} {spec} is a file but not a .gguf file; pass the model folder")
        return ModelRef(spec, str(path.parent.resolve()), path.name, _gguf_display(path.name))
    if path.is_dir():
        folder = path.resolve()
        if gguf_file:
            if not (folder / gguf_file).is_file():
                raise TrainInputError(f"{what} {spec}: --gguf-file {gguf_file} is not in that folder")
            return ModelRef(spec, str(folder), gguf_file, _gguf_display(gguf_file))
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            raise TrainInputError(
                f"{what} {spec} is a LoRA adapter folder; train from a merged checkpoint (sft --method lora "
                "merges by default) or from its base model"
            )
        if not (folder / "config.json").is_file():
            ggufs = sorted(p.name for p in folder.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelRef(spec, str(folder), ggufs[0], _gguf_display(ggufs[0]))
            hint = f" (it holds {', '.join(ggufs)}: pass --gguf-file)" if ggufs else ""
            raise TrainInputError(f"{what} {spec} is not a model folder: no config.json{hint}")
        return ModelRef(spec, str(folder), None, folder.name)
    if looks_like_local_path(spec):  # not a hub id: say so now, not after the hub's retries
        raise TrainInputError(f"{what} {spec}: no such folder or file")
    return ModelRef(spec, spec, gguf_file, spec.rsplit("/", 1)[-1])


def require_train_extra() -> None:
    """trl and peft come with the ``[train]`` extra; say so before any work starts."""
    import importlib.util

    missing = [name for name in ("trl", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise TrainInputError(
            f"{' and '.join(missing)} not installed; install the training extra: "
            "pip install 'lm-eval-calib[train]'"
        )


def read_config(ref: ModelRef) -> dict[str, Any] | None:
    path = Path(ref.source) / "config.json"
    if ref.gguf_file or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainInputError(f"{path} is not valid JSON ({exc})") from None


def require_reward_model(ref: ModelRef, what: str = "--reward-model") -> None:
    """A reward checkpoint is a sequence classifier with one output; say so before loading anything."""
    config = read_config(ref)
    architectures = (config or {}).get("architectures") or []
    if (
        not config
        or not any(a.endswith("ForSequenceClassification") for a in architectures)
        or (config.get("num_labels", len(config.get("id2label") or {0: 0})) != 1)
    ):
        raise TrainInputError(
            f"{what} {ref.spec} is not a reward model (architectures: {architectures or 'unknown'}); "
            "train one with `lm-eval-calib train reward`"
        )


# ---------------------------------------------------------------------------------------------------------
# Loading (heavy imports from here on, inside functions)


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.source, trust_remote_code=trust_remote_code, **ref.kwargs())
    except OSError as exc:
        raise TrainInputError(
            f"cannot load the tokenizer of {ref.describe()}: {str(exc).splitlines()[0]}"
        ) from None


def _plain_copy(model):
    """A GGUF-loaded model rebuilt as an ordinary (serialisable) float32 model with the same weights."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or any(key not in tied and "lm_head" not in key for key in missing):
        raise RuntimeError(
            f"re-building the GGUF model lost weights: missing {missing}, unexpected {unexpected}"
        )
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def load_causal_lm(ref: ModelRef, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.source, dtype=torch.float32, trust_remote_code=trust_remote_code, **ref.kwargs()
        )
    except OSError as exc:
        raise TrainInputError(f"cannot load {ref.describe()}: {str(exc).splitlines()[0]}") from None
    if ref.gguf_file:
        model = _plain_copy(model)
    return model


def load_sequence_classifier(ref: ModelRef, trust_remote_code: bool = False):
    """A one-output sequence classifier (reward or value model) with the backbone of ``ref``.

    A reward checkpoint loads as is; a language model gets a new, seeded score head on its backbone.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    if not ref.gguf_file:
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                ref.source, num_labels=1, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except OSError as exc:
            raise TrainInputError(f"cannot load {ref.describe()}: {str(exc).splitlines()[0]}") from None
    causal = load_causal_lm(ref, trust_remote_code)
    config = causal.config
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    backbone = getattr(model, model.base_model_prefix)
    backbone.load_state_dict(getattr(causal, causal.base_model_prefix).state_dict())
    return model


def lora_candidate_names(model) -> list[str]:
    """The layer names LoRA can adapt, each with its kind: ``nn.Linear`` and transformers' ``Conv1D`` (which
    GPT-2-style models use for attention and MLP: ``c_attn``, ``c_fc``, ``c_proj``), as peft accepts both.
    Listing ``nn.Linear`` alone told GPT-2 users that ``lm_head`` was their only choice."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = ((torch.nn.Linear, "Linear"), (Conv1D, "Conv1D"))
    found: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        for cls, kind in kinds:
            if isinstance(module, cls):
                found.setdefault(name.rsplit(".", 1)[-1], set()).add(kind)
    return [f"{name} ({'/'.join(sorted(found[name]))})" for name in sorted(found)]


def check_lora_targets(model, targets: list[str] | None, model_name: str) -> None:
    """Every requested LoRA target must name modules of the model, or peft would fail (or adapt nothing)."""
    if not targets or targets == ["all-linear"]:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise TrainInputError(
            f"LoRA target module(s) {', '.join(missing)} not found in {model_name}; its layers LoRA can "
            f"adapt are {', '.join(lora_candidate_names(model))}: pass some of these names to "
            "--lora-target-modules (or all-linear)"
        )


def ensure_pad_token(tokenizer, distinct: bool) -> None:
    """Give the tokenizer a pad token; ``distinct``: one that is not EOS (PPO and the reward model find
    the end of a sequence by its first pad token and treat every pad as padding: EOS must not be the pad)."""
    if tokenizer.pad_token_id is not None and not (
        distinct and tokenizer.pad_token_id == tokenizer.eos_token_id
    ):
        return
    if not distinct:
        tokenizer.pad_token = tokenizer.eos_token
        return
    template = str(getattr(tokenizer, "chat_template", "") or "")
    vocab = tokenizer.get_vocab()
    avoid = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    for candidate in (tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>"):
        if candidate and candidate in vocab and vocab[candidate] not in avoid and candidate not in template:
            tokenizer.pad_token = candidate
            return
    raise TrainInputError(
        "the tokenizer has no pad token distinct from its end-of-sequence token (needed for reward models "
        "and PPO); add one (e.g. <pad>) to the tokenizer of the SFT checkpoint"
    )


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()
