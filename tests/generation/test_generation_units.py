"""Fast unit tests of generation calibration: estimator options, the verbalised-confidence parser on real
SmolLM2 replies, text/token alignment, the generated-text carrier, the generation record, fact matching."""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import pytest

from lm_eval_calib.generation.estimators import ESTIMATORS, check_estimator_names, parse_verbal
from lm_eval_calib.generation.text import GeneratedText, aligned_length, generation_logprobs_of
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.records import NLL_FLOOR, generation_record

REPO = Path(__file__).resolve().parents[2]

# Replies SmolLM2-135M-Instruct (float32, greedy) gave to the verbalised-confidence question, logged with
# --log_samples (ece_verbal.reply), with the value the parser must read; None = unparseable (counted).
# "chat": --apply_chat_template, 8-token replies; "plain text": calib_facts_gen, relation P19.
REAL_VERBAL_REPLIES = [
    ("I'm 99% certain that", 0.99),  # chat, gsm8k
    ("To verify the answer, I'll add", None),  # chat, gsm8k: no number in 8 tokens
    ("The answer is 100.", 1.0),  # chat, facts
    (" 100", 1.0),  # plain text, facts
    (" 100%", 1.0),  # plain text, facts
]


@pytest.mark.parametrize(("reply", "expected"), REAL_VERBAL_REPLIES)
def test_parse_verbal_on_real_replies(reply, expected):
    assert parse_verbal(reply) == (None if expected is None else pytest.approx(expected))


def test_parse_verbal_rules():
    assert parse_verbal("Confidence: 75") == pytest.approx(0.75)
    assert parse_verbal("1") == pytest.approx(0.01)  # asked for 0-100: a bare 1 is 1%
    assert parse_verbal("1.0") == pytest.approx(1.0)  # a decimal in [0, 1] is a probability
    assert parse_verbal("50.5%") == pytest.approx(0.505)
    assert parse_verbal("101") is None
    assert parse_verbal("x2 is 40") == pytest.approx(0.4)  # digits inside a word are not a number


def test_estimator_options_are_checked_before_anything_loads():
    options = CalibrationOptions.from_metadata(
        {"calibration": {"confidence": ["ptrue", "verbal"], "samples": 3}}
    )
    assert options.confidence == ("ptrue", "verbal") and options.samples == 3
    assert CalibrationOptions().confidence == ("seqprob", "seqprob_mean")
    with pytest.raises(ValueError, match="unknown confidence estimator.*'sequence_prob'.*known estimators"):
        CalibrationOptions.from_metadata({"calibration": {"confidence": ["sequence_prob"]}})
    with pytest.raises(ValueError, match="'samples' must be an integer from 2"):
        CalibrationOptions.from_metadata({"calibration": {"samples": 1}})
    with pytest.raises(ValueError, match="non-empty list"):
        CalibrationOptions.from_metadata({"calibration": {"confidence": []}})
    assert check_estimator_names("verbal") == ("verbal",)
    assert set(ESTIMATORS) == {"seqprob", "seqprob_mean", "ptrue", "verbal", "consistency"} | {
        "semantic_entropy", "num_sets", "lexsim", "eigv", "degree"
    }  # fmt: skip


def test_aligned_length_with_the_real_tokenizer():
    from transformers import AutoTokenizer

    from lm_eval_calib.bundled_models import get_bundled_model

    smol = get_bundled_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(smol.folder()), gguf_file=smol.gguf_file)
    ids = tokenizer.encode(" Janet sells 9 eggs.\n\nQuestion: how many", add_special_tokens=False)
    decode = tokenizer.decode
    # cut at the stop sequence "Question:", as lm-eval does: the text is spelled by a prefix of the tokens
    text = decode(ids).split("Question:")[0]
    n = aligned_length(ids, text, decode)
    assert n is not None and decode(ids[:n]) == text
    assert aligned_length(ids, "", decode) == 0
    assert aligned_length(ids, " Janet se", decode) is None  # the cut falls inside a token: rescore instead


@pytest.mark.parametrize(
    ("text", "logprobs", "token"),
    [
        ("", [math.nan, -0.1, -0.2], 0),  # a NaN model: empty answer, the token that ended it is NaN
        (" 4", [-0.1, -math.inf, -0.2], 1),  # a half-precision overflow inside the answer
        (" 4", [-0.1, -0.2, math.nan], 2),  # the token that decided where the answer stops
    ],
    ids=["empty-answer", "inside", "end-token"],
)
def test_non_finite_generation_logprobs_name_the_request_and_the_fix(text, logprobs, token):
    """hf-calib and vllm-calib attach generated log-probs through this one function (one token per character
    here); a non-finite one among the text's tokens or the token after them stops the run."""
    from lm_eval.api.instance import Instance

    from lm_eval_calib.generation.text import NonFiniteLogprobsError
    from lm_eval_calib.models.generated import request_label, with_generation_logprobs

    def decode(ids: list[int]) -> str:
        return "".join(map(chr, ids))

    ids = [ord(" "), ord("4"), ord("\n")]
    request = Instance("generate_until", {}, ("Q:", {}), 0, metadata=("calib_gsm8k", 7, 1))
    where = request_label(request, "hf-calib")
    with pytest.raises(NonFiniteLogprobsError) as info:
        with_generation_logprobs(text, [(ids, logprobs)], decode, (), where)
    message = str(info.value)
    assert message.startswith(f"calib_gsm8k: document 7: the model scored generated token {token} ")
    assert "dtype=float32" in message
    # finite log-probs after the token that ended the answer are not the answer's business
    fine = with_generation_logprobs(" 4", [(ids, [-0.1, -0.2, -0.3])], decode, (), where)
    assert fine.token_logprobs.tolist() == [-0.1, -0.2]
    late = with_generation_logprobs(" ", [(ids + [ord("x")], [-0.1, -0.2, -0.3, math.nan])], decode)
    assert late.token_logprobs.tolist() == [-0.1]


def test_generated_text_is_the_string_and_pickles():
    text = GeneratedText(" 42", [220, 2], [-0.5, -0.25])
    assert text == " 42" and hash(text) == hash(" 42") and text.strip() == "42"
    again = pickle.loads(pickle.dumps(text))
    assert again == " 42" and generation_logprobs_of(again).tolist() == [-0.5, -0.25]
    assert generation_logprobs_of(" 42") is None
    assert generation_logprobs_of(text + "!") is None  # anything that rebuilds the string drops them


def test_generation_record():
    record = generation_record(0.8, True, "P19", estimator="verbal", reply="80", parsed=80.0)
    assert record["correct"] == 1 and record["brier"] == pytest.approx(0.04)
    assert record["nll"] == pytest.approx(-__import__("math").log(0.8))
    wrong_and_sure = generation_record(1.0, False)
    assert wrong_and_sure["nll"] == pytest.approx(-__import__("math").log(NLL_FLOOR))
    unparsed = generation_record(None, False, estimator="verbal", reply="?", parsed=None)
    assert unparsed["confidence"] is None and unparsed["brier"] is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generation_record(1.5, True)


def _facts_gen_utils():
    spec = importlib.util.spec_from_file_location(
        "facts_gen_utils", REPO / "tasks" / "facts_gen" / "utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_facts_gen_correctness_rule():
    utils = _facts_gen_utils()
    assert utils.starts_with_object(" Paris, France", "Paris")
    assert utils.starts_with_object(' "The Beatles"', "Beatles")  # quotes and leading article dropped
    assert utils.starts_with_object("  english", "English")
    assert not utils.starts_with_object(" Parisian", "Paris")
    assert not utils.starts_with_object(" in Paris", "Paris")
    assert not utils.starts_with_object("", "Paris")


def test_lm_eval_can_cast_a_target_to_the_type_of_a_generated_text(tmp_path, data_root):
    """lm-eval's ``process_results`` casts the gold answer to ``type(result)`` when the task has no extracting
    filter (``bbh_zeroshot_*``, ``gsm8k``'s "strict-match" misses, user tasks): with hf-calib's or
    vllm-calib's ``GeneratedText`` that call must give a plain string, never a ``TypeError``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    assert type(GeneratedText("plain")) is str and GeneratedText("plain") == "plain"
    source = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "zeroshot" / "snarks.yaml"
    (tmp_path / "snarks_ref.yaml").write_text(
        f"include: {source}\ntask: snarks_ref\ntag: []\n"
        f"dataset_path: {data_root / 'hub' / 'SaylorTwift' / 'bbh'}\n"
    )
    task = TaskManager(include_path=str(tmp_path)).load(["snarks_ref"])["tasks"]["snarks_ref"]
    doc = next(iter(task.test_docs()))
    right, wrong = (GeneratedText(text, [1], [-0.5]) for text in (doc["target"], "(Z)"))
    assert task.process_results(doc, [right])["exact_match"] == 1.0
    assert task.process_results(doc, [wrong])["exact_match"] == 0.0
