"""The training manifest: a small JSON file beside every checkpoint this project's ``train`` stages write.

It is the one contract between training and reporting: ``lm-eval-calib train ...`` writes it, and
``lm-eval-calib report`` reads it back (through the ``pretrained=`` or ``peft=`` folder that lm-eval recorded
in its results) to label a run by its training stage instead of by a folder name.

Schema (``format_version`` 1); every key is written, values may be ``null`` where they do not apply::

    {
      "format": "lm-eval-calib-manifest", "format_version": 1,
      "stage": "sft" | "reward" | "rloo" | "ppo",  # which trainer produced the folder
      "method": "full" | "lora" | "lora-adapter" | "reward" | "rloo" | "ppo",
      "label": "gemma3-270m SFT LoRA (alpaca)",   # short human label for tables and legends
      "base_model": "...",                         # the pretrained model the chain started from
      "parent": "...",                             # the checkpoint this stage started from (policy for PPO)
      "data": {"name": "...", "rows": 1000, "sha256": "..."},
      "hyperparameters": {...}, "versions": {"torch": "...", ...},
      "seed": 0, "wall_time_s": 12.3, "created": "2026-11-28T12:00:00+00:00",
      "files": ["config.json", "model.safetensors", ...]  # what the stage wrote (optional; newer
    }                                                     # manifests): all that --overwrite may replace
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm_eval_calib.atomic import write_file

MANIFEST_NAME = "lm_eval_calib_manifest.json"
FORMAT = "lm-eval-calib-manifest"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "stage",
    "method",
    "label",
    "base_model",
    "parent",
    "data",
    "hyperparameters",
    "versions",
    "seed",
    "wall_time_s",
    "created",
)


class ManifestError(ValueError):
    """A manifest file exists but cannot be used (malformed JSON, wrong format, missing keys)."""


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/lm_eval_calib_manifest.json`` atomically (temp file + rename); return its path."""
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"manifest lacks {', '.join(missing)}; every key of the schema must be written")
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MANIFEST_NAME
    # json.dumps first: a body that cannot be written fails before the file is touched
    text = json.dumps(body, indent=2, sort_keys=True, default=str) + "\n"
    return write_file(target, lambda handle: handle.write(text))


def read_manifest(folder: Path | str) -> dict[str, Any] | None:
    """The manifest in ``folder``, or ``None`` when there is none (a model that did not come from here)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); delete it or rewrite it") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ManifestError(f'{path} is not an lm-eval-calib manifest (no "format": "{FORMAT}")')
    if body.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format_version {body.get('format_version')!r}; this lm-eval-calib reads "
            f"{FORMAT_VERSION}: upgrade lm-eval-calib"
        )
    missing = [key for key in REQUIRED_KEYS if key not in body]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}")
    return body


def model_args_dict(model_args: dict | str | None) -> dict[str, str]:
    """``--model_args`` as a dict: lm-eval 0.4 records a dict, older files the raw ``k=v,...`` string."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items() if v is not None}
    parsed: dict[str, str] = {}
    for part in (model_args or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            parsed[key.strip()] = value.strip()
    return parsed


def manifest_for_model_args(model_args: dict | str | None) -> dict[str, Any] | None:
    """The manifest of the checkpoint a run loaded: ``peft=`` (an adapter) first, else ``pretrained=``."""
    args = model_args_dict(model_args)
    for key in ("peft", "pretrained"):
        folder = args.get(key)
        if folder and Path(folder).is_dir():
            manifest = read_manifest(folder)
            if manifest is not None:
                return manifest
    return None
