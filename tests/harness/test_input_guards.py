"""Inputs that used to give a number that looks right and is not, or a traceback instead of a message.

- an edited local hub snapshot is read again (``datasets`` keyed its cache by the README's patterns only);
- ``--samples`` lists out of order get each document's own id (lm-eval's ``doc_iterator`` paired row order
  with list order); negative, repeated and out-of-range indices are refused by name;
- a gold list on a later document of a wrapped task is refused before inference, naming the document;
- errors we raise through lm-eval's CLI are one line (the traceback only with ``--verbosity DEBUG``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import LM_EVAL, OFFLINE_ENV, REPO

SUBJECT = "abstract_algebra"
WRAPPED = f"calib_mmlu_{SUBJECT}_continuation"  # lm-eval's mmlu_abstract_algebra_continuation, wrapped
HUB_README = f"""---
configs:
- config_name: {SUBJECT}
  data_files:
  - split: test
    path: {SUBJECT}/test-*
  - split: validation
    path: {SUBJECT}/validation-*
  - split: dev
    path: {SUBJECT}/dev-*
---
A few rows of cais/mmlu ({SUBJECT}), written by the test.
"""


# -- an edited local hub snapshot is what the next run reads -------------------------------------------------
def _snapshot(data_root: Path, root: Path, rows: int) -> Path:
    """``root/hub/cais/mmlu``: the first ``rows`` rows of each split of the shared mirror's subject."""
    source = data_root / "hub" / "cais" / "mmlu" / SUBJECT
    folder = root / "hub" / "cais" / "mmlu"
    (folder / SUBJECT).mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(HUB_README)
    for path in source.glob("*.parquet"):
        pq.write_table(pq.read_table(path).slice(0, rows), folder / SUBJECT / path.name)
    return folder / SUBJECT / next(source.glob("test-*.parquet")).name


def _questions(manager) -> list[str]:
    task = manager.load([WRAPPED])["tasks"][WRAPPED]
    return [doc["question"] for doc in task.eval_docs]


def test_an_edited_hub_snapshot_is_read_again(data_root, tmp_path, monkeypatch):
    import datasets
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    test_file = _snapshot(data_root, tmp_path / "root", rows=5)
    manager = TaskManager(metadata={"data_dir": str(tmp_path / "root")})
    first = _questions(manager)
    assert len(first) == 5
    table = pq.read_table(test_file).slice(0, 3)  # truncate, and edit one question
    edited = ["EDITED " + first[0], *first[1:3]]
    column = table.schema.get_field_index("question")
    pq.write_table(table.set_column(column, "question", pa.array(edited)), test_file)
    assert _questions(manager) == edited  # the next build (same run or next) reads the files as they are
    assert _questions(TaskManager(metadata={"data_dir": str(tmp_path / "root")})) == edited
    shutil.rmtree(tmp_path / "root" / "hub")  # the same content again is the same data (and the cache hit)
    _snapshot(data_root, tmp_path / "root", rows=5)
    assert _questions(manager) == first


# -- --samples: each logged document carries its own id ------------------------------------------------------
class _LengthLM:
    """A model that scores every continuation by minus its length: deterministic, instant."""

    def __new__(cls):
        from lm_eval.api.model import LM

        class LengthLM(LM):
            def loglikelihood(self, requests):
                return [(-float(len(request.args[1])), False) for request in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                raise NotImplementedError

        return LengthLM()


TASK = f"calib_mmlu_{SUBJECT}"


@pytest.fixture(scope="module")
def mmlu_task_dict(data_root):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(metadata={"data_dir": str(data_root)})
    return lambda: get_task_dict([TASK], manager)


def _logged(task_dict_factory, indices: list) -> list[dict]:
    from lm_eval.evaluator import evaluate

    results = evaluate(_LengthLM(), task_dict_factory(), samples={TASK: indices}, log_samples=True)
    return results["samples"][TASK]


def test_samples_out_of_order_keep_each_documents_id(mmlu_task_dict):
    """lm-eval logs ``--samples [5, 2]`` as doc_id 5 with row 2's question; sorted lists it gets right, and
    the same documents must come out, whatever the order of the list."""
    sorted_rows = {row["doc_id"]: row for row in _logged(mmlu_task_dict, [2, 5])}  # lm-eval's own, right
    shuffled = _logged(mmlu_task_dict, [5, 2])
    assert sorted(row["doc_id"] for row in shuffled) == [2, 5]
    for row in shuffled:
        expected = sorted_rows[row["doc_id"]]
        assert row["doc"] == expected["doc"], row["doc_id"]
        assert row["arguments"] == expected["arguments"] and row["ece"] == expected["ece"]
    task = mmlu_task_dict()[TASK]
    assert [row["doc"]["question"] for row in shuffled] == [task.eval_docs[i]["question"] for i in (5, 2)]


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([-1, 0], r"--samples for calib_mmlu_abstract_algebra: -1 is not a document index"),
        ([2, 2], r"--samples for calib_mmlu_abstract_algebra: 2 is listed twice"),
        ([0, 100], r"--samples for calib_mmlu_abstract_algebra: 100 is out of range: the task has 100 doc"),
        ([0, 1.0], r"--samples for calib_mmlu_abstract_algebra: 1.0 is not a document index"),
    ],
)
def test_samples_that_name_no_single_document_are_refused(mmlu_task_dict, indices, message):
    with pytest.raises(ValueError, match=message):
        _logged(mmlu_task_dict, indices)


# -- a gold list on a later document -------------------------------------------------------------------------
LATE_MULTI = """task: user_late_multi
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {csv}
  column_names: [question, A, B, C, D, answer]
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{[A, B, C, D]}}}}"
doc_to_target: "{{{{[0, 1] if answer.strip() == 'B' else 'ABCD'.index(answer.strip())}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def late_multi(tmp_path_factory, data_root):
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("late_multi")
    csv = data_root / "mmlu" / "test" / "anatomy_test.csv"
    (folder / "user_late_multi.yaml").write_text(LATE_MULTI.format(csv=csv))
    (folder / "user_late_group.yaml").write_text("group: user_late_group\ntask:\n  - user_late_multi\n")
    first_list = "{{[0] if answer.strip() == 'A' else 'ABCD'.index(answer.strip())}}"  # the first answer is A
    (folder / "user_first_list.yaml").write_text(
        f'include: user_late_multi.yaml\ntask: user_first_list\ndoc_to_target: "{first_list}"\n'
    )
    return TaskManager(include_path=str(folder))


def test_a_gold_list_on_a_later_document_is_refused_before_inference(late_multi):
    from lm_eval_calib.harness.wrap_refusal import WrapRefusal

    task = late_multi.load(["calib_user_late_multi"])["tasks"]["calib_user_late_multi"]
    first_multi = next(i for i, doc in enumerate(task.eval_docs) if doc["answer"].strip() == "B")
    assert first_multi > 0  # the first document has one gold answer: lm-eval's own check passes
    task.set_fewshot_seed(0)
    with pytest.raises(WrapRefusal) as caught:
        task.build_all_requests(limit=first_multi + 1)  # builds requests only: no model call
    message = str(caught.value)
    assert f"document {first_multi} " in message and "doc_to_target gave [0, 1]" in message
    assert "calibration needs exactly one correct option per document" in message
    assert task.eval_docs[first_multi]["question"][:30] in message
    task.build_all_requests(limit=first_multi)  # the documents before it are fine
    # scoring that document (cached requests skip construct_requests) names it too, not numpy's error
    with pytest.raises(WrapRefusal, match=f"document {first_multi} "):
        task.process_results(task.eval_docs[first_multi], [(-1.0, False)] * 4)


def test_a_gold_list_in_a_pooled_subtask_is_refused_before_inference(late_multi):
    from lm_eval_calib.harness.wrap_refusal import WrapRefusal

    task = late_multi.load(["calib_user_late_group"])["tasks"]["calib_user_late_group"]
    task.set_fewshot_seed(0)
    with pytest.raises(WrapRefusal, match=r"user_late_multi.*document \d+ .*doc_to_target gave \[0, 1\]"):
        task.build_all_requests(limit=None)


# -- one line, not a traceback, through lm-eval's CLI --------------------------------------------------------
def _lm_eval(tmp_path: Path, tasks: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["--model", "hf", "--model_args", f"pretrained={tmp_path / 'no-model'}", "--tasks", tasks]
    args += ["--metadata", json.dumps({"data_dir": str(tmp_path)}), "--device", "cpu", *extra]
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("LMEVAL_LOG_LEVEL", None)
    return subprocess.run(
        [str(LM_EVAL), *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO.parent
    )


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def test_our_errors_through_lm_evals_cli_are_one_line(tmp_path):
    refused = _lm_eval(tmp_path, "calib_truthfulqa_mc2")  # a wrap refusal, from the configs
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert _last_line(refused.stderr).startswith(
        "lm-eval-calib: error: calib_truthfulqa_mc2: cannot wrap 'truthfulqa_mc2'"
    )
    missing = _lm_eval(tmp_path, "calib_arc_easy")  # a data error: no snapshot under the data root
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
    last = _last_line(missing.stderr)
    assert last.startswith("lm-eval-calib: error: calib_arc_easy: the data root") and "allenai" in last
    debug = _lm_eval(tmp_path, "calib_truthfulqa_mc2", "--verbosity", "DEBUG")  # asked for: the traceback
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "WrapRefusal: calib_truthfulqa_mc2: cannot wrap" in debug.stderr


def test_a_single_target_after_a_first_list_target_is_refused_before_inference(late_multi):
    """The first document's target is ``[0]`` (lm-eval then scores every document as a list target), a later
    one's is ``1``: lm-eval's ``pred in gold`` would fail on it after inference."""
    from lm_eval_calib.harness.wrap_refusal import WrapRefusal

    task = late_multi.load(["calib_user_first_list"])["tasks"]["calib_user_first_list"]
    task.set_fewshot_seed(0)
    with pytest.raises(
        WrapRefusal, match=r"its document 1 .*has a single target \(doc_to_target gave 1\) where"
    ):
        task.build_all_requests(limit=2)


def _through_cli(raise_it):
    """The exception ``raise_it`` raises and its traceback, called from a frame in lm-eval's CLI folder."""
    import lm_eval

    cli_file = str(Path(lm_eval.__file__).resolve().parent / "_cli" / "run.py")
    scope: dict = {}
    exec(compile("def execute(function):\n    function()\n", cli_file, "exec"), scope)
    try:
        scope["execute"](raise_it)
    except Exception as exc:
        return exc, exc.__traceback__
    raise AssertionError("nothing raised")


def test_only_our_input_errors_lose_their_traceback():
    import numpy as np

    from lm_eval_calib.data.lama import load_lama
    from lm_eval_calib.lm_eval_patches import one_line_error

    def ours():
        load_lama("/nonexistent", seed=1.5)

    exc, tb = _through_cli(ours)
    assert one_line_error(exc, tb, []) == f"lm-eval-calib: error: {exc}"
    for argv in (["--verbosity", "DEBUG"], ["-v", "debug"], ["--verbosity=DEBUG"]):
        assert one_line_error(exc, tb, argv) is None  # asked for the traceback
    with pytest.raises(ValueError) as direct:  # a library call, not through lm-eval's CLI
        ours()
    assert one_line_error(direct.value, direct.tb, []) is None

    def a_bug():
        return sorted([load_lama, 1])  # a TypeError: a bug keeps its traceback

    def from_a_library():
        np.zeros(2).reshape(3)  # a ValueError raised inside numpy, not by our code

    for raise_it in (a_bug, from_a_library):
        exc, tb = _through_cli(raise_it)
        assert one_line_error(exc, tb, []) is None, exc


# -- lm-eval-calib's own command line ------------------------------------------------------------------------
def test_output_into_a_closed_pipe_ends_quietly():
    """``lm-eval-calib tasks --wrappable | head``: the reader goes away; the command stops without a
    BrokenPipeError traceback (``metrics`` takes the same path, without indexing every lm-eval task)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that has already gone: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [str(LM_EVAL.parent / "lm-eval-calib"), "metrics"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 1


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_help_texts_are_plain_text_with_one_default_each():
    import re

    from lm_eval_calib.cli import build_parser

    pages = {parser.prog: parser.format_help() for parser in _parsers(build_parser())}
    assert len(pages) >= 10  # the commands, train and its four stages
    for prog, page in pages.items():
        assert not re.search(r"``|:(mod|class|func|meth|attr|data):`", page), (prog, page)
        flat = " ".join(page.split())  # a help text wraps over lines
        for option in re.split(r"\s(?=--?[a-z])", flat):
            assert option.count("(default") <= 1, (prog, option)
