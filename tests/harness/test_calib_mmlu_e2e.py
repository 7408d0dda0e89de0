"""calib_mmlu end to end through the real lm_eval CLI, on a tiny random Llama built in a fixture.

A random model answers near chance, which is all these tests need: they check what lm-eval writes (every
metric with a real stderr), that the logged per-document records rebuild the aggregates exactly, the
prompts (lm-eval's mmlu format, 5-shot from the question's own subject), parity with lm-eval's own mmlu,
and the errors a user gets for bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import read_run, run_lm_eval

from lm_eval_calib.data.mmlu import load_local
from lm_eval_calib.harness.base import CALIBRATION_KEYS
from lm_eval_calib.metrics import METRICS, compute_metric
from lm_eval_calib.records import records_to_data

# Documents across four subjects of the pooled test split (abstract_algebra starts at 0, anatomy at 100,
# astronomy at 235, business_ethics at 387).
POOLED_SAMPLES = [0, 1, 2, 50, 99, 100, 101, 180, 234, 235, 236, 300, 387, 388, 400, 486]


def _model_args(folder: Path) -> str:
    return f"pretrained={folder},dtype=float32"


def _hf(folder: Path, tasks: str) -> list[str]:
    """How every ``lm_eval`` command here starts: plain ``hf`` on the tiny model, then the tasks."""
    return ["--model", "hf", "--model_args", _model_args(folder), "--tasks", tasks]


@pytest.fixture(scope="module")
def pooled_run(tiny_model_dir, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pooled")
    args = [*_hf(tiny_model_dir, "calib_mmlu"), "--samples", json.dumps({"calib_mmlu": POOLED_SAMPLES})]
    args += ["--device", "cpu", "--batch_size", "8", "--output_path", str(out), "--log_samples"]
    run_lm_eval(args, env={"LM_EVAL_CALIB_DATA": str(data_root)})
    return read_run(out)


def test_results_carry_every_metric_with_a_bootstrap_stderr(pooled_run):
    results, _ = pooled_run
    task = results["results"]["calib_mmlu"]
    for key in METRICS:
        value, stderr = task[f"{key},none"], task[f"{key}_stderr,none"]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
        assert isinstance(stderr, float) and stderr >= 0, (key, stderr)  # not lm-eval's "N/A"
    assert results["higher_is_better"]["calib_mmlu"]["ece"] is False
    assert results["higher_is_better"]["calib_mmlu"]["auroc"] is True
    assert results["n-samples"]["calib_mmlu"]["effective"] == len(POOLED_SAMPLES)
    assert results["configs"]["calib_mmlu"]["num_fewshot"] == 5


def test_logged_records_rebuild_the_aggregates(pooled_run):
    results, samples = pooled_run
    rows = samples["calib_mmlu"]
    assert sorted(r["doc_id"] for r in rows) == POOLED_SAMPLES
    for row in rows:
        record = row["ece"]
        # the record is logged once; the other calibration keys point at it
        assert all(row[key] == "see 'ece'" for key in CALIBRATION_KEYS if key != "ece")
        logliks = [float(resp[0]) for resp in row["filtered_resps"]]  # lm-eval logs these as strings
        assert record["loglik"] == logliks
        assert sum(record["probs"]) == pytest.approx(1.0, abs=1e-12)
        assert record["confidence"] == pytest.approx(max(record["probs"]), abs=1e-12)
        assert record["target"] == row["doc"]["answer"] and record["category"] == row["doc"]["subject"]
        assert record["correct"] == row["acc"] == float(int(np.argmax(logliks)) == row["doc"]["answer"])
    data = records_to_data([row["ece"] for row in rows])
    task = results["results"]["calib_mmlu"]
    assert task["acc,none"] == pytest.approx(float(np.mean([row["acc"] for row in rows])), abs=1e-12)
    for key in CALIBRATION_KEYS:
        assert task[f"{key},none"] == pytest.approx(compute_metric(key, data, n_bins=10), abs=1e-12), key


def test_prompts_are_lm_eval_mmlu_five_shot_from_the_same_subject(pooled_run, data_root):
    _, samples = pooled_run
    dev = load_local(data_root)["dev"]
    for row in samples["calib_mmlu"]:
        subject = row["doc"]["subject"]
        context, continuation = (
            row["arguments"]["gen_args_0"]["arg_0"],
            row["arguments"]["gen_args_0"]["arg_1"],
        )
        assert continuation == " A"
        shots = [d for d in dev if d["subject"] == subject]
        words = subject.replace("_", " ")
        assert context.startswith(
            f"The following are multiple choice questions (with answers) about {words}.\n\n"
            f"{shots[0]['question'].strip()}\nA. {shots[0]['choices'][0]}"
        )
        assert context.count("\nAnswer:") == 6  # five solved examples, then the question
        assert context.endswith(
            f"{row['doc']['question'].strip()}\nA. {row['doc']['choices'][0]}\n"
            f"B. {row['doc']['choices'][1]}\nC. {row['doc']['choices'][2]}\n"
            f"D. {row['doc']['choices'][3]}\nAnswer:"
        )
        letters = "ABCD"
        for shot in shots:
            assert f"{shot['question'].strip()}" in context
            assert f"D. {shot['choices'][3]}\nAnswer: {letters[shot['answer']]}\n\n" in context


def _reference_mmlu_tasks(folder: Path, data_root: Path, subjects: list[str]) -> Path:
    """lm-eval's OWN mmlu subject YAMLs (included by absolute path), pointed at the local CSV data."""
    import lm_eval

    mmlu_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    for subject in subjects:
        ds = load_local(data_root, subject)
        files = {}
        for split in ("test", "dev"):
            files[split] = str(folder / f"{subject}_{split}.jsonl")
            ds[split].to_json(files[split])
        (folder / f"ref_mmlu_{subject}.yaml").write_text(
            f"include: {mmlu_dir / f'mmlu_{subject}.yaml'}\n"
            f"task: ref_mmlu_{subject}\ntag: ref_mmlu\n"
            f"dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {files['test']}\n    dev: {files['dev']}\n"
        )
    return folder


@pytest.mark.parametrize("shots", [0, 5])
def test_accuracy_equals_lm_eval_mmlu_subject_by_subject(shots, tiny_model_dir, data_root, tmp_path):
    """Also the zero-shot prompt (``shots=0``): the header, then the question alone, no solved examples."""
    subjects = ["anatomy", "high_school_government_and_politics"]
    (tmp_path / "ref").mkdir()
    include = _reference_mmlu_tasks(tmp_path / "ref", data_root, subjects)
    out = tmp_path / "out"
    tasks = [f"calib_mmlu_{s}" for s in subjects] + [f"ref_mmlu_{s}" for s in subjects]
    args = [*_hf(tiny_model_dir, ",".join(tasks)), "--include_path", str(include)]
    args += ["--num_fewshot", str(shots), "--limit", "12", "--device", "cpu", "--batch_size", "8"]
    args += ["--output_path", str(out), "--log_samples"]
    run_lm_eval([*args, "--metadata", json.dumps({"data_dir": str(data_root)})])
    results, samples = read_run(out)
    for subject in subjects:
        ours = {r["doc_id"]: r for r in samples[f"calib_mmlu_{subject}"]}
        ref = {r["doc_id"]: r for r in samples[f"ref_mmlu_{subject}"]}
        assert ours.keys() == ref.keys() and len(ours) == 12
        for doc_id, row in ours.items():
            assert row["arguments"] == ref[doc_id]["arguments"]  # the very same prompts
            assert row["acc"] == ref[doc_id]["acc"]
        assert (
            results["results"][f"calib_mmlu_{subject}"]["acc,none"]
            == results["results"][f"ref_mmlu_{subject}"]["acc,none"]
        )
        assert results["configs"][f"calib_mmlu_{subject}"]["num_fewshot"] == shots
        context = ours[0]["arguments"]["gen_args_0"]["arg_0"]
        assert context.count("\nAnswer:") == 1 + shots  # the solved examples, then the question
        words = subject.replace("_", " ")
        assert context.startswith(
            f"The following are multiple choice questions (with answers) about {words}.\n\n"
        )


def test_limit_one_works_and_warns(tiny_model_dir, data_root, tmp_path):
    args = [*_hf(tiny_model_dir, "calib_mmlu_anatomy"), "--limit", "1", "--device", "cpu"]
    proc = run_lm_eval([*args, "--output_path", str(tmp_path)], env={"LM_EVAL_CALIB_DATA": str(data_root)})
    results, _ = read_run(tmp_path)
    task = results["results"]["calib_mmlu_anatomy"]
    assert task["acc,none"] in (0.0, 1.0) and math.isfinite(task["ece,none"])
    assert "unstable" in proc.stderr  # the small-sample warning reached the user


def _assert_fails_before_inference(proc, tmp_path: Path, *needles: str) -> None:
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]
    assert "Running loglikelihood requests" not in proc.stderr
    assert not list(tmp_path.rglob("results_*.json"))  # nothing half-written


def test_unknown_calibration_option_fails_before_inference(tiny_model_dir, data_root, tmp_path):
    metadata = json.dumps({"data_dir": str(data_root), "calibration": {"nbins": 15}})
    args = [*_hf(tiny_model_dir, "calib_mmlu_anatomy"), "--limit", "2", "--device", "cpu"]
    proc = run_lm_eval([*args, "--output_path", str(tmp_path), "--metadata", metadata], check=False)
    _assert_fails_before_inference(proc, tmp_path, "unknown calibration option(s) 'nbins'", "n_bins")


def test_missing_data_dir_fails_before_inference(tiny_model_dir, tmp_path):
    args = [*_hf(tiny_model_dir, "calib_mmlu"), "--limit", "2", "--device", "cpu"]
    args += ["--output_path", str(tmp_path / "out")]
    proc = run_lm_eval(args, env={"LM_EVAL_CALIB_DATA": str(tmp_path / "no-such-root")}, check=False)
    _assert_fails_before_inference(proc, tmp_path, "no-such-root", "is not a directory")


def test_custom_bin_count_changes_binned_metrics(tiny_model_dir, data_root, tmp_path):
    metadata = json.dumps({"data_dir": str(data_root), "calibration": {"n_bins": 3}})
    args = [*_hf(tiny_model_dir, "calib_mmlu_anatomy"), "--limit", "20", "--device", "cpu"]
    run_lm_eval([*args, "--output_path", str(tmp_path), "--log_samples", "--metadata", metadata])
    results, samples = read_run(tmp_path)
    data = records_to_data([row["ece"] for row in samples["calib_mmlu_anatomy"]])
    task = results["results"]["calib_mmlu_anatomy"]
    assert task["ece,none"] == pytest.approx(compute_metric("ece", data, n_bins=3), abs=1e-12)
