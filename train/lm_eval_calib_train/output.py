"""The checkpoint folder a stage writes, written so that a killed run never leaves one that looks complete.

For ``--output PARENT/NAME``:

- ``PARENT/.NAME.work/`` holds the resumable trainer checkpoints (``checkpoint-<step>``), the step log and
  the wall time so far. It survives an interruption; ``--resume`` continues from its last complete
  checkpoint (one whose ``trainer_state.json``, written last, exists).
- the finished model is written to ``PARENT/.NAME.tmp-<pid>/`` (model, tokenizer, ``train_log.jsonl``,
  ``train_results.json``, then the manifest) and renamed to ``PARENT/NAME`` in one step; only then is the
  work folder removed. ``PARENT/NAME`` therefore exists only when it is complete.

``--overwrite`` (the rule, issue 16): an existing ``PARENT/NAME`` is replaced only when this tool wrote it,
i.e. it holds our manifest (``lm_eval_calib_manifest.json``); a folder without one is never touched, whatever
files it holds (a ``config.json`` proves nothing). The manifest lists the entries its stage wrote
(``files``); replacing moves exactly those aside (the manifest first, so the folder stops claiming to be
finished), moves the new checkpoint's entries in (its manifest last) and deletes the old ones. Anything else
in the folder (notes, code, a ``src/``) stays as it is. A checkpoint written before manifests listed their
files counts as owning only the file names a stage writes (:data:`KNOWN_CHECKPOINT_FILES`). A file we did not
write that has a name a checkpoint uses is never overwritten: the run is refused before training, or, if the
file appeared during training, the finished checkpoint is set aside beside the folder and the error says
where. The work folder ``.NAME.work`` is deleted by ``--overwrite`` only when it holds nothing but what a run
writes there.

``--resume`` (issue 28) continues a run only with the settings and data it was started with: the work
folder holds ``run_inputs.json`` (:func:`run_inputs`: the stage's settings that decide the result, the data's
SHA-256, the models it starts from), written before the trainer writes there; a resumed run compares its own
and refuses with the differences, so one checkpoint never mixes two runs' data or settings. Settings that
change nothing but names and logs (``--label``, ``--data-name``, ``--logging-steps``, ``--save-steps``) and
the data's path (the same bytes elsewhere are the same data) may differ.

The manifest a finished folder ends with is built here too (:func:`build_manifest`; its schema is
:mod:`lm_eval_calib.manifest`). How the trainer runs (its arguments, :func:`~lm_eval_calib_train.recipe.fit`)
is :mod:`lm_eval_calib_train.recipe`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_calib.atomic import publish_folder, write_file
from lm_eval_calib.manifest import MANIFEST_NAME, ManifestError, read_manifest, write_manifest
from lm_eval_calib_train.config import TrainInputError
from lm_eval_calib_train.ranks import is_main, wait_for_everyone, world_size

if TYPE_CHECKING:
    from lm_eval_calib_train.config import _StageConfig
    from lm_eval_calib_train.data import DataSource, DataSummary
    from lm_eval_calib_train.models import ModelRef

LOG_NAME = "train_log.jsonl"
RESULTS_NAME = "train_results.json"
ELAPSED_NAME = "elapsed.json"
OWNED_KEY = "files"  # manifest key: the entries of the checkpoint folder its stage wrote
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What transformers / peft / the stages write into a checkpoint folder: the names a user's file must not
# have there, and what an old manifest (without ``files``) owns.
KNOWN_CHECKPOINT_FILES = re.compile(
    r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|pytorch_model.*\.bin|adapter_config\.json|adapter_model\.(safetensors|bin)|tokenizer(_config)?\.json"
    r"|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|vocab\.json"
    r"|merges\.txt|train_log\.jsonl|train_results\.json|" + re.escape(MANIFEST_NAME) + r")$"
)
# The work folder of a run holds this file from the start of training (:meth:`StageOutput.start_work`);
# older runs' work folders are recognised by their entries (trainer checkpoints, step log, wall time).
WORK_MARKER = ".lm_eval_calib_work"
INPUTS_NAME = "run_inputs.json"  # in the work folder: what the run was started with (:func:`run_inputs`)
_WORK_ENTRY = re.compile(
    r"^(\.?checkpoint-\d+(\.tmp)?|train_log\.jsonl|\.?elapsed\.json(\.tmp)?|\.?run_inputs\.json(\.tmp)?)$"
)


def _plain_name(name: object) -> bool:
    """A manifest's file entry may only name an entry of the folder itself (no ``..``, no sub-path)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def note(message: str) -> None:
    """One progress line on stderr, from the main process only (every rank runs the same steps)."""
    if is_main():
        print(f"lm-eval-calib train: {message}", file=sys.stderr, flush=True)


class StageOutput:
    """Where one stage writes, and the rules for an existing output or an interrupted run."""

    def __init__(self, output: str | Path, overwrite: bool = False, resume: bool = False):
        self.final = Path(output).expanduser().absolute()
        self.parent = self.final.parent
        self.work = self.parent / f".{self.final.name}.work"
        self.overwrite, self.resume = overwrite, resume
        self.started = time.time()
        self.elapsed_before = 0.0
        self.resume_from: Path | None = None  # set by preflight: the checkpoint this run continues
        self.inputs: dict[str, Any] | None = None  # set by check_inputs, written by start_work

    def preflight(self) -> Path | None:
        """Check the output before anything is loaded; return the checkpoint to resume from, if any.

        Under several processes only the main one checks and clears (``--overwrite``) the output; the others
        only look up the checkpoint to resume from, which the main process never deletes (see
        :mod:`lm_eval_calib_train.ranks`)."""
        self.resume_from = self._preflight()
        return self.resume_from

    def _preflight(self) -> Path | None:
        if not is_main():
            return self.last_checkpoint() if self.resume else None
        final = self.final
        if final.exists():
            if not final.is_dir():
                raise TrainInputError(f"--output {final} exists and is not a folder; choose another --output")
            contents = list(final.iterdir())
            ours = (final / MANIFEST_NAME).is_file()
            if contents and not ours:
                raise TrainInputError(
                    f"--output {final} exists and holds files lm-eval-calib did not write (no "
                    f"{MANIFEST_NAME}); nothing there is deleted, even with --overwrite: choose another "
                    "--output (or an empty folder)"
                )
            if ours:
                owned = self.owned_entries()
                in_the_way = sorted(
                    p.name for p in contents if p.name not in owned and KNOWN_CHECKPOINT_FILES.match(p.name)
                )
                if in_the_way and (self.overwrite or self.resume):
                    raise TrainInputError(
                        f"--output {final} holds {', '.join(in_the_way)}, which its manifest does not list: "
                        "not written by lm-eval-calib, so never overwritten; move it away or choose another "
                        "--output"
                    )
                if not self.overwrite:
                    if self.resume and self.last_checkpoint() is not None:
                        pass  # an interrupted --overwrite run: finish it, then replace the old checkpoint
                    elif self.resume:
                        raise TrainInputError(
                            f"--output {final} already holds a finished checkpoint: nothing to resume; pass "
                            "--overwrite to train it again"
                        )
                    else:
                        raise TrainInputError(
                            f"--output {final} already holds a checkpoint; pass --overwrite to replace it, "
                            "or choose another --output"
                        )
        if self.work.exists():
            if not self.work.is_dir():
                foreign = [self.work.name]
            elif (self.work / WORK_MARKER).is_file():
                foreign = []
            else:
                foreign = [p.name for p in self.work.iterdir() if not _WORK_ENTRY.match(p.name)]
            if foreign:
                raise TrainInputError(
                    f"{self.work} (where a run beside --output {final} keeps its resumable checkpoints) "
                    f"holds {', '.join(sorted(foreign)[:5])}: not an interrupted run of lm-eval-calib; "
                    "nothing there is deleted: move it away or choose another --output"
                )
        self.parent.mkdir(parents=True, exist_ok=True)
        if self.work.exists():
            if self.resume:
                last = self.last_checkpoint()
                if last is None:
                    note(f"no complete checkpoint in {self.work} to resume from; starting from the beginning")
                    shutil.rmtree(self.work)
                else:
                    note(f"resuming from {last}")
                    self.elapsed_before = self._read_elapsed()
                    return last
            elif self.overwrite:
                shutil.rmtree(self.work)
            else:
                raise TrainInputError(
                    f"an interrupted run left checkpoints in {self.work}; pass --resume to continue it or "
                    "--overwrite to start over"
                )
        elif self.resume:
            note(f"no interrupted run at {self.work}; starting from the beginning")
        return None

    def owned_entries(self) -> set[str]:
        """The entries of ``--output`` its stage wrote: the manifest's ``files`` list; for a manifest written
        before that list existed, the entries whose names a stage writes. Empty when there is no manifest."""
        try:
            manifest = read_manifest(self.final)
        except ManifestError as exc:
            raise TrainInputError(
                f"--output {self.final}: {exc}; nothing there is replaced: choose another --output"
            ) from None
        if manifest is None:
            return set()
        listed = manifest.get(OWNED_KEY)
        if isinstance(listed, list):
            return {name for name in listed if _plain_name(name)} | {MANIFEST_NAME}
        return {p.name for p in self.final.iterdir() if KNOWN_CHECKPOINT_FILES.match(p.name)}

    def last_checkpoint(self) -> Path | None:
        """The newest complete ``checkpoint-<step>`` in the work folder."""
        best: tuple[int, Path] | None = None
        if not self.work.is_dir():
            return None
        for path in self.work.iterdir():
            match = _CHECKPOINT.match(path.name)
            complete = (path / "trainer_state.json").is_file() or (path / "ppo_state.json").is_file()
            if match and path.is_dir() and complete and (best is None or int(match.group(1)) > best[0]):
                best = (int(match.group(1)), path)
        return best[1] if best else None

    def start_work(self) -> None:
        """Create the work folder with its marker before the trainer writes there (it may write more than
        checkpoints, e.g. a model card), so that ``--overwrite`` / ``--resume`` know it as a run's own; with
        the run's inputs (:meth:`check_inputs`), which a later ``--resume`` must match."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / WORK_MARKER).touch()
        if self.inputs is not None and is_main():
            text = json.dumps(self.inputs, indent=2, sort_keys=True) + "\n"
            write_file(self.work / INPUTS_NAME, lambda handle: handle.write(text))

    # -- resuming only the same run -----------------------------------------------------------------
    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Remember this run's ``inputs`` (:func:`run_inputs`); when it resumes an interrupted run, refuse
        unless they equal the interrupted run's, naming every difference. Called once the data are read,
        before any model is loaded or anything is written."""
        self.inputs = json.loads(json.dumps(inputs, sort_keys=True, default=str))
        if self.resume_from is None:
            return
        try:
            before = json.loads((self.work / INPUTS_NAME).read_text())
        except (OSError, ValueError):
            before = None
        if not isinstance(before, dict):
            raise TrainInputError(
                f"--resume: the interrupted run in {self.work} did not record its settings and data (it was "
                "started by an older lm-eval-calib), so resuming it could mix two runs in one checkpoint; "
                "pass --overwrite (instead of --resume) to start over"
            )
        changed = input_differences(before, self.inputs)
        if changed:
            raise TrainInputError(
                f"--resume: the interrupted run in {self.work} was started with other settings or data: "
                + "; ".join(changed)
                + ". Resuming would train one checkpoint on both; resume with the interrupted run's settings "
                "and data, or pass --overwrite (instead of --resume) to start over"
            )

    # -- wall time across interruptions --------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.started)

    def _read_elapsed(self) -> float:
        try:
            return float(json.loads((self.work / ELAPSED_NAME).read_text())["elapsed_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def save_elapsed(self) -> None:
        text = json.dumps({"elapsed_s": self.elapsed()})
        write_file(self.work / ELAPSED_NAME, lambda handle: handle.write(text))

    # -- the step log ---------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.work / LOG_NAME

    def trim_log(self, upto_step: int) -> None:
        """Drop log lines of steps after the resumed checkpoint (the interrupted run's unsaved steps)."""
        if not self.log_path.is_file():
            return
        kept = [
            line
            for line in self.log_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= upto_step
        ]
        self.log_path.write_text("".join(line + "\n" for line in kept))

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    # -- finishing ------------------------------------------------------------------------------------
    def finalize(self, write_model, manifest: dict[str, Any], results: dict[str, Any]) -> Path:
        """Write the model with ``write_model(folder)``, then logs and manifest (listing the folder's
        entries), then move it into place: one rename for a new ``--output``; for an existing one
        (``--overwrite``, checked in :meth:`preflight`) only the old checkpoint's own entries are replaced
        (:meth:`_swap_in`). Under several processes the main one writes; the others wait until it is done."""
        if not is_main():
            wait_for_everyone()
            return self.final
        tmp = self.parent / f".{self.final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            write_model(tmp)
            if self.log_path.is_file():
                shutil.copyfile(self.log_path, tmp / LOG_NAME)
            (tmp / RESULTS_NAME).write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
            files = sorted({p.name for p in tmp.iterdir()} | {MANIFEST_NAME})
            manifest = {**manifest, "wall_time_s": round(self.elapsed(), 2), OWNED_KEY: files}
            write_manifest(tmp, manifest)  # last: a folder with a manifest is a finished one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.final.exists():
            self._swap_in(tmp)
        else:
            publish_folder(tmp, self.final, (), MANIFEST_NAME)
        shutil.rmtree(self.work, ignore_errors=True)
        wait_for_everyone()
        return self.final

    def _swap_in(self, tmp: Path) -> None:
        """Replace the old checkpoint's entries in ``--output`` by ``tmp``'s; nothing else is touched."""
        owned = self.owned_entries()
        new = sorted(p.name for p in tmp.iterdir())
        in_the_way = [name for name in new if (self.final / name).exists() and name not in owned]
        if in_the_way:  # a user's file appeared there during training: keep it, set the new checkpoint aside
            kept = self.parent / f"{self.final.name}.new-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
            os.rename(tmp, kept)
            shutil.rmtree(self.work, ignore_errors=True)
            raise TrainInputError(
                f"--output {self.final} now holds {', '.join(in_the_way)}, not written by lm-eval-calib, so "
                f"it is left alone; the finished checkpoint is kept in {kept}"
            )
        # the manifest first: from here until the new one is in, the folder does not claim to be finished
        publish_folder(tmp, self.final, owned, MANIFEST_NAME)


# ---------------------------------------------------------------------------------------------------------
# What a run was started with


NOT_RUN_INPUTS = {
    # names, logs and how the run is handled: they do not change the trained weights
    "output",
    "overwrite",
    "resume",
    "label",
    "data_name",
    "logging_steps",
    "save_steps",
    "trust_remote_code",
    # compared by what they name (the data's content and format, the resolved models), not as written
    "data",
    "data_format",
    "model",
    "policy",
    "reward_model",
    "gguf_file",
}


def _model_identity(ref: ModelRef) -> str:
    """A model as a resumed run must find it again: where it is and, for a checkpoint of ours, its manifest
    (a stage trained again in the same folder has a new one)."""
    path = Path(ref.source) / MANIFEST_NAME
    if path.is_file():
        return f"{ref.describe()} (manifest sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"
    return ref.describe()


def run_inputs(config: _StageConfig, data: DataSource, models: dict[str, ModelRef]) -> dict[str, Any]:
    """What decides a stage's result, as ``run_inputs.json`` records it: the stage, every setting but
    :data:`NOT_RUN_INPUTS`, the data by content (SHA-256; the path only to name it) and the models it starts
    from (``{"--model": ref}``)."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_RUN_INPUTS}
    return {
        "stage": config.stage,
        "settings": settings,
        "data": {"sha256": data.sha256, "source": data.source, "format": data.format},
        "models": {flag: _model_identity(ref) for flag, ref in models.items()},
    }


def input_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``--flag: old (interrupted run) -> new (now)`` for every input that differs (the data by content)."""
    changed = []
    if before.get("stage") != now.get("stage"):
        changed.append(f"stage: {before.get('stage')} (interrupted run) -> {now.get('stage')} (now)")
    old, new = before.get("settings") or {}, now.get("settings") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            flag = "--" + key.replace("_", "-")
            changed.append(f"{flag}: {old.get(key)} (interrupted run) -> {new.get(key)} (now)")
    old_data, new_data = before.get("data") or {}, now.get("data") or {}
    if old_data.get("sha256") != new_data.get("sha256") or old_data.get("format") != new_data.get("format"):
        changed.append(
            f"--data: {old_data.get('source')} ({old_data.get('format')}, sha256 "
            f"{str(old_data.get('sha256'))[:12]}) (interrupted run) -> {new_data.get('source')} "
            f"({new_data.get('format')}, sha256 {str(new_data.get('sha256'))[:12]}) (now)"
        )
    old_models, new_models = before.get("models") or {}, now.get("models") or {}
    for flag in sorted(set(old_models) | set(new_models)):
        if old_models.get(flag) != new_models.get(flag):
            changed.append(
                f"{flag}: {old_models.get(flag)} (interrupted run) -> {new_models.get(flag)} (now)"
            )
    return changed


# ---------------------------------------------------------------------------------------------------------
# Manifest


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in ("lm-eval-calib", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


NOT_HYPERPARAMETERS = {
    "output",
    "data",
    "data_name",
    "label",
    "overwrite",
    "resume",
    "model",
    "policy",
    "gguf_file",
    "trust_remote_code",
    "logging_steps",
    "save_steps",
}


def build_manifest(
    config: _StageConfig,
    model: ModelRef,
    data: DataSummary,
    *,
    title: str,
    method: str | None = None,
    extra_hyperparameters: dict[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The manifest of a finished stage (:mod:`lm_eval_calib.manifest` is its schema), from the objects the
    stage already holds: its ``config`` (stage, seed, label and the hyperparameters), the ``model`` it
    started from (base model and parent) and the ``data`` it trained on. ``title`` names the stage in the
    default label ``"<base> <title> (<data>)"``; ``method`` defaults to the stage's name. ``finalize``
    fills in the wall time and the folder's files."""
    hyper = {k: v for k, v in asdict(config).items() if k not in NOT_HYPERPARAMETERS and k not in exclude}
    hyper.update(extra_hyperparameters or {})
    return {
        "stage": config.stage,
        "method": method or config.stage,
        "label": config.label or f"{model.base_display()} {title} ({data.name})",
        "base_model": model.base_model(),
        "parent": model.describe(),
        "data": {"name": data.name, "rows": data.rows, "sha256": data.sha256},
        "hyperparameters": {**hyper, "processes": world_size()},
        "versions": library_versions(),
        "seed": config.seed,
        "wall_time_s": None,  # filled in by finalize
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
