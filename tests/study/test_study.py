"""``lm-eval-calib study``: the study file, its cells, resuming, and a real run on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lm_eval_calib.study.config import StudyConfigError, load_study, parse_study
from lm_eval_calib.study.plan import CELL_FILE, build_plan, describe

REPO = Path(__file__).resolve().parents[2]


def _study(tmp_path: Path, **overrides) -> dict:
    body = {
        "name": "mini",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf", "model_args": {"dtype": "float32"}, "device": "cpu", "batch_size": 4},
        "tasks": {"calib_mmlu": {"limit": 4, "num_fewshot": 0}, "calib_facts": {"limit": 4}},
        "models": {"base": {"pretrained": str(tmp_path / "base")}},
        "train": {
            "sft": {"kind": "sft", "from": "base", "method": "lora", "data": "d.jsonl", "max_steps": 2},
            "rm": {"kind": "reward", "from": "base", "data": "pairs.jsonl", "max_steps": 2},
            "ppo": {
                "kind": "ppo",
                "policy": "sft",
                "reward_model": "rm",
                "data": "pairs.jsonl",
                "max_steps": 1,
            },
        },
        "findings": [
            {
                "claim": "SFT raises ECE",
                "task": "calib_mmlu",
                "metric": "ece",
                "baseline": "base",
                "treatment": "sft",
                "expect": "higher",
            },
        ],
    }
    body.update(overrides)
    return body


def test_cells_cover_every_stage_and_every_evaluated_model_times_task(tmp_path):
    config = parse_study(_study(tmp_path), tmp_path / "study.yaml")
    cells = build_plan(config)
    assert [c.name for c in cells if c.kind == "train"] == ["train/sft", "train/rm", "train/ppo"]
    evals = {(c.model, c.task) for c in cells if c.kind == "eval"}
    # the reward model is a classifier: trained, not evaluated on language-model tasks
    assert evals == {(m, t) for m in ("base", "sft", "ppo") for t in ("calib_mmlu", "calib_facts")}
    assert all(c.status == "missing" for c in cells)
    ppo = next(c for c in cells if c.name == "train/ppo")
    assert ppo.needs == ["train/sft", "train/rm"]
    assert ppo.command[ppo.command.index("--policy") + 1] == str(tmp_path / "out" / "checkpoints" / "sft")
    sft_eval = next(c for c in cells if c.name == "eval/sft/calib_mmlu")
    assert sft_eval.needs == ["train/sft"]
    args = sft_eval.command[sft_eval.command.index("--model_args") + 1]
    assert args == f"pretrained={tmp_path / 'out' / 'checkpoints' / 'sft'},dtype=float32"
    assert "--log_samples" in sft_eval.command
    assert describe(cells).splitlines()[-1] == "9 missing of 9 cells"


def test_a_finished_cell_is_done_until_its_settings_or_its_parents_change(tmp_path):
    config = parse_study(_study(tmp_path), tmp_path / "study.yaml")
    for cell in build_plan(config):  # pretend everything ran
        cell.folder.mkdir(parents=True)
        (cell.folder / CELL_FILE).write_text(json.dumps({"fingerprint": cell.fingerprint}))
    assert {c.status for c in build_plan(config)} == {"done"}

    more_steps = _study(tmp_path)
    more_steps["train"]["sft"]["max_steps"] = 3
    status = {c.name: c.status for c in build_plan(parse_study(more_steps, tmp_path / "study.yaml"))}
    stale = {name for name, s in status.items() if s == "stale"}
    assert stale == {
        "train/sft",
        "train/ppo",
        "eval/sft/calib_mmlu",
        "eval/sft/calib_facts",
        "eval/ppo/calib_mmlu",
        "eval/ppo/calib_facts",
    }
    assert status["eval/base/calib_mmlu"] == status["train/rm"] == "done"

    other_limit = _study(tmp_path)
    other_limit["tasks"]["calib_facts"]["limit"] = 5
    status = {c.name: c.status for c in build_plan(parse_study(other_limit, tmp_path / "study.yaml"))}
    assert {n for n, s in status.items() if s == "stale"} == {
        f"eval/{m}/calib_facts" for m in ("base", "sft", "ppo")
    }


def test_samples_become_an_explicit_lm_eval_samples_list(tmp_path):
    body = _study(tmp_path, train={}, findings=[])
    body["tasks"] = {"calib_mmlu": {"samples": {"stop": 14042, "step": 1000}}}
    (cell,) = build_plan(parse_study(body, tmp_path / "s.yaml"))
    samples = json.loads(cell.command[cell.command.index("--samples") + 1])
    assert samples == {"calib_mmlu": list(range(0, 14042, 1000))}
    assert "--limit" not in cell.command


def test_a_missing_bundled_model_blocks_its_cells_with_the_install_command(tmp_path):
    body = _study(tmp_path, models={"x": {"bundled": "no-such-model"}}, train={}, findings=[])
    cells = build_plan(parse_study(body, tmp_path / "s.yaml"))
    assert {c.status for c in cells} == {"blocked"}
    assert "unknown bundled model 'no-such-model'" in cells[0].reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(colour="red"), "unknown key"),
        (lambda b: b["tasks"]["calib_mmlu"].update(limit=-1), "limit must be a positive number"),
        (lambda b: b["tasks"]["calib_mmlu"].update(samples={"stop": 9}), "limit or samples, not both"),
        (lambda b: b["models"]["base"].update(bundled="smollm2"), "exactly one of `bundled:`"),
        (lambda b: b["train"]["sft"].update(method="qlora"), "method must be full or lora"),
        (lambda b: b["train"]["sft"].pop("data"), "needs data"),
        (lambda b: b["train"]["sft"].update({"from": "ppo"}), "neither a model nor a stage listed above"),
        (lambda b: b["train"]["ppo"].update(reward_model="sft"), "must name a `kind: reward` stage"),
        (lambda b: b["findings"][0].update(treatment="rm"), "not an evaluated model or stage"),
        (lambda b: b["findings"][0].update(metric="ecee"), "metric 'ecee' unknown"),
        (lambda b: b["findings"][0].update(expect="equal"), "must be higher, lower or same"),
        (lambda b: b["findings"][0].update(expect="same"), "needs margin: a number > 0"),
        (lambda b: b["findings"][0].update(expect="same", margin="small"), "needs margin: a number > 0"),
        (lambda b: b["findings"][0].update(margin=0.02), "only goes with expect: same"),
        (lambda b: b["models"].update({"bad name": {"pretrained": "x"}}), "becomes a folder name"),
        (lambda b: b["train"]["sft"].update(data="${LM_EVAL_CALIB_SURELY_UNSET}/a.json"), "not set"),
    ],
)
def test_a_wrong_study_file_is_refused_before_anything_runs(tmp_path, change, message):
    body = _study(tmp_path)
    change(body)
    with pytest.raises(StudyConfigError, match=message):
        parse_study(body, tmp_path / "study.yaml")


def test_environment_variables_expand_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DATA", "/srv/data")
    body = _study(tmp_path)
    body["train"]["sft"]["data"] = "${MY_DATA}/alpaca.json"
    config = parse_study(body, tmp_path / "study.yaml")
    assert config.train["sft"].data == "/srv/data/alpaca.json"


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid_studies(example, monkeypatch):
    monkeypatch.setenv("LM_EVAL_CALIB_DATA", "data-root")
    config = load_study(example)
    assert config.tasks and (config.models or config.train)
    assert build_plan(config)


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``lm-eval-calib ARGS``: the exit status and stdout of the CLI's ``main`` (what its console script
    runs), called in this process. The study's cells still run as their own ``lm_eval`` processes; only the
    study driver shares the test's interpreter, so lm_eval's task index (the up-front checks) is built once,
    not once per call (about 15 s each on two busy cores)."""
    from lm_eval_calib.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_study_runs_resumes_and_reports_on_a_real_model(
    tmp_path, tiny_model_dir, data_root, monkeypatch, capsys
):
    """Two names for the tiny model (a finding between them must be exactly 0) and one model that cannot load:
    the good cells finish and are reported, the broken one fails alone, and a second run runs nothing."""
    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    body = {
        "name": "e2e",
        "output": str(tmp_path / "out"),
        "archive": "archive",  # relative to the working directory, like a repository's results folder
        "eval": {"backend": "hf", "model_args": {"dtype": "float32"}, "device": "cpu", "batch_size": 8},
        "tasks": {"calib_mmlu": {"limit": 10, "num_fewshot": 0}},
        "models": {
            "tiny-a": {"pretrained": str(tiny_model_dir), "stage": "pretrained"},
            "tiny-b": {"pretrained": str(tiny_model_dir)},
            # passes the up-front checks (the folder exists) but cannot load: its cell fails alone
            "broken": {"pretrained": str(tmp_path / "not-a-model")},
        },
        "findings": [
            {
                "claim": "same model",
                "task": "calib_mmlu",
                "metric": "ece",
                "baseline": "tiny-a",
                "treatment": "tiny-b",
                "expect": "higher",
            },
            {
                "claim": "same model, equivalence",
                "task": "calib_mmlu",
                "metric": "ece",
                "baseline": "tiny-a",
                "treatment": "tiny-b",
                "expect": "same",
                "margin": 0.01,
            },
            {
                "claim": "broken",
                "task": "calib_mmlu",
                "metric": "ece",
                "baseline": "tiny-a",
                "treatment": "broken",
                "expect": "higher",
            },
        ],
    }
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(body))

    code, stdout = _cli(capsys, "study", str(study))
    assert code == 1, stdout
    assert "eval/broken/calib_mmlu: FAILED" in stdout
    out = tmp_path / "out"
    for name in ("tiny-a", "tiny-b"):
        cell = json.loads((out / "evals" / name / "calib_mmlu" / CELL_FILE).read_text())
        assert cell["cell"] == f"eval/{name}/calib_mmlu"
    assert not (out / "evals" / "broken").exists() or not any((out / "evals" / "broken").iterdir())
    assert not list(out.rglob(".*.tmp"))
    findings = (out / "findings.md").read_text()
    assert "| same model | calib_mmlu | ECE | tiny-a | tiny-b |" in findings
    assert "| higher | " in findings and "+0.0000 [+0.0000, +0.0000] | 10 | inconclusive |" in findings
    assert "| same (within ±0.01) | " in findings
    assert "+0.0000 [+0.0000, +0.0000] | 10 | supported |" in findings
    assert "| broken |" in findings and "not run" in findings
    leaderboard = (out / "report" / "leaderboard.md").read_text()
    assert "| tiny-a | pretrained | calib_mmlu |" in leaderboard  # the study file's stage: (no manifest)
    assert "| tiny-b |  | calib_mmlu |" in leaderboard

    code, stdout = _cli(capsys, "study", str(study), "--dry-run")
    assert code == 0, stdout
    assert "2 done, 1 missing of 3 cells" in stdout

    body["models"].pop("broken")
    body["findings"].pop()
    study.write_text(yaml.safe_dump(body))
    stamp = (out / "evals" / "tiny-a" / "calib_mmlu" / CELL_FILE).stat().st_mtime_ns
    code, stdout = _cli(capsys, "study", str(study))
    assert code == 0, stdout
    assert "0 to run" in stdout
    assert (out / "evals" / "tiny-a" / "calib_mmlu" / CELL_FILE).stat().st_mtime_ns == stamp

    # on a fresh machine: the output folder is gone, the archive (committed) is there; nothing runs again
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["tiny-a", "tiny-b"]
    shutil.rmtree(tmp_path / "archive" / "tiny-b")
    (tmp_path / "archive" / "tiny-b" / "calib_mmlu").mkdir(parents=True)  # a folder of the user's there
    code, stdout = _cli(capsys, "study", str(study))
    assert code == 0 and "eval/tiny-b/calib_mmlu: not archived:" in stdout, stdout  # named, the rest goes on
    assert not any((tmp_path / "archive" / "tiny-b" / "calib_mmlu").iterdir())
    (tmp_path / "archive" / "tiny-b" / "calib_mmlu").rmdir()
    code, stdout = _cli(capsys, "study", str(study))
    assert "eval/tiny-b/calib_mmlu: archived in" in stdout, stdout
    out.rename(tmp_path / "first-machine")
    code, stdout = _cli(capsys, "study", str(study), "--dry-run")
    assert "2 archived of 2 cells" in stdout, stdout
    code, stdout = _cli(capsys, "study", str(study))
    assert code == 0, stdout
    assert "restored 2 finished evaluations from archive" in stdout and "0 to run" in stdout
    assert (out / "findings.md").read_text() == (tmp_path / "first-machine" / "findings.md").read_text()
    assert "| tiny-a | pretrained | calib_mmlu |" in (out / "report" / "leaderboard.md").read_text()


def test_a_verdict_is_withheld_when_too_few_documents_back_the_interval():
    from lm_eval_calib.metrics.paired import PairedDifference
    from lm_eval_calib.study.config import FindingSpec
    from lm_eval_calib.study.findings import MIN_DOCUMENTS, judge

    spec = FindingSpec("c", "calib_clm", "ece", "a", "b", "lower")
    clear = dict(key="ece", value_a=0.2, value_b=0.1, difference=-0.1, low=-0.15, high=-0.05, level=0.95)
    assert (
        judge(spec, PairedDifference(n_documents=MIN_DOCUMENTS, n_resamples=9, **clear)).verdict
        == "supported"
    )
    few = judge(spec, PairedDifference(n_documents=2, n_resamples=9, **clear))
    assert few.verdict == "inconclusive"
    assert "only 2 documents" in few.note and "raise calib_clm's limit" in few.note


def _claim(name: str, draws, expect: str = "higher", margin: float | None = None, n_documents: int = 50):
    from lm_eval_calib.metrics.paired import PairedDifference
    from lm_eval_calib.study.config import FindingSpec

    draws = np.asarray(draws, dtype=float)
    low, high = np.percentile(draws, [2.5, 97.5])
    result = PairedDifference(
        key="ece",
        value_a=0.1,
        value_b=0.1 + float(np.mean(draws)),
        difference=float(np.mean(draws)),
        low=float(low),
        high=float(high),
        level=0.95,
        n_documents=n_documents,
        n_resamples=draws.size,
        differences=draws,
    )
    return FindingSpec(name, "calib_mmlu", "ece", "a", "b", expect, margin), result


def test_holm_correction_is_reported_beside_the_raw_interval_and_can_withdraw_a_verdict():
    """Ten claims at once: one with p = 0.02 is supported by its own 95% interval but not after Holm."""
    from lm_eval_calib.study.findings import FindingResult, findings_markdown, judge, with_holm

    strong = np.r_[np.full(999, 0.05)]  # p = 2/1000
    weak = np.r_[np.full(990, 0.05), np.full(9, -0.01)]  # p = 2 * 10/1000 = 0.02
    null = np.r_[np.full(500, 0.02), np.full(499, -0.02)]
    claims = [
        _claim("strong", strong),
        _claim("weak", weak),
        _claim("same", np.full(999, 0.001), "same", 0.02),
    ]
    claims += [_claim(f"null {i}", null) for i in range(7)]
    results = [judge(spec, result) for spec, result in claims]
    results.append(FindingResult(claims[0][0], None, "not run", "an evaluation it needs did not finish"))
    corrected = with_holm(results)
    by_name = {item.spec.claim: item for item in corrected[:-1]}
    assert by_name["weak"].verdict == "supported"  # its own interval excludes 0 ...
    assert by_name["weak"].p_value == pytest.approx(0.02)
    assert by_name["weak"].p_holm == pytest.approx(min(1.0, 0.02 * 8))  # ... 10 claims, 2 ranked below it
    assert by_name["weak"].holm_verdict == "inconclusive"  # ... but not after the correction
    assert by_name["strong"].holm_verdict == "supported" and by_name["same"].holm_verdict == "supported"
    assert by_name["strong"].p_holm == pytest.approx(10 * 2 / 1000)
    assert corrected[-1].p_holm is None and corrected[-1].holm_verdict == ""  # not run: not in the family
    table = findings_markdown(results)  # applies the correction itself
    header = "| difference [95% CI] | documents | verdict | p | p (Holm, 10 claims) | verdict after Holm |"
    assert header in table
    weak_row = next(line for line in table.splitlines() if line.startswith("| weak |"))
    assert weak_row.endswith("| supported | 0.020 | 0.160 | inconclusive |")


def test_too_few_documents_withholds_the_holm_verdict_too():
    from lm_eval_calib.study.findings import judge, with_holm

    (item,) = with_holm([judge(*_claim("few", np.full(999, 0.05), n_documents=3))])
    assert item.verdict == item.holm_verdict == "inconclusive"
    assert item.p_holm == pytest.approx(2 / 1000)  # reported, but not acted on


@pytest.fixture(scope="session")
def finding_runs(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    """Two real runs of calib_mmlu with 15 bins and bootstrap seed 7 (0-shot and 1-shot, so they differ);
    the first also ran calib_mmlu_anatomy, whose samples file starts with ``samples_calib_mmlu_``.

    The tiny model's final norm is scaled up: its logits grow 40-fold, so its confidences spread over many
    bins instead of all sitting near 0.27 (where 10 and 15 bins would give the same ECE).
    """
    import shutil

    import torch
    from helpers import run_lm_eval
    from safetensors.torch import load_file, save_file

    base = tmp_path_factory.mktemp("finding-runs")
    model = base / "sharp-model"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(model / "model.safetensors")
    with torch.no_grad():
        weights["model.norm.weight"] *= 40.0
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    metadata = {"data_dir": str(data_root), "calibration": {"n_bins": 15, "bootstrap_seed": 7}}
    common = ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu"]
    common += ["--batch_size", "8", "--limit", "40", "--log_samples", "--metadata", json.dumps(metadata)]
    tasks = "calib_mmlu,calib_mmlu_anatomy"
    run_lm_eval([*common, "--tasks", tasks, "--num_fewshot", "0", "--output_path", str(base / "a")])
    run_lm_eval([*common, "--tasks", "calib_mmlu", "--num_fewshot", "1", "--output_path", str(base / "b")])
    return base


def test_a_finding_reads_exactly_its_tasks_samples(finding_runs):
    """Issue 16 item 6: ``samples_calib_mmlu_*`` also matched calib_mmlu_anatomy's file; findings read it."""
    from helpers import read_run

    from lm_eval_calib.study.config import FindingSpec
    from lm_eval_calib.study.findings import check_finding

    spec = FindingSpec("c", "calib_mmlu", "brier", "a", "b", "lower")  # Brier: no bins involved
    result = check_finding(spec, finding_runs / "a", finding_runs / "b", n_resamples=50)
    reported_a, reported_b = (read_run(finding_runs / side)[0]["results"]["calib_mmlu"] for side in "ab")
    assert result.n_documents == 40
    assert result.value_a == pytest.approx(reported_a["brier,none"], abs=1e-12)
    assert result.value_b == pytest.approx(reported_b["brier,none"], abs=1e-12)


def test_findings_use_the_runs_bins_and_bootstrap_seed(finding_runs, tmp_path):
    """Issue 15 item 1: a study run with ``calibration.n_bins: 15`` compared 10-bin values in findings.md.

    MCE shows it: this model is overconfident in every bin, which makes ECE the same at any bin count."""
    import shutil

    from helpers import read_run

    from lm_eval_calib.metrics import compute_metric
    from lm_eval_calib.metrics.paired import paired_difference
    from lm_eval_calib.records import records_to_data
    from lm_eval_calib.study.config import FindingSpec
    from lm_eval_calib.study.findings import check_finding

    baseline = tmp_path / "a"  # the first run as if it had run calib_mmlu alone
    shutil.copytree(finding_runs / "a", baseline)
    for path in baseline.rglob("samples_calib_mmlu_anatomy_*.jsonl"):
        path.unlink()
    spec = FindingSpec("c", "calib_mmlu", "mce", "a", "b", "lower")
    result = check_finding(spec, baseline, finding_runs / "b", n_resamples=200)

    (results_a, samples_a), (results_b, samples_b) = read_run(baseline), read_run(finding_runs / "b")
    order = sorted((row["doc_id"] for row in samples_a["calib_mmlu"]), key=str)  # findings' document order
    data_a, data_b = (
        records_to_data([{row["doc_id"]: row["ece"] for row in samples["calib_mmlu"]}[d] for d in order])
        for samples in (samples_a, samples_b)
    )
    reported = results_a["results"]["calib_mmlu"]["mce,none"]
    assert compute_metric("mce", data_a, n_bins=10) != pytest.approx(reported)  # the bins tell them apart
    assert result.value_a == pytest.approx(reported, abs=1e-12)
    assert result.value_b == pytest.approx(results_b["results"]["calib_mmlu"]["mce,none"], abs=1e-12)
    expected = paired_difference("mce", data_a, data_b, n_resamples=200, seed=7, n_bins=15)
    assert (result.low, result.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    default_seed = paired_difference("mce", data_a, data_b, n_resamples=200, n_bins=15)
    assert (default_seed.low, default_seed.high) != pytest.approx((result.low, result.high))


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_pass_the_full_check(example, data_root, monkeypatch):
    """Their tasks and backends are known to lm_eval and their local files exist (with the real data root)."""
    from lm_eval_calib.study.checks import check_study

    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(data_root))
    check_study(load_study(example))


# --- the archive: finished evaluations without documents, prompts or machine paths ------------------------


def test_an_archived_run_holds_no_document_or_machine_path_and_restores_to_the_same_report(
    finding_runs, data_root, tmp_path, monkeypatch
):
    """What a study commits to carry its results to the next machine: every record, nothing of the data's
    text or of this machine, and a restored copy that reports exactly like the run it came from."""
    import gzip

    from lm_eval_calib.records_io import read_folder_task
    from lm_eval_calib.report.build import build_report
    from lm_eval_calib.study.archive import archive_cell, restore_cell

    monkeypatch.chdir(finding_runs)  # the model folder lies in the working directory, as a study's would
    archive_cell(finding_runs / "a", tmp_path / "archive", str(data_root))
    archived = sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert [p.name.split("_")[0] for p in archived] == ["results", "samples", "samples"]
    assert archived[0].parent.name == "CWD__sharp-model"  # lm-eval's folder named after the model's path
    text = "\n".join(
        gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text() for p in archived
    )
    for machine in (str(finding_runs), str(data_root), str(tmp_path), "pretty_env_info"):
        assert machine not in text
    assert "$CWD/sharp-model" in text and "$LM_EVAL_CALIB_DATA" in text
    with next((finding_runs / "a").rglob("samples_calib_mmlu_2*")).open() as handle:
        original_rows = [json.loads(line) for line in handle]
    with gzip.open(next((tmp_path / "archive").rglob("samples_calib_mmlu_2*"))) as handle:
        rows = [json.loads(line) for line in handle]
    text_fields = {"doc", "arguments", "resps", "filtered_resps", "target", "doc_hash", "prompt_hash"}
    assert text_fields <= set(original_rows[0]) and not text_fields & set(rows[0])
    assert {"doc_id", "filter", "acc", "ece"} <= set(rows[0])
    assert [r["ece"] for r in rows] == [r["ece"] for r in original_rows]

    restore_cell(tmp_path / "archive", tmp_path / "restored")
    with pytest.raises(FileExistsError, match="restored only where none is"):
        restore_cell(tmp_path / "archive", tmp_path / "restored")
    for task in ("calib_mmlu", "calib_mmlu_anatomy"):
        before, after = (read_folder_task(f, task) for f in (finding_runs / "a", tmp_path / "restored"))
        assert after.doc_ids == before.doc_ids and after.options == before.options
        assert np.array_equal(after.data.confidence, before.data.confidence)
    for source, out in ((finding_runs / "a", tmp_path / "r1"), (tmp_path / "restored", tmp_path / "r2")):
        build_report([source], out, log=lambda _: None, labels={source: "m"})
    tables = sorted(p.name for p in (tmp_path / "r1").glob("*.csv"))
    assert "leaderboard.csv" in tables and "recalibration.csv" in tables
    for name in tables:  # every number of the report; only the source file's path differs
        r1, r2 = (_without_source(tmp_path / run / name) for run in ("r1", "r2"))
        assert r2 == r1, name


def test_archiving_never_replaces_a_folder_that_is_not_an_archived_cell(tmp_path):
    from lm_eval_calib.study.archive import archive_cell

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "study_cell.json").write_text('{"fingerprint": "f"}')
    mine = tmp_path / "archive" / "model" / "task"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="is not an archived study cell"):
        archive_cell(cell, mine)
    assert (mine / "notes.txt").read_text() == "a user's file"
    archive_cell(cell, tmp_path / "archive" / "model" / "other")  # a new folder, then replaced by a new copy
    archive_cell(cell, tmp_path / "archive" / "model" / "other")
    assert (tmp_path / "archive" / "model" / "other" / "study_cell.json").is_file()


def _without_source(path: Path) -> list[dict]:
    import csv

    with path.open() as handle:
        return [{k: v for k, v in row.items() if k != "source"} for row in csv.DictReader(handle)]


def _archive_everything(config) -> None:
    """Pretend every evaluation ran on another machine and was archived there."""
    from lm_eval_calib.study.plan import archive_folder

    for cell in build_plan(config):
        if cell.kind == "eval":
            folder = archive_folder(config, cell.model, cell.task)
            folder.mkdir(parents=True)
            (folder / CELL_FILE).write_text(json.dumps({"fingerprint": cell.fingerprint}))


def test_archived_evaluations_are_restored_and_their_stages_not_trained_again(tmp_path):
    config = parse_study(_study(tmp_path, archive=str(tmp_path / "archive")), tmp_path / "study.yaml")
    _archive_everything(config)
    status = {c.name: (c.status, c.reason) for c in build_plan(config)}
    assert {s for s, _ in status.values()} == {"archived", "done"}
    not_needed = {n for n, (s, r) in status.items() if s == "done" and r.startswith("not needed")}
    assert not_needed == {"train/sft", "train/rm", "train/ppo"}  # ppo's evaluations, then its parents
    assert "archived" in describe(build_plan(config)).splitlines()[-1]

    (tmp_path / "archive" / "ppo" / "calib_facts" / CELL_FILE).unlink()  # one evaluation of ppo is missing
    status = {c.name: c.status for c in build_plan(config)}
    assert [status[f"train/{s}"] for s in ("sft", "rm", "ppo")] == ["missing"] * 3
    assert status["eval/ppo/calib_mmlu"] == status["eval/sft/calib_mmlu"] == "archived"  # same fingerprints

    settings = _study(tmp_path, archive=str(tmp_path / "archive"))
    settings["tasks"]["calib_mmlu"]["limit"] = 5  # an archived cell of other settings is not this one
    status = {c.name: c.status for c in build_plan(parse_study(settings, tmp_path / "study.yaml"))}
    assert {status[f"eval/{m}/calib_mmlu"] for m in ("base", "sft", "ppo")} == {"missing"}
    assert status["eval/base/calib_facts"] == "archived"


def test_the_archive_cannot_be_the_output_folder(tmp_path):
    body = _study(tmp_path, archive=str(tmp_path / "out"))
    with pytest.raises(StudyConfigError, match="`archive:` is the output folder"):
        parse_study(body, tmp_path / "study.yaml")
