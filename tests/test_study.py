"""``lm-eval-calib study``: the study file, its cells, resuming, and a real run on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_eval_calib.study.config import StudyConfigError, load_study, parse_study
from lm_eval_calib.study.plan import CELL_FILE, build_plan, describe

REPO = Path(__file__).resolve().parents[1]


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
        ],  # fmt: skip
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
    assert stale == {"train/sft", "train/ppo", "eval/sft/calib_mmlu", "eval/sft/calib_facts",
                     "eval/ppo/calib_mmlu", "eval/ppo/calib_facts"}  # fmt: skip
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


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm_eval_calib.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=1200)  # fmt: skip


def test_study_runs_resumes_and_reports_on_a_real_model(tmp_path, tiny_model_dir, data_root, monkeypatch):
    """Two names for the tiny model (a finding between them must be exactly 0) and one model that cannot load:
    the good cells finish and are reported, the broken one fails alone, and a second run runs nothing."""
    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(data_root))
    body = {
        "name": "e2e",
        "output": str(tmp_path / "out"),
        "eval": {"backend": "hf", "model_args": {"dtype": "float32"}, "device": "cpu", "batch_size": 8},
        "tasks": {"calib_mmlu": {"limit": 10, "num_fewshot": 0}},
        "models": {
            "tiny-a": {"pretrained": str(tiny_model_dir), "stage": "pretrained"},
            "tiny-b": {"pretrained": str(tiny_model_dir)},
            "broken": {"pretrained": str(tmp_path / "no-such-model")},
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
        ],  # fmt: skip
    }
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(body))

    first = _cli("study", str(study), cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "eval/broken/calib_mmlu: FAILED" in first.stdout
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

    dry = _cli("study", str(study), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0
    assert "2 done, 1 missing of 3 cells" in dry.stdout

    body["models"].pop("broken")
    body["findings"].pop()
    study.write_text(yaml.safe_dump(body))
    stamp = (out / "evals" / "tiny-a" / "calib_mmlu" / CELL_FILE).stat().st_mtime_ns
    second = _cli("study", str(study), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 to run" in second.stdout
    assert (out / "evals" / "tiny-a" / "calib_mmlu" / CELL_FILE).stat().st_mtime_ns == stamp


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
