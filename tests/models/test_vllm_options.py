"""``vllm-calib``'s options object: lm-eval's ``--model_args`` parsed into typed fields, checked, and turned
into ``vllm.LLM`` keywords, all without vLLM (the checks run before any engine starts)."""

from __future__ import annotations

import pytest

from lm_eval_calib.models.vllm_options import VLLMCalibOptions, default_max_num_batched_tokens

#: A few keywords of vLLM 0.32's ``LLM`` / ``EngineArgs`` (the real list comes from the installed vLLM:
#: ``vllm_engine.engine_arg_names``; tests/models/test_vllm_calib.py checks these are among them).
ENGINE_ARG_NAMES = frozenset(
    ["kv_cache_memory_bytes", "quantization", "enable_prefix_caching", "max_num_seqs", "logprobs_mode"]
)


def test_model_args_string_becomes_typed_fields_and_engine_arguments():
    options = VLLMCalibOptions.from_model_args(
        "pretrained=models/smol,dtype=float32,batch_size=8,single_prefill=false,prefix_caching=yes,"
        "max_length=126,seed=7,kv_cache_memory_bytes=67108864,device=cuda",
        ENGINE_ARG_NAMES,
    )
    assert (options.pretrained, options.dtype, options.batch_size) == ("models/smol", "float32", 8)
    assert options.single_prefill is False and options.prefix_caching is True
    assert options.max_length == 126 and options.engine_max_model_len == 128
    assert options.engine_kwargs == {"kv_cache_memory_bytes": 67108864}  # device is vLLM's to pick
    assert options.engine_args(vocab_size=49152, on_cpu=True) == {
        "model": "models/smol",
        "revision": None,
        "tokenizer": None,
        "tokenizer_revision": None,
        "dtype": "float32",
        "trust_remote_code": False,
        "tensor_parallel_size": 1,
        "seed": 7,
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 5376,
        "enforce_eager": True,
        "max_model_len": 128,
        "enable_prefix_caching": True,
        "block_size": 32,  # on a CPU: the options' cached contexts recompute less (docs/benchmarks.md, P5)
        "kv_cache_memory_bytes": 67108864,
    }


def test_defaults_and_python_values():
    options = VLLMCalibOptions(pretrained="m")
    assert options.batch_size == "auto" and options.single_prefill is True and options.prefix_caching is None
    args = options.engine_args(vocab_size=128256, on_cpu=False)
    assert args["enforce_eager"] is False and args["max_num_batched_tokens"] == 2048
    # on a GPU: vLLM's own prefix-caching default (on where the model supports it) and block size
    assert "max_model_len" not in args and "enable_prefix_caching" not in args and "block_size" not in args
    # lm-eval's own parsing gives bools and ints; code may pass strings: the same typed result
    assert VLLMCalibOptions(pretrained="m", batch_size="auto:4").batch_size == "auto"
    same = VLLMCalibOptions(pretrained="m", batch_size="8", max_model_len=130.0, enforce_eager="off")
    assert (same.batch_size, same.max_model_len, same.enforce_eager) == (8, 130, False)
    assert VLLMCalibOptions(pretrained="m", max_length=128, max_model_len=130).engine_max_model_len == 130
    mapped = VLLMCalibOptions.from_model_args({"pretrained": "m", "max_batch_size": 16})
    assert mapped.engine_args(1000, on_cpu=True)["max_num_seqs"] == 16
    own = VLLMCalibOptions.from_model_args({"pretrained": "m", "max_batch_size": 16, "max_num_seqs": 4})
    assert own.engine_args(1000, on_cpu=True)["max_num_seqs"] == 4  # vLLM's own keyword wins
    # without the engine's names (no vLLM to ask), other keys pass through to vllm.LLM unchecked
    assert VLLMCalibOptions.from_model_args({"pretrained": "m", "anything": 1}).engine_kwargs == {
        "anything": 1
    }


def test_prefix_caching_is_on_by_default_with_32_token_blocks_on_a_cpu_and_can_be_turned_off():
    def engine(on_cpu: bool, **model_args) -> dict:
        options = VLLMCalibOptions.from_model_args(
            {"pretrained": "m", **model_args}, ENGINE_ARG_NAMES | {"block_size"}
        )
        return options.engine_args(vocab_size=49152, on_cpu=on_cpu)

    on_cpu = engine(True)
    assert on_cpu["block_size"] == 32 and "enable_prefix_caching" not in on_cpu  # vLLM's default: on
    assert engine(True, prefix_caching=True)["enable_prefix_caching"] is True
    assert engine(True, block_size=128)["block_size"] == 128  # the user's block wins
    assert engine(False, prefix_caching=True)["enable_prefix_caching"] is True
    assert "block_size" not in engine(False, prefix_caching=True)  # a GPU keeps vLLM's block (16)
    # off: the engine arguments vllm-calib gave before prefix caching was its default
    for off in ({"prefix_caching": "false"}, {"enable_prefix_caching": False}):
        args = engine(True, **off)
        assert "block_size" not in args and args.get("enable_prefix_caching") in (None, False), off
    assert (
        VLLMCalibOptions.from_model_args({"pretrained": "m", "prefix_caching": "no"}).prefix_caching is False
    )


@pytest.mark.parametrize(
    ("model_args", "error", "match"),
    [
        (
            {"pretrained": "m", "single_prefill": "ture"},
            ValueError,
            r"single_prefill='ture' is not a boolean",
        ),
        ({"pretrained": "m", "batch_size": 0}, ValueError, r"batch_size.*must be at least 1"),
        ({"pretrained": "m", "batch_size": "many"}, ValueError, r"batch_size.*'many' is not an integer"),
        ({"pretrained": "m", "max_length": "long"}, ValueError, r"max_length='long' is not an integer"),
        ({"pretrained": "m", "max_model_len": 2}, ValueError, r"max_model_len=2 must be at least 3"),
        ({"pretrained": "m", "gpu_memory_utilization": 1.5}, ValueError, r"gpu_memory_utilization=1.5 must"),
        ({"pretrained": "m", "max_length": 100, "max_model_len": 200}, ValueError, "not both"),
        ({"pretrained": "m", "gguf_file": "x.gguf"}, ValueError, "vllm_export"),
        ({"pretrained": "m", "logprobs_mode": "processed_logprobs"}, ValueError, "raw_logprobs"),
        (
            {"pretrained": "m", "prefix_caching": True, "enable_prefix_caching": False},
            ValueError,
            "contradicts",
        ),
        ({"pretrained": "m", "model": "other"}, ValueError, "pretrained=..., not model="),
        ({"pretrained": "m", "engine_kwargs": {}}, ValueError, "directly"),
        ({"dtype": "float32"}, ValueError, "pretrained=<model folder or hub id> is required"),
        ({"pretrained": 3}, TypeError, r"pretrained must be a model folder or hub id \(str\), got int"),
        (
            {"pretrained": "m", "single_prefil": True},
            ValueError,
            r"'single_prefil': did you mean 'single_prefill'",
        ),
        ({"pretrained": "m", "kv_cache_memory_byte": 1}, ValueError, r"did you mean 'kv_cache_memory_bytes'"),
    ],
)
def test_bad_model_args_are_refused_with_the_option_named(model_args, error, match):
    with pytest.raises(error, match=match):
        VLLMCalibOptions.from_model_args(model_args, ENGINE_ARG_NAMES)


def test_options_are_frozen():
    options = VLLMCalibOptions(pretrained="m")
    with pytest.raises(AttributeError):
        options.batch_size = 4  # type: ignore[misc]


def test_prefill_step_bounds_the_logits_by_vocabulary():
    """float32 logits and their log-softmax of one prefill step stay within 2 GiB (vLLM #5907)."""
    assert default_max_num_batched_tokens(49152) == 5376  # SmolLM2
    assert default_max_num_batched_tokens(128256) == 2048  # Llama 3
    assert default_max_num_batched_tokens(256000) == 1024  # Gemma
    assert default_max_num_batched_tokens(100) == 8192  # never above
    assert default_max_num_batched_tokens(10**7) == 512  # never below
