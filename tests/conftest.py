"""Shared fixtures: real data from ../shared/data, a tiny random model, and the real SmolLM2-135M.

Models are built or loaded once per test session. The tiny model is a 2-layer Llama with random weights
and SmolLM2's real tokenizer: it exercises every code path in seconds. SmolLM2 itself (installed from the
package registry by .ci/run) runs in the few integration tests. The plain helpers (paths, the tiny model
builder, the ``lm_eval`` CLI runner) live in tests/helpers.py; test modules import them from there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import DATA_ROOT, OFFLINE_ENV, build_tiny_llama

# Nothing in the tests may reach a model or data hub.
os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "mmlu" / "test").is_dir():
        pytest.fail(f"test data not found at {DATA_ROOT}; set LM_EVAL_CALIB_DATA to the shared data root")
    return DATA_ROOT


@pytest.fixture(scope="session")
def smollm2_model_args() -> str:
    from lm_eval_calib.bundled_models import get_bundled_model

    return get_bundled_model("smollm2").model_args() + ",dtype=float32"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a normal HF folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32, heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, de-quantised from its GGUF file into a float32 folder vLLM loads
    (once per test run: the vLLM engine tests and the endpoint server tests share it)."""
    from lm_eval_calib.models.vllm_export import export_bundled_model

    return export_bundled_model(tmp_path_factory.mktemp("smollm2-hf") / "model")
