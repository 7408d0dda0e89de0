"""The lm-eval glue: options, per-document records, the stderr hook, and errors for bad model output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm_eval_calib.harness.results import ModelOutputError, option_logliks
from lm_eval_calib.lm_eval_patches import install_all
from lm_eval_calib.metrics import bootstrap_stderr, compute_metric
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE, make_aggregation
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

    install_all()
    install_all()  # idempotent
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


def _mc_task(tmp_path, n_options: int):
    """A generic multiple-choice CalibrationTask over a two-document JSON file; the second document has
    ``n_options`` choices."""
    from helpers import tiny_mc_config

    from lm_eval_calib.harness.task import CalibrationTask

    path = tmp_path / "docs.jsonl"
    docs = [{"q": "two", "choices": ["yes", "no"], "gold": 0}]
    docs.append({"q": "few", "choices": ["yes", "no", "maybe"][:n_options], "gold": 0})
    config = tiny_mc_config(path, docs)
    task = CalibrationTask(config=config)
    return task, list(task.test_docs())


@pytest.mark.parametrize("n_options", [0, 1])
def test_one_option_documents_are_refused_naming_the_task(n_options, tmp_path):
    """With one option, confidence is 1 and the answer always 'right': acc 1, ECE 0, whatever the model."""
    task, (good, bad) = _mc_task(tmp_path, n_options)
    assert len(task.construct_requests(good, "two")) == 2
    with pytest.raises(ValueError) as before_inference:
        task.construct_requests(bad, "few")
    with pytest.raises(ValueError) as after_inference:
        task.process_results(bad, [(-0.5, True)] * n_options)
    for info in (before_inference, after_inference):
        message = str(info.value)
        assert message.startswith("calib_tiny_mc: document 'few' has") and "at least two options" in message


def test_two_option_documents_are_scored(tmp_path):
    task, (_, doc) = _mc_task(tmp_path, 2)
    values = task.process_results(doc, [(-0.5, True), (-1.5, False)])
    assert values["acc"] == 1.0 and values["ece"]["probs"] == pytest.approx([0.7310585786, 0.2689414214])


@pytest.mark.parametrize("raw", [0, False, "", [], 5, "n_bins=3", ["n_bins", 3]])
def test_calibration_metadata_must_be_a_mapping(raw):
    """``raw or {}`` let 0, false, "" and [] pass silently as "defaults"."""
    with pytest.raises(ValueError, match=r"metadata\['calibration'\] must be a mapping"):
        CalibrationOptions.from_metadata({"calibration": raw})


def test_calibration_null_or_empty_means_defaults():
    assert CalibrationOptions.from_metadata({"calibration": None}) == CalibrationOptions()
    assert CalibrationOptions.from_metadata({"calibration": {}}) == CalibrationOptions()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"n_bins": 1_000_000}, "'n_bins' must be a positive integer (1 to 1000), got 1000000"),
        ({"n_bins": 1001}, "'n_bins' must be a positive integer (1 to 1000)"),
        ({"max_bootstrap": 10**9}, "'max_bootstrap' must be an integer from 0 (no stderrs) to 10000"),
        ({"max_bootstrap": 10_001}, "'max_bootstrap' must be an integer from 0 (no stderrs) to 10000"),
        ({"max_bootstrap": -1}, "'max_bootstrap' must be an integer from 0 (no stderrs) to 10000"),
        ({"max_bootstrap": 1.5}, "'max_bootstrap' must be an integer from 0 (no stderrs) to 10000"),
        ({"bootstrap_seed": -1}, "'bootstrap_seed' must be an integer >= 0"),
    ],
)
def test_option_bounds_are_checked_before_inference(raw, message):
    """``n_bins: 1000000`` ran inference, then the bootstrap asked for 22 GiB and the run was lost."""
    with pytest.raises(ValueError) as info:
        CalibrationOptions.from_metadata({"calibration": raw})
    assert message in str(info.value)


@pytest.mark.parametrize("raw", [{"n_bins": 1000}, {"max_bootstrap": 10_000}, {"max_bootstrap": 0}])
def test_option_bounds_are_inclusive(raw):
    assert CalibrationOptions.from_metadata({"calibration": raw}) == CalibrationOptions(**raw)


def test_max_bootstrap_zero_means_no_stderr():
    """The lm_eval CLI has no --bootstrap_iters; ``max_bootstrap: 0`` turns our stderrs off instead."""
    install_all()
    import lm_eval.evaluator_utils as evaluator_utils

    aggregate = make_aggregation("ece", CalibrationOptions(max_bootstrap=0), "t")
    records = [make_record([0.0, -1.0], 0), make_record([-1.0, 0.0], 0)]
    assert evaluator_utils.stderr_for_metric(aggregate, 100000)(records) == "N/A"  # as lm-eval writes it
    assert aggregate(records) == compute_metric("ece", records_to_data(records))


_GOOD = {"confidence": [0.5], "correct": [1], "brier": [0.25], "nll": [0.7]}


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([_GOOD, _GOOD | {"confidence": [float("nan")]}], "CalibrationInputError"),
        ([_GOOD, _GOOD | {"confidence": [1.5]}], "CalibrationInputError"),
        ([_GOOD, {"correct": [1]}], "KeyError"),
        ([], "ValueError"),
    ],
    ids=["nan", "out_of_range", "missing_key", "empty"],
)
@pytest.mark.parametrize("key", ["ece", "smece", "auroc"])
def test_a_failing_aggregation_is_nan_and_one_clear_error(key, records, error, caplog):
    """An aggregation error must not abort lm-eval before it writes results and samples."""
    aggregate = make_aggregation(key, CalibrationOptions(max_bootstrap=20), "calib_x")
    with caplog.at_level("ERROR", logger="lm_eval_calib"):
        value = aggregate(records)
        stderr_value = getattr(aggregate, STDERR_ATTRIBUTE)(records, n_resamples=20)
    assert math.isnan(value) and math.isnan(stderr_value)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors  # one error per failing metric: its stderr's repeat goes to debug
    assert errors[0].startswith(f"[calib_x] {key}: aggregation failed ({error}")
    assert "reported as NaN" in errors[0] and "--log_samples" in errors[0]


def test_a_failing_metric_loses_nothing_in_a_real_run(
    tiny_model_dir, data_root, monkeypatch, caplog, tmp_path
):
    """A real lm-eval run (tiny Llama, calib_mmlu_anatomy) in which one metric's aggregation and stderr fail.

    Failure injection: our own ``compute_metric`` / ``cluster_bootstrap_stderr``, as the aggregation module
    calls them, raise the MemoryError that ``n_bins: 1000000`` used to provoke, for ``ece_em`` only.
    Everything else is real, and the results and samples are written by lm-eval's own EvaluationTracker, as
    the CLI does.
    """
    import lm_eval
    from helpers import read_run
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from lm_eval_calib import record_metrics as aggregation

    def fail_for_ece_em(real):
        def injected(key, *args, **kwargs):
            if key == "ece_em":
                raise MemoryError("Unable to allocate 22.4 GiB for an array (injected)")
            return real(key, *args, **kwargs)

        return injected

    monkeypatch.setattr(aggregation, "compute_metric", fail_for_ece_em(aggregation.compute_metric))
    monkeypatch.setattr(
        aggregation,
        "cluster_bootstrap_stderr",
        fail_for_ece_em(aggregation.cluster_bootstrap_stderr),
    )
    manager = TaskManager(  # only this package's tasks: indexing lm-eval's thousands of YAMLs costs ~15 s
        include_defaults=False, metadata={"data_dir": str(data_root), "calibration": {"max_bootstrap": 20}}
    )
    with caplog.at_level("ERROR", logger="lm_eval_calib"):
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={tiny_model_dir},dtype=float32",
            tasks=["calib_mmlu_anatomy"],
            num_fewshot=0,
            limit=4,
            batch_size=4,
            device="cpu",
            log_samples=True,
            task_manager=manager,
        )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0].startswith("[calib_mmlu_anatomy] ece_em: aggregation failed")
    assert "MemoryError: Unable to allocate 22.4 GiB" in errors[0]

    tracker = EvaluationTracker(output_path=str(tmp_path))
    samples = out.pop("samples")
    tracker.save_results_aggregated(results=out, samples=samples)
    tracker.save_results_samples(task_name="calib_mmlu_anatomy", samples=samples["calib_mmlu_anatomy"])
    results, logged = read_run(tmp_path)
    task = results["results"]["calib_mmlu_anatomy"]
    assert math.isnan(task["ece_em,none"]) and math.isnan(task["ece_em_stderr,none"])
    rows = logged["calib_mmlu_anatomy"]
    assert len(rows) == 4 and all(len(row["ece"]["loglik"]) == 4 for row in rows)
    data = records_to_data([row["ece"] for row in rows])
    for key in ("acc", "ece", "brier", "nll"):
        assert math.isfinite(task[f"{key},none"]) and math.isfinite(task[f"{key}_stderr,none"]), key
    assert task["ece,none"] == pytest.approx(compute_metric("ece", data), abs=1e-12)
