"""Turn a study into cells (train a stage, or evaluate one model on one task), each with its command, its
output folder and whether it is already done.

A cell is done when its folder exists and holds ``study_cell.json`` with the cell's fingerprint: a hash of
everything that decides its result (settings, data, and the fingerprints of the stages it starts from). Change
a stage's steps and that stage and everything downstream is "stale" and runs again; nothing else does. An
evaluation whose folder is absent but whose compact copy in the study's ``archive:`` has the same fingerprint
is "archived": the runner restores it instead of running it (:mod:`lm_eval_calib.study.archive`). A training
stage only exists to be evaluated or trained on: when every cell that needs it is done or archived, it is done
too ("not needed"), so a study taken back from its archive on a new machine does not retrain it.
Folders appear only complete (the runner builds them under a temporary name and renames), so a killed study
resumes by re-running just the cells it had not finished.

The data enter by content, not by path (:func:`content_digest`): an evaluation's share of the data root (the
folder its task reads, or the whole root for a task this package does not ship), a stage's training file, a
local model folder. Same bytes give the same result wherever they lie, so a data root moved or copied reuses
finished cells; any changed, added or removed file reruns exactly the cells that read it. Hub data (no data
root, or a hub dataset name) enter by name: they cannot be hashed without downloading them.

A training stage killed mid-run leaves resumable checkpoints; the runner records what that run was
(``checkpoints/.<stage>.study_run.json``: its fingerprint and inputs) before starting it. The next study
resumes it only when the stage's fingerprint is still the same; otherwise the stage starts over (its settings,
data or parents changed, so the interrupted run's steps are not this stage's), and the dry run says why. An
interrupted run the study has no record of (left by an older version) starts over too: its inputs are unknown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from lm_eval_calib.data.root import chosen_data_root  # the cells' lm_eval inherits the same environment
from lm_eval_calib.paths import looks_like_local_path
from lm_eval_calib.study.config import EvalSettings, ModelSpec, StudyConfig, StudyConfigError, TrainSpec

CELL_FILE = "study_cell.json"
RUN_FILE_SUFFIX = ".study_run.json"
"""``checkpoints/.<stage>.study_run.json``: the training run a study started and has not finished."""


@dataclass
class Cell:
    name: str
    kind: str  # "train" or "eval"
    folder: Path
    command: list[str]
    fingerprint: str
    model: str  # the model or stage evaluated / trained
    task: str | None = None
    needs: list[str] = field(default_factory=list)  # cells that must finish first
    status: str = "missing"  # done | archived | missing | stale | blocked
    reason: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # local data / folder it reads -> content digest
    restart: bool = False  # a training run was interrupted with another fingerprint: start over, not resume


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


HASH_CACHE = ".study_hashes.json"
# Task-family folder in this package's tasks/ -> the folder of the data root its tasks read.
TASK_DATA_FOLDERS = {"mmlu": "mmlu", "facts": "lama_trex", "facts_gen": "lama_trex", "clm": "wikitext2"}
DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz")


class FileHashes:
    """SHA-256 of files, remembered in ``OUTPUT/.study_hashes.json`` so that an unchanged file is read once.

    A remembered hash is reused only while the file's size, modification time (ns), status-change time (ns)
    and inode are all unchanged. Any write to a file updates its status-change time, which (unlike the
    modification time) cannot be set back by a user or a copying tool, so a file rewritten with other bytes
    of the same length and its old mtime is still hashed again. A copy is a new inode: hashed again, same
    digest. The worst a stale cache entry can do is cost a re-hash, never a wrong "done".
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.known: dict[str, list] = {}
        if path is not None and path.is_file():
            try:
                self.known = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                self.known = {}
        self.changed = False

    def file(self, path: Path) -> str:
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        name = str(path.resolve())
        entry = self.known.get(name)
        if entry is not None and entry[:4] == key:
            return entry[4]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        self.known[name] = [*key, digest.hexdigest()]
        self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        """Write the remembered hashes when the output folder exists (a dry run creates nothing)."""
        if self.path is None or not self.changed or not self.path.parent.is_dir():
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.known))
        tmp.replace(self.path)


def path_is(path: Path, test: str = "exists") -> bool:
    """``path.exists()`` (or ``is_file``, ``is_dir``), False for a name the system refuses: a NUL byte
    (ValueError) or a name too long (OSError) made a dry run end in a traceback."""
    try:
        return bool(getattr(path, test)())
    except (OSError, ValueError):
        return False


def local_path(spec: str) -> Path:
    """``spec`` with ``~`` expanded as the train CLI does; ``~nosuchuser/x`` stays as written."""
    try:
        return Path(spec).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        return Path(spec)


def content_digest(path: Path, hashes: FileHashes) -> str:
    """A digest of the bytes under ``path`` (a file, or every file below a folder with its relative path);
    ``missing`` when there is nothing (the study's checks report that before anything runs)."""
    if path_is(path, "is_file"):
        return hashes.file(path)[:16]
    if not path_is(path, "is_dir"):
        return "missing"
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{hashes.file(item)}\n".encode())
    return digest.hexdigest()[:16]


def is_local_data(spec: str) -> bool:
    """Whether the train CLI reads ``spec`` as a local file or folder (else: a hub dataset name); the same
    rule as ``lm_eval_calib_train.data``."""
    return (
        path_is(local_path(spec)) or spec.startswith(("/", "./", "../", "~")) or spec.endswith(DATA_SUFFIXES)
    )


def is_local_model(spec: ModelSpec) -> bool:
    """A ``pretrained:`` that names a folder (it exists, or can only be a path: the rule of lm_eval's
    preflight and the train CLI, :func:`lm_eval_calib.paths.looks_like_local_path`) rather than a hub id."""
    if not spec.pretrained:
        return False
    return path_is(local_path(spec.pretrained)) or looks_like_local_path(spec.pretrained)


def data_root(settings: EvalSettings) -> Path | None:
    """The data root an evaluation reads (``metadata: {data_dir: ...}``, else ``$LM_EVAL_CALIB_DATA``), or
    None for the hub copy; resolved as lm_eval_calib.data.root does, in the same working directory."""
    raw, _ = chosen_data_root(settings.metadata.get("data_dir"))
    return None if raw is None else local_path(str(raw))


def task_data_folder(task: str) -> str | None:
    """The folder of the data root that one of this package's tasks reads (``mmlu`` for ``calib_mmlu`` and
    every ``calib_mmlu_<subject>``), or None for any other task (a ``calib_<task>`` wrapper may read
    ``ROOT/hub/...`` or more: the whole root counts, which is safe and at worst reruns a cell)."""
    from lm_eval_calib.task_folder import task_dir

    try:
        tasks = task_dir()
    except FileNotFoundError:
        return None
    for family, folder in TASK_DATA_FOLDERS.items():
        if (tasks / family / f"{task}.yaml").is_file():
            return folder
    return None


def eval_data(task: str, settings: EvalSettings) -> Path | None:
    """The local data an evaluation of ``task`` reads, or None when it reads the hub copy."""
    root = data_root(settings)
    if root is None:
        return None
    folder = task_data_folder(task)
    return root / folder if folder else root


def _args_string(args: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in args.items())


def _cli(*args: str) -> list[str]:
    """Our own CLI, run with this interpreter (so a study runs in the environment it was started from)."""
    return [sys.executable, "-m", "lm_eval_calib.cli", *args]


def model_source(spec: ModelSpec) -> dict[str, str]:
    """``--model_args`` entries naming the weights of a model that exists already."""
    if spec.bundled:
        from lm_eval_calib.bundled_models import get_bundled_model

        bundled = get_bundled_model(spec.bundled)  # KeyError names the known ones
        return {"pretrained": str(bundled.folder()), "gguf_file": bundled.gguf_file}
    return {"pretrained": str(spec.pretrained)}


def checkpoint_folder(config: StudyConfig, stage: str) -> Path:
    return config.output / "checkpoints" / stage


def archive_folder(config: StudyConfig, model: str, task: str) -> Path | None:
    """Where the study's archive keeps the compact copy of an evaluation (``None``: the study has none)."""
    return None if config.archive is None else config.archive / model / task


def eval_folder(config: StudyConfig, model: str, task: str) -> Path:
    return config.output / "evals" / model / task


def train_command(config: StudyConfig, spec: TrainSpec) -> list[str]:
    """``lm-eval-calib train <kind> ...`` for one stage; parents are models or earlier stages' folders."""

    def weights(name: str) -> str:
        if name in config.train:
            return str(checkpoint_folder(config, name))
        model = config.models[name]
        if model.model_args:
            raise KeyError(
                f"train.{spec.name}: model {name!r} has model_args, which training cannot take; give a "
                "folder or hub id that holds exactly those weights"
            )
        return model.bundled or str(model.pretrained)  # the train CLI resolves bundled names itself

    if spec.launcher:
        _check_launcher(spec)
        command = [*spec.launcher, "-m", "lm_eval_calib.cli", "train", spec.kind]
    else:
        command = _cli("train", spec.kind)
    if spec.kind in ("rloo", "ppo"):
        command += ["--policy", weights(spec.policy), "--reward-model", weights(spec.reward_model)]
    else:
        command += ["--model", weights(spec.source)]
    if spec.method:
        command += ["--method", spec.method]
    command += ["--data", spec.data, "--max-steps", str(spec.max_steps)]
    for key, value in spec.args.items():
        command += [f"--{key.replace('_', '-')}", _flag_value(value)]
    return command + ["--output", str(checkpoint_folder(config, spec.name))]


def _check_launcher(spec: TrainSpec) -> None:
    """A stage's own interpreter must exist here; else its cell is blocked (the rest of the study runs) with
    the command that builds the environment."""
    program = spec.launcher[0]
    if shutil.which(program) is None and not path_is(local_path(program), "is_file"):
        extra = "train-ppo" if spec.kind == "ppo" else "train"
        raise FileNotFoundError(
            f"train.{spec.name}.launcher: {program} does not exist; build the stage's environment "
            f"(`python -m venv {Path(program).parent.parent} && {Path(program).parent}/pip install "
            f"'.[{extra}]'`), then rerun the study"
        )


def train_payload(spec: TrainSpec, data: str) -> dict:
    """What of a stage's settings decides its weights: everything but where it is evaluated and which stage
    it replicates (left out, so a stage written before those keys existed keeps its fingerprint); its
    launcher only when it has one."""
    settings = {**spec.__dict__, "data": data}
    for key in ("tasks", "replicate_of"):
        settings.pop(key)
    if not spec.launcher:
        settings.pop("launcher")
    return settings


def _flag_value(value: object) -> str:
    """A stage setting as the train CLI parses it back: lists comma-separated, booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def eval_command(model_args: dict, settings: EvalSettings, task: str, output: Path) -> list[str]:
    """``lm_eval`` exactly as a user would type it for this cell (``--log_samples`` for the report)."""
    args_text = _args_string({**model_args, **settings.model_args})
    command = [*(settings.launcher or (sys.executable,)), "-m", "lm_eval"]
    command += ["--model", settings.backend, "--model_args", args_text]
    command += ["--tasks", task, "--output_path", str(output), "--log_samples"]
    if settings.limit is not None:
        command += ["--limit", str(settings.limit)]
    if settings.samples is not None:
        command += ["--samples", json.dumps({task: list(range(*settings.samples))}, separators=(",", ":"))]
    if settings.num_fewshot is not None:
        command += ["--num_fewshot", str(settings.num_fewshot)]
    if settings.device:
        command += ["--device", str(settings.device)]
    if settings.batch_size is not None:
        command += ["--batch_size", str(settings.batch_size)]
    if settings.metadata:
        command += ["--metadata", json.dumps(settings.metadata)]
    return command


def read_cell(folder: Path) -> dict | None:
    path = folder / CELL_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def build_plan(config: StudyConfig) -> list[Cell]:
    """Every cell of the study in the order it runs: training stages (file order), then evaluations."""
    hashes = FileHashes(config.output / HASH_CACHE)
    cells: list[Cell] = []
    prints: dict[str, str] = {}  # model or stage -> fingerprint of its weights
    folders: dict[str, dict[str, str]] = {}  # model -> {its local folder: content digest}
    for spec in config.models.values():
        if is_local_model(spec):
            folder = str(spec.pretrained)
            folders[spec.name] = {folder: content_digest(local_path(folder), hashes)}
        payload = {
            "model": spec.bundled or spec.pretrained,
            "args": spec.model_args,
            "files": folders.get(spec.name, {}),
        }
        prints[spec.name] = _fingerprint(payload)
    for spec in config.train.values():
        if is_local_data(spec.data):
            inputs = {spec.data: content_digest(local_path(spec.data), hashes)}
            data = list(inputs.values())[0]
        else:
            inputs, data = {}, f"hub:{spec.data}"
        for parent in spec.parents():
            inputs.update(folders.get(parent, {}))
        # the data enter by content (the path string is left out: the same bytes elsewhere are the same data)
        payload = {"spec": train_payload(spec, data), "parents": [prints[p] for p in spec.parents()]}
        prints[spec.name] = _fingerprint(payload)
        cell = Cell(
            name=f"train/{spec.name}",
            kind="train",
            folder=checkpoint_folder(config, spec.name),
            command=[],
            fingerprint=prints[spec.name],
            model=spec.name,
            inputs=inputs,
            needs=[f"train/{p}" for p in spec.parents() if p in config.train],
        )
        try:
            cell.command = train_command(config, spec)
        except (FileNotFoundError, KeyError) as exc:
            cell.status, cell.reason = "blocked", str(exc.args[0] if exc.args else exc)
        cells.append(cell)
    task_data = {}
    for task, settings in config.tasks.items():
        path = eval_data(task, settings)
        task_data[task] = {} if path is None else {str(path): content_digest(path, hashes)}
    for name in config.evaluated():
        for task in config.tasks_of(name):
            settings = config.tasks[task]
            folder = eval_folder(config, name, task)
            data = list(task_data[task].values())[0] if task_data[task] else "hub"
            payload = {"weights": prints[name], "task": task, "settings": settings.__dict__, "data": data}
            cell = Cell(
                name=f"eval/{name}/{task}",
                kind="eval",
                folder=folder,
                command=[],
                fingerprint=_fingerprint(payload),
                model=name,
                task=task,
                inputs={**task_data[task], **folders.get(name, {})},
            )
            if name in config.train:
                cell.needs = [f"train/{name}"]
                source = {"pretrained": str(checkpoint_folder(config, name))}
            else:
                try:
                    source = model_source(config.models[name])
                    if config.models[name].model_args:
                        source.update({k: str(v) for k, v in config.models[name].model_args.items()})
                except (FileNotFoundError, KeyError) as exc:
                    cell.status, cell.reason = "blocked", str(exc.args[0] if exc.args else exc)
                    cells.append(cell)
                    continue
            cell.command = eval_command(source, settings, task, folder)
            cells.append(cell)
    hashes.save()
    for cell in cells:
        if cell.status == "blocked":
            continue
        recorded = read_cell(cell.folder)
        if recorded is not None and recorded.get("fingerprint") == cell.fingerprint:
            cell.status = "done"
        elif cell.folder.exists():
            cell.status, cell.reason = "stale", _why_stale(cell, recorded)
        elif cell.kind == "train":
            _check_interrupted(cell)
        elif is_archived(config, cell):
            cell.status, cell.reason = (
                "archived",
                f"restored from {archive_folder(config, cell.model, cell.task)}",
            )
    _skip_unneeded_training(cells)
    _propagate(cells)
    return cells


def is_archived(config: StudyConfig, cell: Cell) -> bool:
    """Whether the study's archive holds this very cell (its fingerprint)."""
    folder = archive_folder(config, cell.model, str(cell.task))
    recorded = None if folder is None else read_cell(folder)
    return recorded is not None and recorded.get("fingerprint") == cell.fingerprint


def _skip_unneeded_training(cells: list[Cell]) -> None:
    """A stage not trained yet whose every user that can run (an evaluation of it, a stage trained from it;
    a blocked one cannot) is done or archived is done: its checkpoint would only reproduce results the study
    has. Last users first, so a chain of stages whose end is archived is skipped whole. A stage is known by
    its fingerprint, so when a user appears later (a PPO stage whose environment was built) the stage is
    trained then, and what was done from the same fingerprint stays done."""
    for cell in reversed(cells):
        if cell.kind != "train" or cell.status != "missing":
            continue
        users = [c for c in cells if cell.name in c.needs and c.status != "blocked"]
        if users and all(c.status in ("done", "archived") for c in users):
            cell.status, cell.reason = "done", "not needed: every cell that uses it is done or archived"


def _propagate(cells: list[Cell]) -> None:
    """A cell whose prerequisite is blocked is blocked. (One whose prerequisite is missing keeps its status:
    cells are known by fingerprint, and a stage trained again with the same one is the same stage.)"""
    by_name = {cell.name: cell for cell in cells}
    for cell in cells:  # cells are in dependency order
        for need in cell.needs:
            if by_name[need].status == "blocked":
                cell.status, cell.reason = "blocked", f"needs {need}, which is blocked"


def run_file(folder: Path) -> Path:
    """Where the runner records a training run it started (beside the checkpoint and the train CLI's work
    folder, so neither the checkpoint nor the work folder holds a file the train CLI did not write)."""
    return folder.with_name(f".{folder.name}{RUN_FILE_SUFFIX}")


def train_work_folder(folder: Path) -> Path:
    """Where ``lm-eval-calib train --output FOLDER`` keeps the resumable checkpoints of an unfinished run
    (``lm_eval_calib_train.output``; named here so the study does not import the training add-on)."""
    return folder.with_name(f".{folder.name}.work")


def _check_interrupted(cell: Cell) -> None:
    """A training cell not yet done: when the study started it before with another fingerprint (and it did not
    finish), its interrupted run is not this stage's; mark it to start over, saying what changed."""
    try:
        recorded = json.loads(run_file(cell.folder).read_text())
    except (OSError, json.JSONDecodeError):
        recorded = None
    if not isinstance(recorded, dict):
        if train_work_folder(cell.folder).exists():  # left by a study that did not record its runs
            cell.restart = True
            cell.reason = "an interrupted run the study did not record is started over"
        return  # else nothing was started: the train CLI starts from the beginning
    if recorded.get("fingerprint") == cell.fingerprint:
        return  # the same run: the train CLI resumes it (and checks its inputs itself)
    cell.restart = True
    why = _why_stale(cell, recorded).replace(" (or it was not made by a study)", "")
    cell.reason = f"an interrupted run is started over: {why}"


def _why_stale(cell: Cell, recorded: dict | None) -> str:
    """Name the data that changed when the cell file says what it read, else the general reason."""
    if recorded is not None and isinstance(recorded.get("inputs"), dict):
        before = recorded["inputs"]
        changed = [path for path, digest in cell.inputs.items() if path in before and before[path] != digest]
        if changed:
            return "data changed since it ran: " + ", ".join(changed)
        moved = sorted(set(cell.inputs) - set(before))
        if moved and sorted(cell.inputs.values()) != sorted(before.values()):
            return "data changed since it ran: " + ", ".join(moved)
    return "settings changed since it ran (or it was not made by a study)"


def select_cells(cells: list[Cell], only: Sequence[str]) -> list[Cell]:
    """The cells whose name matches one of the shell patterns ``only`` (``eval/qwen-1.5b-*/calib_mmlu``,
    ``train/*``), in plan order; all cells when ``only`` is empty. A study that takes hours on a small machine
    runs in steps that each fit it; a pattern that matches no cell is an error naming the cells there are."""
    if not only:
        return list(cells)
    unmatched = [pattern for pattern in only if not any(fnmatchcase(c.name, pattern) for c in cells)]
    if unmatched:
        names = ", ".join(c.name for c in cells)
        patterns = " ".join(unmatched)
        raise StudyConfigError(f"--only {patterns} matches no cell of this study; its cells: {names}")
    return [c for c in cells if any(fnmatchcase(c.name, pattern) for pattern in only)]


def describe(cells: list[Cell]) -> str:
    """The dry-run table: one line per cell."""
    width = max(len(cell.name) for cell in cells)
    lines = [f"{'cell'.ljust(width)}  status   folder"]
    for cell in cells:
        note = f"  ({cell.reason})" if cell.reason else ""
        lines.append(f"{cell.name.ljust(width)}  {cell.status.ljust(7)}  {cell.folder}{note}")
    statuses = ("done", "archived", "missing", "stale", "blocked")
    counts = {s: sum(c.status == s for c in cells) for s in statuses}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(cells)} cells")
    return "\n".join(lines)
