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


# The slowest test files (CI's --durations), run first. CI runs the tests on two pytest-xdist workers that
# each take a whole file at a time (--dist loadfile); a long file handed out last keeps one worker busy while
# the other has nothing left. This only orders files (each file's own order is kept); it selects nothing.
SLOW_FILES_FIRST = (
    "tests/generation/test_generation_e2e.py",
    "tests/study/test_study.py",
    "tests/models/test_multiprocess_eval.py",
    "tests/generation/test_sampling_cache.py",
    "tests/models/test_hf_calib.py",
    "tests/test_integration_smollm2.py",
    "tests/report/test_report.py",
    "tests/train/test_train_integration.py",
    "tests/train/test_train_multiprocess.py",
    "tests/data/test_bundled_qwen.py",
    "tests/report/test_report_sections.py",
    "tests/models/test_engine_sampling.py",
    "tests/harness/test_clm_cluster_stderr.py",
    "tests/report/test_held_out_task.py",
    "tests/harness/test_calib_mmlu_e2e.py",
    "tests/harness/test_wrapped_tasks.py",
    "tests/harness/test_registration.py",
    "tests/metrics/test_metrics_bootstrap.py",
    "tests/data/test_report_models.py",
    "tests/train/test_train_stages.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    # a stable sort: each file's tests stay together and in their own order
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
