"""A study file (YAML): which models and training stages, which tasks, where the output goes, what to test.

The file is validated as a whole before anything runs, so a typo in the last stage does not surface after an
hour of training: keys, names, each stage's ``args:`` against that stage's settings schema
(``lm_eval_calib_train.config``, the one its CLI flags come from), and the claims. What needs this machine
(task and backend names known to lm_eval, files that exist) is checked by
:func:`lm_eval_calib.study.checks.check_study`. Every error names the key, what was wrong, and what would be
right. Strings may use ``${VAR}`` (e.g. ``${LM_EVAL_CALIB_DATA}/alpaca/alpaca_data_1k.json``); an unset
variable is an error.

Schema (see ``examples/offline_mini.yaml``)::

    name: offline-mini
    output: runs/offline-mini            # relative to the working directory
    archive: results/offline-mini        # optional: compact copies of finished evaluations, to commit and
                                         # take back on another machine (lm_eval_calib.study.archive)
    eval:                                # defaults for every evaluation cell (a task may override)
      backend: hf                        # lm_eval --model
      model_args: {dtype: float32}
      device: cpu
      batch_size: 8
    tasks:
      calib_mmlu: {limit: 100, num_fewshot: 5}
      calib_clm: {limit: 2, backend: hf-calib}
    models:                              # models that exist already
      gemma3-270m: {bundled: gemma3, stage: pretrained}
      pythia-70m-step1000: {pretrained: EleutherAI/pythia-70m, model_args: {revision: step1000}}
    train:                               # checkpoints to produce first, in dependency order
      gemma3-sft-lora-alpaca: {kind: sft, from: gemma3-270m, method: lora, data: ..., max_steps: 50,
                               args: {lora_r: 16, learning_rate: 1.0e-4}}   # any `train sft` setting
      gemma3-rm: {kind: reward, from: gemma3-270m, data: ..., max_steps: 50}
      gemma3-ppo: {kind: ppo, policy: gemma3-sft-lora-alpaca, reward_model: gemma3-rm, data: ...,
                   launcher: .venv-train-ppo/bin/python}       # optional: the stage's own interpreter
      gemma3-sft-lora-alpaca-seed1:      # the same stage with another seed (the findings' seed spread)
        {replicate_of: gemma3-sft-lora-alpaca, args: {seed: 1}, tasks: [calib_mmlu]}  # tasks: a subset
    findings:                            # claims checked with a paired bootstrap
      - {claim: "SFT hurts calibration", task: calib_mmlu, metric: ece,
         baseline: gemma3-270m, treatment: gemma3-sft-lora-alpaca, expect: higher}
      # a generation task: which confidence estimator (and lm-eval filter) the claim reads
      - {claim: ..., task: calib_gsm8k, metric: ece, estimator: seqprob, filter: strict-match, ...}

A model or stage may carry ``tasks: [names]`` (default: every task of the study).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_calib.metrics import METRICS

TRAIN_KINDS = ("sft", "reward", "rloo", "ppo")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StudyConfigError(ValueError):
    """The study file is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class EvalSettings:
    """How one task is evaluated: ``lm_eval`` flags."""

    backend: str = "hf"
    model_args: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    batch_size: str | int | None = None
    limit: int | float | None = None
    num_fewshot: int | None = None
    samples: tuple[int, int, int] | None = (
        None  # (start, stop, step): lm_eval --samples, a spread of documents
    )
    metadata: dict[str, Any] = field(default_factory=dict)
    launcher: tuple[str, ...] = ()
    """A launcher prefix that replaces ``python`` (e.g. ``torchrun --nproc_per_node 8``): the cell runs
    ``<launcher> -m lm_eval ...``; part of the cell's fingerprint like every other setting."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate that already exists: a bundled one, a local folder or a hub name."""

    name: str
    bundled: str | None = None
    pretrained: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    stage: str = "model"
    evaluate: bool = True
    tasks: tuple[str, ...] | None = None
    """The study's tasks this model is evaluated on (``tasks: [calib_mmlu]``); None: every task."""


@dataclass(frozen=True)
class TrainSpec:
    """A checkpoint to produce with ``lm-eval-calib train <kind>``."""

    name: str
    kind: str
    data: str
    max_steps: int
    source: str | None = None  # sft / reward: the model or stage it starts from
    method: str | None = None  # sft: full | lora
    policy: str | None = None  # rloo / ppo
    reward_model: str | None = None  # rloo / ppo
    args: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True
    tasks: tuple[str, ...] | None = None
    """The study's tasks this stage is evaluated on; None: every task. Not part of the stage's fingerprint."""
    replicate_of: str | None = None
    """The stage this one repeats with another seed (``replicate_of: <stage>``, ``args: {seed: N}``): same
    settings otherwise, so their paired difference is the seed-to-seed spread the findings show."""
    launcher: tuple[str, ...] = ()
    """The interpreter (or launcher prefix) that runs ``-m lm_eval_calib.cli train <kind>``, for a stage that
    needs an environment of its own (PPO: trl 1.12); empty: the study's own interpreter."""

    def parents(self) -> list[str]:
        return [p for p in (self.source, self.policy, self.reward_model) if p]


@dataclass(frozen=True)
class FindingSpec:
    claim: str
    task: str
    metric: str
    baseline: str
    treatment: str
    expect: str  # higher | lower | same (treatment vs baseline)
    margin: float | None = None  # for "same": the largest difference that still counts as the same
    estimator: str | None = None  # generation tasks: the confidence estimator read (seqprob, ptrue, ...)
    filter: str | None = None  # generation tasks: the lm-eval filter read (default: none, else the first)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    output: Path
    eval: EvalSettings
    tasks: dict[str, EvalSettings]
    models: dict[str, ModelSpec]
    train: dict[str, TrainSpec]
    findings: list[FindingSpec]
    source: Path
    archive: Path | None = None  # compact copies of finished evaluations (lm_eval_calib.study.archive)

    def evaluated(self) -> list[str]:
        """Names of every model and stage that gets evaluated, models first, then stages in file order."""
        return [m.name for m in self.models.values() if m.evaluate] + [
            t.name for t in self.train.values() if t.evaluate
        ]

    def tasks_of(self, name: str) -> list[str]:
        """The tasks model or stage ``name`` is evaluated on, in the study's task order (its ``tasks:``,
        else all of them); empty for one that is not evaluated."""
        spec = self.models.get(name) or self.train.get(name)
        if spec is None or not spec.evaluate:
            return []
        return [task for task in self.tasks if spec.tasks is None or task in spec.tasks]

    def replicates_of(self, name: str) -> list[str]:
        """The stages that repeat stage ``name`` with another seed (``replicate_of: name``), in file order."""
        return [t.name for t in self.train.values() if t.replicate_of == name]


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if "\x00" in value:  # every path operation refuses it (ValueError: embedded null byte)
            raise StudyConfigError(f"{where}: the text holds a NUL character (\\x00); remove it")

        def replace(match: re.Match) -> str:
            var = match.group(1)
            if var not in os.environ:
                raise StudyConfigError(f"{where}: ${{{var}}} is used but the environment variable is not set")
            return os.environ[var]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    """A mapping with text keys. YAML reads an unquoted ``on:``, ``yes:`` or ``no:`` key as a boolean and
    ``1:`` as a number, which then broke sorting and joining the keys (raw TypeError)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where} must be a mapping (key: value), got {type(raw).__name__}")
    for key in raw:
        if not isinstance(key, str):
            hint = (
                " (YAML reads an unquoted on, off, yes or no as a boolean: quote it, e.g. 'on':)"
                if isinstance(key, bool)
                else ""
            )
            raise StudyConfigError(f"{where}: key {key!r} ({type(key).__name__}) is not text{hint}")
    return raw


def _text(value: Any, where: str, what: str = "text") -> str:
    """A string setting: text, or a number written without quotes (``pretrained: 1234`` is a folder
    name); a list, a mapping, a boolean or nothing is a mistake (``from: [m]`` raised TypeError)."""
    if isinstance(value, str):
        if not value.strip():
            raise StudyConfigError(f"{where} is empty; give {what}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise StudyConfigError(f"{where} must be {what}, got {type(value).__name__} {value!r}")


def _optional_text(raw: dict, key: str, where: str, what: str = "text") -> str | None:
    return None if raw.get(key) is None else _text(raw[key], f"{where}.{key}", what)


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    """``evaluate: false``; a quoted ``"false"`` means false too (``bool("false")`` is True: the stage was
    evaluated), anything else that is not a yes/no is an error."""
    from lm_eval_calib.models.model_args import parse_bool

    if key not in raw:
        return default
    try:
        return parse_bool(raw[key], f"{where}.{key}")
    except ValueError as exc:
        raise StudyConfigError(str(exc)) from None


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyConfigError(
            f"{where}: name {name!r} must start with a letter or digit and use only letters, digits, '.', "
            "'_' and '-' (it becomes a folder name)"
        )
    return name


_EVAL_KEYS = {
    "backend",
    "model_args",
    "device",
    "batch_size",
    "limit",
    "num_fewshot",
    "samples",
    "metadata",
    "launcher",
}


SAMPLES_MAX = 20_000
"""Documents ``samples:`` may select: lm_eval takes their indices as one command-line argument, which Linux
caps at 128 KiB (MAX_ARG_STRLEN); ``samples: {stop: 1000000000}`` built a list of 10**9 integers."""


def _samples(raw: Any, where: str) -> tuple[int, int, int] | None:
    """``samples: {start: 0, stop: 14042, step: 47}``: every 47th document, a spread over all MMLU subjects
    (``--limit`` takes the first N, which for the pooled MMLU task is one or two subjects)."""
    if raw is None:
        return None
    raw = _mapping(raw, where)
    _check_keys(raw, {"start", "stop", "step"}, where)
    values = (raw.get("start", 0), raw.get("stop"), raw.get("step", 1))
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values) or values[0] < 0 or values[2] < 1:
        raise StudyConfigError(
            f"{where} needs integers start >= 0, stop and step >= 1, e.g. {{stop: 14042, step: 47}}"
        )
    if values[1] <= values[0]:
        raise StudyConfigError(f"{where}: stop must be larger than start")
    count = len(range(*values))
    # lm_eval takes the indices on its command line, and one argument holds at most 128 KiB (MAX_ARG_STRLEN)
    if count > SAMPLES_MAX or len(json.dumps(list(range(*values)), separators=(",", ":"))) > 120_000:
        raise StudyConfigError(
            f"{where} selects {count:,} documents; lm_eval --samples lists every index on the command line, "
            f"which holds about {SAMPLES_MAX:,}: take a larger step, or use limit"
        )
    return values


def _limit(value: Any, where: str) -> int | float | None:
    """lm_eval's ``--limit``: documents (>= 1) or a fraction (< 1); NaN passed ``limit <= 0`` and inf
    failed in the cell (``int(inf)``)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise StudyConfigError(
            f"{where} must be a positive number (documents, or a fraction < 1), got {value!r}"
        )
    return value


def _batch_size(value: Any, where: str) -> str | int | None:
    """lm_eval's ``--batch_size`` as its hf model reads it: an integer >= 1, ``auto`` or ``auto:N``."""
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    ok = False
    if text is not None:
        head, _, schedule = text.partition(":")
        if head == "auto":
            ok = not schedule or _positive_number(schedule)
        else:
            ok = text.isdigit() and int(text) >= 1 and not schedule
    if not ok:
        raise StudyConfigError(
            f"{where} must be an integer >= 1, auto or auto:N (lm_eval --batch_size), got {value!r}"
        )
    return value


def _positive_number(text: str) -> bool:
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    """``model_args:``: text keys, and values lm_eval's ``key=value,...`` string can carry."""
    args = _mapping(raw, where)
    for key, value in args.items():
        if not isinstance(value, (str, int, float, bool)):
            raise StudyConfigError(
                f"{where}.{key} must be a single value (text, number or true/false): lm_eval reads "
                f"--model_args as key=value pairs; got {type(value).__name__} {value!r}"
            )
    return args


def _metadata(raw: Any, where: str) -> dict[str, Any]:
    """``metadata:`` goes to lm_eval as ``--metadata JSON``: JSON values with text keys all the way down.
    ``json.dumps`` would turn a ``false:`` key (an unquoted ``off:``) into ``"false"`` and refuse a date,
    and the plan's fingerprint (``sort_keys``) failed on mixed key types with a raw TypeError."""
    metadata = _mapping(raw, where)
    _json_value(metadata, where)
    return metadata


def _json_value(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in _mapping(value, where).items():
            _json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, f"{where}[{index}]")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise StudyConfigError(
            f"{where} must hold JSON values (text, numbers, true/false, lists, mappings), got "
            f"{type(value).__name__} {value!r}; quote it to pass it as text"
        )


def _eval_settings(raw: dict, base: EvalSettings, where: str) -> EvalSettings:
    _check_keys(raw, _EVAL_KEYS, where)
    limit = _limit(raw["limit"], f"{where}.limit") if "limit" in raw else base.limit
    samples = _samples(raw["samples"], f"{where}.samples") if "samples" in raw else base.samples
    if samples is not None and limit is not None:
        raise StudyConfigError(f"{where}: give limit or samples, not both (lm_eval accepts only one)")
    shots = raw.get("num_fewshot", base.num_fewshot)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 0):
        raise StudyConfigError(f"{where}.num_fewshot must be an integer >= 0")
    return EvalSettings(
        backend=_text(raw["backend"], f"{where}.backend", "a model name")
        if "backend" in raw
        else base.backend,
        model_args={**base.model_args, **_arguments(raw.get("model_args"), f"{where}.model_args")},
        device=_optional_text(raw, "device", where, "a device") if "device" in raw else base.device,
        batch_size=_batch_size(raw["batch_size"], f"{where}.batch_size")
        if "batch_size" in raw
        else base.batch_size,
        limit=limit,
        num_fewshot=shots,
        samples=samples,
        metadata={**base.metadata, **_metadata(raw.get("metadata"), f"{where}.metadata")},
        launcher=_launcher(raw["launcher"], f"{where}.launcher") if "launcher" in raw else base.launcher,
    )


def _launcher(value: Any, where: str) -> tuple[str, ...]:
    """``"torchrun --nproc_per_node 2"`` -> its words; a launcher must run ``-m lm_eval`` after them."""
    if isinstance(value, str):
        words = tuple(shlex.split(value))
    elif isinstance(value, list) and all(isinstance(word, str) for word in value):
        words = tuple(value)
    else:
        raise StudyConfigError(f"{where} must be a command line such as 'torchrun --nproc_per_node 8'")
    if not words or words[-1] == "-m" or "lm_eval" in words:
        raise StudyConfigError(
            f"{where}: give only the launcher ({' '.join(words) or 'empty'}); the study appends "
            "`-m lm_eval ...` itself, e.g. 'torchrun --nproc_per_node 8' or 'accelerate launch --multi_gpu'"
        )
    return words


def _model(name: str, raw: dict, where: str, tasks: dict) -> ModelSpec:
    _check_keys(raw, {"bundled", "pretrained", "model_args", "stage", "evaluate", "tasks"}, where)
    if ("bundled" in raw) == ("pretrained" in raw):
        raise StudyConfigError(
            f"{where}: give exactly one of `bundled:` (smollm2, gemma3) or `pretrained:` (a folder or hub id)"
        )
    return ModelSpec(
        name=name,
        bundled=_optional_text(raw, "bundled", where, "a bundled model name (smollm2, gemma3)"),
        pretrained=_optional_text(raw, "pretrained", where, "a folder or hub id"),
        model_args=_arguments(raw.get("model_args"), f"{where}.model_args"),
        stage=_text(raw.get("stage", "model"), f"{where}.stage", "a stage label"),
        evaluate=_flag(raw, "evaluate", True, where),
        tasks=_task_list(raw, tasks, where),
    )


def _task_list(raw: dict, tasks: dict, where: str) -> tuple[str, ...] | None:
    """``tasks: [calib_mmlu, calib_facts]`` of a model or stage: names of the study's tasks, each once."""
    if "tasks" not in raw or raw["tasks"] is None:
        return None
    value = raw["tasks"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise StudyConfigError(
            f"{where}.tasks must be a non-empty list of the study's task names, e.g. [{', '.join(tasks)}]; "
            f"got {value!r} (drop the key to evaluate on every task)"
        )
    unknown = [t for t in value if t not in tasks]
    if unknown:
        raise StudyConfigError(
            f"{where}.tasks: {', '.join(map(repr, unknown))} not among the study's tasks; add it under "
            f"`tasks:` or use one of {', '.join(tasks)}"
        )
    if len(set(value)) != len(value):
        raise StudyConfigError(f"{where}.tasks names a task twice: {value}")
    return tuple(value)


def _train(name: str, raw: dict, where: str, tasks: dict, earlier: dict[str, TrainSpec]) -> TrainSpec:
    if "replicate_of" in raw:
        return _replicate(name, raw, where, tasks, earlier)
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in TRAIN_KINDS:
        raise StudyConfigError(f"{where}.kind must be one of {', '.join(TRAIN_KINDS)}, got {kind!r}")
    required = {
        "sft": ("from", "data", "max_steps", "method"),
        "reward": ("from", "data", "max_steps"),
        "rloo": ("policy", "reward_model", "data", "max_steps"),
        "ppo": ("policy", "reward_model", "data", "max_steps"),
    }[kind]
    allowed = {"kind", "args", "evaluate", "tasks", "launcher", *required}
    _check_keys(raw, allowed, where)
    missing = [key for key in required if key not in raw]
    if missing:
        raise StudyConfigError(f"{where}: a {kind} stage needs {', '.join(missing)}")
    steps = raw["max_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise StudyConfigError(f"{where}.max_steps must be an integer >= 1")
    if kind == "sft" and raw["method"] not in ("full", "lora"):
        raise StudyConfigError(f"{where}.method must be full or lora, got {raw['method']!r}")
    raw = {**raw, "data": _text(raw["data"], f"{where}.data", "a file, folder or hub dataset name")}
    parents = {
        key: _optional_text(raw, key, where, "the name of a model or stage")
        for key in ("from", "policy", "reward_model")
    }
    args = _stage_args(kind, raw, _mapping(raw.get("args"), f"{where}.args"), f"{where}.args")
    return TrainSpec(
        name=name,
        kind=kind,
        data=raw["data"],
        max_steps=steps,
        source=parents["from"],
        method=raw.get("method"),
        policy=parents["policy"],
        reward_model=parents["reward_model"],
        args=args,
        evaluate=_flag(raw, "evaluate", kind != "reward", where),  # a reward model is a classifier, not an LM
        tasks=_task_list(raw, tasks, where),
        launcher=_train_launcher(raw, where),
    )


def _train_launcher(raw: dict, where: str) -> tuple[str, ...]:
    """``launcher: .venv-train-ppo/bin/python``: what runs ``-m lm_eval_calib.cli train ...`` instead of the
    study's own interpreter (a stage whose trainer needs other packages, such as PPO on trl 1.12)."""
    if raw.get("launcher") is None:
        return ()
    value = raw["launcher"]
    if isinstance(value, str):
        words = tuple(shlex.split(value))
    elif isinstance(value, list) and all(isinstance(word, str) for word in value):
        words = tuple(value)
    else:
        words = ()
    if not words or "lm_eval_calib.cli" in words or words[-1] == "-m":
        raise StudyConfigError(
            f"{where}.launcher must be the interpreter of the stage's environment, e.g. "
            f"'.venv-train-ppo/bin/python'; the study appends `-m lm_eval_calib.cli train ...` itself; "
            f"got {value!r}"
        )
    return words


_REPLICATE_KEYS = {"replicate_of", "args", "tasks", "evaluate"}


def _replicate(name: str, raw: dict, where: str, tasks: dict, earlier: dict[str, TrainSpec]) -> TrainSpec:
    """A stage that repeats an earlier one with another seed: ``replicate_of: <stage>``, ``args: {seed: 1}``.

    Everything but the seed (and ``tasks:``/``evaluate:``) is the twin's, so the two differ by the seed alone
    and their paired difference on the same documents is the seed-to-seed spread of that stage.
    """
    import dataclasses

    extra = sorted(set(raw) - _REPLICATE_KEYS)
    if extra:
        raise StudyConfigError(
            f"{where}: a replicate copies its twin's settings; drop {', '.join(extra)} (allowed: "
            f"{', '.join(sorted(_REPLICATE_KEYS))}, e.g. args: {{seed: 1}})"
        )
    twin_name = _text(raw["replicate_of"], f"{where}.replicate_of", "the name of a stage listed above it")
    twin = earlier.get(twin_name)
    if twin is None:
        raise StudyConfigError(
            f"{where}.replicate_of: {twin_name!r} is not a training stage listed above it; name the stage "
            "this one repeats with another seed"
        )
    if twin.replicate_of is not None:
        raise StudyConfigError(
            f"{where}.replicate_of: {twin_name!r} is itself a replicate of {twin.replicate_of!r}; name "
            f"{twin.replicate_of!r}"
        )
    own = _mapping(raw.get("args"), f"{where}.args")
    settings = {**twin.args, **own}
    body = {"data": twin.data, "max_steps": twin.max_steps, "method": twin.method}
    args = _stage_args(twin.kind, body, settings, f"{where}.args")
    from lm_eval_calib_train.config import STAGES

    default_seed = {f.name: f.default for f in dataclasses.fields(STAGES[twin.kind])}.get("seed", 0)
    if args.get("seed", default_seed) == twin.args.get("seed", default_seed):
        raise StudyConfigError(
            f"{where}: a replicate of {twin_name} with its seed ({twin.args.get('seed', default_seed)}) is "
            f"the same run; give another one, e.g. args: {{seed: {twin.args.get('seed', default_seed) + 1}}}"
        )
    return dataclasses.replace(
        twin,
        name=name,
        args=args,
        evaluate=_flag(raw, "evaluate", twin.evaluate, where),
        tasks=_task_list(raw, tasks, where),
        replicate_of=twin_name,
    )


# Stage settings the study file gives as the stage's own keys (`from:` is the train CLI's --model), and those
# the study itself decides (where the checkpoint goes, whether to resume or overwrite).
_STAGE_OWN_KEYS = {
    "model": "from",
    "policy": "policy",
    "reward_model": "reward_model",
    "data": "data",
    "max_steps": "max_steps",
    "method": "method",
}
_STUDY_SETS = ("output", "overwrite", "resume", "config")


def _stage_args(kind: str, raw: dict, args: dict, where: str) -> dict[str, Any]:
    """``args:`` of a stage, checked against that stage's settings (``lm_eval_calib_train.config``).

    The same dataclass builds the train CLI's flags, so a key it lacks would be an "unrecognized argument"
    after every earlier stage had trained; a value of the wrong type or out of range likewise. The whole
    stage config is built and validated here (with the study's own keys filled in), before anything runs.
    Keys may be spelled with ``_`` or ``-``; they are returned with ``_``.
    """
    import dataclasses

    from lm_eval_calib_train.config import STAGES, TrainInputError
    from lm_eval_calib_train.config_parsing import build_config, coerce

    cls = STAGES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    valid = sorted(fields - set(_STAGE_OWN_KEYS) - set(_STUDY_SETS))
    settings: dict[str, Any] = {}
    for key, value in args.items():
        name = str(key).replace("-", "_")
        if name in _STAGE_OWN_KEYS and name in fields:
            raise StudyConfigError(
                f"{where}.{key}: give it as the stage's own key `{_STAGE_OWN_KEYS[name]}:`, not under args"
            )
        if name in _STUDY_SETS:
            raise StudyConfigError(f"{where}.{key}: the study sets it (checkpoint folder, resume); drop it")
        if name not in fields:
            raise StudyConfigError(
                f"{where}: unknown key {key!r} for `train {kind}`; valid: {', '.join(valid)}"
            )
        try:
            settings[name] = coerce(cls, name, value)
        except TrainInputError as exc:
            raise StudyConfigError(f"{where}.{key}: {exc}") from None
    own = {"output": "checkpoint", "data": str(raw["data"]), "max_steps": raw["max_steps"]}
    rl = kind in ("rloo", "ppo")
    own.update({"policy": "policy", "reward_model": "reward"} if rl else {"model": "model"})
    if kind == "sft":
        own["method"] = raw["method"]
    try:
        build_config(cls, {**settings, **own})
    except TrainInputError as exc:
        raise StudyConfigError(f"{where}: {exc}") from None
    return settings


def _finding(raw: Any, where: str, tasks: dict, evaluated: set[str], config_tasks: Any = None) -> FindingSpec:
    raw = _mapping(raw, where)
    keys = ("claim", "task", "metric", "baseline", "treatment", "expect")
    _check_keys(raw, {*keys, "margin", "estimator", "filter"}, where)
    missing = [key for key in keys if key not in raw]
    if missing:
        raise StudyConfigError(f"{where}: a finding needs {', '.join(missing)}")
    raw = {**raw, **{key: _text(raw[key], f"{where}.{key}") for key in keys}}  # `metric: [ece, brier]`
    if raw["task"] not in tasks:
        raise StudyConfigError(f"{where}.task {raw['task']!r} is not one of the study's tasks")
    if raw["metric"] not in METRICS:
        raise StudyConfigError(f"{where}.metric {raw['metric']!r} unknown; known: {', '.join(METRICS)}")
    for key in ("baseline", "treatment"):
        if raw[key] not in evaluated:
            raise StudyConfigError(f"{where}.{key} {raw[key]!r} is not an evaluated model or stage")
    if raw["baseline"] == raw["treatment"]:
        raise StudyConfigError(
            f"{where}: compares {raw['baseline']} with itself (baseline and treatment are both "
            f"{raw['baseline']!r}); a claim needs two different models or stages"
        )
    if raw["expect"] not in ("higher", "lower", "same"):
        raise StudyConfigError(
            f"{where}.expect must be higher, lower or same (the treatment's value vs the baseline's)"
        )
    margin = raw.get("margin")
    if raw["expect"] == "same":
        if (
            isinstance(margin, bool)
            or not isinstance(margin, (int, float))
            or not math.isfinite(margin)
            or not margin > 0
        ):
            raise StudyConfigError(
                f"{where}: expect: same needs margin: a number > 0 (the largest difference that counts "
                f"as the same, e.g. margin: 0.02 for ECE), got {margin!r}"
            )
    elif margin is not None:
        raise StudyConfigError(f"{where}.margin only goes with expect: same; drop it or say expect: same")
    if config_tasks is not None:
        for key in ("baseline", "treatment"):
            if raw["task"] not in config_tasks(raw[key]):
                raise StudyConfigError(
                    f"{where}.{key}: {raw[key]!r} is not evaluated on {raw['task']} (its `tasks:` are "
                    f"{', '.join(config_tasks(raw[key]))}); add {raw['task']} to its `tasks:` or drop the "
                    "claim"
                )
    estimator = _optional_text(raw, "estimator", where, "a confidence estimator (seqprob, ptrue, ...)")
    estimators = _estimators(tasks[raw["task"]])
    if estimator is None and len(estimators) > 1:
        raise StudyConfigError(
            f"{where}: {raw['task']} scores confidence with several estimators ({', '.join(estimators)}); "
            "say which one the claim is about with estimator: <one of them>"
        )
    if estimator is not None and estimators and estimator not in estimators:
        raise StudyConfigError(
            f"{where}.estimator {estimator!r} is not among {raw['task']}'s estimators "
            f"({', '.join(estimators)}); use one of them or add it to the task's metadata"
        )
    fields = {key: str(raw[key]) for key in keys}
    return FindingSpec(
        **fields,
        margin=float(margin) if margin is not None else None,
        estimator=estimator,
        filter=_optional_text(raw, "filter", where, "an lm-eval filter name (e.g. strict-match)"),
    )


def _estimators(settings: EvalSettings) -> list[str]:
    """The confidence estimators a task's ``metadata: {calibration: {confidence: [...]}}`` asks for."""
    calibration = settings.metadata.get("calibration")
    confidence = calibration.get("confidence") if isinstance(calibration, dict) else None
    if isinstance(confidence, str):
        return [confidence]
    return [str(c) for c in confidence] if isinstance(confidence, list) else []


def parse_study(raw: Any, source: Path) -> StudyConfig:
    """Validate a loaded study mapping; ``source`` is the file it came from (for messages)."""
    where = str(source)
    raw = _expand(_mapping(raw, where), where)
    _check_keys(raw, {"name", "output", "archive", "eval", "tasks", "models", "train", "findings"}, where)
    for key in ("output", "tasks"):
        if key not in raw:
            raise StudyConfigError(f"{where}: `{key}:` is required")
    base = _eval_settings(_mapping(raw.get("eval"), "eval"), EvalSettings(), "eval")
    tasks_raw = _mapping(raw["tasks"], "tasks")
    if not tasks_raw:
        raise StudyConfigError(f"{where}: `tasks:` is empty; list at least one task, e.g. calib_mmlu: {{}}")
    tasks = {
        _check_name(name, f"tasks.{name}"): _eval_settings(
            _mapping(body, f"tasks.{name}"), base, f"tasks.{name}"
        )
        for name, body in tasks_raw.items()
    }
    models = {
        _check_name(n, f"models.{n}"): _model(n, _mapping(b, f"models.{n}"), f"models.{n}", tasks)
        for n, b in _mapping(raw.get("models"), "models").items()
    }
    train: dict[str, TrainSpec] = {}
    for n, body in _mapping(raw.get("train"), "train").items():
        _check_name(n, f"train.{n}")
        if n in models:
            raise StudyConfigError(f"train.{n}: the name is already used by a model; names must be unique")
        spec = _train(n, _mapping(body, f"train.{n}"), f"train.{n}", tasks, train)
        for parent in spec.parents():
            if parent not in models and parent not in train:
                raise StudyConfigError(
                    f"train.{n}: {parent!r} is neither a model nor a stage listed above it (stages run in "
                    "file order, so a stage can only start from one listed earlier)"
                )
        if spec.kind in ("rloo", "ppo") and (
            spec.reward_model not in train or train[spec.reward_model].kind != "reward"
        ):
            raise StudyConfigError(f"train.{n}.reward_model must name a `kind: reward` stage listed above it")
        train[n] = spec
    if not models and not train:
        raise StudyConfigError(f"{where}: nothing to evaluate; add `models:` (or `train:` stages)")
    evaluated = {m.name for m in models.values() if m.evaluate} | {
        t.name for t in train.values() if t.evaluate
    }
    findings_raw = raw.get("findings") or []
    if not isinstance(findings_raw, list):
        raise StudyConfigError(f"{where}: `findings:` must be a list")

    def tasks_of(name: str) -> list[str]:
        spec = models.get(name) or train.get(name)
        return [t for t in tasks if spec.tasks is None or t in spec.tasks]

    findings = [_finding(f, f"findings[{i}]", tasks, evaluated, tasks_of) for i, f in enumerate(findings_raw)]
    name = source.stem if raw.get("name") is None else _text(raw["name"], "name", "a study name")
    archive = raw.get("archive")
    if archive is not None:
        archive = Path(_text(archive, f"{where}: archive", "a folder (relative to the working directory)"))
        if archive.resolve() == Path(str(raw["output"])).resolve():
            raise StudyConfigError(
                f"{where}: `archive:` is the output folder; name a folder of its own (e.g. results/{name})"
            )
    return StudyConfig(
        name=_check_name(name, "name"),
        # `output: null` ran into a folder named "None"
        output=Path(_text(raw["output"], f"{where}: output", "a folder (relative to the working directory)")),
        eval=base,
        tasks=tasks,
        models=models,
        train=train,
        findings=findings,
        source=source,
        archive=archive,
    )


def load_study(path: Path | str) -> StudyConfig:
    """Read and validate a study YAML file."""
    from lm_eval_calib_train.config_parsing import YAMLInputError, load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"{path}: no such study file; see examples/offline_mini.yaml for the format")
    try:
        raw = load_yaml_file(path)  # bounded: depth, aliases (a "billion laughs" file), UTF-8
    except YAMLInputError as exc:
        raise StudyConfigError(str(exc)) from None
    except OSError as exc:
        raise StudyConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_study(raw, path)
