"""The committed per-subject MMLU YAMLs are exactly what their generator writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MMLU_TASKS = Path(__file__).resolve().parents[2] / "tasks" / "mmlu"


def _generator():
    spec = importlib.util.spec_from_file_location("_generate_configs", MMLU_TASKS / "_generate_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_subject_yamls_match_the_committed_ones(tmp_path):
    written = _generator().generate(tmp_path)
    assert len(written) == 57
    committed = sorted(
        p.name for p in MMLU_TASKS.glob("calib_mmlu_*.yaml") if p.name != "calib_mmlu_val.yaml"
    )
    committed = [name for name in committed if name != "calib_mmlu.yaml"]
    assert sorted(p.name for p in written) == committed
    for path in written:
        assert path.read_text() == (MMLU_TASKS / path.name).read_text(), (
            f"{path.name} drifted; rerun the generator"
        )
