"""The real SmolLM2-135M-Instruct (weights from the package registry) on calib_mmlu, through lm-eval's
Python API with the model loaded once for the module."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_calib_mmlu_e2e import _reference_mmlu_tasks

from lm_eval_calib.harness.base import CALIBRATION_KEYS
from lm_eval_calib.metrics import METRICS, compute_metric
from lm_eval_calib.records import records_to_data

pytestmark = pytest.mark.integration

SUBJECTS = ["anatomy", "high_school_geography", "marketing"]


@pytest.fixture(scope="module")
def smollm2():
    """lm-eval's own ``hf`` on the bundled GGUF file itself (what README command 1 loads); the other SmolLM2
    tests load the same weights from a float32 folder exported once (tests/conftest.py)."""
    from lm_eval.models.huggingface import HFLM

    from lm_eval_calib.bundled_models import get_bundled_model

    model_args = get_bundled_model("smollm2").model_args() + ",dtype=float32"
    args = dict(part.split("=", 1) for part in model_args.split(","))
    return HFLM(**args, device="cpu", batch_size=8)


def _evaluate(lm, tasks, num_fewshot, data_root, limit, include_path=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, metadata={"data_dir": str(data_root)})
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=True
    )


def test_five_shot_records_add_up_to_the_aggregate(smollm2, data_root):
    tasks = [f"calib_mmlu_{s}" for s in SUBJECTS]
    out = _evaluate(smollm2, tasks, None, data_root, limit=10)
    for task in tasks:
        metrics = out["results"][task]
        assert out["configs"][task]["num_fewshot"] == 5
        for key in METRICS:
            assert math.isfinite(metrics[f"{key},none"]) or key == "auroc", (task, key)
            assert isinstance(metrics[f"{key}_stderr,none"], float)
        rows = out["samples"][task]
        data = records_to_data([row["ece"] for row in rows])
        assert len(data) == 10
        assert metrics["acc,none"] == pytest.approx(np.mean([row["acc"] for row in rows]), abs=1e-12)
        for key in CALIBRATION_KEYS:
            assert metrics[f"{key},none"] == pytest.approx(compute_metric(key, data), abs=1e-12, nan_ok=True)
        # a trained model is confident in a real way: its confidence is not the uniform 0.25
        assert float(np.max(data.confidence)) > 0.3


def test_zero_shot_accuracy_equals_lm_eval_mmlu(smollm2, data_root, tmp_path):
    ours = [f"calib_mmlu_{s}" for s in SUBJECTS]
    ref = [f"ref_mmlu_{s}" for s in SUBJECTS]
    include = _reference_mmlu_tasks(tmp_path, data_root, SUBJECTS)
    out = _evaluate(smollm2, ours + ref, 0, data_root, limit=20, include_path=str(include))
    for subject in SUBJECTS:
        a = {r["doc_id"]: r for r in out["samples"][f"calib_mmlu_{subject}"]}
        b = {r["doc_id"]: r for r in out["samples"][f"ref_mmlu_{subject}"]}
        assert a.keys() == b.keys() and len(a) == 20
        assert all(a[i]["acc"] == b[i]["acc"] for i in a)
        assert [float(x[0]) for x in a[0]["resps"][0]] == [float(x[0]) for x in b[0]["resps"][0]]
        assert (
            out["results"][f"calib_mmlu_{subject}"]["acc,none"]
            == out["results"][f"ref_mmlu_{subject}"]["acc,none"]
        )


@pytest.fixture(scope="module")
def smollm2_calib(smollm2_model_args):
    from lm_eval_calib.models.hf_calib import HFCalibLM

    args = dict(part.split("=", 1) for part in smollm2_model_args.split(","))
    return HFCalibLM(**args, device="cpu", batch_size=8)


def test_facts_and_clm_on_the_real_model(smollm2_calib, data_root):
    out = _evaluate(smollm2_calib, ["calib_facts", "calib_facts_open"], None, data_root, limit=20)
    clm_out = _evaluate(smollm2_calib, ["calib_clm"], None, data_root, limit=1)  # one article, ~4k tokens
    out["results"] |= clm_out["results"]
    out["samples"] |= clm_out["samples"]
    facts, open_vocab, clm = (out["results"][t] for t in ("calib_facts", "calib_facts_open", "calib_clm"))
    for metrics in (facts, open_vocab, clm):
        for key in ("acc", "ece", "brier", "nll"):
            assert math.isfinite(metrics[f"{key},none"])
            # lm-eval reports "N/A" for any stderr over a single document (calib_clm here)
            assert isinstance(metrics[f"{key}_stderr,none"], float) or metrics is clm
    # a trained model knows some places of birth among 10 options, far above the 1-in-10 of chance
    assert facts["acc,none"] > 0.2
    # next-token accuracy of a trained LM on Wikipedia text is far above chance and below 1
    assert 0.2 < clm["acc,none"] < 0.8 and 1.0 < clm["word_perplexity,none"] < 1000
    for task in ("calib_facts_open", "calib_clm"):
        data = records_to_data([row["ece"] for row in out["samples"][task]])
        assert out["results"][task]["ece,none"] == pytest.approx(compute_metric("ece", data), abs=1e-12)
