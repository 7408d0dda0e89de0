"""Each document's conformal answer sets in its logged record (issue 25, item 3: "the sets themselves per
document in the records").

The cross-fitted sets depend on every document, so they exist only at aggregation, after lm-eval has logged
the per-document records; in one process the record lm-eval writes with ``--log_samples`` (after
aggregation) is the very dict the aggregation reads, so the aggregation adds ``conformal_sets`` to it. The
report computes the same sets from the same records: same sets both ways.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import read_run, run_lm_eval, tiny_mc_config

from lm_eval_calib.harness.base import CONFORMAL_KEYS
from lm_eval_calib.metrics import conformal_results
from lm_eval_calib.options import CONFORMAL_SEED
from lm_eval_calib.records import CONFORMAL_SETS_FIELD, RecordRef, make_record

N_DOCS = 40


def test_aggregation_writes_each_documents_sets_into_its_record(tmp_path):
    from lm_eval_calib.harness.task import CalibrationTask

    path = tmp_path / "docs.jsonl"
    config = tiny_mc_config(path, [{"q": "q", "choices": ["a", "b", "c"], "gold": 0}])
    config["metadata"] = {"calibration": {"conformal_alpha": 0.2, "conformal_folds": 4}}
    task = CalibrationTask(config=config)
    rng = np.random.default_rng(3)
    records = []
    for _ in range(120):
        k = int(rng.integers(2, 6))
        records.append(make_record((2.0 * rng.normal(size=k)).tolist(), int(rng.integers(k))))
    _, expected = conformal_results(
        [r["loglik"] for r in records], [r["target"] for r in records], alpha=0.2, n_folds=4
    )
    assert all(CONFORMAL_SETS_FIELD not in r for r in records)
    task.aggregation()[CONFORMAL_KEYS[0]]([RecordRef(r) for r in records])  # what lm-eval hands it
    for i, record in enumerate(records):
        entry = record[CONFORMAL_SETS_FIELD]
        assert entry == {"alpha": 0.2, "folds": 4, "seed": CONFORMAL_SEED, "lac": expected["lac"][i],
                         "aps": expected["aps"][i]}  # fmt: skip


def test_a_real_run_logs_the_sets_the_report_writes(tiny_model_dir, data_root, tmp_path):
    from lm_eval_calib.report.build import build_report

    run = tmp_path / "run"
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--tasks", "calib_mmlu_anatomy", "--limit", str(N_DOCS), "--device", "cpu", "--batch_size", "16"]
    args += ["--metadata", json.dumps({"calibration": {"conformal_folds": 4}})]
    run_lm_eval(
        [*args, "--output_path", str(run), "--log_samples"], env={"LM_EVAL_CALIB_DATA": str(data_root)}
    )
    _, samples = read_run(run)
    rows = samples["calib_mmlu_anatomy"]
    assert len(rows) == N_DOCS
    logged = [row["ece"][CONFORMAL_SETS_FIELD] for row in rows]
    _, expected = conformal_results(
        [r["ece"]["loglik"] for r in rows], [r["ece"]["target"] for r in rows], alpha=0.1, n_folds=4
    )
    for i, entry in enumerate(logged):
        assert (entry["alpha"], entry["folds"], entry["seed"]) == (0.1, 4, CONFORMAL_SEED)
        assert entry["lac"] == expected["lac"][i] and entry["aps"] == expected["aps"][i]
        assert all(0 <= option < len(rows[i]["ece"]["loglik"]) for option in entry["aps"])

    out = tmp_path / "report"
    build_report([run], out, log=lambda message: None)
    lines = [json.loads(line) for line in (out / "conformal_sets.jsonl").read_text().splitlines()]
    by_doc = {row["doc_id"]: row["ece"][CONFORMAL_SETS_FIELD] for row in rows}
    assert len(lines) == 2 * N_DOCS
    for line in lines:
        assert line["set"] == by_doc[line["doc_id"]][line["score"]], line
    assert sum(1 for line in lines if line["covered"]) == pytest.approx(
        sum(row["ece"]["target"] in by_doc[row["doc_id"]][s] for row in rows for s in ("lac", "aps"))
    )
