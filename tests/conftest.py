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


def _shared_smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct de-quantised once per pytest run into a float32 Hugging Face folder.

    Loading the bundled Q4_1 GGUF de-quantises it in every process (about 20 s on two cores); the exported
    folder loads in about 3 s with the same weights and tokenizer. CI's pytest-xdist workers share one export:
    it lives in the run's common temporary folder, written by the first worker under a file lock.
    """
    from filelock import FileLock

    from lm_eval_calib.models.vllm_export import export_bundled_model

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    dest = root / "SmolLM2-135M-Instruct"
    with FileLock(str(root / "SmolLM2-135M-Instruct.lock")):
        if not (dest / "config.json").is_file():
            export_bundled_model(dest)
    return dest


@pytest.fixture(scope="session")
def smollm2_model_args(tmp_path_factory) -> str:
    """``--model_args`` for the real SmolLM2 (float32) from the exported folder (see above); the GGUF load
    path itself is tested in tests/test_integration_smollm2.py and tests/train."""
    return f"pretrained={_shared_smollm2_folder(tmp_path_factory)},dtype=float32"


@pytest.fixture
def gguf_parsed_once(monkeypatch):
    """One read-only ``gguf.GGUFReader`` per file for the whole test.

    transformers parses a GGUF file's metadata anew for the tokenizer, the config and the weights: Qwen's
    151,665-token vocabulary and its merges make that about 16 s per parse on two cores, two thirds of the
    load. The reader is only read (fields, tensor views of a read-only memory map), so the three loads get
    the very same values from one parse; only the repeated parsing is skipped.
    """
    import gguf

    parse = gguf.GGUFReader
    readers: dict[str, gguf.GGUFReader] = {}

    def shared(path, mode="r"):
        if mode != "r":
            return parse(path, mode)
        key = os.path.realpath(path)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", shared)  # transformers imports it from gguf at each load
    return readers


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a normal HF folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32, heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct as a float32 folder vLLM loads (the vLLM engine tests and the endpoint
    server tests share it with the hf-calib runs)."""
    return _shared_smollm2_folder(tmp_path_factory)


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
