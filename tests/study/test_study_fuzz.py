"""Hostile and mutated inputs end in the project's own clear errors, never in a traceback (issue 29, item 5).

Three parsers read what users (or damaged disks) hand them: the study file (``lm-eval-calib study FILE
--dry-run``: load, check, plan), the ``--metadata`` task options (``calibration``, ``facts``) and lm-eval
samples files (``records_io``). Named hostile files are regression tests; the property-based tests
(Hypothesis, derandomized so CI sees the same examples every run) mutate valid inputs and allow exactly one
error type each: :class:`StudyConfigError`, ``ValueError`` with a message naming the option, and
:class:`SamplesError`. Memory is bounded by an address-space limit in the one test that would otherwise eat it
(the "billion laughs" file), time by Hypothesis' per-example deadline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lm_eval_calib.study.checks import check_study, task_option_problems
from lm_eval_calib.study.config import EvalSettings, StudyConfigError, load_study
from lm_eval_calib.study.plan import build_plan, describe

FUZZ = settings(
    # CI: 60 examples per property, a few seconds; LM_EVAL_CALIB_FUZZ_EXAMPLES=5000 for a longer hunt by hand
    max_examples=int(os.environ.get("LM_EVAL_CALIB_FUZZ_EXAMPLES", "60")),
    deadline=2000,  # ms per example; the first example may load torch (dtype and device checks)
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

VALID = """\
name: fuzz
output: out
eval: {backend: hf-calib, device: cpu, batch_size: 2, model_args: {dtype: float32}}
tasks:
  calib_mmlu: {limit: 3, metadata: {calibration: {n_bins: 15}}}
  calib_facts: {samples: {stop: 100, step: 7}, metadata: {facts: {n_distractors: 3, relations: [P19]}}}
models:
  a: {bundled: smollm2, stage: pretrained}
  b: {pretrained: ./model-b}
train:
  s: {kind: sft, from: b, method: lora, data: ./data.json, max_steps: 2, args: {lora_r: 4}}
  r: {kind: reward, from: b, data: ./pairs.jsonl, max_steps: 1}
findings:
  - {claim: c, task: calib_mmlu, metric: ece, baseline: a, treatment: s, expect: higher}
"""


@pytest.fixture(scope="module")
def workdir() -> Path:
    """A folder to run the study in (its outputs and relative paths land here, never in the repo)."""
    with tempfile.TemporaryDirectory(prefix="study-fuzz-") as folder:
        root = Path(folder)
        (root / "model-b").mkdir()
        (root / "model-b" / "config.json").write_text("{}")
        (root / "data.json").write_text('[{"instruction": "i", "output": "o"}]')
        (root / "pairs.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
        (root / "data" / "mmlu").mkdir(parents=True)
        (root / "data" / "lama_trex").mkdir()
        yield root


@pytest.fixture(scope="module")
def warm(workdir) -> Path:
    """The valid study's dry run, once: it builds lm_eval's task index and imports torch (seconds, once per
    process), so Hypothesis' per-example deadline measures the examples, not the warm-up."""
    study = workdir / "valid.yaml"
    study.write_text(VALID)
    with _inside(workdir):
        _dry_run(study)
    return workdir


@contextmanager
def _inside(folder: Path):
    """cwd and the data root for one dry run (Hypothesis runs many examples in one test call, so not the
    function-scoped ``monkeypatch``)."""
    cwd, env = Path.cwd(), os.environ.get("LM_EVAL_CALIB_DATA")
    os.chdir(folder)
    os.environ["LM_EVAL_CALIB_DATA"] = str(folder / "data")
    try:
        yield
    finally:
        os.chdir(cwd)
        if env is None:
            os.environ.pop("LM_EVAL_CALIB_DATA", None)
        else:
            os.environ["LM_EVAL_CALIB_DATA"] = env


def _dry_run(path: Path, note=lambda what: None) -> None:
    """What ``lm-eval-calib study FILE --dry-run`` does: load, check against this machine, plan, print.
    Hypothesis' statistics (``--hypothesis-show-statistics``) say how far each example got."""
    config = load_study(path)
    note("the file was read")
    check_study(config)
    note("the checks passed")
    cells = build_plan(config)
    describe(cells)
    for cell in cells:
        " ".join(cell.command)


def _refused(path: Path) -> str:
    with pytest.raises(StudyConfigError) as info:
        load_study(path)
    return str(info.value)


# --- named hostile files ---------------------------------------------------------------------------------


def _laughs(levels: int = 9, copies: int = 10) -> str:
    """A "billion laughs" file: each anchor holds ``copies`` aliases of the one before (10**9 values)."""
    lines = ["    a0: &a0 [" + ", ".join(["lol"] * copies) + "]"]
    for level in range(1, levels):
        lines.append(f"    a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * copies) + "]")
    head = "output: out\ntasks: {calib_mmlu: {}}\nmodels: {m: {bundled: smollm2}}\neval:\n  metadata:\n"
    return head + "\n".join(lines) + "\n"


def test_a_billion_laughs_file_is_refused_in_bounded_memory_and_time(tmp_path):
    """It ran ``--dry-run`` to 16 GB and an out-of-memory kill; now one error, under a 1.5 GiB cap."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs())
    assert yaml.safe_load(path.read_text())["eval"]["metadata"]["a8"]  # shared objects: loads small
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
        "from lm_eval_calib.study.config import StudyConfigError, load_study\n"
        "try:\n"
        f"    load_study({str(path)!r})\n"
        "except StudyConfigError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert "expand to more than 100,000 values" in proc.stdout and "billion laughs" in proc.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "output: out\ntasks: {calib_mmlu: {metadata: &a {x: *a}}}\nmodels: {m: {bundled: smollm2}}\n",
            r"an anchor refers to itself \(line 2\)",
        ),
        (
            "output: out\ntasks: {calib_mmlu: {metadata: {x: " + "[" * 5000 + "]" * 5000 + "}}}\n",
            r"nested more than 32 levels deep \(line 2\)",
        ),
        (
            "base: &b [[[[[[[[[[1]]]]]]]]]]\nb2: &b2 [[[[[[[[[[*b]]]]]]]]]]\n"
            "b3: &b3 [[[[[[[[[[*b2]]]]]]]]]]\nb4: [[[[[[[[[[*b3]]]]]]]]]]\n",
            r"aliases nest values more than 32 levels deep",
        ),
        (
            "output: out\non: push\ntasks: {calib_mmlu: {}}\nmodels: {m: {bundled: smollm2}}\n",
            r"key True \(bool\) is not text \(YAML reads an unquoted on, off, yes or no as a boolean",
        ),
        (
            "output: out\ntasks: {calib_mmlu: {}}\nmodels: {m: {bundled: smollm2}}\n"
            "train: {s: {kind: sft, from: [m], method: full, data: x.json, max_steps: 1}}\n",
            r"train.s.from must be the name of a model or stage, got list \['m'\]",
        ),
        (
            "output: out\ntasks: {calib_mmlu: {}}\nmodels: {m: {bundled: smollm2}, n: {bundled: gemma3}}\n"
            "findings: [{claim: c, task: calib_mmlu, metric: [ece, brier], baseline: m, treatment: n, "
            "expect: higher}]\n",
            r"findings\[0\].metric must be text, got list \['ece', 'brier'\]",
        ),
        (
            "output: out\ntasks: {calib_mmlu: {}}\nmodels: {m: {bundled: smollm2}}\n"
            "train: {s: {kind: sft, from: m, method: full, data: x.json, max_steps: 1,\n"
            "  args: {max_rows: [1]}}}\n",
            r"train.s.args.max_rows: --max-rows: expected a number, got \[1\]",
        ),
        (
            "output: out\ntasks: {calib_mmlu: {limit: " + "9" * 5000 + "}}\n",
            r"a value cannot be read: Exceeds the limit",
        ),
        ('output: out\ntasks: {calib_mmlu: {}}\nmodels: {m: {pretrained: "a\\0b"}}\n', r"NUL character"),
    ],
    ids=[
        "self-referencing-anchor",
        "deep-nesting",
        "deep-through-aliases",
        "on-key",
        "from-list",
        "metric-list",
        "stage-arg-list",
        "huge-integer",
        "nul-in-path",
    ],
)
def test_a_hostile_study_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert re.search(message, _refused(path))


def test_a_study_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes("output: out\nname: café\n".encode("latin-1"))
    assert "is not UTF-8 text: byte 0xe9 at line 2 (offset 21); save it as UTF-8" in _refused(path)


def test_a_train_config_file_is_read_within_the_same_bounds(tmp_path):
    """``lm-eval-calib train sft --config FILE`` reads its YAML through the same bounded loader."""
    from lm_eval_calib_train.config import SFTStageConfig, TrainInputError
    from lm_eval_calib_train.config_parsing import load_yaml_config

    cases = {
        "laughs": (_laughs().replace("output: out", "max_steps: 1"), "expand to more than"),
        "latin1": (None, "is not UTF-8 text"),
        "on": ("on: 1\n", "key True is not a setting name"),
        "inf": ("max_steps: .inf\n", "--max-steps: expected a finite number"),
        "list": ("learning_rate: [1]\n", "--learning-rate: expected a number"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        if text is None:
            path.write_bytes("label: café\n".encode("latin-1"))
        else:
            path.write_text(text)
        with pytest.raises(TrainInputError, match=message):
            load_yaml_config(path, SFTStageConfig)


# --- property-based: the study file ----------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.dates()
    | st.sampled_from(["", "\x00", "x" * 300, "~nosuchuser/x", "auto", "auto:x", "calib_mmlu", "a", "s",
                      "r", "b", "ece", "lora", "full", "sft", "reward", "all", "P19", "float33", "gpu",
                      "a,b=c", "."])
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.booleans() | st.integers(), inner, max_size=3)
    ),
    max_leaves=6,
)
_PLAUSIBLE = (
    st.sampled_from([1, 2, 4, 0.5, 0.02, "a", "b", "s", "r", "calib_mmlu", "calib_facts", "ece", "brier",
                     "higher", "same", "lora", "full", "reward", "./data.json", "./model-b", "smollm2",
                     "float32", "bfloat16", "cpu", "auto", True, False, None, "q_proj", "all-linear"])
    | st.builds(dict)
    | st.builds(list)
    | st.builds(lambda: {"n_bins": 20, "max_bootstrap": 0})
    | st.builds(lambda: ["P19", "P20"])
)  # fmt: skip
"""Values of the right type in the right places more often, so that more examples reach the plan."""
_PATHS = [
    "name", "output", "eval", "eval.backend", "eval.model_args", "eval.model_args.dtype", "eval.device",
    "eval.batch_size", "eval.limit", "eval.num_fewshot", "eval.samples", "eval.metadata", "eval.launcher",
    "tasks", "tasks.calib_mmlu", "tasks.calib_mmlu.limit", "tasks.calib_mmlu.metadata.calibration",
    "tasks.calib_mmlu.metadata.calibration.n_bins", "tasks.calib_mmlu.metadata.data_dir",
    "tasks.calib_facts.samples.step", "tasks.calib_facts.metadata.facts",
    "tasks.calib_facts.metadata.facts.n_distractors", "tasks.calib_facts.metadata.facts.relations",
    "tasks.calib_facts.metadata.facts.seed", "models", "models.a", "models.a.bundled", "models.b.pretrained",
    "models.a.evaluate", "models.a.stage", "models.b.model_args", "train", "train.s", "train.s.kind",
    "train.s.from", "train.s.method", "train.s.data", "train.s.max_steps", "train.s.args",
    "train.s.args.lora_r", "train.s.args.lora_target_modules", "train.s.args.learning_rate",
    "train.s.args.precision", "train.s.evaluate", "train.r.from", "findings", "findings.0",
    "findings.0.metric", "findings.0.task", "findings.0.baseline", "findings.0.expect", "findings.0.margin",
    "new_key",
]  # fmt: skip


def _mutate(body: Any, path: str, value: Any, delete: bool) -> None:
    *parents, last = path.split(".")
    target = body
    for key in parents:
        if isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        elif isinstance(target, dict):
            target = target.setdefault(key, {})
        else:
            return
    if isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = value
    elif isinstance(target, dict):
        if delete:
            target.pop(last, None)
        else:
            target[last] = value


@FUZZ
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(_PATHS), _PLAUSIBLE | _PLAUSIBLE | _VALUES, st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_study_files_end_in_a_study_error_never_a_traceback(warm, mutations):
    workdir = warm
    body = yaml.safe_load(VALID)
    for path, value, delete in mutations:
        _mutate(body, path, value, delete)
    study = workdir / "study.yaml"
    study.write_text(yaml.safe_dump(body, allow_unicode=True))
    with _inside(workdir), suppress(StudyConfigError):
        _dry_run(study, event)


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=len(VALID)),
    insert=st.binary(max_size=8) | st.sampled_from([b"&x ", b"*x", b"<<: *x\n", b"{", b"[", b"\xff", b": "]),
)
def test_damaged_study_text_ends_in_a_study_error_never_a_traceback(warm, cut, insert):
    workdir = warm
    study = workdir / "damaged.yaml"
    raw = VALID.encode()
    study.write_bytes(raw[:cut] + insert + raw[cut:])
    with _inside(workdir), suppress(StudyConfigError):
        _dry_run(study, event)


def test_the_valid_fuzz_seed_passes_the_dry_run(warm):
    """The mutations start from a study the dry run accepts (``warm`` ran it), so what they find is the
    mutation's."""
    assert (warm / "valid.yaml").is_file()


# --- property-based: --metadata task options -------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_OPTION_KEYS = st.sampled_from(
    ["n_bins", "bootstrap_seed", "max_bootstrap", "confidence", "samples", "n_distractors", "seed",
     "relations", "x"]
)  # fmt: skip
_OPTIONS = st.dictionaries(_OPTION_KEYS, _JSON | st.sampled_from([0, 1, 9, "all", ["P19"], ["seqprob"]]))
_METADATA = st.fixed_dictionaries(
    {}, optional={"calibration": _OPTIONS | _JSON, "facts": _OPTIONS | _JSON, "data_dir": _JSON}
)
OPTION_WORDS = ("calibration", "facts", "option", "n_distractors", "relation", "seed", "metadata")


@FUZZ
@given(metadata=_METADATA)
def test_metadata_options_end_in_a_clear_value_error_never_a_traceback(metadata):
    """``--metadata`` as the tasks read it: ``CalibrationOptions.from_metadata``, the facts tasks' option
    merge and ``load_lama``'s checks; errors are ``ValueError``s that name the option."""
    from lm_eval_calib.data import lama
    from lm_eval_calib.options import CalibrationOptions
    from lm_eval_calib.study.checks import _task_helpers

    try:
        CalibrationOptions.from_metadata(metadata)
    except ValueError as exc:
        assert any(word in str(exc) for word in OPTION_WORDS), exc
    facts = _task_helpers("facts")
    try:
        options = facts._options(9, 1234, None, metadata.get("facts"))
        lama._check_relations(options["relations"])
        lama._check_n_distractors(options["n_distractors"], 2)
        getattr(lama, "_check_seed", lambda seed: seed)(options["seed"])
    except ValueError as exc:
        assert any(word in str(exc) for word in OPTION_WORDS), exc
    for task in ("calib_mmlu", "calib_facts", "calib_facts_open", "calib_facts_gen", "arc_easy"):
        problems = task_option_problems(task, EvalSettings(metadata=metadata), f"tasks.{task}")
        assert all(isinstance(problem, str) and problem.startswith(f"tasks.{task}") for problem in problems)


# --- property-based: samples files -----------------------------------------------------------------------

STAMP = "2026-12-07T10-00-00"


def _valid_rows() -> list[dict]:
    from lm_eval_calib.records import make_record

    rows = []
    for doc_id in range(3):
        rows.append({"doc_id": doc_id, "filter": "none", "ece": make_record([-1.0, -2.0 - doc_id, -0.5], 1)})
    return rows


def _plain_rows() -> list[dict]:
    """A plain lm-eval multiple-choice task's documents (no calibration record: read from the resps)."""
    rows = []
    for doc_id in range(3):
        choices = ("yes", "no")
        rows.append(
            {
                "doc_id": doc_id,
                "doc": {},
                "target": "0",
                "arguments": {
                    f"gen_args_{i}": {"arg_0": "Q?", "arg_1": f" {c}"} for i, c in enumerate(choices)
                },
                "resps": [[["-1.0", "False"]], [["-2.0", "False"]]],
                "filtered_resps": [["-1.0", "False"], ["-2.0", "False"]],
                "filter": "none",
                "metrics": ["acc"],
                "acc": 1.0,
            }
        )
    return rows


_RECORD_KEYS = [
    "confidence",
    "correct",
    "brier",
    "nll",
    "target",
    "prediction",
    "probs",
    "loglik",
    "category",
]
_SAMPLE_KEYS = st.sampled_from(
    ["ece", "doc_id", "filter", "resps", "filtered_resps", "target", "arguments", "acc", "doc", "ece_seqprob"]
) | st.text(max_size=8)
_SAMPLE_VALUES = (
    _JSON
    | st.dictionaries(st.sampled_from(_RECORD_KEYS), _JSON, max_size=2)
    | st.builds(lambda: {"estimator": "seqprob", "confidence": 0.5, "correct": 1})
)
"""A top-level field of a logged document replaced, or fields of its record (``ece``) changed."""


def _read_everything(path: Path, config: Any) -> None:
    from lm_eval_calib.records_io import generation_views, has_records, read_samples

    read_samples(path, config=config)
    generation_views(path)
    has_records(path)


@FUZZ
@given(
    plain=st.booleans(),
    mutations=st.lists(st.tuples(st.integers(0, 2), _SAMPLE_KEYS, _SAMPLE_VALUES), max_size=3),
    cut=st.none() | st.integers(min_value=0, max_value=2000),
    config=st.none() | st.fixed_dictionaries({}, optional={"metadata": _METADATA, "output_type": _JSON}),
)
def test_damaged_samples_files_end_in_a_samples_error_never_a_traceback(
    workdir, plain, mutations, cut, config
):
    from lm_eval_calib.records_io import SamplesError

    rows = _plain_rows() if plain else _valid_rows()
    for index, key, value in mutations:
        target = rows[index]
        if key in target and isinstance(target[key], dict) and isinstance(value, dict):
            target[key].update(value)
        else:
            target[key or "ece"] = value
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path = workdir / f"samples_t_{STAMP}.jsonl"
    path.write_text(text[:cut] if cut is not None else text)
    with suppress(SamplesError):
        _read_everything(path, config)
        event("the file was read")
