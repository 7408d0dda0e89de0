"""calib_clm and calib_facts_open through the real lm_eval CLI with `--model hf-calib` (tiny random Llama)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import read_run, run_lm_eval

from lm_eval_calib.data.wikitext import load_wikitext
from lm_eval_calib.metrics import METRICS, compute_metric
from lm_eval_calib.records import records_to_data


def _args(model: str, folder: Path, tasks: str, out: Path, *extra: str) -> list[str]:
    args = ["--model", model, "--model_args", f"pretrained={folder},dtype=float32", "--tasks", tasks]
    args += ["--device", "cpu", "--batch_size", "4", "--output_path", str(out), "--log_samples"]
    return [*args, *extra]


def _reference_wikitext(folder: Path, data_root: Path) -> Path:
    """lm-eval's OWN `wikitext` task (its YAML included by absolute path), pointed at the local documents."""
    import lm_eval

    pages = folder / "wikitext_test.jsonl"
    load_wikitext(str(data_root))["test"].to_json(pages)
    wikitext_yaml = Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml"
    (folder / "ref_wikitext.yaml").write_text(
        f"include: {wikitext_yaml}\ntask: ref_wikitext\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {pages}\n"
        "training_split: null\nvalidation_split: null\n"
    )
    return folder


@pytest.fixture(scope="module")
def clm_run(tiny_model_dir, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm")
    include = _reference_wikitext(tmp_path_factory.mktemp("ref"), data_root)
    metadata = json.dumps({"data_dir": str(data_root)})
    extra = ["--limit", "2", "--include_path", str(include), "--metadata", metadata]
    run_lm_eval(_args("hf-calib", tiny_model_dir, "calib_clm,ref_wikitext", out, *extra))
    return read_run(out)


def test_clm_scores_every_token_and_pools_them(clm_run, tiny_model_dir):
    from transformers import AutoTokenizer

    results, samples = clm_run
    rows = samples["calib_clm"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in rows:
        record = row["ece"]
        text = row["arguments"]["gen_args_0"]["arg_0"]
        assert len(record["confidence"]) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert record["category"] == row["doc"]["title"]
    data = records_to_data([row["ece"] for row in rows])
    task = results["results"]["calib_clm"]
    for key in METRICS:
        assert task[f"{key},none"] == pytest.approx(compute_metric(key, data), abs=1e-12), key
        assert isinstance(task[f"{key}_stderr,none"], float)
    # token NLL is the per-token mean of the same log-likelihood lm-eval sums for perplexity
    total_ll = sum(float(row["resps"][0][0]) for row in rows)
    assert task["nll,none"] == pytest.approx(-total_ll / len(data), rel=1e-6)  # float32 sums in the model


def test_clm_perplexity_equals_lm_eval_wikitext(clm_run):
    results, _ = clm_run
    ours, ref = results["results"]["calib_clm"], results["results"]["ref_wikitext"]
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isfinite(ours[f"{key},none"])
        assert ours[f"{key},none"] == pytest.approx(ref[f"{key},none"], rel=1e-6), key


def test_facts_open_scores_the_first_object_token(tiny_model_dir, data_root, tmp_path):
    from transformers import AutoTokenizer

    metadata = json.dumps({"data_dir": str(data_root)})
    extra = ["--limit", "6", "--metadata", metadata]
    run_lm_eval(_args("hf-calib", tiny_model_dir, "calib_facts_open", tmp_path, *extra))
    results, samples = read_run(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in samples["calib_facts_open"]:
        record = row["ece"]
        assert len(record["confidence"]) == 1 and record["category"] == row["doc"]["relation"]
        context, continuation = (
            row["arguments"]["gen_args_0"]["arg_0"],
            row["arguments"]["gen_args_0"]["arg_1"],
        )
        assert context == row["doc"]["prompt"] and continuation == " " + row["doc"]["object"]
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        assert record["nll"][0] >= 0 and len(whole) > n_context
    data = records_to_data([row["ece"] for row in samples["calib_facts_open"]])
    assert results["results"]["calib_facts_open"]["ece,none"] == pytest.approx(compute_metric("ece", data))
    assert np.all((data.confidence > 0) & (data.confidence <= 1))


def test_plain_hf_is_refused_before_inference(tiny_model_dir, data_root, tmp_path):
    metadata = json.dumps({"data_dir": str(data_root)})
    args = _args("hf", tiny_model_dir, "calib_clm", tmp_path, "--limit", "1", "--metadata", metadata)
    proc = run_lm_eval(args, check=False)
    assert proc.returncode != 0
    assert "need per-token statistics" in proc.stderr and "--model hf-calib" in proc.stderr
    assert "Running loglikelihood" not in proc.stderr and not list(tmp_path.rglob("results_*.json"))


@pytest.fixture(scope="module")
def nan_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama saved with NaN final-norm weights: every logit, hence every token statistic, is NaN."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("nan-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("task", "limit"), [("calib_facts_open", 2), ("calib_clm", 1)])
def test_nan_token_statistics_name_the_task_and_the_fix(task, limit, nan_model_dir, data_root):
    """A real hf-calib run on a broken model: the error comes from the task's record, naming task and fix,
    instead of an aggregation error naming no task (which now would only log and report NaN)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_calib.harness.results import ModelOutputError

    metadata = {"data_dir": str(data_root), "facts": {"relations": ["P30"]}}  # one small relation
    # only this package's tasks: indexing lm-eval's thousands of YAMLs is slow
    manager = TaskManager(include_defaults=False, metadata=metadata)
    with pytest.raises(ModelOutputError) as info:
        lm_eval.simple_evaluate(
            model="hf-calib",
            model_args=f"pretrained={nan_model_dir},dtype=float32",
            tasks=[task],
            limit=limit,
            batch_size=4,
            device="cpu",
            task_manager=manager,
        )
    message = str(info.value)
    assert message.startswith(f"{task}: document ") and "non-finite token statistics" in message
    assert "dtype=float32" in message and "nan" in message


@pytest.mark.parametrize("field", ["token_logprobs", "top1_logprobs"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_first_non_finite_token_statistic(field, value):
    from lm_eval_calib.models.token_stats import TokenStats

    columns = {
        "token_ids": [5, 6, 7],
        "token_logprobs": [-1.0, -2.0, -0.5],
        "top1_ids": [5, 9, 7],
        "top1_logprobs": [-1.0, -0.1, -0.5],
    }
    assert TokenStats(**columns).first_non_finite() is None
    columns[field] = [-1.0, value, value]
    name, position, found = TokenStats(**columns).first_non_finite()
    assert (name, position) == (field, 1) and (found == value or (math.isnan(found) and math.isnan(value)))
