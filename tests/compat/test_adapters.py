"""The lm-eval version adapters: the line is read right, and what the chosen adapters rely on exists.

Runs on whichever lm-eval is installed (0.4.13 in the main environment, 0.5 in .ci/run_lm_eval_05's), so a
new lm-eval that drops an internal an adapter names fails here by name, before any task runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings

import pytest

from lm_eval_calib import lm_eval_patches
from lm_eval_calib.harness.compat import lm_eval_line, stderr_v05


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_line_is_the_installed_lm_eval_s():
    installed = importlib.metadata.version("lm_eval")
    assert installed.startswith(lm_eval_line())


def test_everything_the_chosen_task_adapter_relies_on_exists():
    from lm_eval_calib.harness.compat import tasks

    assert lm_eval_line() == tasks.LM_EVAL_LINE
    assert tasks.RELIES_ON
    for internal in tasks.RELIES_ON:
        _resolve(internal)  # raises, naming it, when this lm-eval lacks it


LINE_PATCHES = [patch for patch in lm_eval_patches.ALL_PATCHES if patch.line is not None]


@pytest.mark.parametrize("patch", LINE_PATCHES, ids=lambda patch: patch.name)
def test_a_patch_applies_on_its_line_only_and_is_skipped_without_a_warning_on_the_other(patch):
    lm_eval_patches.install_all()
    assert (patch in lm_eval_patches.PATCHES) == (patch.line == lm_eval_line())
    if patch.line == lm_eval_line():
        assert lm_eval_patches._decided[patch.name] is True
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert lm_eval_patches._apply(patch) is False
    assert patch.name not in lm_eval_patches._warned


def test_the_0_5_stderr_rule_answers_as_0_4_13_inside_our_tasks_only():
    """Inside our task: our bootstrap, lm-eval's for mean and 0.4.13's list, none for the rest; outside,
    lm-eval's own lookup for everything."""
    asked = []

    def original(metric, iters):
        asked.append(metric)
        return "lm-eval's"

    def mean(values):
        return sum(values) / len(values)

    def ours(values, n_resamples):
        return n_resamples

    def calibration(values):
        return 0.0

    def total(values):
        return float(sum(values))

    def median(values):
        return sorted(values)[len(values) // 2]

    calibration.calibration_stderr = ours

    def choose(metric, iters=1000):
        return stderr_v05.choose(metric, iters, original, mean, "calibration_stderr")

    assert choose(total) == "lm-eval's"  # outside our tasks
    with stderr_v05.our_task_aggregating():
        assert choose(calibration)([1, 2]) == 1000
        assert choose(calibration, 0) is None
        assert choose(mean) == "lm-eval's"
        assert choose(median) == "lm-eval's"
        assert choose(total) is None  # 0.4.13 has no stderr for it: "N/A", not a pool bootstrap
    assert not stderr_v05.inside_our_task()
    assert asked == [total, mean, median]


@pytest.mark.skipif(lm_eval_line() != "0.5", reason="lm-eval 0.5's task classes")
def test_on_0_5_our_class_is_composed_with_the_class_of_its_output_type():
    from lm_eval.api.task import Task

    from lm_eval_calib.harness.compat.tasks_v05 import concrete_class
    from lm_eval_calib.harness.token_task import TokenCalibrationTask

    for output_type in ("loglikelihood", "loglikelihood_rolling"):
        cls = concrete_class(TokenCalibrationTask, output_type)
        assert issubclass(cls, Task._registry[output_type]) and issubclass(cls, TokenCalibrationTask)
        assert cls.__mro__[1] is TokenCalibrationTask  # our methods first
        assert concrete_class(TokenCalibrationTask, output_type) is cls  # made once


def test_everything_the_chosen_pooled_task_adapter_relies_on_exists():
    from lm_eval_calib.harness.compat import pooled

    assert pooled.RELIES_ON
    for internal in pooled.RELIES_ON:
        _resolve(internal)  # raises, naming it, when this lm-eval lacks it


def test_calib_facts_gen_builds_with_its_own_acc_on_both_lines(data_root, monkeypatch):
    """Its YAML's ``metric: acc`` (values from its process_results) on a generate_until task: 0.5 registers
    ``acc`` for log-likelihood output types only and refused the task when it built its scorers."""
    from lm_eval.api.metrics import mean
    from lm_eval.tasks import TaskManager

    import lm_eval_calib  # noqa: F401  (registers our tasks)

    monkeypatch.setenv("LM_EVAL_CALIB_DATA", str(data_root))
    task = TaskManager().load(["calib_facts_gen"])["tasks"]["calib_facts_gen"]
    assert task.own_metric_names() == ["acc"]
    assert task.own_higher_is_better()["acc"] is True
    assert task.aggregation()["acc"] is mean
