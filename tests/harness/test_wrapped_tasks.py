"""calib_<task>: lm-eval's own multiple-choice tasks (and a user's) wrapped on the fly, through the real CLI.

Every wrapped task runs next to its unwrapped original on the same tiny random model and documents: the
original reads the same hub mirror through a YAML that only redirects ``dataset_path`` (``include:`` of
lm-eval's own file, a new ``task:`` name, ``tag: []``). The wrapper must reproduce the original's prompts and
metrics document by document, and its calibration metrics must equal a recomputation from ``--log_samples``
that shares no code with the task (softmax over the logged log-likelihoods, lengths from the logged requests).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import read_run, run_lm_eval
from scipy.special import log_softmax

from lm_eval_calib.data.root import DataNotFoundError, hub_snapshot
from lm_eval_calib.metrics import METRICS, CalibrationData, compute_metric

CALIBRATION_KEYS = [key for key in METRICS if key != "acc"]
SHOTS = "1"
LIMIT = 6
SOCIAL = "mmlu_social_sciences_continuation"  # a tag of 12 subtasks (sorted: econometrics first)


def _lm_eval_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _mirror(data_root: Path) -> Path:
    mirror = data_root / "hub" / "cais" / "mmlu"
    if not (mirror / "anatomy").is_dir():
        pytest.fail(f"the hub mirror of cais/mmlu is missing at {mirror} (see the data root's hub/SOURCE.md)")
    return mirror


def _ref_yaml(folder: Path, relative: str, name: str, mirror: Path) -> None:
    """lm-eval's own task file, only redirected to the mirror (and out of its tags)."""
    (folder / f"{name}.yaml").write_text(
        f"include: {_lm_eval_tasks() / relative}\ntask: {name}\ndataset_path: {mirror}\ntag: []\n"
    )


USER_UTILS = """
def process_docs(dataset):
    def one(row):
        return {"question": row["question"], "choices": [row["A"], row["B"], row["C"], row["D"]],
                "gold": "ABCD".index(row["answer"].strip())}
    return dataset.map(one, remove_columns=dataset.column_names)
"""


def _user_tasks(folder: Path, data_root: Path) -> Path:
    """A multiple-choice task of a user's own over the raw MMLU CSVs (csv builder, process_docs, random
    few-shot sampler, acc and acc_norm), plus a variant with two gold answers per document."""
    (folder / "user_utils.py").write_text(USER_UTILS)
    csvs = data_root / "mmlu"
    (folder / "user_mc.yaml").write_text(
        f"""task: user_mc
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {csvs / "test" / "anatomy_test.csv"}
    dev: {csvs / "dev" / "anatomy_dev.csv"}
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
process_docs: !function user_utils.process_docs
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
num_fewshot: 2
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    )
    (folder / "user_multi_gold.yaml").write_text(
        'include: user_mc.yaml\ntask: user_multi_gold\ndoc_to_target: "{{[gold, (gold + 1) % 4]}}"\n'
    )
    (folder / "user_one_option.yaml").write_text(
        'include: user_mc.yaml\ntask: user_one_option\ndoc_to_choice: "{{choices[:1]}}"\ndoc_to_target: 0\n'
    )
    bad_gold = 'include: user_mc.yaml\ntask: user_bad_gold\ndoc_to_target: "{{gold if gold != 1 else 7}}"\n'
    (folder / "user_bad_gold.yaml").write_text(bad_gold)
    (folder / "user_group.yaml").write_text("group: user_group\ntask:\n  - user_mc\n  - ref_mmlu_anatomy\n")
    return folder


SOCIAL_LOCAL = {  # documents of the tag's first three subtasks (local test-split indices)
    "mmlu_econometrics_continuation": [0, 1],
    "mmlu_high_school_geography_continuation": [0, 5],
    "mmlu_high_school_government_and_politics_continuation": [3],
}


def _include(tmp: Path, data_root: Path) -> Path:
    folder = tmp / "include"
    folder.mkdir(exist_ok=True)
    mirror = _mirror(data_root)
    _ref_yaml(folder, "mmlu/continuation/mmlu_anatomy.yaml", "ref_mmlu_anatomy_continuation", mirror)
    _ref_yaml(folder, "mmlu/default/mmlu_anatomy.yaml", "ref_mmlu_anatomy", mirror)
    for name in SOCIAL_LOCAL:
        file = f"mmlu/continuation/{name.removesuffix('_continuation')}.yaml"
        _ref_yaml(folder, file, f"ref_{name}", mirror)
    return _user_tasks(folder, data_root)


def _model_args(folder: Path) -> str:
    return f"pretrained={folder},dtype=float32"


def _run(model: str, model_dir: Path, tasks: list[str], include: Path, root: Path, out: Path, *extra: str):
    args = ["--model", model, "--model_args", _model_args(model_dir), "--tasks", ",".join(tasks)]
    args += ["--include_path", str(include), "--num_fewshot", SHOTS, "--device", "cpu", "--batch_size", "8"]
    args += ["--output_path", str(out), "--log_samples", "--metadata", json.dumps({"data_dir": str(root)})]
    return run_lm_eval([*args, *extra])


SINGLE = [
    "calib_mmlu_anatomy_continuation", "ref_mmlu_anatomy_continuation",  # built-in: multi-token, acc_norm
    "calib_ref_mmlu_anatomy", "calib_mmlu_anatomy",  # lm-eval's letters mmlu_anatomy wrapped, and ours
    "calib_user_mc", "user_mc",  # a user's YAML task from --include_path
]  # fmt: skip


@pytest.fixture(scope="module")
def include(tmp_path_factory, data_root) -> Path:
    return _include(tmp_path_factory.mktemp("wrapped"), data_root)


def _subtask_sizes(mirror: Path, subtasks: list[str]) -> list[int]:
    import datasets

    subjects = [s.removeprefix("mmlu_").removesuffix("_continuation") for s in subtasks]
    return [len(datasets.load_dataset(str(mirror), subject, split="test")) for subject in subjects]


@pytest.fixture(scope="module")
def social_sizes(data_root) -> list[int]:
    """Test-split sizes of the tag's first three subtasks (its pooled documents start with them)."""
    return _subtask_sizes(_mirror(data_root), list(SOCIAL_LOCAL))


@pytest.fixture(scope="module")
def pooled_ids(social_sizes) -> list[int]:
    offsets = np.cumsum([0, *social_sizes[:-1]]).tolist()
    return [offset + i for offset, ids in zip(offsets, SOCIAL_LOCAL.values(), strict=True) for i in ids]


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, data_root, include, pooled_ids, tmp_path_factory):
    """One lm_eval run: every single task on its first LIMIT documents, the tag and its subtasks' originals
    on a few documents each (--samples)."""
    out = tmp_path_factory.mktemp("single")
    samples = {name: list(range(LIMIT)) for name in SINGLE} | {f"calib_{SOCIAL}": pooled_ids}
    samples |= {f"ref_{name}": ids for name, ids in SOCIAL_LOCAL.items()}
    proc = _run(
        "hf", tiny_model_dir, list(samples), include, data_root, out, "--samples", json.dumps(samples)
    )
    return (*read_run(out), proc)


# -- an independent recomputation from the logged samples ----------------------------------------------------
def _logliks(row: dict) -> np.ndarray:
    return np.array([float(resp[0]) for resp in row["filtered_resps"]])


def _choice_lengths(row: dict) -> np.ndarray:
    """len(choice) of each option, read off the logged requests (continuation = ' ' + choice)."""
    continuations = [row["arguments"][f"gen_args_{i}"]["arg_1"] for i in range(len(row["filtered_resps"]))]
    assert all(c.startswith(" ") for c in continuations)
    return np.array([float(len(c) - 1) for c in continuations])


def _data(rows: list[dict], norm: bool) -> CalibrationData:
    conf, correct, brier, nll = [], [], [], []
    for row in rows:
        scores = _logliks(row) / (_choice_lengths(row) if norm else 1.0)
        log_p = log_softmax(scores)
        p, target, pred = np.exp(log_p), int(row["target"]), int(np.argmax(scores))
        conf.append(p[pred])
        correct.append(float(pred == target))
        brier.append(float(np.sum((p - np.eye(len(p))[target]) ** 2)))
        nll.append(-log_p[target])
    return CalibrationData(np.array(conf), np.array(correct), np.array(brier), np.array(nll))


def _assert_calibration_recomputed(results: dict, rows: list[dict], task: str, norm: bool) -> None:
    values = results["results"][task]
    for suffix, use_norm in [("", False)] + ([("_norm", True)] if norm else []):
        data = _data(rows, use_norm)
        accuracy = values[("acc_norm" if use_norm else "acc") + ",none"]
        assert float(np.mean(data.correct)) == pytest.approx(accuracy)
        for key in CALIBRATION_KEYS:
            expected, got = compute_metric(key, data, n_bins=10), values[f"{key}{suffix},none"]
            assert got == pytest.approx(expected, abs=1e-9, nan_ok=True), (task, key + suffix)
            stderr = values[f"{key}{suffix}_stderr,none"]
            assert isinstance(stderr, float) and (stderr >= 0 or math.isnan(stderr)), (task, key, stderr)
    if not norm:
        assert not any(key.endswith("_norm,none") and key != "acc_norm,none" for key in values)


def _assert_same_as_original(samples: dict, results: dict, wrapped: str, original: str, n: int) -> None:
    ours = {row["doc_id"]: row for row in samples[wrapped]}
    ref = {row["doc_id"]: row for row in samples[original]}
    assert ours.keys() == ref.keys() and len(ours) == n
    for doc_id, row in ours.items():
        assert row["arguments"] == ref[doc_id]["arguments"]  # the same prompts and few-shot examples
        assert row["filtered_resps"] == ref[doc_id]["filtered_resps"]  # ... so the same log-likelihoods
        for metric in ("acc", "acc_norm"):
            assert row.get(metric) == ref[doc_id].get(metric), (wrapped, doc_id, metric)
    for key, value in results["results"][original].items():
        if key.split(",")[0] in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert results["results"][wrapped][key] == value, (wrapped, key)


# -- single tasks --------------------------------------------------------------------------------------------
def test_builtin_continuation_task_keeps_its_metrics_and_adds_calibration(single_run, data_root):
    results, samples, _ = single_run
    wrapped, original = "calib_mmlu_anatomy_continuation", "ref_mmlu_anatomy_continuation"
    _assert_same_as_original(samples, results, wrapped, original, LIMIT)
    rows = samples["calib_mmlu_anatomy_continuation"]
    _assert_calibration_recomputed(results, rows, "calib_mmlu_anatomy_continuation", norm=True)
    for row in rows:  # one record per rule, logged once each; the other keys point at it
        assert row["ece"]["category"] is None and row["ece"]["loglik"] == list(_logliks(row))
        assert row["brier"] == "see 'ece'" and row["brier_norm"] == "see 'ece_norm'"
        assert row["ece_norm"]["loglik"] == pytest.approx(list(_logliks(row) / _choice_lengths(row)))
        assert row["ece"]["correct"] == row["acc"] and row["ece_norm"]["correct"] == row["acc_norm"]
    config = results["configs"]["calib_mmlu_anatomy_continuation"]
    assert config["dataset_path"] == str(_mirror(data_root))  # read from ROOT/hub/cais/mmlu, not the hub
    assert config["metadata"]["calib_wraps"] == "mmlu_anatomy_continuation"
    assert results["n-shot"]["calib_mmlu_anatomy_continuation"] == int(SHOTS)
    assert results["higher_is_better"]["calib_mmlu_anatomy_continuation"]["ece_norm"] is False


def test_user_yaml_task_from_include_path_is_wrapped(single_run):
    results, samples, _ = single_run
    _assert_same_as_original(samples, results, "calib_user_mc", "user_mc", LIMIT)
    _assert_calibration_recomputed(results, samples["calib_user_mc"], "calib_user_mc", norm=True)
    # process_docs ran (choices from the CSV columns) and the random few-shot sampler drew the same example
    first = samples["calib_user_mc"][0]
    assert first["doc"]["choices"][0] == "paralysis of the facial muscles."
    assert first["arguments"]["gen_args_0"]["arg_0"].count("\nA:") == 1 + int(SHOTS)


def test_wrapping_lm_eval_mmlu_subject_equals_our_calib_mmlu_subject(single_run):
    """lm-eval's letters-format mmlu_anatomy, wrapped, gives our calib_mmlu_anatomy's accuracy and ECE
    (which is why ours may keep the name: `calib_mmlu_anatomy` stays ours)."""
    results, samples, _ = single_run
    wrapped, ours = results["results"]["calib_ref_mmlu_anatomy"], results["results"]["calib_mmlu_anatomy"]
    assert "acc_norm,none" not in wrapped  # lm-eval's mmlu reports acc only: no _norm metrics either
    rows = samples["calib_ref_mmlu_anatomy"]
    _assert_calibration_recomputed(results, rows, "calib_ref_mmlu_anatomy", norm=False)
    for key in ["acc", *CALIBRATION_KEYS]:
        assert wrapped[f"{key},none"] == pytest.approx(ours[f"{key},none"], abs=1e-9, nan_ok=True), key
    by_id = {row["doc_id"]: row for row in samples["calib_mmlu_anatomy"]}
    for row in samples["calib_ref_mmlu_anatomy"]:
        assert row["arguments"] == by_id[row["doc_id"]]["arguments"]


# -- a tag: one pooled task ----------------------------------------------------------------------------------
def test_tag_is_one_pooled_task_with_subtask_categories(single_run, pooled_ids, social_sizes):
    results, samples, _ = single_run
    name = f"calib_{SOCIAL}"
    assert results["n-samples"][name]["effective"] == len(pooled_ids)
    spans = results["configs"][name]["metadata"]["calib_subtasks"]
    assert list(spans)[:3] == list(SOCIAL_LOCAL) and len(spans) == 12  # the tag's subtasks, sorted
    assert spans["mmlu_high_school_geography_continuation"] == [social_sizes[0], sum(social_sizes[:2])]
    rows = sorted(samples[name], key=lambda row: row["doc_id"])
    assert [row["doc_id"] for row in rows] == pooled_ids
    expected = [subtask for subtask, ids in SOCIAL_LOCAL.items() for _ in ids]
    assert [row["ece"]["category"] for row in rows] == expected
    assert [row["ece_norm"]["category"] for row in rows] == expected
    refs = [row for s in SOCIAL_LOCAL for row in sorted(samples[f"ref_{s}"], key=lambda r: r["doc_id"])]
    for row, ref in zip(rows, refs, strict=True):
        assert row["arguments"] == ref["arguments"] and row["doc"] == ref["doc"]  # its subtask's prompt
        assert (row["acc"], row["acc_norm"]) == (ref["acc"], ref["acc_norm"])
    assert results["results"][name]["acc,none"] == pytest.approx(np.mean([ref["acc"] for ref in refs]))
    _assert_calibration_recomputed(results, rows, name, norm=True)


# -- hf-calib ------------------------------------------------------------------------------------------------
def test_hf_calib_runs_wrapped_tasks(single_run, tiny_model_dir, data_root, include, tmp_path):
    tasks = ["calib_mmlu_anatomy_continuation"]
    _run("hf-calib", tiny_model_dir, tasks, include, data_root, tmp_path, "--limit", "4")
    results, samples = read_run(tmp_path)
    hf = {row["doc_id"]: row for row in single_run[1]["calib_mmlu_anatomy_continuation"]}
    rows = samples["calib_mmlu_anatomy_continuation"]
    assert len(rows) == 4
    for row in rows:
        assert row["arguments"] == hf[row["doc_id"]]["arguments"]
        np.testing.assert_allclose(_logliks(row), _logliks(hf[row["doc_id"]]), atol=1e-4)
        assert row["acc"] == hf[row["doc_id"]]["acc"] and row["acc_norm"] == hf[row["doc_id"]]["acc_norm"]
    _assert_calibration_recomputed(results, rows, "calib_mmlu_anatomy_continuation", norm=True)


# -- refusals, before any model call -------------------------------------------------------------------------
def _refused(tiny_model_dir, data_root, include, tmp_path, task: str):
    args = ["--model", "hf", "--model_args", _model_args(tiny_model_dir), "--tasks", task]
    args += ["--include_path", str(include), "--limit", "2", "--device", "cpu"]
    args += ["--output_path", str(tmp_path / "out"), "--metadata", json.dumps({"data_dir": str(data_root)})]
    proc = run_lm_eval(args, check=False)
    assert proc.returncode != 0
    assert "Running loglikelihood requests" not in proc.stderr
    assert not list(tmp_path.rglob("results_*.json"))
    return proc.stderr


def test_cli_refuses_several_gold_answers_before_the_model(tiny_model_dir, data_root, include, tmp_path):
    stderr = _refused(tiny_model_dir, data_root, include, tmp_path, "calib_truthfulqa_mc2")
    assert "calib_truthfulqa_mc2: cannot wrap 'truthfulqa_mc2': it scores documents with its own" in stderr
    assert "calibration needs exactly one correct option per document" in stderr
    assert "calib_truthfulqa_mc1" in stderr  # the alternative
    assert "Initializing hf model" not in stderr  # refused from the configs, before the model loads


def test_cli_refuses_list_valued_targets_when_the_task_is_built(tiny_model_dir, data_root, include, tmp_path):
    stderr = _refused(tiny_model_dir, data_root, include, tmp_path, "calib_user_multi_gold")
    assert "calib_user_multi_gold: cannot wrap 'user_multi_gold': its documents have several" in stderr
    assert "doc_to_target gave [0, 1] for the first one" in stderr
    assert "--include_path" in stderr


def test_cli_unknown_name_is_lm_evals_error_plus_a_hint(tiny_model_dir, data_root, include, tmp_path):
    stderr = _refused(tiny_model_dir, data_root, include, tmp_path, "calib_mmlu_anatomy_continuaton")
    assert "Tasks not found: calib_mmlu_anatomy_continuaton" in stderr  # lm-eval's own error
    assert "calib_<task> wraps a multiple-choice task, group or tag that lm-eval knows" in stderr
    assert "Did you mean calib_mmlu_anatomy_continuation" in stderr
    assert "lm-eval-calib tasks --wrappable" in stderr


# -- in process: resolution, refusals from configs, listing, data root ---------------------------------------
@pytest.fixture(scope="module")
def manager(include, data_root):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include), metadata={"data_dir": str(data_root)})


def _refusal(manager, name: str) -> str:
    from lm_eval_calib.harness.wrap_refusal import WrapRefusal

    with pytest.raises(WrapRefusal) as caught:
        manager.match_tasks([name])
    return str(caught.value)


def test_output_types_without_options_are_refused(manager):
    message = _refusal(manager, "calib_wikitext")
    assert "cannot wrap 'wikitext': its output_type is loglikelihood_rolling" in message
    assert "calib_clm" in message
    message = _refusal(manager, "calib_lambada_openai")
    assert "its output_type is loglikelihood (one continuation per document)" in message
    message = _refusal(manager, "calib_calib_mmlu")
    assert "cannot wrap 'calib_mmlu': it is already one of lm-eval-calib's" in message


def test_generate_until_is_refused_while_generation_calibration_is_missing(manager, monkeypatch):
    from lm_eval_calib.harness import wrap

    monkeypatch.setitem(sys.modules, wrap.GENERATION_MODULE, None)  # as if the module did not exist
    fresh = copy.copy(manager)
    fresh.__dict__.pop("_lm_eval_calib_wrap_plans", None)
    fresh.__dict__.pop("_lm_eval_calib_static", None)
    message = _refusal(fresh, "calib_gsm8k")
    assert "calib_gsm8k: cannot wrap 'gsm8k': its output_type is generate_until" in message
    assert "generate_until is not supported yet" in message
    assert not any(name.startswith("calib_gsm8k") for name, _, _ in wrap.wrappable(fresh, "gsm8k*"))


def test_generate_until_dispatches_to_the_generation_class_when_there_is_one(manager):
    from lm_eval_calib.harness import wrap

    try:
        cls = getattr(__import__(wrap.GENERATION_MODULE, fromlist=["x"]), wrap.GENERATION_CLASS)
    except (ImportError, AttributeError):
        pytest.skip("no generation calibration class in this version")
    assert wrap.plan(manager, "calib_gsm8k").leaves[0].cls is cls


def test_ours_win_and_listing_stays_readable(manager, include):
    from lm_eval_calib.harness.task import CalibrationTask
    from lm_eval_calib.task_folder import task_dir

    ours = task_dir().resolve()
    for name in [name for name in manager.all_tasks if name.startswith("calib_")]:  # all from our folder
        entry = manager.task_index[name]
        paths = (
            [manager.task_index[task].yaml_path for task in entry.tags]
            if entry.yaml_path is None
            else [entry.yaml_path]
        )  # a tag has no file of its own: its tasks do
        assert all(Path(path).resolve().is_relative_to(ours) for path in paths), name
    assert "calib_mmlu_anatomy_continuation" not in manager.all_tasks  # generated on demand, never listed
    task = manager.load(["calib_mmlu_anatomy"])["tasks"]["calib_mmlu_anatomy"]
    assert isinstance(task, CalibrationTask) and type(task).__name__ == "CalibMMLU"
    assert manager.match_tasks(["calib_mmlu_anatomy", "calib_mmlu"]) == ["calib_mmlu", "calib_mmlu_anatomy"]


def test_one_option_is_refused_before_inference_and_a_bad_gold_loses_only_its_record(manager):
    task = manager.load(["calib_user_one_option"])["tasks"]["calib_user_one_option"]
    task.set_fewshot_seed(0)
    with pytest.raises(ValueError, match="calibration needs at least two options per document"):
        task.build_all_requests(limit=1)  # builds the requests, before any model call
    task = manager.load(["calib_user_bad_gold"])["tasks"]["calib_user_bad_gold"]
    doc = next(doc for doc in task.task_docs if doc["gold"] == 1)  # its target is 7: no such option
    values = task.process_results(doc, [(-1.0, False), (-2.0, False), (-3.0, False), (-4.0, False)])
    assert values["acc"] == 0.0 and values["acc_norm"] == 0.0  # lm-eval's own scoring of a label error
    assert "ece" not in values and "ece_norm" not in values


def test_group_expands_through_lm_evals_factory(manager, data_root):
    from lm_eval_calib.harness import wrap

    plan = wrap.plan(manager, "calib_mmlu_continuation")  # nested inline groups over four tags
    assert plan.kind == "group" and len(plan.leaves) == 57
    assert {leaf.config["dataset_path"] for leaf in plan.leaves} == {str(_mirror(data_root))}
    assert plan.leaves[0].config["task"] == plan.leaves[0].name  # subtasks keep their names (the category)
    user = wrap.plan(manager, "calib_user_group")  # a user's group from --include_path
    assert [leaf.name for leaf in user.leaves] == ["user_mc", "ref_mmlu_anatomy"]
    names = manager.match_tasks(["calib_mmlu_*_continuation"])  # a glob adds every wrappable match
    assert "calib_mmlu_anatomy_continuation" in names and f"calib_{SOCIAL}" in names


def test_cli_lists_what_can_be_wrapped(manager, monkeypatch, capsys):
    import lm_eval.tasks

    from lm_eval_calib.cli import main

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda include_path=None: manager)
    assert main(["tasks", "--wrappable", "*mmlu_anatomy*"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    names = {row[0]: row[1:] for row in rows}
    assert names["calib_mmlu_anatomy_continuation"] == ["task", "multiple_choice"]
    assert names["calib_ref_mmlu_anatomy"] == ["task", "multiple_choice"]  # from --include_path
    assert "calib_mmlu_anatomy" not in names  # ours already has that name
    assert main(["tasks", "--wrappable", "truthfulqa_mc*"]) == 0
    listed = capsys.readouterr().out
    assert "calib_truthfulqa_mc1 " in listed and "calib_truthfulqa_mc2" not in listed
    assert main(["tasks"]) == 0
    explained = capsys.readouterr().out
    assert "calib_<x> wraps the task, group or tag <x>" in explained and "  calib_mmlu_anatomy\n" in explained


def test_missing_hub_snapshot_is_an_error_naming_the_folder(manager, tmp_path, monkeypatch):
    from lm_eval_calib.harness import wrap

    fresh = copy.copy(manager)
    fresh.__dict__.pop("_lm_eval_calib_wrap_plans", None)
    fresh.metadata = {"data_dir": str(tmp_path)}
    with pytest.raises(DataNotFoundError) as caught:
        wrap.plan(fresh, "calib_arc_easy")
    assert str(tmp_path / "hub" / "allenai" / "ai2_arc") in str(caught.value)
    # no root: the hub, as lm-eval would; a file builder or a local folder never needs a snapshot
    monkeypatch.delenv("LM_EVAL_CALIB_DATA", raising=False)
    assert hub_snapshot("allenai/ai2_arc", None) is None
    assert hub_snapshot("json", tmp_path) is None and hub_snapshot(str(tmp_path), tmp_path) is None
    (tmp_path / "hub" / "org" / "set").mkdir(parents=True)
    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(tmp_path))
    assert hub_snapshot("org/set") == tmp_path / "hub" / "org" / "set"


def test_the_name_patch_fails_soft_with_one_warning(tmp_path):
    """An lm-eval whose TaskManager lacks the internals the wrapper patch relies on: our task folder is still
    registered, and one warning says the wrappers are off."""
    import os
    import subprocess
    import textwrap

    from helpers import OFFLINE_ENV

    fake = tmp_path / "lm_eval" / "tasks"
    fake.mkdir(parents=True)
    (tmp_path / "lm_eval" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "manager.py").write_text(
        "class TaskManager:\n    def __init__(self, verbosity=None, include_path=None):\n"
        "        self.include_path = include_path\n"
    )
    code = textwrap.dedent(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lm_eval.tasks.manager as m
        print(len(m.TaskManager().include_path), " | ".join(str(w.message) for w in caught))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 ")  # our task folder joined include_path
    assert proc.stdout.count("lm-eval-calib:") == 1  # one warning (lm_eval_calib/lm_eval_patches.py)
    assert "wrappers of lm-eval's tasks are off" in proc.stdout
