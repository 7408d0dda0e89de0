"""Helpers the calib_facts YAMLs name with ``!function``; the logic lives in the installed package."""

from collections.abc import Mapping

from lm_eval_calib.data.lama import load_lama
from lm_eval_calib.harness.task import CalibrationTask
from lm_eval_calib.harness.token_task import TokenCalibrationTask

# Per-run overrides: --metadata '{"facts": {"n_distractors": 20, "seed": 0, "relations": ["P19"]}}'
_FACTS_OPTIONS = ("n_distractors", "seed", "relations")


class CalibFacts(CalibrationTask):
    """LAMA T-REx fact completion as multiple choice; records carry the relation for breakdowns."""

    category_field = "relation"


class CalibFactsOpen(TokenCalibrationTask):
    """Open vocabulary: is the model's top-1 next token after the prompt the gold object's first token?"""

    first_token_only = True
    category_field = "relation"


def _options(n_distractors, seed, relations, facts) -> dict:
    """YAML ``dataset_kwargs`` defaults overridden by ``--metadata '{"facts": {...}}'``, checked by name."""
    if facts is None:
        facts = {}
    if not isinstance(facts, Mapping):  # `facts or {}` would let 0, false, "" and [] pass as "no overrides"
        raise ValueError(
            "--metadata 'facts' must be a mapping such as "
            '{"facts": {"n_distractors": 20, "relations": ["P19"]}}, '
            f"got {type(facts).__name__} {facts!r}"
        )
    unknown = sorted(set(facts) - set(_FACTS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown facts option(s) {', '.join(map(repr, unknown))} in --metadata; "
            f"known: {', '.join(_FACTS_OPTIONS)}"
        )
    return {"n_distractors": n_distractors, "seed": seed, "relations": relations} | dict(facts)


def _load(min_options: int, data_dir, options: dict):
    """``load_lama`` with the option errors prefixed by where the options come from (a task's YAML or
    ``--metadata facts``), since its messages name only the option."""
    try:
        return load_lama(data_dir=data_dir, min_options=min_options, **options)
    except ValueError as exc:  # a bad option value (missing or malformed files raise DataNotFoundError)
        raise ValueError(
            f"calib_facts option (--metadata '{{\"facts\": {{...}}}}' or the task's dataset_kwargs): {exc}"
        ) from exc


def load_dataset(data_dir=None, n_distractors=9, seed=1234, relations=None, facts=None, **_metadata):
    """``custom_dataset`` hook of the multiple-choice tasks: YAML ``dataset_kwargs`` give the defaults,
    ``--metadata facts`` overrides. Every fact needs at least two options (see ``load_lama``'s
    ``min_options``): ``n_distractors: 0``, or a relation with one distinct object, is an error."""
    options = _options(n_distractors, seed, relations, facts)
    dataset = _load(2, data_dir, options)
    # Each option is scored as the continuation " <object><suffix>" (suffix: template text after [Y]).
    return dataset.map(lambda doc: {"choices": [option + doc["suffix"] for option in doc["options"]]})


def load_open_dataset(data_dir=None, n_distractors=0, seed=1234, relations=None, facts=None, **_metadata):
    """``custom_dataset`` hook of ``calib_facts_open``: the same facts; options are not scored, so a fact
    may have one (the task's YAML asks for ``n_distractors: 0``)."""
    return _load(1, data_dir, _options(n_distractors, seed, relations, facts))
