"""Check a parsed study against this machine before its first cell runs (``--dry-run`` included).

:func:`lm_eval_calib.study.config.parse_study` checks the file on its own (keys, names, stage arguments
against the train stages' schemas, claims). What needs the environment is checked here: that lm_eval knows
every task and backend, that every local file and folder the cells read exists. Otherwise a typo in the last
task or a missing training file would surface after an hour of training. Every problem is listed at once.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_calib.data.root import DATA_ENV
from lm_eval_calib.study.config import EvalSettings, StudyConfig, StudyConfigError, TrainSpec
from lm_eval_calib.study.plan import (
    data_root,
    is_local_data,
    is_local_model,
    local_path,
    path_is,
    task_data_folder,
)


@functools.lru_cache(maxsize=1)
def _task_manager():
    """lm_eval's TaskManager as the ``lm_eval`` CLI builds it (our start-up hook adds this package's tasks,
    and any ``calib_<task>`` resolution it patches in); built once per process, it indexes every task."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def task_is_known(name: str) -> bool:
    """Whether ``lm_eval --tasks NAME`` would find the task: the same question its CLI asks (``match_tasks``),
    or, for a ``.yaml`` path, whether the file exists. Asking lm_eval, not a list of ours, keeps this right
    for lm_eval's own tasks and for any task name a later patch of the TaskManager makes resolvable."""
    if name.endswith(".yaml"):
        return path_is(Path(name), "is_file")
    return bool(_task_manager().match_tasks([name]))


def known_backends() -> list[str]:
    """Model names in lm_eval's registry (``--model``), ours (``hf-calib``, ``vllm-calib``) included."""
    import lm_eval.models  # noqa: F401 - fills the registry; our start-up hook registers our models here
    from lm_eval.api.registry import model_registry

    return sorted(model_registry.keys())


def _unknown_backend(name: str, where: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{where} {name!r} is not a model lm_eval knows; {hint}known: {', '.join(known)}"


def _hook_hint(problems: list[str]) -> str:
    """Our own names missing at once usually means the start-up hook is off or the install is broken."""
    if any("'calib_" in p or "-calib'" in p for p in problems):
        return (
            "\n(if this package's own tasks or models are among them: reinstall it, check that "
            "LM_EVAL_CALIB_NO_HOOK is unset, or see `lm-eval-calib tasks-dir`)"
        )
    return ""


def study_problems(config: StudyConfig) -> list[str]:
    """Every problem this machine can see in ``config`` before anything runs (empty when none)."""
    problems: list[str] = []
    known = known_backends()
    if config.eval.backend not in known:
        problems.append(_unknown_backend(config.eval.backend, "eval.backend", known))
    for task, settings in config.tasks.items():
        if settings.backend not in known and settings.backend != config.eval.backend:
            problems.append(_unknown_backend(settings.backend, f"tasks.{task}.backend", known))
    for task in config.tasks:
        try:
            known = task_is_known(task)
        except Exception as exc:  # noqa: BLE001 - the CLI would stop on it too (a wrapper's refusal, ...)
            problems.append(f"tasks.{task}: lm_eval refuses it: {exc}")
            continue
        if not known:
            close = difflib.get_close_matches(task, _task_manager().all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
            problems.append(f"tasks.{task}: lm_eval has no task {task!r}{hint}")
    for task, settings in config.tasks.items():
        if settings.launcher and shutil.which(settings.launcher[0]) is None:
            problems.append(
                f"tasks.{task}.launcher: {settings.launcher[0]!r} is not on PATH; install it (torchrun comes "
                "with torch, accelerate with `pip install accelerate`) or give its full path"
            )
    for task, settings in config.tasks.items():
        root = data_root(settings)
        if root is None:
            continue
        source = "its metadata data_dir" if settings.metadata.get("data_dir") else f"${DATA_ENV}"
        if not path_is(root, "is_dir"):
            problems.append(f"tasks.{task}: data root {str(root)!r} (from {source}) is not a folder")
            continue
        folder = task_data_folder(task)
        if folder and not path_is(root / folder, "is_dir"):
            problems.append(
                f"tasks.{task}: data root {str(root)!r} (from {source}) has no {folder}/ folder, which "
                f"{task} reads; point it at a root laid out like ../shared/data"
            )
    for spec in config.models.values():
        if is_local_model(spec) and not path_is(local_path(str(spec.pretrained)), "is_dir"):
            problems.append(
                f"models.{spec.name}.pretrained: folder {spec.pretrained} does not exist (a hub id is "
                "written org/name: one '/', no leading / . or ~)"
            )
    for spec in config.train.values():
        if is_local_data(spec.data) and not path_is(local_path(spec.data)):
            problems.append(
                f"train.{spec.name}.data: {spec.data} does not exist; give a .json, .jsonl or .jsonl.gz file "
                "(or a folder holding one)"
            )
    for task, settings in config.tasks.items():
        problems += task_option_problems(task, settings, f"tasks.{task}")
    problems += _model_arg_problems(config)
    for spec in config.train.values():
        problems += _lora_problems(config, spec)
    return problems


# --- what the cells themselves would refuse, asked of the code they run ------------------------------------


def _family(task: str) -> str | None:
    """The folder of this package's ``tasks/`` that defines ``task`` (``facts``, ``mmlu``, ...), or None."""
    from lm_eval_calib.task_folder import task_dir

    try:
        tasks = task_dir()
    except FileNotFoundError:
        return None
    for folder in sorted(p for p in tasks.iterdir() if p.is_dir()):
        if (folder / f"{task}.yaml").is_file():
            return folder.name
    return None


@functools.cache
def _task_helpers(family: str) -> Any:
    """The ``utils.py`` a task family's YAMLs name with ``!function``, loaded from its file like lm_eval
    loads it."""
    from lm_eval_calib.task_folder import task_dir

    path = task_dir() / family / "utils.py"
    spec = importlib.util.spec_from_file_location(f"_lm_eval_calib_study_{family}_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _facts_problems(task: str, family: str, facts: Any, where: str) -> list[str]:
    """``metadata: {facts: {...}}`` checked by the validators ``load_lama`` runs before it reads a file,
    with the option names the task's own loader accepts (``_FACTS_OPTIONS`` of its ``utils.py``)."""
    from lm_eval_calib.data import lama

    if facts is None:
        return []
    if not isinstance(facts, Mapping):
        return [
            f"{where}: facts must be a mapping such as {{n_distractors: 20, relations: [P19]}}, got {facts!r}"
        ]
    known = tuple(_task_helpers(family)._FACTS_OPTIONS)
    unknown = sorted(set(facts) - set(known), key=str)
    if unknown:
        return [
            f"{where}: unknown facts option(s) {', '.join(map(repr, unknown))} for {task}; "
            f"known: {', '.join(known)}"
        ]
    checks = {
        "relations": lama._check_relations,
        # the multiple-choice tasks need two options per fact; calib_facts_open scores no options
        "n_distractors": lambda n: lama._check_n_distractors(n, 1 if task == "calib_facts_open" else 2),
        "seed": getattr(lama, "_check_seed", lambda seed: seed),
    }
    problems = []
    for name, value in facts.items():
        try:
            checks.get(name, lambda value: value)(value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: facts {name}: {exc}")
    return problems


def task_option_problems(task: str, settings: EvalSettings, where: str) -> list[str]:
    """The task options of ``metadata:`` as the task would check them when lm_eval builds it (after the
    model has loaded, and after every training stage before it): ``calibration`` by
    :meth:`CalibrationOptions.from_metadata` for a calibration task, ``facts`` for the LAMA tasks."""
    from lm_eval_calib.options import CalibrationOptions

    where = f"{where}.metadata"
    problems = []
    data_dir = settings.metadata.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        problems.append(f"{where}.data_dir must be a folder name (text), got {data_dir!r}")
    if task.startswith("calib_"):
        try:
            CalibrationOptions.from_metadata(settings.metadata)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    family = _family(task)
    if family in ("facts", "facts_gen"):
        problems += _facts_problems(task, family, settings.metadata.get("facts"), where)
    return problems


def _cell_model_args(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """``--model_args`` of every evaluation, as :func:`eval_command` merges them: where -> arguments."""
    merged = {}
    for name in config.evaluated():
        model = config.models.get(name)
        for task in config.tasks_of(name):
            settings = config.tasks[task]
            args = {**(model.model_args if model else {}), **settings.model_args}
            merged[f"evaluation of {name} on {task}"] = {"args": args, "settings": settings}
    return merged


def _model_arg_problems(config: StudyConfig) -> list[str]:
    """``dtype``, ``device`` and the ``key=value`` string, checked by the code lm_eval runs on them when
    the model loads: ``get_dtype`` (``getattr(torch, dtype)``), ``torch.device`` and
    ``simple_parse_args_string``."""
    from lm_eval.utils import simple_parse_args_string

    problems: list[str] = []
    seen: set[str] = set()

    def add(problem: str) -> None:
        if problem not in seen:
            seen.add(problem)
            problems.append(problem)

    for where, cell in _cell_model_args(config).items():
        args, settings = cell["args"], cell["settings"]
        text = ",".join(f"{key}={value}" for key, value in args.items())
        if set(simple_parse_args_string(text)) != {str(key) for key in args}:
            add(
                f"{where}: model_args {text!r} do not survive lm_eval's key=value,... parsing; a key or "
                "value holds ',' or '=', or a key is empty"
            )
        dtype = args.get("dtype")
        if dtype is not None and not _is_dtype(dtype):
            add(
                f"model_args dtype {dtype!r} is not a torch dtype (lm_eval reads getattr(torch, dtype)); "
                "use float32, bfloat16, float16 or auto"
            )
        if settings.device:
            try:
                import torch

                torch.device(settings.device)
            except (RuntimeError, ValueError) as exc:
                add(f"device {settings.device!r} is not a torch device ({exc}); e.g. cpu, cuda, cuda:0, mps")
    return problems


def _is_dtype(dtype: Any) -> bool:
    import torch
    from lm_eval.models.utils_hf import get_dtype

    if not isinstance(dtype, str):
        return False
    try:
        return dtype == "auto" or isinstance(get_dtype(dtype), torch.dtype)
    except AttributeError:
        return False


def _root_model(config: StudyConfig, spec: TrainSpec) -> str | None:
    """The model an SFT stage's weights descend from (through earlier stages), or None."""
    name = spec.source
    while name in config.train:
        name = config.train[name].source or config.train[name].policy
    return name if name in config.models else None


def _lora_problems(config: StudyConfig, spec: TrainSpec) -> list[str]:
    """``lora_target_modules`` checked by the train CLI's own ``check_lora_targets`` on the model's
    architecture, built on the meta device (no weights read). Skipped when the architecture cannot be read
    here (a hub id offline): the stage then checks it itself before training."""
    targets = spec.args.get("lora_target_modules")
    if spec.kind != "sft" or spec.method != "lora" or not targets or targets == ["all-linear"]:
        return []
    root = _root_model(config, spec)
    if root is None:
        return []
    model = config.models[root]
    try:
        from lm_eval_calib_train.models import check_lora_targets, resolve_model

        ref = resolve_model(model.bundled or str(model.pretrained))
        skeleton = _skeleton(ref.source, ref.gguf_file)
    except Exception:  # noqa: BLE001 - no architecture to check against here; the stage checks it
        return []
    from lm_eval_calib_train.config import TrainInputError

    try:
        check_lora_targets(skeleton, list(targets), root)
    except TrainInputError as exc:
        return [f"train.{spec.name}.args.lora_target_modules: {exc}"]
    return []


@functools.lru_cache(maxsize=4)
def _skeleton(source: str, gguf_file: str | None) -> Any:
    """The causal LM of ``source`` with its layers but no weights (meta device): enough to name modules."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model_config = AutoConfig.from_pretrained(source, **kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def check_study(config: StudyConfig) -> None:
    """Raise :class:`StudyConfigError` listing every problem :func:`study_problems` finds."""
    problems = study_problems(config)
    if not problems:
        return
    count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    listing = "\n".join(f"- {problem}" for problem in problems)
    raise StudyConfigError(
        f"{config.source}: {count} found before anything ran:\n{listing}{_hook_hint(problems)}"
    )
