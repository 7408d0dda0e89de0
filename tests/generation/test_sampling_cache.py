"""The sampling estimators' K samples and lm-eval's request cache (``--use_cache``; issue 31).

lm-eval 0.4.13 keys its cache on the request's arguments, so K identical sampling requests have one key
(upstream issue #3046); its ``CachingLM`` skips the cache only for requests with ``do_sample: true``. The
passes never go through it (they call the model behind it), the engine route is seeded per document, and a
task whose own ``repeats`` would be read back as K copies of one cached answer is refused before inference.

Real runs of the ``lm_eval`` CLI on SmolLM2-135M-Instruct (``--limit 2``, K = 3, ``max_gen_toks=16``), all
three on ONE cache file: ``hf-calib`` twice (the second run reads the greedy answers from the cache and must
draw the very same seeded samples), then plain ``hf`` (K separate requests, which must not come back as K
copies of a cached answer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_run, run_lm_eval
from lm_eval.api.model import CachingLM
from test_generation_e2e import write_test_tasks

from lm_eval_calib.generation import passes
from lm_eval_calib.generation.estimators import SAMPLED_AS_REQUESTS, SAMPLED_AT_ENGINE, doc_sample_seed

TASK = "calib_gsm8k_test"
ESTIMATORS = ["consistency", "semantic_entropy"]


def _run(
    include: Path,
    out: Path,
    model: str,
    model_args: str,
    cache: Path,
    data_root: Path,
    seed: int | None = None,
) -> list[dict]:
    calibration = {"confidence": ESTIMATORS, "samples": 3} | ({} if seed is None else {"sample_seed": seed})
    run_lm_eval(
        ["--model", model, "--model_args", model_args, "--include_path", str(include), "--tasks", TASK,
         "--limit", "2", "--num_fewshot", "0", "--device", "cpu", "--log_samples", "--use_cache", str(cache),
         "--gen_kwargs", "max_gen_toks=16", "--output_path", str(out),
         "--metadata", json.dumps({"calibration": calibration})],
        env={"LM_EVAL_CALIB_DATA": str(data_root)},
    )  # fmt: skip
    return read_run(out)[1][TASK]


def _samples(lines: list[dict]) -> dict[int, dict]:
    """Per document, the semantic-entropy record of the first filter (every filter has the same samples)."""
    first = [line for line in lines if line["filter"] == "strict-match"]
    return {line["doc_id"]: line["ece_semantic_entropy"] for line in first}


@pytest.mark.integration
def test_use_cache_neither_collapses_nor_changes_the_samples(tmp_path, data_root, smollm2_model_args):
    include = write_test_tasks(tmp_path / "tasks", data_root)
    cache = tmp_path / "cache" / "lm"
    first = _run(include, tmp_path / "a", "hf-calib", smollm2_model_args, cache, data_root)
    again = _run(include, tmp_path / "b", "hf-calib", smollm2_model_args, cache, data_root)
    plain = _run(include, tmp_path / "c", "hf", smollm2_model_args, cache, data_root)
    other_seed = _run(include, tmp_path / "d", "hf-calib", smollm2_model_args, cache, data_root, seed=7)
    reseeded = _samples(other_seed)
    assert list(cache.parent.glob("lm*.db"))  # the runs did use lm-eval's request cache

    seeded, rerun, unseeded = _samples(first), _samples(again), _samples(plain)
    assert set(seeded) == set(rerun) == set(unseeded) == {0, 1}
    for doc_id, record in seeded.items():
        assert record["sampled_by"] == SAMPLED_AT_ENGINE
        assert record["sample_seed"] == doc_sample_seed(passes.DEFAULT_SAMPLE_SEED, TASK, doc_id)
        assert len(set(record["texts"])) > 1, record["texts"]  # K draws, not K copies
        assert rerun[doc_id]["texts"] == record["texts"]  # same seed, same samples, cache or not
        # the user's sample_seed reaches the engine and the record: other seed, other samples
        assert reseeded[doc_id]["sample_seed"] == doc_sample_seed(7, TASK, doc_id) != record["sample_seed"]
        assert reseeded[doc_id]["texts"] != record["texts"]
        other = unseeded[doc_id]
        assert (other["sampled_by"], other["sample_seed"]) == (SAMPLED_AS_REQUESTS, None)
        assert len(other["texts"]) == 3 and len(set(other["texts"])) > 1, other["texts"]
    # the greedy answers of the second and third runs came from the first run's cache entries
    greedy = {line["doc_id"]: line["resps"] for line in first}
    assert {line["doc_id"]: line["resps"] for line in again} == greedy
    assert {line["doc_id"]: line["resps"] for line in plain} == greedy


def test_repeats_read_back_from_the_cache_are_refused(tiny_model_dir, tmp_path):
    """A task sampling by temperature alone with ``repeats`` > 1: lm-eval 0.4.13's cache serves all K
    repeats one cached answer on a rerun; refused before inference, naming the fix."""
    from helpers import hf_calib_lm

    lm = hf_calib_lm(tiny_model_dir)
    cached = CachingLM(lm, str(tmp_path / "cache.db"))
    hot = {"until": ["\n"], "temperature": 0.7}
    with pytest.raises(passes.CachedRepeatsError, match=r"repeats=4 .* do_sample: true"):
        passes.check_model(cached, ["seqprob"], "t", generation_kwargs=hot, repeats=4)
    # fine: no cache, one repeat, do_sample (the cache skips it), or greedy repeats
    passes.check_model(lm, ["seqprob"], "t", generation_kwargs=hot, repeats=4)
    passes.check_model(cached, ["seqprob"], "t", generation_kwargs=hot, repeats=1)
    passes.check_model(cached, ["seqprob"], "t", generation_kwargs=hot | {"do_sample": True}, repeats=4)
    passes.check_model(cached, ["seqprob"], "t", generation_kwargs={"temperature": 0.0}, repeats=4)
