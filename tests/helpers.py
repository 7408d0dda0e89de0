"""Plain test helpers (no fixtures): the repository and data paths, the offline environment, the tiny random
Llama builder, and the real ``lm_eval`` CLI with the reader of its output folder.

Test modules import these as ``from helpers import ...`` (tests/ is on sys.path because tests/conftest.py
lives there); the fixtures built on them stay in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The data root has one name everywhere: LM_EVAL_CALIB_DATA, as for the tasks (default: ../shared/data).
DATA_ROOT = Path(os.environ.get("LM_EVAL_CALIB_DATA") or REPO.parent / "shared" / "data")
LM_EVAL = Path(sys.executable).parent / "lm_eval"

# Nothing in the tests may reach a model or data hub (tests/conftest.py sets these for the test process too).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


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


def hf_calib_lm(folder: Path, **kwargs):
    """``hf-calib`` on a local folder in float32 on the CPU: the reference the vLLM and endpoint tests use."""
    from lm_eval_calib.models.hf_calib import HFCalibLM

    args = {"dtype": "float32", "device": "cpu", "batch_size": 8, **kwargs}
    return HFCalibLM(pretrained=str(folder), **args)


def task_requests(manager, limits: dict[str, int], **build) -> dict[str, list]:
    """The real requests lm-eval builds for each task, its first ``limits[task]`` documents."""
    from lm_eval.tasks import get_task_dict

    tasks = get_task_dict(list(limits), manager)
    out = {}
    for name, limit in limits.items():
        tasks[name].build_all_requests(limit=limit, rank=0, world_size=1, **build)
        out[name] = list(tasks[name].instances)
    return out


def tiny_mc_config(path: Path, docs: list[dict]) -> dict:
    """A multiple-choice ``calib_tiny_mc`` task config over ``docs`` (``q``, ``choices``, ``gold``), written
    to the JSON-lines file ``path``: for task-class tests that need no dataset download."""
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return {
        "task": "calib_tiny_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{q}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
    }
