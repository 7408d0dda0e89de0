"""calib_facts through the real lm_eval CLI with plain `--model hf` (tiny random Llama, real LAMA data)."""

from __future__ import annotations

import json

import pytest
from helpers import read_run, run_lm_eval

from lm_eval_calib.data.lama import load_lama
from lm_eval_calib.harness.base import CALIBRATION_KEYS
from lm_eval_calib.metrics import compute_metric
from lm_eval_calib.records import records_to_data


@pytest.fixture(scope="module")
def facts(data_root):
    return load_lama(str(data_root))["test"]


@pytest.fixture(scope="module")
def sample_ids(facts):
    """Two facts from each of four relations, P27 among them (text after [Y] in its template)."""
    wanted, ids = {"P19": 2, "P27": 2, "P30": 2, "P1303": 2}, []
    for index, relation in enumerate(facts["relation"]):
        if wanted.get(relation, 0) > 0:
            wanted[relation] -= 1
            ids.append(index)
    return ids


@pytest.fixture(scope="module")
def facts_run(tiny_model_dir, data_root, sample_ids, tmp_path_factory):
    out = tmp_path_factory.mktemp("facts")
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--tasks", "calib_facts", "--samples", json.dumps({"calib_facts": sample_ids})]
    args += ["--device", "cpu", "--batch_size", "16", "--output_path", str(out), "--log_samples"]
    run_lm_eval([*args, "--metadata", json.dumps({"data_dir": str(data_root)})])
    return read_run(out)


def test_prompts_options_and_records(facts_run, facts, sample_ids):
    results, samples = facts_run
    rows = {row["doc_id"]: row for row in samples["calib_facts"]}
    assert sorted(rows) == sorted(sample_ids)
    for doc_id, row in rows.items():
        fact = facts[doc_id]
        contexts = {arg["arg_0"] for arg in row["arguments"].values()}
        continuations = [arg["arg_1"] for arg in row["arguments"].values()]
        assert contexts == {fact["prompt"]}
        assert continuations == [" " + option + fact["suffix"] for option in fact["options"]]
        assert fact["options"][fact["target"]] == fact["object"]
        record = row["ece"]
        assert record["category"] == fact["relation"] and record["target"] == fact["target"]
        n_options = {"P30": 5, "P1303": 6}.get(fact["relation"], 10)  # relations with few distinct objects
        assert len(record["probs"]) == len(fact["options"]) == n_options
    p27 = next(row for row in rows.values() if row["doc"]["relation"] == "P27")
    assert p27["arguments"]["gen_args_0"]["arg_1"].endswith(" citizen")
    data = records_to_data([row["ece"] for row in rows.values()])
    for key in CALIBRATION_KEYS:
        assert results["results"]["calib_facts"][f"{key},none"] == pytest.approx(
            compute_metric(key, data), abs=1e-12, nan_ok=True
        )
        assert isinstance(results["results"]["calib_facts"][f"{key}_stderr,none"], float)


def test_distractor_count_is_configurable_and_bad_options_fail_early(tiny_model_dir, data_root, tmp_path):
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--tasks", "calib_facts", "--limit", "3", "--device", "cpu", "--log_samples"]
    options = {"data_dir": str(data_root), "facts": {"n_distractors": 3, "seed": 7}}
    run_lm_eval([*args, "--output_path", str(tmp_path / "ok"), "--metadata", json.dumps(options)])
    _, samples = read_run(tmp_path / "ok")
    assert all(len(row["ece"]["probs"]) == 4 for row in samples["calib_facts"])
    options = {"data_dir": str(data_root), "facts": {"distractors": 3}}
    bad = [*args, "--output_path", str(tmp_path / "bad"), "--metadata", json.dumps(options)]
    proc = run_lm_eval(bad, check=False)
    assert proc.returncode != 0 and "unknown facts option(s) 'distractors'" in proc.stderr
    assert "Running loglikelihood requests" not in proc.stderr
