"""Training add-on, before any training: reading the real data files, formats, prompt rendering and labels,
stage settings (YAML + flags), output-folder rules and every bad-input error (raised before a model loads)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import REPO
from lm_eval_calib_train.config import PPOStageConfig, RLOOStageConfig, SFTStageConfig, TrainInputError
from lm_eval_calib_train.config_parsing import config_from_args
from lm_eval_calib_train.data import conversations, preference_pairs, prompts, read_data
from lm_eval_calib_train.formatting import IGNORE_INDEX, Formatter
from lm_eval_calib_train.output import StageOutput

from lm_eval_calib.cli import main as cli_main

# (file, format, rows as documented in each folder's SOURCE.md, prompts that do not end with a user turn)
REAL_FILES = [
    ("alpaca/alpaca_1k.jsonl", "alpaca", 1000, 0),
    ("alpaca/alpaca_data_1k.json", "alpaca", 1000, 0),
    ("alpaca_gpt4_demo/alpaca_en_demo.jsonl", "alpaca", 999, 0),
    ("dolly_open_qa/dolly_open_qa.jsonl", "dolly", 3742, 0),
    ("lima/lima.json", "alpaca", 1029, 0),
    # 4 HH dialogues have two Assistant turns in a row (a "Human:" without its blank line): their PPO prompt
    # ends with the first of them and the policy continues it
    ("hh_rlhf/harmless-base/test.jsonl.gz", "pairs", 2312, 4),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_model_dir):
    """The same tokenizer without a chat template: the documented plain prompt format applies."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    return tok


@pytest.mark.parametrize(("relative", "fmt", "rows", "odd_prompts"), REAL_FILES)
def test_real_data_files_read_with_their_format_and_row_count(data_root, relative, fmt, rows, odd_prompts):
    data = read_data(str(data_root / relative))
    assert (data.format, len(data.records)) == (fmt, rows)
    examples = prompts(data)
    assert len(examples) == rows
    assert sum(m[-1]["role"] != "user" for m in examples) == odd_prompts


def test_hh_rlhf_hash_and_name_match_its_source_and_pairs_share_their_prompt(data_root):
    data = read_data(str(data_root / "hh_rlhf"))  # a folder holding exactly one data file
    source = (data_root / "hh_rlhf" / "SOURCE.md").read_text()
    assert data.sha256 in source  # SHA-256 of the stored (gzipped) bytes, as SOURCE.md documents
    assert data.name == "harmless-base/test"  # a generic file stem keeps its folder
    pairs = preference_pairs(data)
    chosen, rejected = pairs[0]
    assert chosen[-1]["role"] == rejected[-1]["role"] == "assistant"
    first_question = data.records[0]["chosen"].split("\n\nAssistant:")[0].removeprefix("\n\nHuman: ")
    assert chosen[0] == {"role": "user", "content": first_question}
    same_prompt = sum(c[:-1] == r[:-1] for c, r in pairs)
    assert same_prompt == 2307  # SOURCE.md: 2,307 of 2,312 pairs differ only in the last Assistant turn


def test_lima_history_becomes_a_multi_turn_conversation(data_root):
    data = read_data(str(data_root / "lima" / "lima.jsonl"))
    convs = conversations(data)
    multi = [c for c in convs if sum(m["role"] == "assistant" for m in c) > 1]
    assert len(multi) == 29  # SOURCE.md: 29 multi-turn records
    record = next(r for r in data.records if r["history"])
    conv = convs[data.records.index(record)]
    assert conv[0] == {"role": "user", "content": record["history"][0][0]}
    assert conv[-1] == {"role": "assistant", "content": record["output"]}


def test_alpaca_input_and_dolly_context_join_the_instruction(data_root):
    alpaca = read_data(str(data_root / "alpaca" / "alpaca_1k.jsonl"))
    record = next(r for r in alpaca.records if r["input"])
    user = conversations(alpaca)[alpaca.records.index(record)][0]["content"]
    assert user == f"{record['instruction']}\n\n{record['input']}"
    dolly = read_data(str(data_root / "dolly_open_qa" / "dolly_open_qa.jsonl"))
    first = conversations(dolly)[0]
    assert first == [
        {"role": "user", "content": dolly.records[0]["instruction"]},
        {"role": "assistant", "content": dolly.records[0]["response"]},
    ]


def test_conversation_formats(tmp_path):
    path = tmp_path / "conv.jsonl"
    rows = [
        {"conversations": ["Hi", "Hello!", "How are you?", "Fine."]},  # LIMA on the hub
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},  # ShareGPT
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs = conversations(read_data(str(path)))
    assert [m["role"] for m in convs[0]] == ["user", "assistant", "user", "assistant"]
    assert convs[1] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert convs[2][0] == {"role": "system", "content": "Be brief."}


# -- bad data: clear errors naming the problem -----------------------------------------------------------


def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output"\n', "line 2 is"),
        ("bad.json", '{"instruction": "a"}', "must hold a JSON array"),
        ("bad.json", "[{]", "is not valid JSON"),
        ("odd.jsonl", '{"question": "a", "answer": "b"}\n', "unknown data format"),
        ("short.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "record 1 lacks"),
        ("typed.jsonl", '{"instruction": "a", "output": 3}\n', "'output' must be a string"),
        ("empty.jsonl", "\n", "holds no records"),
        ("data.txt", "hello", "unsupported data file type"),
    ],
)
def test_malformed_data_files_fail_with_the_reason(tmp_path, name, text, message):
    with pytest.raises(TrainInputError, match=message):
        read_data(str(_write(tmp_path / name, text)))


def test_missing_gzip_and_folder_errors(tmp_path, data_root):
    with pytest.raises(TrainInputError, match="does not exist"):
        read_data(str(tmp_path / "nope.jsonl"))
    with pytest.raises(TrainInputError, match="line 1 is not valid JSON"):
        read_data(str(_write(tmp_path / "bad.jsonl.gz", "{oops\n", gz=True)))
    with pytest.raises(TrainInputError, match="not a readable gzip"):
        read_data(str(_write(tmp_path / "fake.jsonl.gz", "{}\n")))
    with pytest.raises(TrainInputError, match="several data files.*alpaca_1k.jsonl"):
        read_data(str(data_root / "alpaca"))  # .json and .jsonl copies: ambiguous
    with pytest.raises(TrainInputError, match="unknown data format 'csv'"):
        read_data(str(data_root / "alpaca" / "alpaca_1k.jsonl"), data_format="csv")


def test_a_hub_name_offline_fails_with_the_local_alternative():
    with pytest.raises(TrainInputError, match="could not be loaded from the hub.*pass a local"):
        read_data("tatsu-lab/alpaca")  # conftest sets HF_DATASETS_OFFLINE=1


def test_stage_refuses_data_of_the_wrong_kind(data_root, tmp_path):
    with pytest.raises(TrainInputError, match="needs chosen/rejected pairs"):
        preference_pairs(read_data(str(data_root / "alpaca" / "alpaca_1k.jsonl")))
    with pytest.raises(TrainInputError, match="record 0 lacks 'prompt'"):
        read_data(str(data_root / "hh_rlhf"), data_format="prompts")  # a forced format is checked too
    only_prompts = read_data(str(_write(tmp_path / "p.jsonl", '{"prompt": "Tell me a joke."}\n')))
    assert prompts(only_prompts) == [[{"role": "user", "content": "Tell me a joke."}]]
    with pytest.raises(TrainInputError, match="holds prompts only"):
        conversations(only_prompts)


# -- rendering and labels ------------------------------------------------------------------------------------

DIALOGUE = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Red."},
]


def _learned_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


def test_chat_format_learns_every_assistant_turn_and_nothing_else(tokenizer):
    fmt = Formatter(tokenizer, "auto")
    assert fmt.mode == "chat"
    input_ids, labels = fmt.sft_example(DIALOGUE, max_length=512)
    whole = tokenizer.apply_chat_template(DIALOGUE, tokenize=False)
    assert tokenizer.decode(input_ids) == whole
    assert _learned_text(tokenizer, labels) == "Blue.<|im_end|>\nRed.<|im_end|>\n"
    assert fmt.turn_end_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    _, all_labels = fmt.sft_example(DIALOGUE, max_length=512, loss_on_prompt=True)
    assert all_labels == input_ids


def test_plain_format_is_the_documented_one(plain_tokenizer):
    fmt = Formatter(plain_tokenizer, "auto")
    assert fmt.mode == "plain"
    input_ids, labels = fmt.sft_example(DIALOGUE, max_length=512)
    eos = plain_tokenizer.eos_token
    expected = (
        f"### Instruction:\nName a colour.\n\n### Response:\nBlue.{eos}\n\n"
        f"### Instruction:\nAnother?\n\n### Response:\nRed.{eos}"
    )
    assert plain_tokenizer.decode(input_ids) == expected
    assert _learned_text(plain_tokenizer, labels) == f"Blue.{eos}Red.{eos}"
    assert fmt.turn_end_id == plain_tokenizer.eos_token_id
    prompt = plain_tokenizer.decode(fmt.prompt_ids(DIALOGUE[:1]))
    assert prompt == "### Instruction:\nName a colour.\n\n### Response:\n"
    with pytest.raises(TrainInputError, match="no chat template"):
        Formatter(plain_tokenizer, "chat")


def test_reward_and_prompt_ids_match_what_ppo_generates(tokenizer):
    fmt = Formatter(tokenizer, "chat")
    prompt = fmt.prompt_ids(DIALOGUE[:3])
    ids = fmt.reward_ids(DIALOGUE, max_length=512)
    assert ids[: len(prompt)] == prompt  # the prompt PPO generates from ...
    assert tokenizer.decode(ids[len(prompt) :]) == "Red.<|im_end|>"  # ... then the answer and its stop token
    assert fmt.reward_ids(DIALOGUE, max_length=5) == ids[-5:]  # long dialogues keep their end
    assert fmt.prompt_ids(DIALOGUE[:3], max_length=4) == prompt[-4:]


def test_truncation_that_leaves_no_response_drops_the_example(tokenizer):
    fmt = Formatter(tokenizer, "chat")
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    assert fmt.sft_example(long_prompt, max_length=32) is None
    input_ids, labels = fmt.sft_example(DIALOGUE, max_length=40)
    assert len(input_ids) == len(labels) == 40


# -- settings: YAML, flags, validation --------------------------------------------------------------------


def _parse(argv: list[str]):
    from lm_eval_calib.cli import build_parser

    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args.stage_class, args)


def test_flags_override_the_yaml_file_which_overrides_defaults(tmp_path):
    config_file = tmp_path / "sft.yaml"
    config_file.write_text(
        "model: smollm2\ndata: a.jsonl\noutput: out\nmethod: lora\nlearning_rate: 2e-5\n"
        "lora_target_modules: [q_proj, k_proj]\nmerge-lora: false\nmax_steps: 7\n"
    )
    config = _parse(["sft", "--config", str(config_file), "--max-steps", "9", "--lora-r", "4"])
    assert isinstance(config, SFTStageConfig)
    assert (config.method, config.max_steps, config.lora_r, config.learning_rate) == ("lora", 9, 4, 2e-5)
    assert config.lora_target_modules == ["q_proj", "k_proj"] and config.merge_lora is False
    assert _parse(["sft", "--config", str(config_file), "--merge-lora"]).merge_lora is True
    assert _parse(["sft", "--config", str(config_file), "--merge-lora", "True"]).merge_lora is True
    flags = ["--model", "m", "--data", "d", "--output", "o", "--no-merge-lora"]
    config = _parse(["sft", *flags, "--lora-target-modules", "a,b"])
    assert config.merge_lora is False and config.lora_target_modules == ["a", "b"]
    ppo = _parse(["ppo", "--policy=p", "--reward-model=r", "--data=d", "--output=o", "--target-kl=6"])
    assert isinstance(ppo, PPOStageConfig) and ppo.target_kl == 6.0 and ppo.kl_coef == 0.05
    rloo = _parse(["rloo", "--policy=p", "--reward-model=r", "--data=d", "--output=o", "--num-generations=4",
                   "--batch-size=8", "--normalize-advantages"])  # fmt: skip
    assert isinstance(rloo, RLOOStageConfig) and rloo.num_generations == 4 and rloo.prompts_per_step() == 2
    assert rloo.normalize_advantages is True and rloo.kl_coef == 0.05
    for bad, message in [(["--num-generations=1"], "must be >= 2"), (["--batch-size=3"], "multiple of"),
                         (["--kl-coef=-1"], "must be >= 0")]:  # fmt: skip
        with pytest.raises(TrainInputError, match=message):
            _parse(["rloo", "--policy=p", "--reward-model=r", "--data=d", "--output=o", *bad])


@pytest.mark.parametrize("name", ["sft_lora", "sft_full", "reward_hh", "rloo_hh", "ppo_hh"])
def test_example_configs_parse(name):
    stage = name.split("_")[0]
    policy = ["--policy=p", "--reward-model=r"]
    required = {"sft": ["--model=m"], "reward": ["--model=m"], "rloo": policy, "ppo": policy}
    required = required[stage]
    path = REPO / "train" / "configs" / f"{name}.yaml"
    config = _parse([stage, "--config", str(path), *required, "--data=d", "--output=o"])
    assert config.stage == stage and config.max_steps >= 10


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("modle: x\n", [], "unknown key 'modle'"),
        ("max_steps: many\n", [], "--max-steps: invalid literal"),
        ("max_steps: 2.5\n", [], "expected an integer"),
        ("", ["--method", "lora", "--lora-r", "0"], "--lora-r must be >= 1"),
        ("", ["--overwrite", "--resume"], "exclude each other"),
        ("- a\n- b\n", [], "must be a mapping"),
    ],
)
def test_bad_settings_are_refused(tmp_path, yaml_text, argv, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(TrainInputError, match=message):
        _parse(["sft", "--config", str(config_file), "--model", "m", "--data", "d", "--output", "o", *argv])


def test_boolean_settings_take_the_model_args_words_and_nothing_else():
    from lm_eval_calib_train.config_parsing import coerce

    from lm_eval_calib.models.model_args import FALSE_WORDS, TRUE_WORDS

    for words, expected in ((TRUE_WORDS, True), (FALSE_WORDS, False)):
        for word in words:
            for spelling in (word, word.upper(), f" {word} "):
                assert coerce(SFTStageConfig, "merge_lora", spelling) is expected
        assert coerce(SFTStageConfig, "merge_lora", expected) is expected
    # YAML reads `merge_lora: 1` as an integer: refused as before (``--model_args`` would take 0/1)
    for bad in ("ture", "", "2", 1, 0, 1.0, ["yes"]):
        with pytest.raises(TrainInputError, match=r"--merge-lora: expected true or false \(1, true, yes, on"):
            coerce(SFTStageConfig, "merge_lora", bad)


def test_a_model_that_can_only_be_a_path_is_refused_before_the_hub(tmp_path, monkeypatch):
    from lm_eval_calib_train.models import resolve_model

    monkeypatch.chdir(tmp_path)
    # one rule with lm_eval's preflight (lm_eval_calib.paths): a leading .\ is a path, never a hub id
    for spec in ("./no-model", "~/no-such-model-here", "org/name/extra", ".\\no-model", "..\\no-model"):
        with pytest.raises(TrainInputError, match="no such folder or file"):
            resolve_model(spec)
    ref = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id resolves without a hub call
    assert (ref.source, ref.display) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")


def test_cli_reports_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, data_root):
    out = tmp_path / "ckpt"
    code = cli_main(["train", "sft", "--data", str(tmp_path / "missing.jsonl"), "--output", str(out)])
    assert code == 2 and "missing --model" in capsys.readouterr().err
    code = cli_main(
        [
            "train",
            "sft",
            "--model",
            "smollm2",
            "--data",
            str(tmp_path / "missing.jsonl"),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data file" in err and "does not exist" in err
    code = cli_main(
        [
            "train",
            "reward",
            "--model",
            str(tmp_path / "no-model"),
            "--data",
            str(data_root / "hh_rlhf"),
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "no such folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no work folder


def test_rloo_refuses_a_reward_model_that_is_not_one(tmp_path, tiny_model_dir, data_root, capsys):
    code = cli_main(
        [
            "train",
            "rloo",
            "--policy",
            str(tiny_model_dir),
            "--reward-model",
            str(tiny_model_dir),
            "--data",
            str(data_root / "hh_rlhf"),
            "--output",
            str(tmp_path / "rloo"),
        ]
    )
    assert code == 2 and "is not a reward model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom lm_eval_calib.cli import build_parser\n"
        "build_parser()\nprint('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# -- output folder rules ---------------------------------------------------------------------------------


def test_output_rules_existing_checkpoint_interrupted_run_and_foreign_folder(tmp_path):
    from lm_eval_calib.manifest import write_manifest

    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text("{}")
    manifest = dict.fromkeys(("stage", "method", "label", "base_model", "parent", "data", "hyperparameters",
                              "versions", "seed", "wall_time_s", "created"), "x")  # fmt: skip
    write_manifest(done, {**manifest, "files": ["config.json"]})  # a checkpoint this tool wrote
    with pytest.raises(TrainInputError, match="already holds a checkpoint; pass --overwrite"):
        StageOutput(done).preflight()
    with pytest.raises(TrainInputError, match="nothing to resume"):
        StageOutput(done, resume=True).preflight()
    assert StageOutput(done, overwrite=True).preflight() is None
    assert (done / "config.json").exists()  # replaced only when the new checkpoint is complete

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(TrainInputError, match="lm-eval-calib did not write"):
        StageOutput(foreign, overwrite=True).preflight()
    assert (foreign / "todo.txt").read_text() == "keep me"

    fresh = StageOutput(tmp_path / "fresh")
    (fresh.work / "checkpoint-4").mkdir(parents=True)  # incomplete: no trainer_state.json
    (fresh.work / "checkpoint-2").mkdir()
    (fresh.work / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(TrainInputError, match="interrupted run.*--resume"):
        fresh.preflight()
    assert StageOutput(tmp_path / "fresh", resume=True).preflight() == fresh.work / "checkpoint-2"
    assert StageOutput(tmp_path / "fresh", overwrite=True).preflight() is None
    assert not fresh.work.exists()


def test_finalize_renames_into_place_only_when_complete(tmp_path):
    out = StageOutput(tmp_path / "ckpt")
    out.preflight()

    def broken(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        out.finalize(broken, {}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing that looks like a checkpoint
