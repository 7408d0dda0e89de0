"""Our tasks give the same results and records on lm-eval 0.5 as on lm-eval 0.4.13 (same model, documents).

Runs in lm-eval 0.5's environment (.ci/run_lm_eval_05; marker ``lm_eval_05``). Both sides run the same
script (tests/compat/run_tasks.py) on the tests' tiny random Llama with SmolLM2's tokenizer (``hf-calib``:
equality of numbers needs no skill, and it keeps the job within CI's time), a few documents per task: this
interpreter (0.5), and lm-eval 0.4.13's interpreter as a subprocess (``LM_EVAL_CALIB_REFERENCE_PYTHON``,
else the main test environment's: ``.venv-test`` or ``.venv`` of this checkout). Compared: every result key
(values and stderrs, to 1e-9; "N/A" where 0.4.13 writes it), every document's logged values (records
included), and the time lm-eval spends aggregating (0.5 bootstraps every non-``mean`` aggregation with
100,000 pool draws unless the "stderr (lm-eval 0.5)" patch answers for our tasks).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lm_eval_calib.harness.compat import lm_eval_line

pytestmark = pytest.mark.lm_eval_05

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_tasks.py")
TASKS = (
    "calib_mmlu_anatomy",
    "calib_facts",
    "calib_facts_open",
    "calib_clm",
    "calib_mmlu_anatomy_continuation",
    "calib_mmlu_social_sciences_continuation",
)
"""Our multiple-choice tasks (MMLU with 5 shots; LAMA facts), token tasks (first token; rolling text), a
wrapped multiple-choice task of lm-eval's (its own acc and acc_norm, plus ece_norm, ...) and a tag of 12 of
them pooled as one task (``PooledCalibrationTask``; its first documents): 4 documents each."""
LIMIT = 4
GENERATION_TASKS = ("calib_gsm8k", "calib_facts_gen")
"""A wrapped generate_until task (two filters, its own exact_match, each estimator's records) and ours (its
YAML's ``metric: acc``, which 0.5 registers for log-likelihood tasks only): 2 documents each."""
GENERATION_LIMIT = 2
TOLERANCE = 1e-9
REFERENCE_ENV = "LM_EVAL_CALIB_REFERENCE_PYTHON"


def _lm_eval_version(python: Path) -> str | None:
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('lm_eval'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def reference_python() -> Path:
    """lm-eval 0.4.13's interpreter: the one named by the environment, else the checkout's test env."""
    named = os.environ.get(REFERENCE_ENV)
    candidates = [Path(named)] if named else [REPO / ".venv-test/bin/python", REPO / ".venv/bin/python"]
    for python in candidates:
        version = _lm_eval_version(python) if python.exists() else None
        if version is not None and version.startswith("0.4"):
            return python
    pytest.fail(
        f"no lm-eval 0.4.13 interpreter for the reference run (tried {', '.join(map(str, candidates))}); "
        f"set {REFERENCE_ENV} to the python of an environment with lm-eval 0.4.13 and lm-eval-calib"
    )


def _run(
    python: Path, out: Path, model_args: str, tasks: tuple[str, ...], limit: int, data_root: Path
) -> dict[str, Any]:
    command = [str(python), str(RUNNER), str(out), "--tasks", ",".join(tasks), "--limit", str(limit)]
    command += ["--model", "hf-calib", "--model_args", model_args]
    env = os.environ | {"LM_EVAL_CALIB_DATA": str(data_root)}  # both sides read the same offline data
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert proc.returncode == 0, f"{python} failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, data_root) -> dict[str, dict[str, Any]]:
    if lm_eval_line() != "0.5":
        pytest.skip("compares lm-eval 0.5 with 0.4.13: run in 0.5's environment (.ci/run_lm_eval_05)")
    folder = tmp_path_factory.mktemp("parity")
    model_args = f"pretrained={tiny_model_dir},dtype=float32"
    out: dict[str, dict[str, Any]] = {"0.4": {}, "0.5": {}}
    for name, tasks, limit in (("mc", TASKS, LIMIT), ("gen", GENERATION_TASKS, GENERATION_LIMIT)):
        for line, python in (("0.4", reference_python()), ("0.5", Path(sys.executable))):
            run = _run(python, folder / f"{name}_{line}.json", model_args, tasks, limit, data_root)
            assert run["lm_eval"].startswith(line), run["lm_eval"]
            out[line] |= run["tasks"]
    return out


def _same(a: Any, b: Any, where: str) -> None:
    """Equal, floats to TOLERANCE (NaN equals NaN), dicts and lists element by element."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys differ: {sorted(set(a) ^ set(b))}"
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE, f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} (0.4.13) vs {b!r} (0.5)"


@pytest.mark.parametrize("task", TASKS + GENERATION_TASKS)
def test_the_results_are_0_4_13_s(runs, task):
    """Every metric and stderr key, with its value, as lm-eval 0.4.13 reports it."""
    reference, ported = runs["0.4"][task]["results"], runs["0.5"][task]["results"]
    assert reference, f"{task}: no results on 0.4.13"
    _same(reference, ported, task)


@pytest.mark.parametrize("task", TASKS + GENERATION_TASKS)
def test_the_per_document_records_are_0_4_13_s(runs, task):
    """Each document logs the same values under the same keys (the records, references to them, acc)."""

    def by_doc(samples: list[dict]) -> dict[str, dict]:
        return {f"{s['doc_id']}/{s['filter']}": s["values"] for s in samples}

    reference, ported = by_doc(runs["0.4"][task]["samples"]), by_doc(runs["0.5"][task]["samples"])
    assert len({key.split("/")[0] for key in reference}) == (LIMIT if task in TASKS else GENERATION_LIMIT)
    _same(reference, ported, task)


def test_the_aggregation_is_not_lm_eval_0_5_s_pool_bootstrap(runs):
    """Our stderrs, not 100,000 pool draws of every non-mean aggregation: aggregating takes about as long
    on 0.5 as on 0.4.13 (the pool bootstrap takes minutes per task)."""
    for task in TASKS + GENERATION_TASKS:
        reference, ported = runs["0.4"][task]["aggregation_seconds"], runs["0.5"][task]["aggregation_seconds"]
        print(f"{task}: aggregation {reference:.3f} s on 0.4.13, {ported:.3f} s on 0.5")
        assert ported <= 3 * reference + 2.0, f"{task}: {ported:.1f} s on 0.5 vs {reference:.1f} s on 0.4.13"
