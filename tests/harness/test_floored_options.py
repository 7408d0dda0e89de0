"""Options a chat endpoint could not read (outside its top_logprobs) are counted per document and reported.

chat-calib returns :class:`~lm_eval_calib.models.chat_calib.FlooredLoglikelihood` results; the multiple-choice
tasks (ours and wrapped ones) put the count in the record (``floored``) and in ``n_floored_options``. A model
that scores every option (plain tuples) adds neither.
"""

from __future__ import annotations

import pytest

from lm_eval_calib.harness.results import FLOORED_KEY, floored_options
from lm_eval_calib.models.chat_calib import FlooredLoglikelihood
from lm_eval_calib.records import RECORD_LOG_KEY


@pytest.fixture(scope="module")
def anatomy(data_root):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(metadata={"data_dir": str(data_root)})
    tasks = get_task_dict(["calib_mmlu_anatomy", "calib_mmlu_anatomy_continuation"], manager)
    return tasks["calib_mmlu_anatomy"], tasks["calib_mmlu_anatomy_continuation"]


def _results(floored: list[bool]) -> list:
    return [FlooredLoglikelihood(-1.0 - i, i == 0, flag) for i, flag in enumerate(floored)]


@pytest.mark.parametrize("which", [0, 1], ids=["calib_mmlu_anatomy", "wrapped_continuation"])
def test_floored_options_are_counted_in_the_record_and_the_results(anatomy, which):
    task = anatomy[which]
    doc = task.test_docs()[0]
    values = task.process_results(doc, _results([False, False, True, True]))
    assert values[FLOORED_KEY] == 2
    assert values[RECORD_LOG_KEY]["floored"] == 2
    assert task.aggregation()[FLOORED_KEY]([2, 0, 1]) == 3.0
    assert task.higher_is_better()[FLOORED_KEY] is False
    plain = task.process_results(doc, [(-1.0, True), (-2.0, False), (-3.0, False), (-4.0, False)])
    assert FLOORED_KEY not in plain and "floored" not in plain[RECORD_LOG_KEY]


def test_floored_result_is_lm_evals_pair_and_survives_the_request_cache():
    import pickle

    result = FlooredLoglikelihood(-0.5, True, True)
    assert result == (-0.5, True) and result[0] == -0.5
    again = pickle.loads(pickle.dumps(result))
    assert again.floored is True and again == result
    assert floored_options([(-1.0, True)]) is None
    assert floored_options(_results([True, False])) == 1
