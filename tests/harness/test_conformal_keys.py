"""Conformal answer sets as lm-eval result keys of multiple-choice tasks (issue 25, items 3 and 5).

``conformal_coverage_{lac,aps}`` and ``conformal_set_size_{lac,aps}`` (with ``_stderr``) are whole-run
aggregations over the option records, cross-fitted within the run: the same numbers as
:func:`lm_eval_calib.metrics.conformal_results` on the logged records and as the report's conformal.csv.
Bad ``conformal_alpha`` / ``conformal_folds`` fail before the model loads; folds set above the documents
scored fail before inference.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math

import numpy as np
import pytest
from helpers import read_run, run_lm_eval, tiny_mc_config

from lm_eval_calib.harness.base import CONFORMAL_KEYS
from lm_eval_calib.metrics import conformal_results
from lm_eval_calib.metrics.conformal import DEFAULT_ALPHA
from lm_eval_calib.options import CONFORMAL_SEED, CalibrationOptions
from lm_eval_calib.records import make_record

N_DOCS = 60


# -- options ---------------------------------------------------------------------------------------------
def test_defaults_are_the_reports():
    """The task and ``lm-eval-calib report`` must compute the same sets from the same records by default."""
    from lm_eval_calib.report.build import build_report

    report = inspect.signature(build_report).parameters
    options = CalibrationOptions()
    assert options.conformal_alpha == DEFAULT_ALPHA == 0.1
    assert options.conformal_folds == report["n_folds"].default == 5
    assert report["seed"].default == CONFORMAL_SEED


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"conformal_alpha": 0}, "'conformal_alpha' must be a number strictly between 0 and 1"),
        ({"conformal_alpha": 1}, "'conformal_alpha' must be a number strictly between 0 and 1"),
        ({"conformal_alpha": 1.5}, "got 1.5"),
        ({"conformal_alpha": -0.1}, "got -0.1"),
        ({"conformal_alpha": float("nan")}, "got nan"),
        ({"conformal_alpha": "0.1"}, "got '0.1'"),
        ({"conformal_alpha": True}, "got True"),
        ({"conformal_folds": 1}, "'conformal_folds' must be an integer >= 2"),
        ({"conformal_folds": 0}, "'conformal_folds' must be an integer >= 2"),
        ({"conformal_folds": 2.5}, "'conformal_folds' must be an integer >= 2"),
        ({"conformal_folds": "5"}, "'conformal_folds' must be an integer >= 2"),
    ],
)
def test_bad_conformal_options_are_named(raw, message):
    with pytest.raises(ValueError) as info:
        CalibrationOptions.from_metadata({"calibration": raw})
    assert message in str(info.value)


def test_good_conformal_options_are_kept():
    opts = CalibrationOptions.from_metadata({"calibration": {"conformal_alpha": 0.2, "conformal_folds": 2}})
    assert (opts.conformal_alpha, opts.conformal_folds) == (0.2, 2)


# -- one task in this process ----------------------------------------------------------------------------
def _task(tmp_path, calibration: dict | None = None, n_docs: int = 8):
    """A generic multiple-choice CalibrationTask over a JSON file of ``n_docs`` 3-option documents."""
    from lm_eval_calib.harness.task import CalibrationTask

    path = tmp_path / "docs.jsonl"
    docs = [{"q": f"q{i}", "choices": ["a", "b", "c"], "gold": i % 3} for i in range(n_docs)]
    config = tiny_mc_config(path, docs)
    if calibration is not None:
        config["metadata"] = {"calibration": calibration}
    return CalibrationTask(config=config)


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 6))  # ragged: 2 to 5 options
        out.append(make_record((2.0 * rng.normal(size=k)).tolist(), int(rng.integers(k))))
    return out


def test_bad_alpha_fails_before_the_dataset_loads(tmp_path):
    """Options are parsed before ``ConfigurableTask.__init__`` reads any data (the data file is not even
    written), as the CLI's unknown-option test shows for the run as a whole."""
    from lm_eval_calib.harness.task import CalibrationTask

    config = {"task": "t", "dataset_path": "json", "output_type": "multiple_choice"}
    config["dataset_kwargs"] = {"data_files": {"test": str(tmp_path / "absent.jsonl")}}
    config["metadata"] = {"calibration": {"conformal_alpha": 1.0}}
    with pytest.raises(ValueError, match="'conformal_alpha' must be a number strictly between 0 and 1"):
        CalibrationTask(config=config)


def test_keys_aggregate_as_conformal_results_with_stderrs(tmp_path):
    import lm_eval.evaluator_utils as evaluator_utils

    task = _task(tmp_path, {"conformal_alpha": 0.2, "conformal_folds": 4, "bootstrap_seed": 7})
    records = _records(200)
    expected, _ = conformal_results(
        [r["loglik"] for r in records],
        [r["target"] for r in records],
        alpha=0.2,
        n_folds=4,
        seed=CONFORMAL_SEED,
        n_resamples=1000,  # min(lm-eval's 100000, max_bootstrap 1000)
        bootstrap_seed=7,
    )
    per_doc = [task.process_results({"q": "x", "choices": ["a"] * len(r["loglik"]), "gold": r["target"]},
                                    [(ll, False) for ll in r["loglik"]]) for r in records]  # fmt: skip
    for key in CONFORMAL_KEYS:
        values = [doc[key] for doc in per_doc]
        assert all(str(v) == "see 'ece'" for v in values)  # logged once, under 'ece'
        aggregate = task.aggregation()[key]
        assert aggregate(values) == pytest.approx(expected[key], abs=1e-12)
        stderr = evaluator_utils.stderr_for_metric(aggregate, 100000)(values)
        assert stderr == pytest.approx(expected[key + "_stderr"], abs=1e-12)
    directions = task.higher_is_better()
    assert [directions[k] for k in CONFORMAL_KEYS] == [True, False, True, False]


def test_too_few_documents_with_the_default_folds_is_nan_and_one_warning(tmp_path, caplog):
    """A 3-document smoke run must still run: the conformal keys are NaN, said once."""
    task = _task(tmp_path)
    records = _records(3)
    with caplog.at_level(logging.WARNING, logger="lm_eval_calib"):
        values = [task.aggregation()[key](records) for key in CONFORMAL_KEYS]
    assert all(math.isnan(v) for v in values)
    said = [
        r.message for r in caplog.records if "too few for 5-fold cross-fitted conformal sets" in r.message
    ]
    assert len(said) == 1 and "calib_tiny_mc" in said[0]


def test_folds_set_above_the_documents_scored_fail_before_any_request(tmp_path):
    task = _task(tmp_path, {"conformal_folds": 4}, n_docs=8)
    with pytest.raises(ValueError) as info:
        task.build_all_requests(limit=3, rank=0, world_size=1)
    message = str(info.value)
    assert "calib_tiny_mc: calibration option 'conformal_folds' is 4, but this run scores 3" in message
    assert "at most 3" in message
    assert getattr(task, "_instances", None) is None  # nothing was built
    with pytest.raises(ValueError, match="scores 2 document"):
        task.build_all_requests(samples=[5, 1], rank=0, world_size=1)
    task.build_all_requests(limit=4, rank=0, world_size=1)  # one document per fold is enough
    assert len({inst.doc_id for inst in task.instances}) == 4
    _task(tmp_path, n_docs=8).build_all_requests(limit=3, rank=0, world_size=1)  # the default is not refused


# -- a real run: the same numbers as conformal_results and the report ---------------------------------------
def test_a_real_run_reports_the_keys_as_conformal_results_and_the_report(tiny_model_dir, data_root, tmp_path):
    from lm_eval_calib.report.build import build_report

    run = tmp_path / "run"
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--tasks", "calib_mmlu_anatomy", "--limit", str(N_DOCS), "--device", "cpu", "--batch_size", "16"]
    # not the defaults: the report must take the run's own alpha and folds
    args += ["--metadata", json.dumps({"calibration": {"conformal_alpha": 0.2, "conformal_folds": 4}})]
    run_lm_eval(
        [*args, "--output_path", str(run), "--log_samples"], env={"LM_EVAL_CALIB_DATA": str(data_root)}
    )
    results, samples = read_run(run)
    task = results["results"]["calib_mmlu_anatomy"]
    rows = samples["calib_mmlu_anatomy"]  # file order: the order lm-eval aggregated them in
    assert len(rows) == N_DOCS
    expected, sets = conformal_results(
        [r["ece"]["loglik"] for r in rows], [r["ece"]["target"] for r in rows], alpha=0.2, n_folds=4
    )
    assert len(sets["lac"]) == len(sets["aps"]) == N_DOCS
    for key in CONFORMAL_KEYS:
        assert isinstance(task[f"{key}_stderr,none"], float)  # a real bootstrap stderr, not "N/A"
        for name in (key, key + "_stderr"):
            assert task[f"{name},none"] == pytest.approx(expected[name], abs=1e-12), name
    directions = results["higher_is_better"]["calib_mmlu_anatomy"]
    assert [directions[k] for k in CONFORMAL_KEYS] == [True, False, True, False]

    out = tmp_path / "report"
    build_report([run], out, log=lambda message: None)
    with (out / "conformal.csv").open() as handle:
        report_rows = [row for row in csv.DictReader(handle) if row["task"] == "calib_mmlu_anatomy"]
    assert sorted(row["score"] for row in report_rows) == ["aps", "lac"]
    for row in report_rows:
        assert "4-fold cross-fit" in row["fitted_on"] and float(row["alpha"]) == 0.2
        for quantity in ("coverage", "set_size"):
            key = f"conformal_{quantity}_{row['score']}"
            assert float(row[quantity]) == pytest.approx(task[f"{key},none"], abs=1e-12), key
            stderr = float(row[f"{quantity}_stderr"])
            assert stderr == pytest.approx(task[f"{key}_stderr,none"], abs=1e-12), key
