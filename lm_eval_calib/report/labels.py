"""How a run is named in tables and legends: ``--label`` override, else training manifest, else model name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from lm_eval_calib.manifest import ManifestError, manifest_for_model_args, model_args_dict


class LabelError(ValueError):
    """A ``--label`` argument that cannot be applied (bad syntax or an unknown run folder)."""


@dataclass(frozen=True)
class ModelLabel:
    label: str
    stage: str | None
    """Training stage from the manifest (``sft``, ``reward``, ``ppo``), else ``None``."""
    warning: str | None = None


def model_name(results: dict) -> str:
    """A short model name: the GGUF file stem, else the last part of ``pretrained`` (+adapter for peft)."""
    args = model_args_dict((results.get("config") or {}).get("model_args"))
    gguf = args.get("gguf_file")
    base = args.get("pretrained") or results.get("model_name") or "model"
    name = PurePath(gguf).name.removesuffix(".gguf") if gguf else PurePath(str(base).rstrip("/")).name
    if args.get("peft"):
        name += "+" + PurePath(args["peft"].rstrip("/")).name
    return name or "model"


def resolve_label(results: dict, override: str | None = None) -> ModelLabel:
    """The label of a run: the override, else the manifest's label and stage, else :func:`model_name`.

    A malformed manifest is not fatal: the run keeps its model name and the caller reports the warning.
    """
    stage = None
    warning = None
    try:
        manifest = manifest_for_model_args((results.get("config") or {}).get("model_args"))
    except ManifestError as exc:
        manifest = None
        warning = f"{exc}; labelled by model name instead"
    if manifest is not None:
        stage = str(manifest.get("stage") or "") or None
        if override is None and manifest.get("label"):
            return ModelLabel(str(manifest["label"]), stage)
    return ModelLabel(override or model_name(results), stage, warning)


def parse_label_overrides(
    specs: Mapping[str | Path, str] | Sequence[str], run_dirs: Sequence[Path]
) -> dict[Path, str]:
    """``RUN_DIR=NAME`` arguments (or a ``{RUN_DIR: NAME}`` mapping) -> {resolved run folder: name}.

    RUN_DIR must be one of ``run_dirs``. Both a folder and a name may contain ``=``, so every split point is
    tried and the one whose left side is a given run folder wins.
    """
    known = {Path(d).resolve(): Path(d) for d in run_dirs}
    if isinstance(specs, Mapping):
        specs = [f"{folder}={name}" for folder, name in specs.items()]
    overrides: dict[Path, str] = {}
    for spec in specs:
        matched = None
        for at in [i for i, char in enumerate(spec) if char == "="]:
            folder, name = Path(spec[:at]).resolve(), spec[at + 1 :].strip()
            if folder in known and name:
                matched = (folder, name)
                break
        if matched is None:
            raise LabelError(
                f"--label {spec!r}: expected RUN_DIR=NAME with RUN_DIR one of the run folders given "
                f"({', '.join(str(d) for d in run_dirs)}) and a non-empty NAME"
            )
        overrides[matched[0]] = matched[1]
    return overrides
