"""The real SmolLM2-135M on calib_clm (two WikiText documents, every token scored) through the lm_eval CLI:
the stderrs lm-eval writes resample documents, and the report computes the same numbers from the logged
records (its leaderboard, its ECE interval from the same resamples).

The two documents are short ones picked with ``--samples`` (607 and 633 SmolLM2 tokens): the first two of
the test split (1,407 and 5,349 tokens, the second in one 5k-token window) took two minutes to score on CPU.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import run_lm_eval

from lm_eval_calib.metrics import METRICS, bootstrap_stderr
from lm_eval_calib.metrics.cluster_bootstrap import cluster_bootstrap_values
from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE, make_aggregation
from lm_eval_calib.records_io import read_task
from lm_eval_calib.report.build import build_report
from lm_eval_calib.report.runs import load_run

pytestmark = pytest.mark.integration

SHORT_DOCUMENTS = [14, 57]
"""Two short WikiText-2 test documents (indices in calib_clm's test split), 1,240 tokens together."""


@pytest.fixture(scope="module")
def clm_run(smollm2_model_args, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm-smollm2")
    args = ["--model", "hf-calib", "--model_args", smollm2_model_args, "--tasks", "calib_clm"]
    args += ["--device", "cpu", "--batch_size", "4", "--output_path", str(out / "run")]
    args += ["--samples", json.dumps({"calib_clm": SHORT_DOCUMENTS})]
    args += ["--log_samples", "--metadata", json.dumps({"data_dir": str(data_root)})]
    run_lm_eval(args)
    (results_file,) = (out / "run").rglob("results_*.json")
    return out, results_file, json.loads(results_file.read_text())


def test_results_stderrs_resample_documents_and_the_report_agrees(clm_run):
    out, results_file, results = clm_run
    numbers = results["results"]["calib_clm"]
    (run,) = [r for r in load_run(out / "run")[0] if r.task == "calib_clm"]
    assert run.n_records == 2 and len(run.data) > 1000  # two documents, every token an item
    opts, resamples = run.options, min(100000, run.options.max_bootstrap)  # the CLI's --bootstrap_iters
    records = read_task(results_file, "calib_clm", results, "acc").records
    for key in METRICS:
        written = numbers[f"{key}_stderr,none"]
        # the report's (and the study's) recomputation from the logged records: the very same float
        recomputed = getattr(make_aggregation(key, opts, "calib_clm"), STDERR_ATTRIBUTE)(records, resamples)
        assert recomputed == written, key
        values = cluster_bootstrap_values(key, run.data, run.item_groups, resamples, opts.bootstrap_seed)
        assert np.std(values[~np.isnan(values)], ddof=1) == written, key
    # the old token bootstrap treated ~thousands of correlated tokens as independent: another number
    old = bootstrap_stderr("acc", run.data, resamples, opts.bootstrap_seed, opts.n_bins)
    assert old != numbers["acc_stderr,none"]

    build_report([out / "run"], out / "report", log=lambda message: None)
    with (out / "report" / "leaderboard.csv").open() as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["task"] == "calib_clm"]
    for key in ("acc", "ece", "brier", "auroc"):
        assert float(row[f"{key}_stderr"]) == numbers[f"{key}_stderr,none"], key
    # the ECE interval comes from the resamples behind lm-eval's ECE stderr: documents, not tokens
    values = cluster_bootstrap_values("ece", run.data, run.item_groups, resamples, opts.bootstrap_seed)
    low, high = np.percentile(values, [2.5, 97.5])
    assert (float(row["ece_ci_low"]), float(row["ece_ci_high"])) == (low, high)
