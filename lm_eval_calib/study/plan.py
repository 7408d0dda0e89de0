"""Turn a study into cells (train a stage, or evaluate one model on one task), each with its command, its
output folder and whether it is already done.

A cell is done when its folder exists and holds ``study_cell.json`` with the cell's fingerprint: a hash of
everything that decides its result (settings, data, and the fingerprints of the stages it starts from). Change
a stage's steps and that stage and everything downstream is "stale" and runs again; nothing else does.
Folders appear only complete (the runner builds them under a temporary name and renames), so a killed study
resumes by re-running just the cells it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval_calib.study.config import EvalSettings, ModelSpec, StudyConfig, TrainSpec

CELL_FILE = "study_cell.json"


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
    status: str = "missing"  # done | missing | stale | blocked
    reason: str = ""


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    command = _cli("train", spec.kind)
    if spec.kind == "ppo":
        command += ["--policy", weights(spec.policy), "--reward-model", weights(spec.reward_model)]
    else:
        command += ["--model", weights(spec.source)]
    if spec.method:
        command += ["--method", spec.method]
    command += ["--data", spec.data, "--max-steps", str(spec.max_steps)]
    for key, value in spec.args.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command + ["--output", str(checkpoint_folder(config, spec.name))]


def eval_command(model_args: dict, settings: EvalSettings, task: str, output: Path) -> list[str]:
    """``lm_eval`` exactly as a user would type it for this cell (``--log_samples`` for the report)."""
    command = [sys.executable, "-m", "lm_eval", "--model", settings.backend,
               "--model_args", _args_string({**model_args, **settings.model_args}),
               "--tasks", task, "--output_path", str(output), "--log_samples"]  # fmt: skip
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
    cells: list[Cell] = []
    prints: dict[str, str] = {}  # model or stage -> fingerprint of its weights
    for spec in config.models.values():
        prints[spec.name] = _fingerprint({"model": spec.bundled or spec.pretrained, "args": spec.model_args})
    for spec in config.train.values():
        payload = {"spec": spec.__dict__, "parents": [prints[p] for p in spec.parents()]}
        prints[spec.name] = _fingerprint(payload)
        cell = Cell(name=f"train/{spec.name}", kind="train", folder=checkpoint_folder(config, spec.name),
                    command=[], fingerprint=prints[spec.name], model=spec.name,
                    needs=[f"train/{p}" for p in spec.parents() if p in config.train])  # fmt: skip
        try:
            cell.command = train_command(config, spec)
        except (FileNotFoundError, KeyError) as exc:
            cell.status, cell.reason = "blocked", str(exc.args[0] if exc.args else exc)
        cells.append(cell)
    for name in config.evaluated():
        for task, settings in config.tasks.items():
            folder = eval_folder(config, name, task)
            payload = {"weights": prints[name], "task": task, "settings": settings.__dict__}
            cell = Cell(name=f"eval/{name}/{task}", kind="eval", folder=folder, command=[],
                        fingerprint=_fingerprint(payload), model=name, task=task)  # fmt: skip
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
    for cell in cells:
        if cell.status == "blocked":
            continue
        recorded = read_cell(cell.folder)
        if recorded is not None and recorded.get("fingerprint") == cell.fingerprint:
            cell.status = "done"
        elif cell.folder.exists():
            cell.status, cell.reason = (
                "stale",
                "settings changed since it ran (or it was not made by a study)",
            )
    _propagate(cells)
    return cells


def _propagate(cells: list[Cell]) -> None:
    """A cell whose prerequisite must (re)run must run too; one whose prerequisite is blocked is blocked."""
    by_name = {cell.name: cell for cell in cells}
    for cell in cells:  # cells are in dependency order
        for need in cell.needs:
            parent = by_name[need]
            if parent.status == "blocked":
                cell.status, cell.reason = "blocked", f"needs {need}, which is blocked"
            elif parent.status in ("missing", "stale") and cell.status == "done":
                cell.status, cell.reason = "stale", f"{need} will be (re)trained"


def describe(cells: list[Cell]) -> str:
    """The dry-run table: one line per cell."""
    width = max(len(cell.name) for cell in cells)
    lines = [f"{'cell'.ljust(width)}  status   folder"]
    for cell in cells:
        note = f"  ({cell.reason})" if cell.reason else ""
        lines.append(f"{cell.name.ljust(width)}  {cell.status.ljust(7)}  {cell.folder}{note}")
    counts = {s: sum(c.status == s for c in cells) for s in ("done", "missing", "stale", "blocked")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(cells)} cells")
    return "\n".join(lines)
