"""Helpers the calib_facts YAMLs name with ``!function``; the logic lives in the installed package."""

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


def load_dataset(data_dir=None, n_distractors=9, seed=1234, relations=None, facts=None, **_metadata):
    """``custom_dataset`` hook: YAML ``dataset_kwargs`` give the defaults, ``--metadata facts`` overrides."""
    overrides = dict(facts or {})
    unknown = sorted(set(overrides) - set(_FACTS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown facts option(s) {', '.join(map(repr, unknown))} in --metadata; "
            f"known: {', '.join(_FACTS_OPTIONS)}"
        )
    options = {"n_distractors": n_distractors, "seed": seed, "relations": relations} | overrides
    dataset = load_lama(data_dir=data_dir, **options)
    # Each option is scored as the continuation " <object><suffix>" (suffix: template text after [Y]).
    return dataset.map(lambda doc: {"choices": [option + doc["suffix"] for option in doc["options"]]})
