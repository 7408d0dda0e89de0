"""Write a GGUF checkpoint as a plain Hugging Face folder (safetensors) that vLLM can load.

vLLM loads Hugging Face folders; it cannot read the bundled SmolLM2 (a Q4_1 GGUF file) on CPU. transformers
de-quantises GGUF on load but refuses to ``save_pretrained`` a model it "quantized with gguf", so we drop the
``quantization_config``, rebuild the model from its config, copy the de-quantised weights in and save. The
folder (float32 by default: SmolLM2-135M takes 538 MB) holds the tokenizer too, so ``hf``, ``hf-calib`` and
``vllm-calib`` all load the same weights from it.

Command line: ``python -m lm_eval_calib.models.vllm_export DEST [--model smollm2] [--dtype float32]``
prints ``DEST`` when done, so it can feed ``--model_args pretrained=...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["export_bundled_model", "export_gguf_folder"]

_DTYPES = ("float32", "bfloat16", "float16")


def export_gguf_folder(folder: str | Path, gguf_file: str, dest: str | Path, dtype: str = "float32") -> Path:
    """De-quantise ``folder/gguf_file`` into a Hugging Face folder ``dest`` (weights + tokenizer).

    ``dest`` must not exist or be empty; it is written in full (config, safetensors, tokenizer) or, on a
    failure, left without ``config.json`` so nothing reads a half-written model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    source = Path(folder) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} does not exist; pass the folder holding the .gguf file and its name"
        )
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; choose a new folder for the exported model")
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model is "quantized" and refuses to save otherwise
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    del model
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer.save_pretrained(dest)
        plain.save_pretrained(dest)
        json.loads((dest / "config.json").read_text())  # written and readable
    except BaseException:
        (dest / "config.json").unlink(missing_ok=True)
        raise
    return dest


def export_bundled_model(dest: str | Path, name: str = "smollm2", dtype: str = "float32") -> Path:
    """:func:`export_gguf_folder` for a model of :mod:`lm_eval_calib.bundled_models` (default SmolLM2)."""
    from lm_eval_calib.bundled_models import get_bundled_model

    model = get_bundled_model(name)
    return export_gguf_folder(model.folder(), model.gguf_file, dest, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lm_eval_calib.models.vllm_export",
        description="Write a bundled GGUF model as a Hugging Face folder that vLLM (vllm-calib) can load.",
    )
    parser.add_argument("dest", help="new or empty folder to write")
    parser.add_argument("--model", default="smollm2", help="bundled model name (default: smollm2)")
    parser.add_argument("--dtype", default="float32", choices=_DTYPES)
    args = parser.parse_args(argv)
    try:
        print(export_bundled_model(args.dest, args.model, args.dtype))
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
