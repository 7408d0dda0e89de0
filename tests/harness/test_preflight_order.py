"""Every check before the model loads: a run that names our tasks builds them first, then the model.

lm-eval 0.4.13's ``simple_evaluate`` creates the model (15-60 s for a real one) before it builds the tasks,
so a bad option, missing data or an out-of-range ``--samples`` index was reported only after the model had
loaded. Here the model is a name registered for the test whose ``__init__`` records that it ran: each bad
input must stop the run with its own error before that ``__init__`` is reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import LM_EVAL, OFFLINE_ENV, REPO

TASK = "calib_mmlu_anatomy"
PROBE = "lm-eval-calib-preflight-probe"


@pytest.fixture(scope="module")
def probe() -> list[str]:
    """A model registered as ``PROBE`` for these tests; the list records each ``__init__`` call."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model

    created: list[str] = []

    class ProbeLM(LM):
        def __init__(self, **kwargs) -> None:
            created.append(json.dumps(kwargs, default=str))
            super().__init__()

        def loglikelihood(self, requests):
            return [(-1.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests):
            return [-1.0 for _ in requests]

        def generate_until(self, requests):
            return ["" for _ in requests]

    if PROBE not in model_registry:
        register_model(PROBE)(ProbeLM)
    else:  # a second module-scope setup in the same session: point the name at this one's class
        model_registry._objs[PROBE] = ProbeLM
    return created


def _run(probe: list[str], metadata: dict, **kwargs):
    """simple_evaluate of the probe model, with a TaskManager that indexes only our task folder (seconds,
    where lm-eval's whole index takes ten)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    probe.clear()
    manager = TaskManager(include_defaults=False, metadata=metadata)
    return lm_eval.simple_evaluate(
        model=PROBE, model_args=kwargs.pop("model_args", ""), task_manager=manager, **kwargs
    )


def test_a_bad_option_stops_the_run_before_the_model_is_created(probe, data_root):
    """With no TaskManager given: the one simple_evaluate would make (``metadata`` over the model_args)."""
    import lm_eval

    probe.clear()
    metadata = {"data_dir": str(data_root), "calibration": {"n_bins": 0}}
    with pytest.raises(ValueError, match="calibration option 'n_bins' must be a positive integer"):
        lm_eval.simple_evaluate(model=PROBE, model_args="", tasks=[TASK], metadata=metadata)
    assert probe == [], "the model was created before the tasks were checked"


def test_missing_data_stops_the_run_before_the_model_is_created(probe, tmp_path):
    from lm_eval_calib.data.root import DataNotFoundError

    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        _run(probe, {"data_dir": str(tmp_path)}, tasks=[TASK])
    assert probe == []


def test_samples_out_of_range_stop_the_run_before_the_model_is_created(probe, data_root):
    with pytest.raises(
        ValueError, match=rf"--samples for {TASK}: 100000 is out of range: the task has \d+ doc"
    ):
        _run(probe, {"data_dir": str(data_root)}, tasks=[TASK], samples={TASK: [0, 100000]})
    assert probe == []


def test_a_good_run_builds_its_tasks_once_and_then_the_model(probe, data_root, monkeypatch):
    """The tasks built before the model are the ones the run evaluates: built once, not twice."""
    from lm_eval.tasks.manager import TaskManager

    loads: list[object] = []
    load = TaskManager.load
    monkeypatch.setattr(TaskManager, "load", lambda self, tasks: loads.append(tasks) or load(self, tasks))
    out = _run(probe, {"data_dir": str(data_root)}, tasks=[TASK], samples={TASK: [3, 1]})
    assert len(probe) == 1 and len(loads) == 1, (probe, loads)
    assert [row["doc_id"] for row in out["samples"][TASK]] == [3, 1]
    assert isinstance(out["results"][TASK]["ece,none"], float)


def test_a_missing_model_folder_is_named_before_the_model_is_created(probe, data_root, tmp_path):
    from lm_eval_calib.harness.preflight import NoSuchModelFolderError

    given = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(NoSuchModelFolderError, match="no such folder") as info:
        _run(probe, {"data_dir": str(data_root)}, tasks=[TASK], model_args=f"pretrained={given}")
    assert f"pretrained={given}: no such folder" in str(info.value)
    assert probe == []


def test_a_model_folder_that_exists_is_not_refused(tmp_path):
    from lm_eval_calib.harness.preflight import check_model_folder

    check_model_folder({"pretrained": str(tmp_path)})
    check_model_folder({"pretrained": "HuggingFaceTB/SmolLM2-135M-Instruct"})  # a repo id: the hub's to say
    check_model_folder({})


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("/abs/path", True),
        ("./rel", True),
        ("../up/model", True),
        ("~/models/x", True),
        ("a/b/c", True),  # two slashes: never a repo id
        ("HuggingFaceTB/SmolLM2-135M-Instruct", False),  # a Hugging Face repo id
        ("gpt2", False),
    ],
)
def test_only_a_path_that_is_no_repo_id_is_checked_as_a_folder(value, local):
    from lm_eval_calib.paths import looks_like_local_path

    assert looks_like_local_path(value) is local


def test_lm_evals_cli_stops_on_a_bad_option_without_loading_the_model(data_root, tmp_path):
    """As a user runs it: one line naming the option, and no "Initializing hf model" before it (lm-eval
    0.4.13 logs that line before it creates the model; the folder exists, so it got that far)."""
    args = ["--model", "hf", "--model_args", f"pretrained={tmp_path},dtype=float32", "--tasks", TASK]
    args += ["--metadata", json.dumps({"data_dir": str(data_root), "calibration": {"n_bins": 0}})]
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("LMEVAL_LOG_LEVEL", None)
    start = time.monotonic()
    proc = subprocess.run(
        [str(LM_EVAL), *args, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO.parent,
    )
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Initializing hf model" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("lm-eval-calib: error: calibration option 'n_bins'"), last
    print(f"lm_eval stopped on the bad option in {took:.1f} s")


def test_lm_evals_cli_names_a_missing_model_folder(data_root, tmp_path):
    missing = Path(tmp_path) / "no-such-model"
    args = ["--model", "hf", "--model_args", f"pretrained={missing}", "--tasks", TASK]
    args += ["--metadata", json.dumps({"data_dir": str(data_root)}), "--device", "cpu"]
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("LMEVAL_LOG_LEVEL", None)
    proc = subprocess.run(
        [str(LM_EVAL), *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO.parent
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"lm-eval-calib: error: --model_args pretrained={missing}: no such folder"), last
    assert "Repo id must be in the form" not in proc.stderr
