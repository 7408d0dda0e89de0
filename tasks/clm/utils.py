"""Helpers the calib_clm YAML names with ``!function``; the logic lives in the installed package."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

from lm_eval_calib.data.wikitext import load_wikitext
from lm_eval_calib.harness.token_task import TokenCalibrationTask

# The perplexities lm-eval's own `wikitext` task reports, computed the same way, so the two can be compared.
PERPLEXITY_METRICS = {
    "word_perplexity": weighted_perplexity,
    "byte_perplexity": weighted_perplexity,
    "bits_per_byte": bits_per_byte,
}


@cache
def _lm_eval_wikitext_module():
    """lm-eval's own wikitext preprocessing, loaded from its task folder (it is not an importable package)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "preprocess_wikitext.py"
    spec = importlib.util.spec_from_file_location("lm_eval_calib_wikitext_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detokenize(doc: dict) -> str:
    """The text scored: lm-eval's wikitext detokenizer applied to the page (as its `wikitext` task does)."""
    return _lm_eval_wikitext_module().wikitext_detokenizer(doc)


class CalibCLM(TokenCalibrationTask):
    """Next-token calibration on WikiText-2: every token of every document is one item."""

    category_field = "title"

    def process_results(self, doc: dict, results: list) -> dict:
        (loglikelihood,) = results
        words = len(re.split(r"\s+", doc["page"]))  # counted on the page before detokenizing, like lm-eval
        n_bytes = len(doc["page"].encode("utf-8"))
        perplexity = {
            "word_perplexity": (loglikelihood, words),
            "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes),
        }
        return super().process_results(doc, results) | perplexity

    def aggregation(self) -> dict:
        return super().aggregation() | PERPLEXITY_METRICS

    def higher_is_better(self) -> dict:
        return super().higher_is_better() | dict.fromkeys(PERPLEXITY_METRICS, False)


def load_dataset(data_dir=None, **_metadata):
    """``custom_dataset`` hook: lm-eval passes the task metadata (data_dir, ...)."""
    return load_wikitext(data_dir=data_dir)
