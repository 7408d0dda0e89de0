"""Bad input to generation calibration fails with a clear error before any generation; a model without
log-likelihoods (a chat-completion API) still gets the estimators that need only generation.

The chat API itself cannot run here (no network), so :class:`FakeChatAPI` stands in for it: like lm-eval's
``openai-chat-completions`` / ``local-chat-completions`` models, its ``loglikelihood`` raises
NotImplementedError, and it answers generations with canned text. Everything else is real: the real lm-eval
evaluator, the real gsm8k mirror, the real task class and filters.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lm_eval.api.model import LM
from lm_eval.evaluator import simple_evaluate

from lm_eval_calib.generation.estimators import VERBAL_QUESTION
from lm_eval_calib.generation.passes import MissingLoglikelihoodError
from lm_eval_calib.harness.generation import GenerationCalibrationTask


def gsm8k_config(data_root: Path, **calibration) -> dict:
    """lm-eval's gsm8k (0-shot, strict-match filter) on the offline mirror, as a plain config dict."""
    return {
        "task": "calib_gsm8k_errors",
        "dataset_path": str(data_root / "hub" / "openai" / "gsm8k"),
        "dataset_name": "main",
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "num_fewshot": 0,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ["Question:"], "do_sample": False, "max_gen_toks": 16},
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            }
        ],
        "metadata": {"version": 1.0, "calibration": calibration},
    }


class FakeChatAPI(LM):
    """A fake chat-completion API model: no log-likelihoods, canned generations (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.generated: list[str] = []

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("Loglikelihood is not supported for chat completions.")

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for request in requests:
            prompt = request.args[0]
            self.generated.append(prompt)
            if VERBAL_QUESTION in prompt:
                out.append("I am 90% sure." if request.doc_id % 2 == 0 else "Hard to say.")
            else:
                out.append(" She makes 18 dollars.\n#### 18")
        return out


def test_unknown_estimator_and_small_k_fail_at_construction(data_root):
    with pytest.raises(ValueError, match="unknown confidence estimator.*'logit'.*known estimators: seqprob"):
        GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["seqprob", "logit"]))
    with pytest.raises(ValueError, match="'samples' must be an integer from 2"):
        GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["consistency"], samples=1))


def test_non_generation_config_is_refused(data_root):
    config = gsm8k_config(data_root) | {"output_type": "loglikelihood"}
    with pytest.raises(ValueError, match="needs output_type generate_until"):
        GenerationCalibrationTask(config=config)


def test_logprob_estimators_on_a_model_without_logprobs_fail_before_generation(data_root):
    model = FakeChatAPI()
    task = GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["verbal", "seqprob"]))
    with pytest.raises(MissingLoglikelihoodError, match="seqprob need log-likelihoods.*verbal"):
        simple_evaluate(model=model, tasks=[task], limit=2)
    assert model.generated == []  # refused before the first generation


def test_verbal_works_without_logprobs_and_counts_unparsed(data_root):
    model = FakeChatAPI()
    task = GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["verbal", "consistency"]))
    out = simple_evaluate(model=model, tasks=[task], limit=4, log_samples=True, bootstrap_iters=10)
    metrics = out["results"]["calib_gsm8k_errors"]
    lines = out["samples"]["calib_gsm8k_errors"]
    assert metrics["n_unparsed_verbal,strict-match"] == 2  # "Hard to say." on docs 1 and 3
    parsed = [line["ece_verbal"]["parsed"] for line in lines]
    assert parsed == [90.0, None, 90.0, None]
    # the parsed replies alone make the verbal metrics: 2 documents, confidence 0.9 each
    accuracy = sum(line["ece_verbal"]["correct"] for line in lines[::2]) / 2
    assert metrics["ece_verbal,strict-match"] == pytest.approx(abs(0.9 - accuracy))
    # identical canned samples always agree with the greedy answer
    assert all(line["ece_consistency"]["confidence"] == 1.0 for line in lines)
    assert metrics["exact_match,strict-match"] == pytest.approx(
        sum(line["exact_match"] for line in lines) / 4
    )


@pytest.fixture(scope="module")
def nan_llama(tiny_model_dir):
    """The tiny random Llama with NaN final-norm weights: every logit, hence every log-prob, is NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    return model


@pytest.mark.parametrize(
    ("model_name", "confidence"),
    [("hf-calib", ["seqprob", "seqprob_mean"]), ("hf", ["seqprob"]), ("hf", ["ptrue"])],
    ids=["hf-calib-seqprob", "hf-seqprob-empty-answers", "hf-ptrue"],
)
def test_nan_weights_stop_generation_calibration_naming_task_and_fix(
    model_name, confidence, nan_llama, tiny_model_dir, data_root
):
    """A broken model generates empty answers (every logit is NaN): the run stops with an error naming the
    task, the document and the fix, instead of scoring them at confidence 1.0 (ECE 1.0)."""
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from lm_eval_calib.generation.text import NonFiniteLogprobsError

    model_class = get_model(model_name)
    lm = model_class(pretrained=nan_llama, tokenizer=str(tiny_model_dir), device="cpu", batch_size=2)
    task = GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=confidence))
    with pytest.raises(NonFiniteLogprobsError) as info:
        # no index of lm-eval's own task YAMLs (slow): the task object is all there is
        manager = TaskManager(include_defaults=False)
        simple_evaluate(model=lm, tasks=[task], limit=2, bootstrap_iters=0, task_manager=manager)
    message = str(info.value)
    assert message.startswith("calib_gsm8k_errors: document 0")
    assert "nan" in message and "dtype=float32" in message and "check the checkpoint" in message


def test_degenerate_seqprob_is_flagged_naming_the_task_and_why(tiny_model_dir, data_root, caplog):
    """The tiny random model's 16-token answers have sequence probabilities near 1e-70 and are all wrong:
    ECE prints 0.0000 and AUROC NaN. Each is explained once, naming the task and estimator."""
    from lm_eval.tasks import TaskManager

    task = GenerationCalibrationTask(config=gsm8k_config(data_root, confidence=["seqprob", "seqprob_mean"]))
    manager = TaskManager(include_defaults=False)
    model_args = f"pretrained={tiny_model_dir},dtype=float32"
    with caplog.at_level("WARNING", logger="lm_eval_calib"):
        out = simple_evaluate(
            model="hf-calib",
            model_args=model_args,
            tasks=[task],
            limit=3,
            bootstrap_iters=0,
            device="cpu",
            batch_size=3,
            task_manager=manager,
        )
    metrics = out["results"]["calib_gsm8k_errors"]
    assert metrics["ece_seqprob,strict-match"] < 1e-6 and math.isnan(metrics["auroc_seqprob,strict-match"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    tiny = [w for w in warnings if "all 3 confidences are below 1e-06" in w]
    assert len(tiny) == 1 and tiny[0].startswith("[calib_gsm8k_errors (seqprob)] ")  # once, not per metric
    assert "seqprob_mean" in tiny[0]  # and what to use instead
    undefined = [w for w in warnings if "AUROC is undefined" in w]
    assert {w.split("]")[0] for w in undefined} == {
        "[calib_gsm8k_errors (seqprob)",
        "[calib_gsm8k_errors (seqprob_mean)",
    }
    assert all("all 3 answers are wrong" in w for w in undefined)
