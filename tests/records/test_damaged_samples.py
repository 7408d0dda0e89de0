"""A damaged samples file ends in one :class:`SamplesError` that names the file, the line and the field and
says what was expected; never a ``KeyError``/``TypeError`` from deep inside the reader (issue 29, item 5).

The property-based hunt is ``tests/study/test_study_fuzz.py::test_damaged_samples_files_end_in_a_samples_
error_never_a_traceback``; these are the sites it found, one small file each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_eval_calib.records import make_record
from lm_eval_calib.records_io import SamplesError, generation_views, has_records, read_samples, read_task
from lm_eval_calib.report.integrity import option_record_problems

NAME = "samples_t_2026-12-07T10-00-00.jsonl"
GOOD = make_record([-1.0, -2.0], 1)
TOKENS = {
    "confidence": [0.5, 0.9],
    "correct": [1, 0],
    "brier": [0.25, 0.81],
    "nll": [0.69, 2.3],
    "category": None,
}
PLAIN = {
    "doc_id": 0,
    "doc": {},
    "target": "0",
    "filter": "none",
    "metrics": ["acc"],
    "acc": 1.0,
    "arguments": {
        "gen_args_0": {"arg_0": "Q?", "arg_1": " yes"},
        "gen_args_1": {"arg_0": "Q?", "arg_1": " no"},
    },
    "resps": [[["-1.0", "False"]], [["-2.0", "False"]]],
    "filtered_resps": [["-1.0", "False"], ["-2.0", "False"]],
}


def _write(folder: Path, rows: list) -> Path:
    path = folder / NAME
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"doc_id": 0, "ece": {"confidence": 0.5, "correct": 1}}],
            r"line 1: ece\.brier is missing; expected a finite number",
        ),
        (
            [{"doc_id": 0, "filter": {}, "ece": GOOD}],
            r"line 1: filter is \{\}; expected text \(the lm-eval filter",
        ),
        (
            [{"doc_id": 0, "ece": {**GOOD, "correct": {"a": 1}}}],
            r"line 1: ece\.correct is \{\"a\": 1\}; expected 0 or 1",
        ),
        (
            [{"doc_id": 0, "ece": GOOD}, {"doc_id": 1, "ece": {**GOOD, "correct": None}}],
            r"line 2: ece\.correct is null; expected 0 or 1",
        ),
        (
            [{"doc_id": 0, "ece": {**GOOD, "confidence": 1.5}}],
            r"line 1: ece\.confidence is 1\.5; expected a probability in \[0, 1\]",
        ),
        (
            [{"doc_id": 0, "ece": {**GOOD, "brier": "0.2"}}],
            r"line 1: ece\.brier is \"0\.2\"; expected a finite number",
        ),
        (
            [{"doc_id": 0, "ece": {**TOKENS, "correct": [1]}}],
            r"line 1: ece\.correct is \[1\]; expected a list of 2 values \(one per item, as "
            r"ece\.confidence\)",
        ),
        (
            [{"doc_id": 0, "ece": {**TOKENS, "nll": 0.5}}],
            r"line 1: ece\.nll is 0\.5; expected a list of 2 values",
        ),
        (
            [{"doc_id": 0, "ece": {**TOKENS, "confidence": [0.5, [0.9]]}}],
            r"line 1: ece\.confidence is \[0\.5, \[0\.9\]\]; expected a probability in \[0, 1\] or a "
            r"flat list",
        ),
        ([{"doc_id": [0], "ece": GOOD}], r"line 1: doc_id is \[0\]; expected an integer"),
        ([{"doc_id": 0, "ece": GOOD}, "[" * 100_000], r"line 2 is not JSON \(nested too deeply\)"),
        ([{"doc_id": 0, "ece": GOOD}, '{"doc_id": ' + "9" * 5000 + "}"], r"line 2 is not JSON"),
    ],
    ids=[
        "record-without-brier",
        "filter-is-a-mapping",
        "correct-is-a-mapping",
        "correct-is-null",
        "confidence-out-of-range",
        "brier-is-text",
        "token-lengths-differ",
        "token-and-scalar-mixed",
        "confidence-nested",
        "doc-id-is-a-list",
        "deep-json",
        "huge-integer",
    ],
)
def test_a_damaged_record_is_one_error_naming_file_line_and_field(tmp_path, rows, message):
    path = _write(tmp_path, rows)
    with pytest.raises(SamplesError, match=message) as info:
        read_samples(path)
    assert str(info.value).startswith(str(path))


def test_a_line_that_is_not_utf8_is_named_and_has_records_says_no(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(json.dumps({"doc_id": 0, "ece": GOOD}).encode() + b"\n" + b'{"doc_id": "caf\xe9"}\n')
    with pytest.raises(SamplesError, match=r"line 2 is not UTF-8 \(byte 0xe9 at byte 16 of the line\)"):
        read_samples(path)
    path.write_bytes(b'{"doc_id": "caf\xe9"}\n')
    assert has_records(path) is False
    with pytest.raises(SamplesError, match="line 1 is not UTF-8"):
        generation_views(path)


def test_loglik_that_is_not_numbers_drops_temperature_scaling_with_a_caveat_not_the_file(tmp_path):
    """Damaged ``loglik``/``target`` only back temperature scaling: the report names them (issue 28) and
    scores the rest; before, the reader stopped with a CalibrationInputError naming neither file nor line."""
    rows = [{"doc_id": 0, "ece": {**GOOD, "loglik": [{}, [1.0]]}}, {"doc_id": 1, "ece": GOOD}]
    read = read_samples(_write(tmp_path, rows))
    assert read.scores is None and len(read.records) == 2
    assert (
        "1 of 2 records (e.g. doc_id 0) have loglik/target that disagree" in option_record_problems(read)[0]
    )
    rows[0]["ece"] = {**GOOD, "target": 7}
    assert read_samples(_write(tmp_path, rows)).scores is None
    assert read_samples(_write(tmp_path, rows[1:])).scores is not None


def test_a_plain_document_with_other_arguments_is_skipped_and_named(tmp_path):
    path = _write(tmp_path, [{**PLAIN, "arguments": {"estimator": "seqprob"}}])
    with pytest.raises(
        SamplesError,
        match=r"no document of t could be scored \('arguments' is not lm-eval's .*gen_args_<i>.* "
        r"\(e\.g\. doc_id 0\), first at line 1\)",
    ) as info:
        read_samples(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("change", "read"),
    [
        ({"filtered_resps": [[], ["-2.0", "False"]]}, False),
        ({"metrics": 5}, True),
        ({"acc": float("inf")}, True),
        ({"target": "²"}, False),
        ({"target": "9" * 5000}, False),
        ({"target": "[{[1]: 2}]"}, False),
        ({"target": json.loads("[" * 900 + "0" + "]" * 900)}, True),
    ],
    ids=["empty-response", "metrics-not-a-list", "acc-infinite", "superscript-digit", "huge-digits",
         "unhashable-literal", "deep-target"],
)  # fmt: skip
def test_odd_plain_documents_are_read_or_skipped_never_a_traceback(tmp_path, change, read):
    path = _write(tmp_path, [{**PLAIN, **change}])
    if read:
        assert len(read_samples(path).records) == 1
    else:
        with pytest.raises(SamplesError, match="no document of t could be scored"):
            read_samples(path)


def test_results_whose_configs_are_not_a_mapping_are_one_error(tmp_path):
    _write(tmp_path, [{"doc_id": 0, "ece": GOOD}])
    results = tmp_path / "results_2026-12-07T10-00-00.json"
    for configs, message in (([], r"configs is \[\]; expected a mapping"), ({"t": 5}, r"configs\.t is 5")):
        results.write_text(json.dumps({"results": {"t": {}}, "configs": configs}))
        with pytest.raises(SamplesError, match=message):
            read_task(results, "t")
