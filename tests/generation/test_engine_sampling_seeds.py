"""Seeds of the sampling estimators' samples (issue 31): the per-document seed rule, the ``sample_seed``
option, the sampling settings sent to the model, and how each sample's provenance reaches the records.

Pure Python, no model: the engine routes themselves run on SmolLM2 in tests/models/test_engine_sampling.py
(hf-calib) and tests/models/test_engine_sampling_vllm.py (vllm-calib).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lm_eval_calib.generation import passes
from lm_eval_calib.generation.estimators import (
    DOC_SEED_BITS,
    ESTIMATORS,
    SAMPLED_AS_REQUESTS,
    SAMPLED_AT_ENGINE,
    DocView,
    SampledText,
    doc_sample_seed,
)
from lm_eval_calib.options import SAMPLES_MAX, CalibrationOptions

SAMPLING = ["consistency", "semantic_entropy", "num_sets", "lexsim", "eigv", "degree"]


def test_doc_seed_depends_only_on_run_seed_task_and_document():
    assert doc_sample_seed(1234, "gsm8k", 7) == doc_sample_seed(1234, "gsm8k", 7)
    seeds = {doc_sample_seed(run, task, doc) for run in (0, 1234) for task in ("a", "b") for doc in range(50)}
    assert len(seeds) == 2 * 2 * 50  # every (run seed, task, document) its own seed
    assert all(0 <= s < 2**DOC_SEED_BITS for s in seeds)


def test_no_two_documents_share_a_vllm_child_stream():
    """vLLM seeds the K children of an n=K request seed, seed+1, ..., seed+K-1: the ranges of 20,000
    documents' seeds never overlap at the largest K allowed."""
    bases = np.sort([doc_sample_seed(1234, "calib_mmlu", doc) for doc in range(20_000)])
    assert np.diff(bases).min() >= SAMPLES_MAX


def test_sample_seed_option_default_and_bounds():
    assert CalibrationOptions().sample_seed == passes.DEFAULT_SAMPLE_SEED == 1234
    assert CalibrationOptions.from_metadata({"calibration": {"sample_seed": 0}}).sample_seed == 0
    largest = CalibrationOptions.from_metadata({"calibration": {"sample_seed": 2**63 - 1}})
    assert largest.sample_seed == 2**63 - 1
    for bad in (-1, 2**63, 1.5, "7", True, None):
        with pytest.raises(ValueError, match="'sample_seed' must be an integer from 0 to"):
            CalibrationOptions.from_metadata({"calibration": {"sample_seed": bad}})


def test_sampling_settings_sample_and_drop_a_task_seed():
    task = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0, "seed": 5}
    kwargs = passes.sampling_kwargs(task)
    # a fixed seed on each of K separate requests would give K copies of one answer (vLLM seeds per request)
    assert kwargs == {"until": ["\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0}
    assert task["seed"] == 5 and task["do_sample"] is False  # the task's own settings are not touched
    assert passes.sampling_kwargs(None) == {"do_sample": True, "temperature": 1.0}


def test_sampled_text_is_the_text_and_pickles():
    s = SampledText("x #### 42", 99, SAMPLED_AT_ENGINE)
    assert s == "x #### 42" and isinstance(s, str)
    back = pickle.loads(pickle.dumps(s))
    assert (back, back.seed, back.sampled_by) == ("x #### 42", 99, SAMPLED_AT_ENGINE)


@pytest.mark.parametrize("name", SAMPLING)
def test_records_say_how_the_samples_were_drawn(name):
    texts = tuple(SampledText(t, 4242, SAMPLED_AT_ENGINE) for t in ("a #### 1", "b #### 2"))
    view = DocView(samples=texts, filtered_samples=("1", "2"), greedy_filtered="1")
    _, extras = ESTIMATORS[name].confidence(view)
    assert (extras["sample_seed"], extras["sampled_by"]) == (4242, SAMPLED_AT_ENGINE)
    unseeded = tuple(SampledText(t, None, SAMPLED_AS_REQUESTS) for t in ("a", "b"))
    _, extras = ESTIMATORS[name].confidence(DocView(samples=unseeded, filtered_samples=("a", "b")))
    assert (extras["sample_seed"], extras["sampled_by"]) == (None, SAMPLED_AS_REQUESTS)
