"""Helpers the calib_facts_gen YAML names with ``!function``; the logic lives in the installed package."""

from __future__ import annotations

import re
from typing import Any

from lm_eval_calib.data.lama import load_lama
from lm_eval_calib.harness.generation import GenerationCalibrationTask

# Per-run overrides, as for calib_facts: --metadata '{"facts": {"relations": ["P19"]}}'
_FACTS_OPTIONS = ("seed", "relations")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


class CalibFactsGen(GenerationCalibrationTask):
    """Fact generation; records carry the relation for per-relation breakdowns."""

    category_field = "relation"


def load_dataset(data_dir=None, seed=1234, relations=None, facts=None, **_metadata):
    """``custom_dataset`` hook: one row per fact (no options are drawn: the answer is generated)."""
    overrides = dict(facts or {})
    unknown = sorted(set(overrides) - set(_FACTS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown facts option(s) {', '.join(map(repr, unknown))} for calib_facts_gen in --metadata; "
            f"known: {', '.join(_FACTS_OPTIONS)}"
        )
    options = {"seed": seed, "relations": relations} | overrides
    return load_lama(data_dir=data_dir, n_distractors=0, **options)


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or quotes, no leading article."""
    text = " ".join(str(text).lower().split()).strip("\"'` ")
    return _ARTICLE.sub("", text)


def starts_with_object(generation: str, gold: str) -> bool:
    """Whether the normalised generation starts with the normalised gold object as a whole word
    (``"Paris, France"`` answers ``Paris``; ``"Parisian"`` does not)."""
    generated, obj = normalise(generation), normalise(gold)
    if not obj or not generated.startswith(obj):
        return False
    rest = generated[len(obj) :]
    return not rest or not rest[0].isalnum()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": float(starts_with_object(results[0], doc["object"]))}
