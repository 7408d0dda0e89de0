"""The one reader of per-document records (``lm_eval_calib.records_io``) and plain lm-eval samples
(``lm_eval_calib.plain_records``): file names, options, and every way a samples file can be wrong.

Runs of real lm-eval are read in test_report_existing_runs.py and test_study.py; these tests cover the rules
on small files written in lm-eval's logged layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_eval_calib.plain_records import SkipDocument, option_record, target_delimiter
from lm_eval_calib.records import generation_record, length_normalised, make_record
from lm_eval_calib.records_io import (
    SamplesError,
    generation_views,
    newest_samples,
    read_folder_task,
    read_samples,
    samples_for_results,
    samples_name,
)

STAMP = "2026-11-30T07-17-34.117212"


def _sample(doc_id: int, logliks, target, choices=("yes", "no", "maybe"), **extra) -> dict:
    """One document as lm-eval 0.4.13 logs it for a multiple-choice task."""
    arguments = {f"gen_args_{i}": {"arg_0": "Q?\nA:", "arg_1": f" {c}"} for i, c in enumerate(choices)}
    resps = [[str(float(v)), "False"] for v in logliks]
    return {
        "doc_id": doc_id,
        "doc": {},
        "target": str(target),
        "arguments": arguments,
        "resps": [[r] for r in resps],
        "filtered_resps": resps,
        "filter": "none",
        "metrics": ["acc", "acc_norm"],
        **extra,
    }


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_samples_file_names_are_matched_exactly_and_the_newest_wins(tmp_path):
    assert samples_name(f"samples_calib_mmlu_anatomy_{STAMP}.jsonl") == ("calib_mmlu_anatomy", STAMP)
    assert samples_name("samples_x_2026-11-30T07-17-34.jsonl") == ("x", "2026-11-30T07-17-34")
    assert samples_name("samples_calib_mmlu.jsonl") is None and samples_name("results_x.json") is None
    rows = [_sample(0, [-1.0, -2.0, -3.0], 0)]
    older = _write(tmp_path / "m1" / "samples_calib_mmlu_2026-01-01T00-00-00.5.jsonl", rows)
    newer = _write(tmp_path / "m2" / "samples_calib_mmlu_2026-01-02T00-00-00.jsonl", rows)
    _write(tmp_path / "m2" / "samples_calib_mmlu_anatomy_2026-01-03T00-00-00.jsonl", rows)
    assert newest_samples(tmp_path, "calib_mmlu") == newer != older
    assert newest_samples(tmp_path, "calib_mmlu_anatomy").name.startswith("samples_calib_mmlu_anatomy_")
    assert newest_samples(tmp_path, "calib") is None
    (tmp_path / "m2" / "results_2026-01-02T00-00-00.json").write_text("{}")
    assert samples_for_results(tmp_path / "m2" / "results_2026-01-02T00-00-00.json", "calib_mmlu") == newer


def test_the_runs_calibration_options_come_from_its_results_file(tmp_path):
    folder = tmp_path / "model"
    _write(folder / f"samples_t_{STAMP}.jsonl", [{"doc_id": 0, "ece": make_record([-1.0, -2.0], 1)}])
    with pytest.raises(SamplesError, match=r"has no results_.*\.json beside it.*options are unknown"):
        read_folder_task(tmp_path, "t")
    config = {
        "output_type": "multiple_choice",
        "metadata": {"calibration": {"n_bins": 15, "bootstrap_seed": 7}},
    }
    results = {"results": {"t": {}}, "configs": {"t": config}}
    (folder / f"results_{STAMP}.json").write_text(json.dumps(results))
    read = read_folder_task(tmp_path, "t")
    assert (read.options.n_bins, read.options.bootstrap_seed, read.origin) == (15, 7, "record")
    config["metadata"]["calibration"] = {"nbins": 15}
    (folder / f"results_{STAMP}.json").write_text(json.dumps(results))
    with pytest.raises(SamplesError, match="unknown calibration option.*'nbins'"):
        read_folder_task(tmp_path, "t")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "holds no logged documents"),
        ([{"ece": {"confidence": 0.5}}], "line 1 has no doc_id"),
        ([{"doc_id": 0, "ece": make_record([0.0, -1.0], 0)}, {"doc_id": 1, "acc": 1}],
         "line 2 has no calibration record under 'ece'"),
        ([{"doc_id": 0, "ece": make_record([0.0, -1.0], 0)}, {"doc_id": 0, "ece": make_record([0.0, 1], 1)}],
         "doc_id 0 is logged 2 times"),
        ([{"doc_id": 0, "ece_seqprob": {"confidence": 0.4, "correct": 1, "estimator": "seqprob"}}],
         r"holds generation-task records of estimators \['seqprob'\]: read one with estimator="),
    ],
)  # fmt: skip
def test_a_broken_samples_file_is_one_clear_error(tmp_path, rows, message):
    path = _write(tmp_path / f"samples_t_{STAMP}.jsonl", rows)
    with pytest.raises(SamplesError, match=message):
        read_samples(path)


def _generation_rows() -> list[dict]:
    """Two documents of a generation calibration task under two filters, as GenerationCalibrationTask logs
    them: one record per estimator (``ece_<estimator>``), a verbalised reply that did not parse."""
    rows = []
    for filt, correct in (("strict-match", (0, 1)), ("flexible-extract", (1, 1))):
        for doc_id, conf, verbal in ((0, 0.2, None), (1, 0.7, 0.9)):
            y = correct[doc_id]
            seqprob = generation_record(conf, y, None, estimator="seqprob", logprob=-1.0)
            verbal_record = generation_record(verbal, y, "cat", estimator="verbal", reply="r", parsed=None)
            rows.append(
                {
                    "doc_id": doc_id,
                    "filter": filt,
                    "exact_match": float(y),
                    "ece_norm": "an acc_norm record",
                    "ece_seqprob": seqprob,
                    "ece_verbal": verbal_record,
                    "brier_seqprob": "see 'ece_seqprob'",
                }
            )
    return rows


def test_generation_records_are_read_per_estimator_and_filter(tmp_path):
    path = _write(tmp_path / f"samples_t_{STAMP}.jsonl", _generation_rows())
    assert generation_views(path) == [
        ("strict-match", "seqprob"),
        ("strict-match", "verbal"),
        ("flexible-extract", "seqprob"),
        ("flexible-extract", "verbal"),
    ]
    strict = read_samples(path, estimator="seqprob", filter_key="strict-match")
    assert strict.estimator == "seqprob" and strict.filter_key == "strict-match"
    assert strict.data.confidence.tolist() == [0.2, 0.7] and strict.data.correct.tolist() == [0, 1]
    flexible = read_samples(path, estimator="seqprob", filter_key="flexible-extract")
    assert flexible.data.correct.tolist() == [1, 1] and flexible.doc_ids == [0, 1]
    # a record without a confidence (unparseable reply) is counted, never scored
    verbal = read_samples(path, estimator="verbal", filter_key="strict-match")
    assert verbal.doc_ids == [1] and verbal.n_skipped == 1
    assert "verbal gave no confidence (unparseable reply)" in verbal.skipped[0]
    with pytest.raises(SamplesError, match=r"no 'ptrue' records \(its generation estimators: \['seqprob'"):
        read_samples(path, estimator="ptrue")
    with pytest.raises(SamplesError, match=r"no documents under filter 'none'"):
        read_samples(path, estimator="seqprob", filter_key="none")
    # option and token files have no generation views
    option_rows = [{"doc_id": 0, "ece": make_record([0.0, -1.0], 0)}]
    option = _write(tmp_path / f"samples_o_{STAMP}.jsonl", option_rows)
    assert generation_views(option) == []


def test_documents_and_categories_of_token_and_option_records(tmp_path):
    token = {
        "confidence": [0.9, 0.2, 0.6],
        "correct": [1, 0, 1],
        "brier": [0.01, 0.04, 0.16],
        "nll": [0.1, 1.6, 0.5],
        "category": "doc b",
    }
    rows = [{"doc_id": 3, "ece": token}, {"doc_id": 5, "ece": dict(token, category="doc a")}]
    read = read_samples(_write(tmp_path / f"samples_t_{STAMP}.jsonl", rows))
    assert read.item_document.tolist() == [0, 0, 0, 1, 1, 1] and read.scores is None
    assert read.categories == ["doc a", "doc b"] and read.item_category.tolist() == [1, 1, 1, 0, 0, 0]
    assert read.select([5]).doc_ids == [5] and read.select([5]).item_document.tolist() == [0, 0, 0]
    with pytest.raises(SamplesError, match=r"document\(s\) \[9\] are not in"):
        read.select([9])


def test_a_plain_sample_becomes_the_record_of_either_rule():
    logliks = [-3.0, -2.5, -9.0]  # acc picks option 1; per character (3, 2, 5 characters) option 0
    sample = _sample(0, logliks, 0, acc=0.0, acc_norm=1.0)
    assert option_record(sample) == make_record(logliks, 0)
    normed = length_normalised(logliks, ["yes", "no", "maybe"])
    assert option_record(sample, "acc_norm") == make_record(normed, 0)
    assert option_record(sample, "acc_norm")["correct"] == 1 and option_record(sample)["correct"] == 0
    with pytest.raises(SkipDocument, match="recomputed acc disagrees with the acc lm-eval logged"):
        option_record(dict(sample, acc=1.0))


def test_gold_given_as_an_option_text_or_an_ambiguous_digit():
    assert option_record(_sample(0, [-1.0, -2.0, -3.0], "no"))["target"] == 1
    # "1" could be index 1 or the option text "1" (index 0): lm-eval's logged acc decides
    choices = ("1", "2", "3")
    assert option_record(_sample(0, [-1.0, -2.0, -3.0], "1", choices, acc=1.0))["target"] == 0
    assert option_record(_sample(0, [-1.0, -2.0, -3.0], "1", choices, acc=0.0))["target"] == 1
    assert option_record(_sample(0, [-1.0, -2.0, -3.0], "[2]"))["target"] == 2  # one gold in a list


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(target="[0, 2]"), r"several gold options \(multi-gold\)"),
        (dict(target="7"), "target '7' is neither an option index nor one of the 3 options"),
        (dict(filtered_resps=["a fine answer", "x", "y"]), "are not log-likelihoods"),
        (dict(filtered_resps=[["-1.0", "False"], ["nan", "False"], ["-2.0", "False"]]), "non-finite"),
        (dict(arguments={f"gen_args_{i}": {"arg_0": f"ctx {i}", "arg_1": " end"} for i in range(3)}),
         "the options are contexts, not continuations"),
        (dict(arguments={}), "no \\(context, continuation\\) pairs"),
    ],
)  # fmt: skip
def test_an_unscorable_plain_sample_says_why(change, reason):
    with pytest.raises(SkipDocument, match=reason):
        option_record({**_sample(0, [-1.0, -2.0, -3.0], 0), **change})


def test_mutual_information_requests_and_the_chat_template_delimiter():
    sample = _sample(0, [-1.0, -2.0, -3.0, -0.5, -0.5, -0.5], 2, choices=("a", "b", "c", "a", "b", "c"))
    sample["metrics"] = ["acc", "acc_mutual_info"]  # the second half are the unconditional requests
    sample["arguments"].update({f"gen_args_{i}": {"arg_0": "", "arg_1": " x"} for i in range(3, 6)})
    assert option_record(sample) == make_record([-1.0, -2.0, -3.0], 2)
    assert target_delimiter({"target_delimiter": "\n"}) == "\n" and target_delimiter(None) == " "
    assert target_delimiter({"target_delimiter": " "}, chat_template=True) == ""
    assert target_delimiter({"target_delimiter": " ", "gen_prefix": "Answer:"}, chat_template=True) == " "


def test_a_plain_task_file_skips_what_it_cannot_score_and_refuses_generation_tasks(tmp_path):
    rows = [
        _sample(0, [-1.0, -2.0, -3.0], 0),
        _sample(1, [-1.0, -2.0, -3.0], "[0, 1]"),
        _sample(2, [-1.0, -2.0, -3.0], "[1, 2]"),
        _sample(3, [-2.0, -1.0, -3.0], 0),
    ]
    path = _write(tmp_path / f"samples_t_{STAMP}.jsonl", rows)
    read = read_samples(path, config={"output_type": "multiple_choice"})
    assert read.doc_ids == [0, 3] and read.origin == "lm-eval" and read.scores is not None
    assert read.skipped == ["t: skipped 2 of 4 documents: several gold options (multi-gold) (e.g. doc_id 1)"]
    with pytest.raises(SamplesError, match="t is a generate_until task: only multiple-choice tasks"):
        read_samples(path, config={"output_type": "generate_until"})
    # lm-eval's accuracy counted the multi-gold documents: the report's accuracy is that of the scored ones
    from lm_eval_calib.report.runs import task_numbers

    numbers, computed = task_numbers({"acc,none": 0.25, "acc_stderr,none": 0.25}, read, bootstrap_iters=10)
    assert numbers["acc,none"] == 0.5 and computed[0] == "acc" and "ece" in computed
