"""``vllm-calib``: vLLM-backed log-likelihoods with per-token statistics, scoring each question's prompt once.

:class:`VLLMCalibLM` answers lm-eval's ``loglikelihood`` / ``loglikelihood_rolling`` with the result types of
``hf-calib`` (``LoglikelihoodResult``: the plain ``(loglikelihood, is_greedy)`` tuple plus ``.token_stats``;
``RollingLoglikelihoodResult``: the float plus ``.token_stats``; both from
:mod:`lm_eval_calib.models.token_stats`), so every task of this package runs on it; ``generate_until`` works
like lm-eval's ``vllm``.

How ``loglikelihood`` scores:

1. Requests are tokenized like ``hf`` (the same Hugging Face tokenizer and rules), contexts are truncated from
   the left like ``hf`` (the model sees at most ``max_length`` tokens; one warning per call says how many),
   duplicates are scored once, and requests are grouped by context.
2. Single-token options (MMLU's " A".." D", many fact objects): ONE request per context,
   ``SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=<the options' tokens>)``. vLLM prefills the
   context once and runs only its last position through the LM head; the greedy token it samples is the
   top-1 token of the whole vocabulary and comes back with its log-prob. A capability probe at start-up
   checks that the engine answers such requests; if not, options are scored as in 3 (``single_prefill=False``
   forces that path). These requests may read vLLM's prefix cache (only the last position's log-probs are
   asked for, and it is always computed): contexts are sorted by their tokens, and one that shares a cache
   block with its neighbour waits for a second wave, so a subject's few-shot examples are computed once.
3. Multi-token options: one request per option, ``prompt_logprobs=1`` over context + option, which gives
   every option token's log-prob and the top-1 token at its position. vLLM does not cache prompt
   log-probs, and a request that reads the prefix cache gets stale rows for the cached positions
   (vLLM #42245), so by default these requests skip the cache. ``prefix_caching=True`` lets them read it:
   the context is prefilled once (step 2, which also gives every option's first token), and each option
   request reads only rows after ``num_cached_tokens``; where the cache covered more than the context, the
   option is scored again without the cache. Verified equal to the default on vLLM 0.32 (CPU).

``loglikelihood_rolling`` splits documents into lm-eval's rolling windows of ``max_length`` tokens, one
``prompt_logprobs`` request per window. Engine calls are bounded in requests (``batch_size``) and prompt
tokens; vLLM's chunked prefill bounds the logits computed per step (``max_num_batched_tokens``, chosen from
the vocabulary size unless given).

``max_length`` is what ``hf`` calls it: the most tokens the model sees. vLLM's ``max_model_len`` must hold
the scored last token and one generated token on top, so the default is ``max_model_len - 2``.
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    maybe_truncate,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from lm_eval_calib.models import vllm_engine as engine_mod
from lm_eval_calib.models.requests import Pair, check_continuations, rolling_windows, unique_truncated_pairs
from lm_eval_calib.models.token_stats import LoglikelihoodResult, RollingLoglikelihoodResult, TokenStats

__all__ = ["VLLMCalibLM"]

eval_logger = logging.getLogger(__name__)

#: Prompt tokens per engine call (bounds the prompt log-prob rows held in Python at once).
_TOKENS_PER_CALL = 2**18
#: Bytes of float32 logits (and their log-softmax) one prefill step may hold for prompt log-probs.
_LOGITS_BUDGET = 2**31
_WARNED: set[str] = set()


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        eval_logger.warning(message)


def default_max_num_batched_tokens(vocab_size: int) -> int:
    """Tokens per prefill step such that their float32 logits and log-softmax stay within ``_LOGITS_BUDGET``.

    vLLM computes prompt log-probs over the full vocabulary for every prompt token of a step; with a large
    vocabulary and many tokens per step that is the out-of-memory trap of vLLM #5907. 49k vocabulary: 5376
    tokens; 128k: 2048; 256k: 1024. Never below 512, never above 8192.
    """
    tokens = _LOGITS_BUDGET // (max(1, vocab_size) * 4 * 2)
    return int(min(8192, max(512, tokens // 256 * 256)))


class VLLMCalibLM(TemplateLM):
    """lm-eval model ``vllm-calib``; see the module docstring.

    Args:
        pretrained: a Hugging Face model folder or hub id with safetensors/bin weights (a GGUF file must be
            converted first: ``python -m lm_eval_calib.models.vllm_export DEST``).
        dtype: vLLM's ``dtype``; ``float32`` gives log-probs equal to ``hf``'s within about 1e-4.
        batch_size: requests per engine call (``auto``: as many as fit the token bound).
        single_prefill: score single-token options from one prefill per context (default ``True``).
        prefix_caching: let multi-token option requests reuse the context's cached KV (default ``False``).
        max_length: most tokens the model sees, as in ``hf``; sets the engine's ``max_model_len`` to
            ``max_length + 2`` (default: the model's window - 2).
        tensor_parallel_size, gpu_memory_utilization, max_model_len, max_num_batched_tokens, enforce_eager,
            quantization, seed and any other keyword: passed to ``vllm.LLM``. ``enforce_eager`` defaults to
            ``True`` on CPU (graph compilation costs a minute at every start; scoring is prefill-bound).
        data_parallel_size: more than 1 runs that many engines under Ray, ``tensor_parallel_size`` GPUs each.
        trust_remote_code: off unless asked for.
    """

    #: Tasks check it before inference (:func:`lm_eval_calib.models.token_stats.model_provides_token_stats`).
    provides_token_stats = True

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool | str = False,
        tokenizer: str | None = None,
        tokenizer_revision: str | None = None,
        add_bos_token: bool | str | None = None,
        prefix_token_id: int | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        max_length: int | None = None,
        max_num_batched_tokens: int | None = None,
        batch_size: int | str = "auto",
        max_batch_size: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 1234,
        enforce_eager: bool | str | None = None,
        single_prefill: bool | str = True,
        prefix_caching: bool | str = False,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(pretrained, str):
            raise TypeError(
                "vllm-calib: pretrained must be a model folder or hub id (str), got "
                f"{type(pretrained).__name__}"
            )
        if "gguf_file" in engine_kwargs:
            raise ValueError(
                "vllm-calib loads Hugging Face folders, not GGUF files (gguf_file=...). Convert the "
                "checkpoint first, e.g. `python -m lm_eval_calib.models.vllm_export DEST` for the bundled "
                "SmolLM2, and pass pretrained=DEST"
            )
        if "device" in engine_kwargs:
            device = engine_kwargs.pop("device")
            if device not in (None, "cuda", "cpu"):
                eval_logger.info(
                    f"vllm-calib: device={device!r} is ignored; vLLM picks its devices (CUDA_VISIBLE_DEVICES)"
                )
        trust_remote_code = _as_bool(trust_remote_code)
        self.pretrained = pretrained
        engine_mod.import_vllm()
        config, self.tokenizer = self._load_config_and_tokenizer(
            pretrained, revision, tokenizer, tokenizer_revision, trust_remote_code, add_bos_token
        )
        self.add_bos_token = None if add_bos_token is None else _as_bool(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.batch_size = "auto" if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self._max_gen_toks = int(max_gen_toks)

        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = int(getattr(text_config, "vocab_size", 0) or len(self.tokenizer))
        engine_args: dict[str, Any] = {
            "model": pretrained,
            "revision": revision,
            "tokenizer": tokenizer,
            "tokenizer_revision": tokenizer_revision,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": int(tensor_parallel_size),
            "seed": int(seed),
            "enable_chunked_prefill": True,
            "max_num_batched_tokens": int(
                max_num_batched_tokens or default_max_num_batched_tokens(vocab_size)
            ),
        }
        # every check that can fail runs before the engine starts (a half-built in-process engine, torn
        # down, takes vLLM's process-wide parallel state with it)
        if max_length is not None and max_model_len is not None and int(max_length) != int(max_model_len) - 2:
            raise ValueError(
                f"vllm-calib: give max_length ({max_length}) or max_model_len ({max_model_len}), not both: "
                "max_length (tokens the model sees, as in `hf`) is max_model_len - 2"
            )
        if max_length is not None:
            max_model_len = int(max_length) + 2  # room for the scored last token and one generated token
        if max_model_len is not None:
            if int(max_model_len) < 3:
                raise ValueError(f"vllm-calib: max_model_len={max_model_len} is too small to score (>= 3)")
            engine_args["max_model_len"] = int(max_model_len)
        if gpu_memory_utilization is not None:
            engine_args["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if max_batch_size is not None and "max_num_seqs" not in engine_kwargs:
            engine_args["max_num_seqs"] = int(max_batch_size)
        if enforce_eager is None:
            from vllm.platforms import current_platform

            enforce_eager = current_platform.is_cpu()
        engine_args["enforce_eager"] = _as_bool(enforce_eager)
        self.prefix_caching = _as_bool(prefix_caching)
        if self.prefix_caching:
            if not engine_mod.sampling_field_supported("skip_reading_prefix_cache"):
                raise ValueError(
                    "vllm-calib: prefix_caching=True needs SamplingParams.skip_reading_prefix_cache (vLLM >= "
                    "0.11); this vLLM lacks it. Leave prefix_caching off."
                )
            if engine_kwargs.get("enable_prefix_caching") is False:
                raise ValueError("vllm-calib: prefix_caching=True contradicts enable_prefix_caching=False")
            engine_args["enable_prefix_caching"] = True
        engine_args.update(engine_kwargs)
        self.engine_args = engine_args

        self.data_parallel_size = int(data_parallel_size)
        self.engine = self._start_engine(engine_args, self.data_parallel_size, int(tensor_parallel_size))
        self.info: engine_mod.EngineInfo = self.engine.info
        if self.prefix_caching and not self.info.prefix_caching:
            raise ValueError(
                "vllm-calib: prefix_caching=True, but this engine runs without prefix caching (this platform "
                "or model does not support it); leave prefix_caching off"
            )
        if self.info.dtype != "float32":
            _warn_once(
                f"dtype-{self.info.dtype}",
                f"vllm-calib: the model runs in {self.info.dtype}; its log-probs differ from float32 (and "
                "from `hf` in float32) by up to ~0.5 nats per token, enough to change some answers and "
                "calibration numbers. Pass dtype=float32 for results that match `hf`.",
            )

        self._max_length = self.info.max_model_len - 2

        self.single_prefill = _as_bool(single_prefill)
        if self.single_prefill:
            probe_ids = sorted({self.prefix_token_id, self.eot_token_id})
            if not engine_mod.probe_logprob_token_ids(self.engine, [self.prefix_token_id], probe_ids):
                _warn_once(
                    "no-single-prefill",
                    "vllm-calib: this vLLM engine cannot return log-probs of chosen next tokens "
                    "(SamplingParams.logprob_token_ids); scoring every option with its own request instead",
                )
                self.single_prefill = False

    # -- set-up ----------------------------------------------------------------------------------------------
    @staticmethod
    def _load_config_and_tokenizer(
        pretrained, revision, tokenizer, tokenizer_revision, trust_remote_code, add_bos
    ):
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(
                pretrained, revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"vllm-calib: cannot read a Hugging Face model config from {pretrained!r} ({exc}). vLLM "
                "loads model folders (config.json + safetensors) and hub ids; a GGUF file must be converted "
                "first (python -m lm_eval_calib.models.vllm_export DEST for the bundled SmolLM2)."
            ) from exc
        kwargs: dict[str, Any] = {}
        if add_bos is not None:
            kwargs["add_bos_token"] = _as_bool(add_bos)
        try:
            tok = AutoTokenizer.from_pretrained(
                tokenizer or pretrained,
                revision=tokenizer_revision or revision,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"vllm-calib: cannot load a tokenizer from {tokenizer or pretrained!r} ({exc}); the model "
                "folder needs its tokenizer files, or pass tokenizer=<folder or hub id>"
            ) from exc
        return config, tok

    @staticmethod
    def _start_engine(engine_args: dict[str, Any], data_parallel_size: int, tensor_parallel_size: int):
        try:
            if data_parallel_size > 1:
                return engine_mod.RayDataParallelEngine(engine_args, data_parallel_size, tensor_parallel_size)
            return engine_mod.LocalEngine(engine_args)
        except ImportError:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"vllm-calib: vLLM could not load {engine_args['model']!r}: {type(exc).__name__}: {exc}. "
                "Check that vLLM supports this architecture and dtype on this device and that the memory "
                "settings (gpu_memory_utilization, max_model_len; VLLM_CPU_KVCACHE_SPACE on CPU) fit."
            ) from exc

    # -- lm-eval's model interface --------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Exactly ``hf``'s rule: the tokenizer's own special tokens unless told, none after a leading BOS."""
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        else:
            special = {}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        def render(history):
            return self.tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            eval_logger.warning("vllm-calib: chat template failed; retrying without the system message")
            return render([m for m in chat_history if m["role"] != "system"])

    # -- engine calls ----------------------------------------------------------------------------------------
    def _generate(self, prompts: list[list[int]], params: list, pbar: tqdm | None = None) -> list:
        """Run requests in engine calls of at most ``batch_size`` requests and ``_TOKENS_PER_CALL`` tokens."""
        out: list = []
        start = 0
        limit = len(prompts) if self.batch_size == "auto" else int(self.batch_size)
        while start < len(prompts):
            end, tokens = start, 0
            while end < len(prompts) and end - start < limit:
                if end > start and tokens + len(prompts[end]) > _TOKENS_PER_CALL:
                    break
                tokens += len(prompts[end])
                end += 1
            out.extend(self.engine.generate(prompts[start:end], params[start:end]))
            if pbar is not None:
                pbar.update(end - start)
            start = end
        return out

    # -- loglikelihood ---------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[LoglikelihoodResult]:
        check_continuations(requests, "vllm-calib")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[LoglikelihoodResult]:
        max_len = self.max_length
        unique = unique_truncated_pairs(requests, max_len, "vllm-calib")

        scored = self._score_pairs(list(unique), disable_tqdm)
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        for key, indices in unique.items():
            stats = scored[key]
            result = LoglikelihoodResult(stats.loglikelihood, stats.is_greedy, stats)
            for i in indices:
                results[i] = result
                request_str = requests[i][0]
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, result)
        return results  # type: ignore[return-value]

    def _context_chunks(self, order: list[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
        """Consecutive contexts in groups of at most ``_TOKENS_PER_CALL`` tokens; where the engine caches
        prefixes, at most half its KV cache of tokens not shared with the previous context, so the blocks a
        group shares (a subject's few-shot examples) stay cached while the group runs."""
        budget = _TOKENS_PER_CALL
        caching = self.info.prefix_caching and self.info.kv_cache_tokens
        if caching:
            budget = max(1, min(budget, self.info.kv_cache_tokens // 2))
        chunks: list[list[tuple[int, ...]]] = []
        tokens = 0
        previous: tuple[int, ...] = ()
        for ctx in order:
            new = len(ctx) - _common_prefix(previous, ctx) if caching else len(ctx)
            if not chunks or tokens + new > budget:
                chunks.append([])
                tokens, new = 0, len(ctx)
            chunks[-1].append(ctx)
            tokens += new
            previous = ctx
        return chunks

    def _score_pairs(self, pairs: list[Pair], disable_tqdm: bool) -> dict[Pair, TokenStats]:
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for ctx, cont in pairs:
            groups.setdefault(ctx, []).append(cont)
        # token order: independent of the request order, and contexts sharing a prefix are neighbours
        order = sorted(groups)
        for ctx in order:
            groups[ctx].sort(key=lambda c: (-len(c), c))

        out: dict[Pair, TokenStats] = {}
        pbar = tqdm(total=len(pairs), disable=disable_tqdm or self.rank != 0, desc="vllm-calib loglikelihood")
        for chunk in self._context_chunks(order):
            self._score_chunk(chunk, groups, out, pbar)
        pbar.close()
        return out

    def _prefill_waves(self, chunk: list[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
        """``[leaders, followers]``: a context that shares at least one KV-cache block with the one before it
        waits until the first wave has been prefilled, so vLLM's prefix cache serves the shared part (the
        few-shot examples of an MMLU subject) instead of computing it again in the same step."""
        block = self.info.block_size
        if not (self.info.prefix_caching and block):
            return [chunk]
        leaders, followers = [], []
        previous: tuple[int, ...] = ()
        for ctx in chunk:
            (followers if _common_prefix(previous, ctx) >= block else leaders).append(ctx)
            previous = ctx
        return [wave for wave in (leaders, followers) if wave]

    def _first_from_prefill(self, cont: tuple[int, ...]) -> bool:
        """Whether ``cont``'s first token is read from the context's single prefill (step 2)."""
        return self.single_prefill and (len(cont) == 1 or self.prefix_caching)

    def _score_chunk(self, chunk, groups, out: dict[Pair, TokenStats], pbar: tqdm) -> None:
        # step 2: one request per context (and per 128 first tokens) for the options' first tokens
        first: dict[tuple[int, ...], tuple[int, dict[int, float]]] = {}
        for wave in self._prefill_waves(chunk):
            prompts, params, owners = [], [], []
            for ctx in wave:
                ids = sorted({cont[0] for cont in groups[ctx] if self._first_from_prefill(cont)})
                for start in range(0, len(ids), engine_mod.MAX_LOGPROB_TOKEN_IDS):
                    prompts.append(list(ctx))
                    params.append(
                        engine_mod.next_token_params(ids[start : start + engine_mod.MAX_LOGPROB_TOKEN_IDS])
                    )
                    owners.append(ctx)
            for ctx, output in zip(owners, self._generate(prompts, params), strict=True):
                greedy, logprobs = engine_mod.next_token_logprobs(output)
                if ctx in first:
                    first[ctx][1].update(logprobs)
                else:
                    first[ctx] = (greedy, logprobs)

        # step 3: one prompt_logprobs request per option that needs more than its first token from step 2
        jobs = [
            (ctx, cont)
            for ctx in chunk
            for cont in groups[ctx]
            if not (self._first_from_prefill(cont) and len(cont) == 1)
        ]
        read_cache = self.prefix_caching and self.single_prefill
        prompts = [list(ctx + cont) for ctx, cont in jobs]
        params = [engine_mod.prompt_params(read_prefix_cache=read_cache) for _ in jobs]
        outputs = self._generate(prompts, params)
        rows: dict[Pair, engine_mod.Rows] = {}
        again = []
        for (ctx, cont), prompt, output in zip(jobs, prompts, outputs, strict=True):
            start = len(ctx) + (1 if self._first_from_prefill(cont) else 0)
            cached = getattr(output, "num_cached_tokens", None)
            if read_cache and (cached is None or cached > start - 1):
                again.append((ctx, cont))  # rows of cached positions are not real log-probs
                continue
            rows[(ctx, cont)] = engine_mod.prompt_rows(output, prompt, start)
        if again:
            prompts = [list(ctx + cont) for ctx, cont in again]
            outputs = self._generate(prompts, [engine_mod.prompt_params() for _ in again])
            for (ctx, cont), prompt, output in zip(again, prompts, outputs, strict=True):
                rows[(ctx, cont)] = engine_mod.prompt_rows(output, prompt, len(ctx) + 1)

        for ctx in chunk:
            for cont in groups[ctx]:
                parts = []
                if self._first_from_prefill(cont):
                    greedy, logprobs = first[ctx]
                    parts.append(
                        engine_mod.Rows(
                            np.array([logprobs[cont[0]]]), np.array([greedy]), np.array([logprobs[greedy]])
                        )
                    )
                if (ctx, cont) in rows:
                    parts.append(rows[(ctx, cont)])
                merged = engine_mod.Rows.concatenate(parts)
                out[(ctx, cont)] = TokenStats(np.asarray(cont), *_fields(merged))
                pbar.update(1)

    # -- loglikelihood_rolling -------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[RollingLoglikelihoodResult]:
        windows = rolling_windows(self, requests)
        owners = [doc for doc, _, _ in windows]
        prompts = [tokens for _, tokens, _ in windows]
        targets = [cont for _, _, cont in windows]

        desc = "vllm-calib rolling windows"
        pbar = tqdm(total=len(prompts), disable=disable_tqdm or self.rank != 0, desc=desc)
        outputs = self._generate(prompts, [engine_mod.prompt_params() for _ in prompts], pbar)
        pbar.close()
        per_doc: list[list[tuple[list[int], engine_mod.Rows]]] = [[] for _ in requests]
        for doc, prompt, cont, output in zip(owners, prompts, targets, outputs, strict=True):
            per_doc[doc].append((cont, engine_mod.prompt_rows(output, prompt, len(prompt) - len(cont))))

        results = []
        for req, windows in zip(requests, per_doc, strict=True):
            if windows:
                ids = np.asarray([t for cont, _ in windows for t in cont], dtype=np.int64)
                stats = TokenStats(ids, *_fields(engine_mod.Rows.concatenate([rows for _, rows in windows])))
                total = sum(float(rows.token_logprobs.sum()) for _, rows in windows)  # window sums, like hf
            else:
                stats, total = TokenStats.empty(), 0.0
            result = RollingLoglikelihoodResult(total, stats)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
            results.append(result)
        return results

    # -- generate_until --------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from vllm import SamplingParams

        eos = self.tokenizer.decode(self.eot_token_id) or getattr(self.tokenizer, "eos_token", None)
        prompts, params, stops = [], [], []
        for context, gen_kwargs in (req.args for req in requests):
            if not isinstance(gen_kwargs, dict):
                raise ValueError(f"vllm-calib: generation kwargs must be a dict, got {gen_kwargs!r}")
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if not kwargs.pop("do_sample", False):
                kwargs["temperature"] = 0.0  # greedy, as `hf`; vLLM's own default would sample at 1.0
            tokens, max_gen = maybe_truncate(
                self.tok_encode(context), max_gen_toks=max_gen, max_model_len=self.info.max_model_len
            )
            prompts.append(tokens)
            stops.append(until)
            params.append(
                SamplingParams(
                    max_tokens=max_gen,
                    stop=until,
                    skip_special_tokens=False,
                    spaces_between_special_tokens=False,
                    **kwargs,
                )
            )
        pbar = tqdm(
            total=len(prompts), disable=disable_tqdm or self.rank != 0, desc="vllm-calib generate_until"
        )
        outputs = self._generate(prompts, params, pbar)
        pbar.close()
        results = []
        for req, until, output in zip(requests, stops, outputs, strict=True):
            text = postprocess_generated_text(output.outputs[0].text, until, None)
            self.cache_hook.add_partial("generate_until", req.args, text)
            results.append(text)
        return results


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _fields(rows: engine_mod.Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rows.token_logprobs, rows.top1_ids, rows.top1_logprobs


def _register() -> None:
    """Register under ``vllm-calib`` (upgrading the package's lazy placeholder when it is there)."""
    try:
        register_model("vllm-calib")(VLLMCalibLM)
    except ValueError as exc:  # another object already holds the name: leave it, say so
        eval_logger.warning(f"vllm-calib: not registered in lm-eval's model registry ({exc})")


_register()
