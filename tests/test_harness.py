"""The lm-eval glue: options, per-document records, the stderr hook, and errors for bad model output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm_eval_calib.harness import stderr
from lm_eval_calib.harness.aggregation import make_aggregation
from lm_eval_calib.harness.options import CalibrationOptions
from lm_eval_calib.harness.results import ModelOutputError, option_logliks
from lm_eval_calib.metrics import bootstrap_stderr, compute_metric
from lm_eval_calib.records import make_record, records_to_data


def test_options_defaults_and_overrides():
    assert CalibrationOptions.from_metadata(None) == CalibrationOptions()
    opts = CalibrationOptions.from_metadata({"version": 1, "pretrained": "x", "calibration": {"n_bins": 15}})
    assert opts.n_bins == 15 and opts.bootstrap_seed == 1234


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nbins": 3}, "unknown calibration option(s) 'nbins'"),
        ({"n_bins": 0}, "'n_bins' must be a positive integer"),
        ({"n_bins": "10"}, "'n_bins' must be a positive integer"),
        ("n_bins=3", "must be a mapping"),
    ],
)
def test_bad_options_are_named(raw, message):
    with pytest.raises(ValueError) as info:
        CalibrationOptions.from_metadata({"calibration": raw})
    assert message in str(info.value)


def test_record_from_option_logliks():
    record = make_record([-1.0, -2.0, -0.5, -3.0], target=2, category="anatomy")
    probs = np.exp([-1.0, -2.0, -0.5, -3.0]) / np.exp([-1.0, -2.0, -0.5, -3.0]).sum()
    assert record["probs"] == pytest.approx(probs.tolist(), abs=1e-15)
    assert record["confidence"] == pytest.approx(probs.max(), abs=1e-15)
    assert record["correct"] == 1 and record["prediction"] == 2 and record["category"] == "anatomy"
    assert record["nll"] == pytest.approx(-math.log(probs[2]), abs=1e-12)
    assert record["brier"] == pytest.approx(float(((probs - np.eye(4)[2]) ** 2).sum()), abs=1e-15)


def test_records_with_many_items_are_pooled_item_by_item():
    one = make_record([0.0, -1.0], 0)
    many = {
        "confidence": [0.9, 0.6, 0.7],
        "correct": [1, 0, 1],
        "brier": [0.01, 0.36, 0.09],
        "nll": [0.1, 0.9, 0.3],
    }
    data = records_to_data([one, many])
    assert len(data) == 4 and data.correct.tolist() == [1, 1, 0, 1]


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (None, "returned nothing"),
        ([(-1.0, False)], "has 2 options but the model returned 1 result(s)"),
        ([(-1.0, False), (float("nan"), False)], "log-likelihood is nan"),
        ([(-1.0, False), (float("-inf"), False)], "log-likelihood is -inf"),
        ([(-1.0, False), ("text", False)], "instead of a (log-likelihood, is_greedy) pair"),
    ],
)
def test_unusable_model_output_is_a_clear_error(results, message):
    with pytest.raises(ModelOutputError) as info:
        option_logliks(results, 2, "calib_mmlu", "'doc'")
    assert message in str(info.value) and "calib_mmlu" in str(info.value)


def test_stderr_hook_gives_ours_a_bootstrap_and_leaves_lm_eval_metrics_alone():
    import lm_eval.evaluator_utils as evaluator_utils
    from lm_eval.api.metrics import mean, mean_stderr

    stderr.install()
    stderr.install()  # idempotent
    lookup = evaluator_utils.stderr_for_metric
    assert lookup(mean, 1000) is mean_stderr
    aggregate = make_aggregation("ece", CalibrationOptions(max_bootstrap=200), "t")
    rng = np.random.default_rng(0)
    records = [make_record(rng.normal(size=4).tolist(), int(rng.integers(4))) for _ in range(300)]
    assert lookup(aggregate, 0) is None
    value = lookup(aggregate, 100000)(records)
    data = records_to_data(records)
    assert value == bootstrap_stderr("ece", data, n_resamples=200, seed=1234, n_bins=10)  # capped, seeded
    assert aggregate(records) == compute_metric("ece", data)


def test_nan_weights_give_a_clear_error_not_nan_metrics(tiny_model_dir, data_root, tmp_path):
    """A real (broken) model: the tiny Llama with NaN weights, through lm-eval's Python API."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    lm = HFLM(pretrained=model, tokenizer=str(tiny_model_dir), device="cpu", batch_size=4)
    manager = TaskManager(metadata={"data_dir": str(data_root)})
    with pytest.raises(ModelOutputError, match="non-finite scores: check its weights and dtype"):
        lm_eval.simple_evaluate(model=lm, tasks=["calib_mmlu_anatomy"], limit=2, task_manager=manager)


def test_record_reference_pickles_and_unwraps():
    import pickle

    from lm_eval_calib.records import RecordRef, record_of

    record = make_record([-0.5, -1.5], 1)
    ref = pickle.loads(pickle.dumps(RecordRef(record)))  # lm-eval gathers metrics across ranks by pickling
    assert record_of(ref) == record and str(ref) == "see 'ece'"
    assert records_to_data([ref]).confidence.tolist() == records_to_data([record]).confidence.tolist()
