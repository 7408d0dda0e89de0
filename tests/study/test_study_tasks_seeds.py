"""Per-model task selection, seed replicates, a stage's own interpreter, and generation claims per estimator:
the study file (validation, the plan and its fingerprints) and the findings math on synthetic records."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from lm_eval_calib.metrics.paired import paired_difference
from lm_eval_calib.records import generation_record, make_record
from lm_eval_calib.records_io import TaskRecords
from lm_eval_calib.study.config import FindingSpec, StudyConfigError, parse_study
from lm_eval_calib.study.findings import (
    FindingResult,
    compare_records,
    compare_to_spread,
    findings_markdown,
    judge,
    seed_pairs,
)
from lm_eval_calib.study.plan import build_plan

TASKS = {"calib_mmlu": {"limit": 4}, "calib_facts": {"limit": 4}, "calib_clm": {"limit": 2}}


def _study(tmp_path: Path) -> dict:
    return {
        "name": "mini",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf", "device": "cpu"},
        "tasks": copy.deepcopy(TASKS),
        "models": {"base": {"pretrained": str(tmp_path / "base")}},
        "train": {
            "sft": {"kind": "sft", "from": "base", "method": "full", "data": "d.jsonl", "max_steps": 2},
            "sft-lora": {"kind": "sft", "from": "base", "method": "lora", "data": "d.jsonl", "max_steps": 2},
        },
        "findings": [
            {"claim": "SFT raises ECE", "task": "calib_mmlu", "metric": "ece", "baseline": "base",
             "treatment": "sft", "expect": "higher"},
        ],
    }  # fmt: skip


def _plan(body: dict, tmp_path: Path) -> dict:
    return {cell.name: cell for cell in build_plan(parse_study(body, tmp_path / "s.yaml"))}


# --- tasks: per model and stage --------------------------------------------------------------------------


def test_tasks_of_a_stage_select_its_cells_and_change_no_fingerprint(tmp_path):
    body = _study(tmp_path)
    before = _plan(body, tmp_path)
    body["train"]["sft"]["tasks"] = ["calib_facts", "calib_mmlu"]  # any order; the study's order is kept
    body["models"]["base"]["tasks"] = ["calib_mmlu"]
    after = _plan(body, tmp_path)
    assert sorted(after) == sorted(
        ["train/sft", "train/sft-lora", "eval/base/calib_mmlu", "eval/sft/calib_mmlu", "eval/sft/calib_facts"]
        + [f"eval/sft-lora/{task}" for task in TASKS]
    )
    for name, cell in after.items():  # every remaining cell keeps the fingerprint it had without `tasks:`
        assert cell.fingerprint == before[name].fingerprint, name
    config = parse_study(body, tmp_path / "s.yaml")
    assert config.tasks_of("sft") == ["calib_mmlu", "calib_facts"]
    assert config.tasks_of("sft-lora") == list(TASKS)


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            "models",
            ["calib_mmlu", "calib_gsm8k"],
            "models.base.tasks: 'calib_gsm8k' not among the study's tasks",
        ),
        ("train", [], "train.sft.tasks must be a non-empty list"),
        ("train", {"calib_mmlu": 1}, "train.sft.tasks must be a non-empty list"),
        ("train", ["calib_mmlu", "calib_mmlu"], "train.sft.tasks names a task twice"),
    ],
)
def test_a_wrong_task_list_names_the_key_and_the_fix(tmp_path, where, value, message):
    body = _study(tmp_path)
    (body["models"]["base"] if where == "models" else body["train"]["sft"])["tasks"] = value
    with pytest.raises(StudyConfigError, match="tasks") as caught:
        parse_study(body, tmp_path / "s.yaml")
    assert message in str(caught.value)


def test_a_claim_on_a_cell_that_is_not_evaluated_is_refused_at_load(tmp_path):
    body = _study(tmp_path)
    body["train"]["sft"]["tasks"] = ["calib_facts"]
    with pytest.raises(StudyConfigError) as caught:
        parse_study(body, tmp_path / "s.yaml")
    text = str(caught.value)
    assert "findings[0].treatment: 'sft' is not evaluated on calib_mmlu" in text
    assert "add calib_mmlu to its `tasks:`" in text


# --- seed replicates --------------------------------------------------------------------------------------


def _with_replicate(tmp_path: Path, **replicate) -> dict:
    body = _study(tmp_path)
    body["train"]["sft-seed1"] = {"replicate_of": "sft", "args": {"seed": 1}, **replicate}
    return body


def test_a_replicate_is_its_twin_with_another_seed(tmp_path):
    body = _with_replicate(tmp_path, tasks=["calib_mmlu"])
    config = parse_study(body, tmp_path / "s.yaml")
    twin, replicate = config.train["sft"], config.train["sft-seed1"]
    assert (replicate.kind, replicate.source, replicate.method, replicate.data, replicate.max_steps) == (
        twin.kind,
        twin.source,
        twin.method,
        twin.data,
        twin.max_steps,
    )
    assert replicate.args == {"seed": 1} and replicate.replicate_of == "sft"
    assert config.replicates_of("sft") == ["sft-seed1"]
    cells = _plan(body, tmp_path)
    command = cells["train/sft-seed1"].command
    assert command[command.index("--seed") + 1] == "1"
    assert command[command.index("--method") + 1] == "full"
    assert cells["train/sft-seed1"].fingerprint != cells["train/sft"].fingerprint
    assert [n for n in cells if n.startswith("eval/sft-seed1/")] == ["eval/sft-seed1/calib_mmlu"]
    claim = FindingSpec("c", "calib_mmlu", "ece", "base", "sft", "higher")
    assert seed_pairs(config, claim) == [("sft", "sft-seed1")]
    on_replicate = FindingSpec("c", "calib_mmlu", "ece", "base", "sft-seed1", "higher")
    assert seed_pairs(config, on_replicate) == [("sft", "sft-seed1")]


@pytest.mark.parametrize(
    ("replicate", "message"),
    [
        ({"args": {"seed": 0}}, "with its seed (0) is the same run; give another one, e.g. args: {seed: 1}"),
        ({"args": {}}, "is the same run"),
        ({"max_steps": 5}, "a replicate copies its twin's settings; drop max_steps"),
        ({"replicate_of": "nope"}, "'nope' is not a training stage listed above it"),
        ({"args": {"seed": 1, "bogus": 2}}, "unknown key 'bogus' for `train sft`"),
    ],
)
def test_a_wrong_replicate_is_refused(tmp_path, replicate, message):
    body = _with_replicate(tmp_path)
    body["train"]["sft-seed1"].update(replicate)
    with pytest.raises(StudyConfigError, match="train.sft-seed1") as caught:
        parse_study(body, tmp_path / "s.yaml")
    assert message in str(caught.value)


def test_a_replicate_of_a_replicate_names_the_original(tmp_path):
    body = _with_replicate(tmp_path)
    body["train"]["sft-seed2"] = {"replicate_of": "sft-seed1", "args": {"seed": 2}}
    with pytest.raises(StudyConfigError, match="is itself a replicate of 'sft'; name 'sft'"):
        parse_study(body, tmp_path / "s.yaml")


# --- a stage's own interpreter (PPO on trl 1.12) ----------------------------------------------------------


def test_a_stage_launcher_runs_its_cell_or_blocks_it_with_the_fix(tmp_path):
    body = _study(tmp_path)
    before = _plan(body, tmp_path)["train/sft"].fingerprint
    body["train"]["sft"]["launcher"] = str(tmp_path / "env" / "bin" / "python")
    blocked = _plan(body, tmp_path)
    assert blocked["train/sft"].status == "blocked"
    assert (
        "launcher" in blocked["train/sft"].reason and "pip install '.[train]'" in blocked["train/sft"].reason
    )
    assert blocked["eval/sft/calib_mmlu"].status == "blocked"
    assert blocked["train/sft-lora"].status == "missing"  # the rest of the study runs
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    ready = _plan(body, tmp_path)["train/sft"]
    assert ready.status == "missing"
    assert ready.command[:5] == [str(python), "-m", "lm_eval_calib.cli", "train", "sft"]
    assert ready.fingerprint != before  # another environment is another setting
    body["train"]["sft"]["launcher"] = "python -m lm_eval_calib.cli"
    with pytest.raises(StudyConfigError, match="train.sft.launcher must be the interpreter"):
        parse_study(body, tmp_path / "s.yaml")


# --- generation claims name their estimator ---------------------------------------------------------------


def _generation_study(tmp_path: Path, **claim) -> dict:
    body = _study(tmp_path)
    body["tasks"]["calib_facts_gen"] = {
        "limit": 4,
        "metadata": {"calibration": {"confidence": ["seqprob", "ptrue"]}},
    }
    body["findings"] = [
        {"claim": "c", "task": "calib_facts_gen", "metric": "ece", "baseline": "base", "treatment": "sft",
         "expect": "lower", **claim},
    ]  # fmt: skip
    return body


def test_a_generation_claim_names_one_of_the_tasks_estimators(tmp_path):
    config = parse_study(_generation_study(tmp_path, estimator="ptrue", filter="none"), tmp_path / "s.yaml")
    assert (config.findings[0].estimator, config.findings[0].filter) == ("ptrue", "none")
    with pytest.raises(StudyConfigError, match="several estimators .*estimator: <one of them>"):
        parse_study(_generation_study(tmp_path), tmp_path / "s.yaml")
    with pytest.raises(StudyConfigError, match="estimator 'verbal' is not among calib_facts_gen's"):
        parse_study(_generation_study(tmp_path, estimator="verbal"), tmp_path / "s.yaml")


# --- the findings math on synthetic records ---------------------------------------------------------------


def _records(seed: int, n: int = 60, shift: float = 0.0) -> TaskRecords:
    """``n`` four-option questions answered with over-confidence ``shift`` (larger: worse calibrated)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        logliks = rng.normal(size=4) * (1.0 + shift)
        records.append(make_record(logliks, target=int(rng.integers(4))))
    return TaskRecords.build("calib_mmlu", records, list(range(n)))


def test_compare_records_is_the_paired_bootstrap_on_shared_documents():
    spec = FindingSpec("c", "calib_mmlu", "ece", "a", "b", "higher")
    a, b = _records(0), _records(1, shift=2.0)
    result = compare_records(spec, a, b, n_resamples=200)
    shared = sorted(range(60), key=str)  # lm-eval's doc_ids pair the runs (ordered as text)
    a_shared, b_shared = a.select(shared), b.select(shared)
    expected = paired_difference(
        "ece",
        a_shared.data,
        b_shared.data,
        a_shared.item_document,
        b_shared.item_document,
        n_resamples=200,
        seed=a.options.bootstrap_seed,
    )
    assert (result.difference, result.low, result.high) == pytest.approx(
        (expected.difference, expected.low, expected.high)
    )
    assert result.n_documents == 60


def test_the_seed_spread_stands_beside_each_difference():
    spec = FindingSpec("SFT raises ECE", "calib_mmlu", "ece", "base", "sft", "higher")
    base, sft, sft_seed1 = _records(0), _records(1, shift=3.0), _records(2, shift=3.0)
    from lm_eval_calib.study.findings import SeedSpread

    result = compare_records(spec, base, sft, n_resamples=200)
    spread = compare_records(
        FindingSpec("s", "calib_mmlu", "ece", "sft", "sft-seed1", "higher"), sft, sft_seed1
    )
    assert abs(spread.difference) < abs(result.difference)  # same stage, another seed: a smaller move
    item = FindingResult(
        **{**judge(spec, result).__dict__, "spreads": (SeedSpread("sft", "sft-seed1", spread),)}
    )
    missing = FindingResult(
        FindingSpec("LoRA", "calib_clm", "ece", "base", "sft", "higher"),
        None,
        "not run",
        "an evaluation it needs did not finish",
        spreads=(SeedSpread("sft", "sft-seed1", None, "sft-seed1 is not evaluated on calib_clm"),),
    )
    table = findings_markdown([item, missing])
    header, rule, row, row_missing = table.splitlines()
    assert header.endswith("| verdict after Holm | seed spread [95% CI] | difference vs seed spread |")
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert len(cells) == len(header.split("|")[1:-1]) == rule.count("---") == 16
    assert cells[-2] == f"sft-seed1 - sft: {spread.difference:+.4f} [{spread.low:+.4f}, {spread.high:+.4f}]"
    assert cells[-1] == f"exceeds (size {abs(result.difference):.4f} vs {abs(spread.difference):.4f})"
    assert "not run (sft-seed1 is not evaluated on calib_clm)" in row_missing
    plain = findings_markdown([judge(spec, result)])  # no replicate: the table is as it was
    assert "seed spread" not in plain and plain.splitlines()[0].endswith("| verdict after Holm |")


@pytest.mark.parametrize(
    ("difference", "spreads", "expected"),
    [
        (0.05, [0.01, -0.02], "exceeds (size 0.0500 vs 0.0200)"),
        (-0.01, [0.03], "within (size 0.0100 vs 0.0300)"),
        (0.02, [-0.02], "within (size 0.0200 vs 0.0200)"),  # equal is not beyond
        (0.02, [], ""),
    ],
)
def test_compare_to_spread(difference, spreads, expected):
    assert compare_to_spread(difference, spreads) == expected


STAMP = "2026-01-01T00-00-00.000000"


def _write_generation_run(folder: Path, seed: int, shift: float) -> None:
    """An lm-eval output folder of a generation calibration task: two estimators, two filters."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for filter_key in ("strict-match", "flexible-extract"):
        for doc in range(30):
            correct = bool(rng.random() < 0.5)
            row = {"doc_id": doc, "filter": filter_key}
            for estimator in ("seqprob", "ptrue"):
                confidence = float(np.clip(rng.random() + shift, 0, 1))
                row[f"ece_{estimator}"] = generation_record(confidence, correct, estimator=estimator)
            rows.append(row)
    (folder / f"samples_calib_gsm8k_{STAMP}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / f"results_{STAMP}.json").write_text(json.dumps({"results": {}, "configs": {"calib_gsm8k": {}}}))


def test_a_generation_finding_reads_its_estimator_and_filter(tmp_path):
    from lm_eval_calib.study.findings import check_finding, read_documents

    _write_generation_run(tmp_path / "a", 0, 0.0)
    _write_generation_run(tmp_path / "b", 1, 0.3)
    spec = FindingSpec(
        "c", "calib_gsm8k", "ece", "a", "b", "lower", estimator="ptrue", filter="flexible-extract"
    )
    result = check_finding(spec, tmp_path / "a", tmp_path / "b", n_resamples=100)
    a = read_documents(tmp_path / "a", "calib_gsm8k", "ptrue", "flexible-extract")
    b = read_documents(tmp_path / "b", "calib_gsm8k", "ptrue", "flexible-extract")
    assert (a.estimator, a.filter_key) == ("ptrue", "flexible-extract")
    expected = paired_difference("ece", a.data, b.data, n_resamples=100, seed=a.options.bootstrap_seed)
    assert result.difference == pytest.approx(expected.difference)
    other = read_documents(tmp_path / "a", "calib_gsm8k", "seqprob", "strict-match")
    assert not np.allclose(other.data.confidence, a.data.confidence)
    from lm_eval_calib.study.findings import FindingInputError

    with pytest.raises(FindingInputError, match="give the claim estimator: <one of them>"):
        check_finding(
            FindingSpec("c", "calib_gsm8k", "ece", "a", "b", "lower"), tmp_path / "a", tmp_path / "b"
        )


def _write_option_run(folder: Path, seed: int, shift: float) -> None:
    """An lm-eval output folder of calib_mmlu with 30 synthetic option records."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = [
        {"doc_id": doc, "ece": make_record(rng.normal(size=4) * (1.0 + shift), int(rng.integers(4)))}
        for doc in range(30)
    ]
    (folder / f"samples_calib_mmlu_{STAMP}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / f"results_{STAMP}.json").write_text(json.dumps({"results": {}, "configs": {"calib_mmlu": {}}}))


def test_the_runner_pairs_each_replicate_with_its_twin_on_the_claims_task(tmp_path):
    from lm_eval_calib.study.findings import check_finding
    from lm_eval_calib.study.plan import eval_folder
    from lm_eval_calib.study.runner import _spreads

    body = _with_replicate(tmp_path, tasks=["calib_mmlu"])
    config = parse_study(body, tmp_path / "s.yaml")
    for model, seed, shift in (("base", 0, 0.0), ("sft", 1, 2.0), ("sft-seed1", 2, 2.0)):
        _write_option_run(eval_folder(config, model, "calib_mmlu"), seed, shift)
    finished = {(m, "calib_mmlu") for m in ("base", "sft", "sft-seed1")}
    (spread,) = _spreads(config, config.findings[0], finished, n_resamples=50)
    assert (spread.twin, spread.replicate, spread.note) == ("sft", "sft-seed1", "")
    twin, replicate = (eval_folder(config, m, "calib_mmlu") for m in ("sft", "sft-seed1"))
    direct = check_finding(
        FindingSpec("s", "calib_mmlu", "ece", "sft", "sft-seed1", "higher"), twin, replicate, 50
    )
    assert (spread.result.difference, spread.result.low) == pytest.approx((direct.difference, direct.low))
    (pending,) = _spreads(config, config.findings[0], finished - {("sft-seed1", "calib_mmlu")}, 50)
    assert pending.result is None and pending.note == "an evaluation it needs did not finish"
    on_facts = FindingSpec("f", "calib_facts", "ece", "base", "sft", "higher")
    (absent,) = _spreads(config, on_facts, finished, 50)
    assert absent.note == "sft-seed1 is not evaluated on calib_facts"


def test_the_qwen_ladder_seeds_every_sft_stage_and_claims_each_estimator(monkeypatch):
    from lm_eval_calib.study.config import _estimators, load_study

    monkeypatch.setenv("LM_EVAL_CALIB_DATA", "data-root")
    config = load_study(Path(__file__).resolve().parents[2] / "examples" / "scale_qwen.yaml")
    sft = [t.name for t in config.train.values() if t.kind == "sft" and t.replicate_of is None]
    assert len(sft) == 3 and all(len(config.replicates_of(name)) == 1 for name in sft)
    generation = {"calib_facts_gen", "calib_gsm8k"}
    runs_generation = {name for name in config.evaluated() if generation & set(config.tasks_of(name))}
    assert runs_generation == set(config.models)  # the vendor models only
    for task in generation:
        claimed = {f.estimator for f in config.findings if f.task == task}
        assert claimed == set(_estimators(config.tasks[task]))  # one claim per estimator
    for kind in ("rloo", "ppo"):
        (stage,) = [t for t in config.train.values() if t.kind == kind]
        claims = [f for f in config.findings if f.treatment == stage.name]
        assert {f.baseline for f in claims} == {stage.policy}
        assert {f.task for f in claims} == {"calib_mmlu", "calib_facts", "calib_facts_open", "calib_clm"}
