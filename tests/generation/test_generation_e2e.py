"""Generation calibration through the real lm_eval CLI on SmolLM2-135M-Instruct (real gsm8k and LAMA data).

Three runs, each loading the model once, ``--limit 3`` and ``max_gen_toks=16``:

- ``hf-calib`` with SmolLM2's chat template on gsm8k wrapped and unwrapped (both filters), every estimator:
  the five of ``ALL`` and the meaning-aware ones, all reading one set of K = 3 samples per document;
- ``hf`` on the wrapped task's requests (no generation log-probs: sequence probabilities are rescored);
- ``hf-calib`` without a template on calib_facts_gen, ``ALL`` with K = 2 (the plain-text follow-up prompts).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import lm_eval
import pytest
from helpers import REPO, read_run, run_lm_eval

from lm_eval_calib.generation.estimators import parse_verbal

pytestmark = pytest.mark.integration

ALL = ["seqprob", "seqprob_mean", "ptrue", "verbal", "consistency"]
SEMANTIC = ["semantic_entropy", "num_sets", "lexsim", "eigv", "degree"]
COMMON = ["--limit", "3", "--num_fewshot", "0", "--device", "cpu", "--log_samples"]
CHAT = ["--apply_chat_template"]
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


def _load_facts_utils():
    spec = importlib.util.spec_from_file_location(
        "facts_gen_utils", REPO / "tasks" / "facts_gen" / "utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FACTS_UTILS = _load_facts_utils()


def write_test_tasks(folder: Path, data_root: Path) -> Path:
    """gsm8k from the offline hub mirror, unwrapped (gsm8k_ref) and as a GenerationCalibrationTask."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text(
        "from lm_eval_calib.harness.generation import GenerationCalibrationTask as CalibGen  # noqa: F401\n"
    )
    base = f"include: {LM_EVAL_TASKS / 'gsm8k' / 'gsm8k.yaml'}\ntag: []\n"
    base += f"dataset_path: {data_root / 'hub' / 'openai' / 'gsm8k'}\n"
    (folder / "gsm8k_ref.yaml").write_text(base + "task: gsm8k_ref\n")
    (folder / "calib_gsm8k_test.yaml").write_text(
        base + "task: calib_gsm8k_test\nclass: !function utils.CalibGen\n"
    )
    return folder


@pytest.fixture(scope="module")
def test_tasks(tmp_path_factory, data_root) -> Path:
    return write_test_tasks(tmp_path_factory.mktemp("gen_tasks"), data_root)


def _run(include: Path, out: Path, model: str, model_args: str, tasks: str, estimators: list[str], data_root,
         extra: list[str] = (), samples: int = 2) -> Path:  # fmt: skip
    run_lm_eval(
        ["--model", model, "--model_args", model_args, "--include_path", str(include), "--tasks", tasks,
         *COMMON, *extra, "--gen_kwargs", "max_gen_toks=16", "--output_path", str(out),
         "--metadata", json.dumps({"calibration": {"confidence": estimators, "samples": samples}})],
        env={"LM_EVAL_CALIB_DATA": str(data_root)},
    )  # fmt: skip
    return out


SAMPLES = {"calib_gsm8k_test": 3, "calib_facts_gen": 2}
"""K of each run's sampling estimators (two values: K reaches every record as configured)."""


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, test_tasks, smollm2_model_args, data_root) -> dict[str, Path]:
    """The three runs' ``--output_path`` folders (see the module docstring)."""
    out = tmp_path_factory.mktemp("gen_runs")
    seq = ["seqprob", "seqprob_mean"]
    args = smollm2_model_args
    # lm_eval's default batch size of 1 generates each request alone: the wrapped task's greedy answers do
    # not depend on which other requests share the run, so hf needs no copy of the unwrapped task
    return {
        "native": _run(test_tasks, out / "native", "hf-calib", args, "calib_gsm8k_test,gsm8k_ref",
                       [*ALL, *SEMANTIC], data_root, CHAT, samples=SAMPLES["calib_gsm8k_test"]),
        "rescored": _run(test_tasks, out / "rescored", "hf", args, "calib_gsm8k_test", seq, data_root, CHAT),
        "facts": _run(test_tasks, out / "facts", "hf-calib", args, "calib_facts_gen", ALL, data_root,
                      samples=SAMPLES["calib_facts_gen"]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(run_dirs):
    """(hf-calib run, hf run) with the chat template on gsm8k: results and samples of each."""
    return read_run(run_dirs["native"]), read_run(run_dirs["rescored"])


@pytest.fixture(scope="module")
def facts_run(run_dirs):
    return read_run(run_dirs["facts"])


def _by_doc(samples: list[dict]) -> dict[tuple[int, str], dict]:
    return {(s["doc_id"], s["filter"]): s for s in samples}


def test_correctness_is_the_unwrapped_tasks_metric(runs):
    (results, samples), _ = runs
    calib, ref = _by_doc(samples["calib_gsm8k_test"]), _by_doc(samples["gsm8k_ref"])
    assert set(calib) == set(ref) and {f for _, f in calib} == {"strict-match", "flexible-extract"}
    for key, line in calib.items():
        assert line["resps"] == ref[key]["resps"] and line["filtered_resps"] == ref[key]["filtered_resps"]
        assert line["exact_match"] == ref[key]["exact_match"]
        for estimator in ALL:
            assert line[f"ece_{estimator}"]["correct"] == int(line["exact_match"] > 0.5)
    for filt in ("strict-match", "flexible-extract"):  # the original metric is reported unchanged
        assert (
            results["results"]["calib_gsm8k_test"][f"exact_match,{filt}"]
            == results["results"]["gsm8k_ref"][f"exact_match,{filt}"]
        )


def test_every_estimator_reports_every_metric_with_a_stderr(runs, facts_run):
    for (results, _), task, filters in (
        (runs[0], "calib_gsm8k_test", ["strict-match", "flexible-extract"]),
        (facts_run, "calib_facts_gen", ["none"]),
    ):
        metrics = results["results"][task]
        for filt in filters:
            for estimator in ALL:
                for metric in ("ece", "ece_em", "smece", "brier", "nll", "auroc", "aurc"):
                    assert f"{metric}_{estimator},{filt}" in metrics
                    assert f"{metric}_{estimator}_stderr,{filt}" in metrics


def test_facts_gen_correctness_and_categories(facts_run):
    _, samples = facts_run
    facts = samples["calib_facts_gen"]
    assert len(facts) == 3
    for line in facts:
        expected = _FACTS_UTILS.starts_with_object(line["resps"][0][0], line["doc"]["object"])
        assert line["acc"] == float(expected)
        assert line["ece_seqprob"]["correct"] == int(expected)
        assert line["ece_seqprob"]["category"] == line["doc"]["relation"]
        assert line["ece_seqprob"]["source"] == "generation"


def test_second_pass_estimators_on_real_outputs(runs, facts_run):
    for (results, samples), task in ((runs[0], "calib_gsm8k_test"), (facts_run, "calib_facts_gen")):
        lines = samples[task]
        for line in lines:
            assert 0.0 < line["ece_ptrue"]["confidence"] < 1.0
            k = SAMPLES[task]
            assert line["ece_consistency"]["samples"] == k
            assert line["ece_consistency"]["confidence"] in {agree / k for agree in range(k + 1)}
            verbal = line["ece_verbal"]
            assert isinstance(verbal["reply"], str)
            assert verbal["parsed"] == (None if parse_verbal(verbal["reply"]) is None else pytest.approx(
                100 * parse_verbal(verbal["reply"])))  # fmt: skip
        # unparseable verbalised replies are counted and reported, never silently dropped
        filt = lines[0]["filter"]
        unparsed = sum(line["ece_verbal"]["parsed"] is None for line in lines if line["filter"] == filt)
        assert results["results"][task][f"n_unparsed_verbal,{filt}"] == unparsed


def test_hf_calib_logprobs_equal_hf_rescoring(runs):
    (_, native), (_, rescored) = runs
    compared = 0
    for task in ("calib_gsm8k_test",):
        ours, theirs = _by_doc(native[task]), _by_doc(rescored[task])
        assert set(ours) == set(theirs)
        for key, line in ours.items():
            other = theirs[key]
            assert line["resps"] == other["resps"]  # hf-calib generates exactly what hf generates
            mine, ref = line["ece_seqprob"], other["ece_seqprob"]
            assert ref["source"] == "rescored"
            if mine["source"] == "generation":
                compared += 1
                assert mine["logprob"] == pytest.approx(ref["logprob"], abs=1e-4)
                assert mine["n_tokens"] == ref["n_tokens"]
                assert line["ece_seqprob_mean"]["confidence"] == pytest.approx(
                    other["ece_seqprob_mean"]["confidence"], abs=1e-4
                )
    assert compared >= 4  # most generations carry their own log-probs (the rest were rescored)


FILTERS = ("strict-match", "flexible-extract")


def test_report_reads_one_run_per_estimator_and_filter(run_dirs, runs):
    from lm_eval_calib.metrics import compute_metric
    from lm_eval_calib.report.runs import load_run

    found, messages = load_run(run_dirs["native"], label="smollm2")
    (results, samples), _ = runs
    generation = {(r.label, r.task): r for r in found if r.task.startswith("calib_gsm8k_test")}
    labels = {f"smollm2 · {e}" for e in [*ALL, *SEMANTIC]}
    assert set(generation) == {(label, f"calib_gsm8k_test ({f})") for label in labels for f in FILTERS}
    # the unwrapped generate_until task has no records and no option log-likelihoods: said, not scored
    assert any("gsm8k_ref" in m and "generate_until" in m for m in messages)
    metrics = results["results"]["calib_gsm8k_test"]
    for estimator in ALL:
        for filt in FILTERS:
            run = generation[(f"smollm2 · {estimator}", f"calib_gsm8k_test ({filt})")]
            lines = [line for line in samples["calib_gsm8k_test"] if line["filter"] == filt]
            scored = [line for line in lines if line[f"ece_{estimator}"]["confidence"] is not None]
            assert len(run.data) == len(scored)
            assert run.results["ece,none"] == metrics[f"ece_{estimator},{filt}"]
            assert run.results["brier_stderr,none"] == metrics[f"brier_{estimator}_stderr,{filt}"]
            share = sum(line["exact_match"] for line in scored) / len(scored)
            assert run.results["acc,none"] == pytest.approx(share)
            # the arrays read back rebuild the run's own number
            recomputed = compute_metric("ece", run.data, n_bins=run.options.n_bins)
            assert recomputed == pytest.approx(metrics[f"ece_{estimator},{filt}"], abs=1e-12)


def test_report_overlays_the_estimators_of_a_generation_task(run_dirs, tmp_path):
    from lm_eval_calib.report.build import build_report

    out = tmp_path / "report"
    build_report([run_dirs["facts"]], out, log=lambda m: None, labels=[f"{run_dirs['facts']}=smollm2"])
    overlay = json.loads((out / "figures" / "overlay__calib_facts_gen.json").read_text())
    drawn = {curve["label"] for curve in overlay["curves"]}
    unparsed = all(
        line["ece_verbal"]["confidence"] is None for line in read_run(run_dirs["facts"])[1]["calib_facts_gen"]
    )
    assert drawn == {f"smollm2 · {e}" for e in ALL if not (e == "verbal" and unparsed)}
    board = (out / "leaderboard.csv").read_text()
    assert "smollm2 · seqprob" in board and "smollm2 · ptrue" in board


def test_meaning_aware_estimators_on_real_samples(run_dirs):
    """Every new key with its stderr, per filter; each document's semantic entropy recomputed here from the
    recorded filtered samples; consistency and the new estimators read the same K samples."""
    results, samples = read_run(run_dirs["native"])
    metrics = results["results"]["calib_gsm8k_test"]
    from lm_eval_calib.harness.base import CALIBRATION_KEYS

    for filt in FILTERS:
        for name in SEMANTIC:
            for metric in CALIBRATION_KEYS:
                assert f"{metric}_{name},{filt}" in metrics
                assert f"{metric}_{name}_stderr,{filt}" in metrics
    lines = samples["calib_gsm8k_test"]
    assert {line["filter"] for line in lines} == set(FILTERS) and len(lines) == 6
    k = SAMPLES["calib_gsm8k_test"]
    for line in lines:
        entropy = line["ece_semantic_entropy"]
        texts, answers = entropy["texts"], entropy["answers"]
        assert len(texts) == len(answers) == k and all(isinstance(t, str) for t in texts)
        for name in SEMANTIC:  # one set of samples for every estimator
            assert line[f"ece_{name}"]["texts"] == texts
        keys = [" ".join(a.split()).casefold() for a in answers]
        keys = [f"[invalid] #{i}" if k == "[invalid]" else k for i, k in enumerate(keys)]
        counts = [keys.count(k) for k in dict.fromkeys(keys)]
        h = -sum(c / k * math.log(c / k) for c in counts)
        assert entropy["confidence"] == pytest.approx(1 - h / math.log(k), abs=1e-12)
        assert len(set(entropy["clusters"])) == len(counts)
        assert line["ece_num_sets"]["confidence"] == pytest.approx(1 - (len(counts) - 1) / (k - 1), abs=1e-12)
        greedy = " ".join(str(line["filtered_resps"][0]).split()).lower()
        agree = sum(" ".join(a.split()).lower() == greedy for a in answers)
        assert line["ece_consistency"]["agree"] == agree
    # the report reads each new estimator as a row of its own, per filter, with the run's own numbers
    from lm_eval_calib.report.runs import load_run

    found, _ = load_run(run_dirs["native"], label="smollm2")
    rows = {(r.label, r.task): r for r in found}
    for name in SEMANTIC:
        for filt in FILTERS:
            row = rows[(f"smollm2 · {name}", f"calib_gsm8k_test ({filt})")]
            assert row.results["ece,none"] == metrics[f"ece_{name},{filt}"]
