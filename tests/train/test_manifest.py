"""The training manifest contract: written atomically by train stages, read back by the report."""

from __future__ import annotations

import json

import pytest

from lm_eval_calib.manifest import (
    MANIFEST_NAME,
    REQUIRED_KEYS,
    ManifestError,
    manifest_for_model_args,
    read_manifest,
    write_manifest,
)


def _manifest(**overrides) -> dict:
    body = {
        "stage": "sft",
        "method": "lora",
        "label": "tiny SFT LoRA (alpaca)",
        "base_model": "tiny",
        "parent": None,
        "data": {"name": "alpaca", "rows": 8, "sha256": "ab" * 32},
        "hyperparameters": {"learning_rate": 1e-4},
        "versions": {"torch": "2.13.0"},
        "seed": 0,
        "wall_time_s": 1.5,
        "created": "2026-11-28T12:00:00+00:00",
    }
    body.update(overrides)
    return body


def test_write_then_read_round_trips_and_leaves_no_temp_file(tmp_path):
    path = write_manifest(tmp_path / "ckpt", _manifest())
    assert path.name == MANIFEST_NAME
    assert sorted(p.name for p in path.parent.iterdir()) == [MANIFEST_NAME]
    assert path.stat().st_mode & 0o777 == 0o644  # readable by whoever evaluates the checkpoint
    back = read_manifest(tmp_path / "ckpt")
    assert back["label"] == "tiny SFT LoRA (alpaca)"
    assert back["format_version"] == 1
    assert {key: back[key] for key in REQUIRED_KEYS} == _manifest()


def test_write_refuses_incomplete_manifest_and_writes_nothing(tmp_path):
    body = _manifest()
    del body["seed"]
    with pytest.raises(ManifestError, match="seed"):
        write_manifest(tmp_path, body)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_read_returns_none_for_a_folder_without_manifest(tmp_path):
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"stage": "sft"}), "not an lm-eval-calib manifest"),
        (json.dumps({"format": "lm-eval-calib-manifest", "format_version": 99}), "format_version 99"),
        (json.dumps({"format": "lm-eval-calib-manifest", "format_version": 1, "stage": "sft"}), "lacks"),
    ],
)
def test_read_names_the_problem_of_a_bad_manifest(tmp_path, text, message):
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_manifest_for_model_args_prefers_the_adapter_folder(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    write_manifest(base, _manifest(label="base SFT full (alpaca)", method="full"))
    write_manifest(adapter, _manifest(label="base SFT LoRA adapter (alpaca)", method="lora-adapter"))
    as_string = f"pretrained={base},peft={adapter},dtype=float32"
    assert manifest_for_model_args(as_string)["label"] == "base SFT LoRA adapter (alpaca)"
    as_dict = {"pretrained": str(base), "dtype": "float32"}
    assert manifest_for_model_args(as_dict)["label"] == "base SFT full (alpaca)"
    assert manifest_for_model_args({"pretrained": "EleutherAI/pythia-70m"}) is None
    assert manifest_for_model_args(None) is None
