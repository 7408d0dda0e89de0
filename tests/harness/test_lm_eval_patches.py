"""Every lm-eval patch in one place: applied on this lm-eval, and failing soft where an internal is missing.

The fail-soft tests take lm-eval internals away in a fresh interpreter (the real lm-eval 0.4.13, one
attribute deleted before our patches look), as a newer lm-eval would have them moved; see
bench/check_lm_eval_source.sh for the run on a real lm-eval source tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

from helpers import OFFLINE_ENV

from lm_eval_calib import lm_eval_patches
from lm_eval_calib.lm_eval_patches import PATCHES, install_all


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        timeout=600,
        cwd=tempfile.gettempdir(),
    )


def test_every_patch_relies_on_internals_this_lm_eval_has_and_is_applied():
    import lm_eval.api.metrics as metrics
    import lm_eval.evaluator as evaluator
    import lm_eval.evaluator_utils as evaluator_utils
    import lm_eval.models  # noqa: F401 - the hook registers our models when it loads
    from lm_eval.api.registry import model_registry
    from lm_eval.tasks.manager import TaskManager

    install_all()
    install_all()  # idempotent
    assert {patch.name for patch in PATCHES} == {
        "task folder",
        "calib_<task> wrappers",
        "models",
        "stderr",
        "tasks before the model",
        "check before inference",
        "--samples document ids",
        "one-line errors",
        "task YAML cache",
    }
    for patch in PATCHES:
        for internal in patch.relies_on:
            assert lm_eval_patches._exists(internal), internal
        assert lm_eval_patches.apply(patch) is True, patch.name
    flag = lm_eval_patches.PATCHED_FLAG
    for patched in (
        TaskManager._load_spec,
        evaluator_utils.stderr_for_metric,
        metrics.stderr_for_metric,
        evaluator.evaluate,
        evaluator.simple_evaluate,
        sys.modules["lm_eval.api.task"].Task.doc_iterator,
        sys.excepthook,
        sys.modules["lm_eval.tasks._index"].TaskIndex.build,
    ):
        assert getattr(patched, flag, False), patched
    # registration: ours, or lm-eval's own entry-point discovery (then the hook stepped aside)
    upstream = lm_eval_patches.upstream_discovers_our_tasks(sys.modules["lm_eval.tasks.manager"])
    assert getattr(TaskManager.__init__, flag, False) is not upstream
    if not upstream:
        assert "hf-calib" in model_registry and "vllm-calib" in model_registry


def test_missing_internals_give_one_warning_each_and_never_raise():
    """Each patch checks what it relies on before touching anything; a missing internal is one warning that
    names it and what the user loses. The stderr patch still patches the lookup that is there."""
    code = """
        import json, warnings
        import lm_eval.api.metrics as metrics
        import lm_eval.api.registry as registry
        import lm_eval.evaluator as evaluator
        import lm_eval.evaluator_utils as evaluator_utils
        import lm_eval.tasks.manager as manager
        import lm_eval.api.task as task
        from lm_eval_calib import lm_eval_patches

        del manager.TaskManager.match_tasks, registry.model_registry, evaluator.evaluate
        del evaluator.simple_evaluate
        del task.Task.doc_iterator
        import lm_eval.tasks._index as index
        del index.load_yaml
        # lm-eval 0.4.13's evaluator_utils keeps the name it imported, so lm-eval still works
        vars(metrics).pop("stderr_for_metric", None)
        applied = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for patch in lm_eval_patches.PATCHES:
                applied[patch.name] = lm_eval_patches.apply(patch)
            for patch in lm_eval_patches.PATCHES:
                lm_eval_patches.apply(patch)  # decided once: no second warning
            lm_eval_patches.install_all()
        print(json.dumps({
            "applied": applied,
            "warnings": [str(w.message) for w in caught],
            "stderr_patched": getattr(
                getattr(evaluator_utils, "stderr_for_metric", None), "_lm_eval_calib_patched", False
            ),
        }))
    """
    proc = _python(
        code, env={"LM_EVAL_CALIB_NO_HOOK": "1"}
    )  # so that nothing is applied before the deletions
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["applied"] == {
        "task folder": True,
        "calib_<task> wrappers": False,
        "models": False,
        "stderr": True,
        "tasks before the model": False,
        "check before inference": False,
        "--samples document ids": False,
        "one-line errors": True,  # relies on no lm-eval internal
        "task YAML cache": False,
    }
    warned = got["warnings"]
    assert len(warned) == 7, warned
    expected = [
        ("task YAML cache", "lm_eval.tasks._index.load_yaml", "parses all of lm-eval's task YAML files"),
        (
            "calib_<task> wrappers",
            "lm_eval.tasks.manager.TaskManager.match_tasks",
            "wrappers of lm-eval's tasks",
        ),
        ("models", "lm_eval.api.registry.model_registry", "`--model hf-calib`"),
        ("stderr", "lm_eval.api.metrics.stderr_for_metric", "*_stderr are N/A"),
        ("tasks before the model", "lm_eval.evaluator.simple_evaluate", "after the model has loaded"),
        ("check before inference", "lm_eval.evaluator.evaluate", "not checked against the model"),
        ("--samples document ids", "lm_eval.api.task.Task.doc_iterator", "under other documents' doc_id"),
    ]
    for message, (name, internal, loss) in zip(warned, expected, strict=True):
        assert message.startswith(f"lm-eval-calib: {name} patch: {internal} not found in lm-eval 0.4.13")
        assert loss in message, message
    assert got["stderr_patched"] is True


def test_without_the_stderr_lookup_a_real_run_still_runs_with_na_stderrs(tiny_model_dir, data_root):
    """The lookup lm-eval calls is not where the patch looks (as on an lm-eval that moved it): one warning,
    and the calibration task still runs through lm-eval on a real (tiny) model, its metrics computed and
    the calibration metrics' stderrs "N/A", as lm-eval reports a stderr it cannot compute."""
    code = f"""
        import json, warnings
        import lm_eval.api.metrics as metrics
        import lm_eval.evaluator_utils as evaluator_utils

        lookup = metrics.stderr_for_metric
        had = [m for m in (evaluator_utils, metrics) if vars(m).pop("stderr_for_metric", None)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from lm_eval_calib import lm_eval_patches
            lm_eval_patches.install_all()
        for module in had:  # lm-eval's own lookup, unpatched, where this lm-eval calls it
            module.stderr_for_metric = lookup

        import lm_eval
        from lm_eval.tasks import TaskManager
        out = lm_eval.simple_evaluate(
            model="hf", model_args="pretrained={tiny_model_dir},dtype=float32,device=cpu",
            tasks=["calib_mmlu_anatomy"], limit=2,
            task_manager=TaskManager(metadata={{"data_dir": {str(data_root)!r}}}),
        )
        result = out["results"]["calib_mmlu_anatomy"]
        print(json.dumps({{"warnings": [str(w.message) for w in caught if "lm-eval-calib" in str(w.message)],
                          "result": {{k: v for k, v in result.items() if k.split(",")[0] in
                                      ("acc", "ece", "brier", "acc_stderr", "ece_stderr",
                                       "brier_stderr")}}}}))
    """
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    (warned,) = got["warnings"]
    assert (
        "stderr patch: lm_eval.evaluator_utils.stderr_for_metric, lm_eval.api.metrics.stderr_for_metric"
        in warned
    )
    assert "calibration metrics' *_stderr are N/A" in warned
    result = got["result"]
    for metric in ("acc", "ece", "brier"):
        assert isinstance(result[f"{metric},none"], float), result
    assert isinstance(result["acc_stderr,none"], float)  # acc aggregates by lm-eval's mean: lm-eval's stderr
    assert result["ece_stderr,none"] == result["brier_stderr,none"] == "N/A", result


def test_a_changed_simple_evaluate_gives_one_warning_and_runs_unpatched():
    """``simple_evaluate`` without a parameter the early build sets (as a newer lm-eval might have it): one
    warning, and lm-eval's function stays in place."""
    code = """
        import json, warnings
        import lm_eval.evaluator as evaluator
        from lm_eval_calib import lm_eval_patches

        def simple_evaluate(model, tasks=None):
            return "lm-eval's"

        evaluator.simple_evaluate = simple_evaluate
        (patch,) = [p for p in lm_eval_patches.PATCHES if p.name == "tasks before the model"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            applied = lm_eval_patches.apply(patch)
        print(json.dumps({"applied": applied, "warnings": [str(w.message) for w in caught],
                          "kept": evaluator.simple_evaluate is simple_evaluate}))
    """
    proc = _python(code, env={"LM_EVAL_CALIB_NO_HOOK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["applied"] is False and got["kept"] is True
    (warned,) = got["warnings"]
    assert warned.startswith("lm-eval-calib: tasks before the model patch: could not be applied"), warned
    assert "simple_evaluate has no parameter model_args, samples, limit, task_manager, metadata" in warned


def test_runs_that_name_none_of_our_tasks_are_not_built_early():
    assert lm_eval_patches.names_our_tasks(["calib_mmlu_anatomy"])
    assert lm_eval_patches.names_our_tasks("calib_mmlu_anatomy")
    assert lm_eval_patches.names_our_tasks(["hellaswag", "calib_arc_easy"])
    assert not lm_eval_patches.names_our_tasks(["hellaswag", "mmlu"])
    assert not lm_eval_patches.names_our_tasks(None)
