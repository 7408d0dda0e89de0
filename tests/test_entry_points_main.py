"""Our entry points under lm-eval's own plugin discovery (upstream PR #4013: ``lm_eval.models`` entry points
registered by ``lm_eval.api.registry.load_plugins``; PR #4015: ``lm_eval.tasks`` entry points), whichever of
the two the installed lm-eval has: each kind is registered once, by lm-eval where it discovers it, by our
start-up hook where it does not, and nothing warns about a second registration.

On lm-eval 0.4.13 (no discovery) the state lm-eval's loader leaves is reproduced with its own steps (each
installed ``lm_eval.models`` entry point registered as an ``EntryPoint`` placeholder, names already taken
skipped); bench/check_lm_eval_source.sh runs these tests on upstream branches that have the real loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import OFFLINE_ENV

from lm_eval_calib.lm_eval_patches import MODELS


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
        timeout=300,
        cwd=cwd,  # not the checkout: the installed package, as a user imports it
    )


_COLLECT = textwrap.dedent(
    """
    import json, logging, warnings
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    logging.getLogger().addHandler(Keep())
    logging.getLogger().setLevel(logging.DEBUG)
    warnings.simplefilter("always")
    caught = warnings.catch_warnings(record=True)
    warned = caught.__enter__()

    def complaints():
        said = records + [str(w.message) for w in warned]
        return [m for m in said if "already registered" in m or "overrides existing task" in m
                or "not registered in lm-eval" in m or "lm-eval-calib:" in m]
    """
)


def test_models_registered_by_upstreams_entry_point_loader_resolve_without_a_second_registration(
    tmp_path: Path,
):
    """lm-eval's loader registered our `lm_eval.models` entry points first (PR #4013 does so when
    `lm_eval.models` loads, before our hook runs): the hook adds nothing, `hf-calib` resolves to our class
    through that entry (importing our module, whose `register_model` upgrades the placeholder), and nothing
    warns. Where lm-eval has `load_plugins`, its own loader runs; else its steps, reproduced."""
    code = _COLLECT + textwrap.dedent(
        """
        from importlib.metadata import EntryPoint, entry_points
        import lm_eval.api.registry as registry
        if hasattr(registry, "load_plugins"):
            import lm_eval.models  # upstream's _register_all_models calls load_plugins; then our hook
        else:  # lm-eval 0.4.13: load_plugins' steps, before lm_eval.models executes (and our hook with it)
            for ep in entry_points(group="lm_eval.models"):
                if ep.name not in registry.model_registry:
                    registry.model_registry.register(ep.name, target=ep)
            import lm_eval.models
        placed = {name: type(dict(registry.model_registry.items())[name]).__name__ for name in NAMES}
        resolved = {name: f"{cls.__module__}:{cls.__name__}" for name in NAMES
                    if (cls := registry.get_model(name)) is not None}
        print(json.dumps({"placed": placed, "resolved": resolved, "complaints": complaints()}))
        """
    ).replace("NAMES", repr(sorted(MODELS)))
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["placed"] == dict.fromkeys(sorted(MODELS), "EntryPoint")  # the hook registered nothing again
    assert got["resolved"] == MODELS
    assert got["complaints"] == []


def test_each_kind_is_registered_once_by_whoever_discovers_it(tmp_path: Path):
    """Whatever the installed lm-eval discovers (nothing: 0.4.13 and main; models only: PR #4013; both:
    #4013 with #4015), our tasks are indexed once and our models registered once: by lm-eval where it
    discovers that kind, by the hook where it does not; no override or duplicate-registration message."""
    code = _COLLECT + textwrap.dedent(
        """
        import lm_eval.tasks.manager as manager, lm_eval.api.registry as registry
        from lm_eval.tasks import TaskManager
        from lm_eval_calib import lm_eval_patches as patches
        from lm_eval_calib.task_folder import task_dir
        tm = TaskManager()
        include = tm.include_path if isinstance(tm.include_path, list) else [tm.include_path]
        cls = registry.get_model("hf-calib")
        print(json.dumps({
            "upstream_tasks": patches.upstream_discovers_our_tasks(manager),
            "upstream_models": patches.upstream_discovers_our_models(),
            "hook_added_folder": str(task_dir()) in [str(p) for p in include if p],
            "has_task": "calib_mmlu_anatomy" in tm.all_tasks,
            "hf_calib": f"{cls.__module__}:{cls.__name__}",
            "complaints": complaints(),
        }))
        """
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["has_task"] and got["hf_calib"] == MODELS["hf-calib"]
    assert got["hook_added_folder"] is not got["upstream_tasks"]  # one of the two indexes our folder
    assert got["complaints"] == []


def test_our_model_module_imported_first_as_plugins_does(tmp_path: Path):
    """`lm_eval --plugins lm_eval_calib.models.hf_calib` / `LM_EVAL_PLUGINS=...` (PR #4013) import our model
    module before lm-eval's models load: `hf-calib` is then the class itself, lm-eval's own models and our
    other names still resolve, and nothing is registered twice or warns. Where lm-eval has
    `import_plugins`, it imports the module; else a plain import does what it does."""
    code = _COLLECT + textwrap.dedent(
        """
        import importlib
        import lm_eval.api.registry as registry
        plugins = ["lm_eval_calib.models.hf_calib"]
        if hasattr(registry, "import_plugins"):
            registry.import_plugins(plugins)
        else:
            for name in plugins:
                importlib.import_module(name)
        resolved = {name: f"{cls.__module__}:{cls.__name__}" for name in NAMES
                    if (cls := registry.get_model(name)) is not None}
        print(json.dumps({"resolved": resolved, "hf": registry.get_model("hf").__name__,
                          "complaints": complaints()}))
        """
    ).replace("NAMES", repr(sorted(MODELS)))
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["resolved"] == MODELS and got["hf"] == "HFLM"
    assert got["complaints"] == []
