"""``vllm-calib`` checks its ``--model_args`` before it asks for vLLM: where vLLM is not installed (this
environment), a misspelt or mistyped option is reported as such, with the closest names, instead of the
"install vLLM" error that would hide it until vLLM is installed."""

from __future__ import annotations

import importlib.util

import pytest
from lm_eval.api.registry import get_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="checks the behaviour where vLLM is not installed"
)


def make(arg_string: str):
    """The model as lm-eval's CLI makes it from ``--model vllm-calib --model_args ...``."""
    return get_model("vllm-calib").create_from_arg_string(arg_string, {"batch_size": 1, "device": "cpu"})


@pytest.mark.parametrize(
    ("arg_string", "match"),
    [
        ("pretrained=m,max_gen_tokens=64", r"'max_gen_tokens': did you mean 'max_gen_toks'"),
        ("pretrained=m,single_prefil=False", r"'single_prefil': did you mean 'single_prefill'"),
        (
            "pretrained=m,kv_cache_memory_byte=64",
            r"'kv_cache_memory_byte': did you mean 'kv_cache_memory_bytes'",
        ),
        ("pretrained=m,max_length=long", r"max_length='long' is not an integer"),
        ("pretrained=m,gguf_file=x.gguf", r"vllm_export"),
    ],
    ids=["own-option", "own-bool", "vllm-keyword", "mistyped", "gguf"],
)
def test_option_errors_come_before_the_missing_vllm(arg_string, match):
    with pytest.raises(ValueError, match=match) as info:
        make(arg_string)
    assert "vLLM" in str(info.value) and "not installed" in str(info.value)  # and the next step after it


def test_valid_options_get_the_install_message():
    """vLLM's own keywords (here those of vLLM 0.32, which the tests run) are not typos."""
    with pytest.raises(ImportError, match="vllm-calib needs vLLM, which is not installed"):
        make("pretrained=m,dtype=float32,enable_prefix_caching=False,max_num_seqs=4,tokenizer_mode=auto")
