"""Calibrate what you already ran: the report scores plain lm-eval multiple-choice runs from their samples.

One real ``lm_eval`` call on the tiny model runs three built-in lm-eval tasks redirected to the offline hub
mirror (MMLU anatomy in its continuation format, which reports ``acc`` and ``acc_norm``; the same with two
gold options per question; GSM8K, a generation task), exactly as a user's earlier run would have, plus the
``calib_`` wrapper of the first on the same model outputs; the report then reads that folder with no model.
Its numbers are checked against an independent recomputation from the raw samples (scipy softmax and the
metric core) and against the wrapped task's own results.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import read_run, run_lm_eval
from scipy.special import softmax

from lm_eval_calib.metrics import METRICS, CalibrationData, bootstrap_stderr, compute_metric
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.report.build import build_report
from lm_eval_calib.report.runs import ACC_NORM_SUFFIX, load_run

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
TASK = "plain_anatomy"
LIMIT = 20
SHOWN = [TASK, TASK + ACC_NORM_SUFFIX, f"calib_{TASK}", f"calib_{TASK}{ACC_NORM_SUFFIX}"]
"""Leaderboard sections: the plain task and its wrapper, each under lm-eval's acc and acc_norm rules."""


def _yaml(include: Path, name: str, dataset: Path, extra: str = "") -> str:
    return f"include: {include}\ntask: {name}\ndataset_path: {dataset}\ntag: []\n{extra}"


@pytest.fixture(scope="session")
def plain_run(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    """An lm-eval output folder of built-in tasks (no lm-eval-calib task), with --log_samples."""
    base = tmp_path_factory.mktemp("plain-run")
    tasks = base / "tasks"
    tasks.mkdir()
    anatomy = LM_EVAL_TASKS / "mmlu" / "continuation" / "mmlu_anatomy.yaml"
    mmlu = data_root / "hub" / "cais" / "mmlu"
    (tasks / "anatomy.yaml").write_text(_yaml(anatomy, TASK, mmlu))
    two_golds = 'doc_to_target: "{{[answer, (answer + 1) % 4]}}"\n'
    (tasks / "anatomy_two.yaml").write_text(_yaml(anatomy, "plain_anatomy_two_golds", mmlu, two_golds))
    short = "generation_kwargs:\n  until: ['Question:']\n  do_sample: false\n  max_gen_toks: 4\n"
    gsm8k = LM_EVAL_TASKS / "gsm8k" / "gsm8k.yaml"
    (tasks / "gsm8k.yaml").write_text(
        _yaml(gsm8k, "plain_gsm8k", data_root / "hub" / "openai" / "gsm8k", short)
    )
    samples = {
        TASK: list(range(LIMIT)),
        f"calib_{TASK}": list(range(LIMIT)),
        "plain_anatomy_two_golds": [0, 1],
        "plain_gsm8k": [0],
    }
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32"]
    args += ["--device", "cpu", "--batch_size", "8", "--num_fewshot", "0", "--include_path", str(tasks)]
    args += ["--tasks", ",".join(samples), "--samples", json.dumps(samples), "--log_samples"]
    run_lm_eval([*args, "--output_path", str(base / "out")])
    return base / "out"


@pytest.fixture(scope="module")
def loaded(plain_run):
    """The report's reading of the plain run: its task runs and messages."""
    return load_run(plain_run)


def _independent(samples: list[dict], norm: bool) -> CalibrationData:
    """Top-label data straight from lm-eval's logged strings: softmax of (normalised) log-likelihoods."""
    confidence, correct, brier, nll = [], [], [], []
    for sample in samples:
        lls = np.array([float(resp[0]) for resp in sample["filtered_resps"]])
        if norm:  # lm-eval's acc_norm: divide by the choice's length, without the target delimiter " "
            args = sample["arguments"]
            choices = [args[f"gen_args_{i}"]["arg_1"].removeprefix(" ") for i in range(len(lls))]
            lls = lls / np.array([len(c) for c in choices])
        probs, gold = softmax(lls), int(sample["target"])
        confidence.append(probs.max())
        correct.append(float(np.argmax(lls) == gold))
        brier.append(float(np.sum((probs - np.eye(len(probs))[gold]) ** 2)))
        nll.append(-np.log(probs[gold]))
    return CalibrationData(np.array(confidence), np.array(correct), np.array(brier), np.array(nll))


def test_a_plain_run_gets_every_calibration_metric_with_stderrs(plain_run, loaded):
    results, samples = read_run(plain_run)
    runs, messages = loaded
    shown = {run.task: run for run in runs}
    assert set(shown) == set(SHOWN)
    options = CalibrationOptions()
    n_resamples = min(results["config"]["bootstrap_iters"], options.max_bootstrap)
    for name, norm, acc_key in ((TASK, False, "acc"), (TASK + ACC_NORM_SUFFIX, True, "acc_norm")):
        run, expected = shown[name], _independent(samples[TASK], norm)
        assert len(run.data) == LIMIT and run.scores is not None and run.n_records == LIMIT
        # the records reproduce lm-eval's own per-document decision under each rule, document by document
        assert run.data.correct.tolist() == [s[acc_key] for s in samples[TASK]]
        assert run.results["acc,none"] == results["results"][TASK][f"{acc_key},none"]
        assert run.results["acc_stderr,none"] == results["results"][TASK][f"{acc_key}_stderr,none"]
        for key in METRICS:
            if key == "acc":
                continue
            assert run.results[f"{key},none"] == pytest.approx(compute_metric(key, expected), abs=1e-12), key
            stderr = bootstrap_stderr(key, expected, n_resamples=n_resamples, seed=options.bootstrap_seed)
            assert run.results[f"{key}_stderr,none"] == pytest.approx(stderr, abs=1e-12), key
    assert any(f"{TASK}: ece, ece_em" in m and "computed by the report" in m for m in messages)


def test_multi_gold_and_generation_tasks_are_skipped_with_a_message(loaded):
    runs, messages = loaded
    assert {run.task for run in runs} == set(SHOWN)
    said = "\n".join(messages)
    assert "plain_gsm8k is a generate_until task: only multiple-choice tasks" in said
    assert "no document of plain_anatomy_two_golds could be scored" in said
    assert "several gold options (multi-gold) (e.g. doc_id 0)" in said


def test_a_results_file_holding_null_or_a_list_is_one_message_and_the_rest_is_reported(plain_run, tmp_path):
    """Issue 16 item 9: such a file aborted the whole report with AttributeError."""
    folder = tmp_path / "run"
    shutil.copytree(plain_run, folder)
    (model,) = [p for p in folder.iterdir() if p.is_dir()]
    (model / "results_2020-01-01T00-00-00.000001.json").write_text("null")
    (model / "results_2020-01-01T00-00-00.000002.json").write_text("[]")
    said: list[str] = []
    build_report([folder], tmp_path / "report", log=said.append)
    assert any("000001.json is not an lm-eval results file (it holds NoneType)" in m for m in said)
    assert any("000002.json is not an lm-eval results file (it holds list)" in m for m in said)
    with (tmp_path / "report" / "leaderboard.csv").open() as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(SHOWN)
    _, samples = read_run(plain_run)
    expected = compute_metric("ece", _independent(samples[TASK], norm=True))
    assert float(rows[TASK + ACC_NORM_SUFFIX]["ece"]) == pytest.approx(expected, abs=1e-12)
    assert rows[TASK]["ece_recal"] and rows[TASK]["recal_method"] == "temperature"


def test_a_plain_run_gives_the_wrapped_tasks_numbers_on_the_same_model_outputs(plain_run, loaded):
    """calib_<task> computed every metric while lm-eval ran; the report recomputes them from the plain
    task's samples of the same run: value and stderr agree to the last digit, under both rules."""
    results, _ = read_run(plain_run)
    wrapped = results["results"][f"calib_{TASK}"]
    shown = {run.task: run for run in loaded[0]}
    for suffix, rule in (("", ""), (ACC_NORM_SUFFIX, "_norm")):
        plain, logged = shown[TASK + suffix], shown[f"calib_{TASK}{suffix}"]
        assert np.array_equal(plain.data.confidence, logged.data.confidence)
        for key in METRICS:
            for name in (key, f"{key}_stderr"):
                lm_eval_name = name.replace(key, key + rule, 1)
                assert plain.results[f"{name},none"] == wrapped[f"{lm_eval_name},none"], (suffix, name)
                assert logged.results[f"{name},none"] == wrapped[f"{lm_eval_name},none"], (suffix, name)
