"""Shared fixtures: real data from ../shared/data, a tiny random model, and the real SmolLM2-135M.

Models are built or loaded once per test session. The tiny model is a 2-layer Llama with random weights
and SmolLM2's real tokenizer: it exercises every code path in seconds. SmolLM2 itself (installed from the
package registry by .ci/run) runs in the few integration tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The data root has one name everywhere: LM_EVAL_CALIB_DATA, as for the tasks (default: ../shared/data).
DATA_ROOT = Path(os.environ.get("LM_EVAL_CALIB_DATA") or REPO.parent / "shared" / "data")
LM_EVAL = Path(sys.executable).parent / "lm_eval"

# Nothing in the tests may reach a model or data hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
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


def build_tiny_llama(folder: Path, hidden_size: int, heads: int, kv_heads: int) -> Path:
    """Save a 2-layer Llama with random weights (seed 0) and SmolLM2's real tokenizer into ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lm_eval_calib.bundled_models import get_bundled_model

    smol = get_bundled_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(smol.folder()), gguf_file=smol.gguf_file)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a normal HF folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32, heads=4, kv_heads=2)


def run_lm_eval(args: list[str], env: dict[str, str] | None = None, check: bool = True):
    """Run the real ``lm_eval`` CLI in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    proc = subprocess.run(
        [str(LM_EVAL), *args], capture_output=True, text=True, env=full_env, timeout=900, cwd=REPO.parent
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lm_eval {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def read_run(output_dir: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON and the per-task logged samples of one ``--output_path`` folder."""
    results_files = sorted(output_dir.rglob("results_*.json"))
    assert results_files, f"no results_*.json under {output_dir}"
    results = json.loads(results_files[-1].read_text())
    from lm_eval_calib.records_io import newest_samples, samples_name

    tasks = {parsed[0] for p in output_dir.rglob("samples_*.jsonl") if (parsed := samples_name(p.name))}
    samples: dict[str, list[dict]] = {}
    for task in sorted(tasks):  # the newest file of exactly this task (the reader the report uses)
        path = newest_samples(output_dir, task)
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results, samples


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, de-quantised from its GGUF file into a float32 folder vLLM loads
    (once per test run: the vLLM engine tests and the endpoint server tests share it)."""
    from lm_eval_calib.models.vllm_export import export_bundled_model

    return export_bundled_model(tmp_path_factory.mktemp("smollm2-hf") / "model")
