"""``hf-calib``: lm-eval's ``hf`` that also returns per-token statistics and scores shared prompts once.

:class:`HFCalibLM` subclasses :class:`lm_eval.models.huggingface.HFLM` (same constructor arguments, same
``generate_until`` text, which also carries the generated tokens' log-probs: see
:mod:`lm_eval_calib.models.hf_generation`). ``loglikelihood`` returns
:class:`~lm_eval_calib.models.token_stats.LoglikelihoodResult`: the plain ``(loglikelihood, is_greedy)``
tuple plus ``.token_stats`` for the continuation tokens.
``loglikelihood_rolling`` returns :class:`~lm_eval_calib.models.token_stats.RollingLoglikelihoodResult`: the
plain float plus ``.token_stats`` for every token of the document.

How ``loglikelihood`` scores (causal models):

1. Every request's context is truncated from the left exactly as ``hf`` does (the model sees at most
   ``max_length`` tokens), then requests are grouped by that effective context; duplicates are scored once.
2. Phase A: the distinct contexts are run in batches of ``batch_size`` (right-padded, as ``hf``), with the KV
   cache kept only when some continuation of the batch has more than one token. The logits of each context's
   last position give the distribution of every continuation's first token; one-token continuations (MMLU's
   " A".." D") are finished here, so a question costs one forward of its prompt.
3. Phase B, multi-token continuations. Default (sdpa or eager attention, no sliding window): each row packs
   a context followed by all its continuations (each without its last token), with a 4-D mask and restarted
   position ids that give every continuation token exactly the attention it has in its own ``hf`` sequence:
   one forward per batch. Otherwise (``pack_continuations=False``, other attention implementations, sliding
   windows, or a mask over budget) the continuations are scored ``batch_size`` rows at a time against their
   context's KV cache, selected (and repeated) along the batch dimension, with an attention mask over context
   and continuation and explicit position ids. Either way the shared prompt of a 10-option question runs
   once, not 10 times.

Results come back in request order and do not depend on the order or on the batch size beyond float rounding
(measured: about 1e-6 in float32). Models that cannot take a KV cache with explicit positions (or when
``share_context=False``) are scored like ``hf``, one full sequence per request.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from lm_eval_calib.models.hf_generation import GenerationLogprobsMixin
from lm_eval_calib.models.model_args import parse_bool
from lm_eval_calib.models.packing import additive_mask, pack_rows, packed_attention_mask
from lm_eval_calib.models.plumbing import register_backend, rolling_results, spread_results
from lm_eval_calib.models.requests import (
    check_continuations,
    group_by_context,
    rolling_windows,
    unique_truncated_pairs,
)
from lm_eval_calib.models.token_stats import LoglikelihoodResult, RollingLoglikelihoodResult, TokenStats

__all__ = ["HFCalibLM"]

eval_logger = logging.getLogger(__name__)

#: Positions per log-softmax call: bounds the full-vocabulary float tensor materialised at once.
_SOFTMAX_CHUNK = 1024
#: Largest batch x width x width mask of a packed forward; larger batches take the KV-cache route.
_PACKED_MASK_BUDGET = 2**26
#: Largest batch x width x vocabulary logits of one full-sequence forward (rolling windows, or
#: share_context=False): 2**29 elements, 1 GiB in bfloat16. Without it, scoring four WikiText-2 articles at
#: once on Qwen 0.5B (151k-token vocabulary) peaked at 12.6 GB. A single window always runs, however long.
_LOGITS_BUDGET = 2**29

_Request = tuple[tuple[str, str] | None, list[int], list[int]]


def _use_cpu_process_group() -> None:
    """Under ``torchrun`` on a machine with no accelerator, let accelerate form a gloo process group.

    accelerate treats a CPU-only multi-process launch as distributed only when told to use the CPU
    (``ACCELERATE_USE_CPU``, which ``accelerate launch --cpu`` sets); without it every process is a lone
    rank 0. Set only when several processes were launched, no accelerator exists and the user chose nothing.
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several and "ACCELERATE_USE_CPU" not in os.environ and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"


class HFCalibLM(GenerationLogprobsMixin, HFLM):
    """lm-eval's ``hf`` plus per-token statistics (model name ``hf-calib``).

    Args:
        share_context: score continuations against their context's KV cache (default ``True``); ``False``
            runs one full forward per request like ``hf`` (still with token statistics).
        pack_continuations: score a context's multi-token continuations packed behind it in one row
            (:mod:`lm_eval_calib.models.packing`; default ``True``); ``False`` takes the KV-cache route.
        Both accept a bool or 1/0, true/false, yes/no, on/off (anything else is an error).
        All other arguments are :class:`lm_eval.models.huggingface.HFLM`'s.
    """

    #: Tasks check it before inference (:func:`lm_eval_calib.models.token_stats.model_provides_token_stats`).
    provides_token_stats = True

    def __init__(
        self,
        pretrained,
        *args,
        share_context: bool | str = True,
        pack_continuations: bool | str = True,
        **kwargs,
    ) -> None:
        _use_cpu_process_group()
        super().__init__(pretrained, *args, **kwargs)
        self._join_cpu_ranks()
        self._check_causal_lm_head()
        self.share_context = (
            parse_bool(share_context, "hf-calib: share_context") and self._supports_kv_sharing()
        )
        text_config = (
            self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        )
        # Sliding-window layers keep only the last window of the cache: never pad contexts in front of them.
        self._pad_contexts = getattr(text_config, "sliding_window", None) is None
        self._attn_implementation = getattr(self._base_model().config, "_attn_implementation", None)
        # one forward per batch with a custom 4-D mask: needs an attention that takes one (sdpa, eager) and
        # the same mask on every layer (no sliding windows); otherwise the KV-cache route below
        self._pack_continuations = (
            parse_bool(pack_continuations, "hf-calib: pack_continuations")
            and self.share_context
            and self._pad_contexts
            and self._attn_implementation in ("sdpa", "eager")
        )

    def _join_cpu_ranks(self) -> None:
        """Take lm-eval's data-parallel path under ``accelerate launch`` / ``torchrun`` on CPU too.

        lm-eval's ``hf`` splits requests across processes only when it counts GPUs (``gpus > 1``); on CPU
        (gloo) every process calls itself rank 0 and scores everything. The accelerator it created already
        knows the real rank and world size, so we adopt them: each rank scores its share and the evaluator
        gathers results and records exactly as on GPUs.
        """
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1 or self._world_size > 1:
            return
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes

    # -- set-up checks --------------------------------------------------------------------------------------
    def _get_backend(self, config, backend="default", trust_remote_code=False) -> None:
        super()._get_backend(config=config, backend=backend, trust_remote_code=trust_remote_code)
        if self.backend != "causal":
            raise ValueError(
                f"hf-calib scores decoder-only (causal) language models; this model was detected as "
                f"{self.backend!r} (model_type={getattr(config, 'model_type', None)!r}). Use `--model hf` "
                "for encoder-decoder models (no token statistics), or pass backend=causal if it is causal."
            )

    def _base_model(self):
        model = self.model
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        return model

    def _check_causal_lm_head(self) -> None:
        base = self._base_model()
        get_head = getattr(base, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None:
            raise ValueError(
                f"hf-calib needs a causal language model with an LM head (an AutoModelForCausalLM such as "
                f"LlamaForCausalLM); got {type(base).__name__}, which has no output embeddings and returns "
                "no logits. Load the checkpoint with its causal-LM class, or pass a model id/folder instead."
            )

    def _supports_kv_sharing(self) -> bool:
        model = self.model
        peft_config = getattr(model, "peft_config", None)
        if isinstance(peft_config, dict) and any(
            getattr(c, "is_prompt_learning", False) for c in peft_config.values()
        ):
            return False  # virtual prompt tokens: score full sequences like hf
        params = inspect.signature(self._base_model().forward).parameters
        # transformers 5 calls the cache argument `cache` (`past_key_values` before, deprecated until 5.40)
        self._cache_kwarg = next((n for n in ("cache", "past_key_values") if n in params), None)
        ok = self._cache_kwarg is not None and all(
            name in params for name in ("position_ids", "attention_mask", "use_cache")
        )
        if not ok:
            eval_logger.info("hf-calib: model forward takes no KV cache/positions; scoring full sequences")
        return ok

    def _accepts_logits_to_keep(self) -> bool:
        if not hasattr(self, "_logits_to_keep_ok"):
            params = inspect.signature(self._base_model().forward).parameters
            self._logits_to_keep_ok = "logits_to_keep" in params and not isinstance(
                getattr(self.model, "peft_config", None), dict
            )
        return self._logits_to_keep_ok

    # -- helpers --------------------------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, **kwargs):
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(input_ids=input_ids, **kwargs)

    def _resolve_batch_size(self, override_bs: int | None) -> int:
        if override_bs is not None:
            return max(1, int(override_bs))
        if self.batch_size == "auto":
            if "calib" not in self.batch_sizes:
                eval_logger.info("hf-calib: detecting the largest batch size for max_length sequences")
                self.batch_sizes["calib"] = self._detect_batch_size()
            return max(1, int(self.batch_sizes["calib"]))
        return max(1, int(self.batch_size))

    def _stats(self, logits: torch.Tensor, targets: torch.Tensor):
        """Log-prob of ``targets`` and the top-1 id / log-prob at every row of ``logits`` ([n, V])."""
        token_lp, top_lp, top_id = [], [], []
        for start in range(0, logits.shape[0], _SOFTMAX_CHUNK):
            lp = F.log_softmax(logits[start : start + _SOFTMAX_CHUNK], dim=-1, dtype=self.softmax_dtype)
            values, ids = lp.max(dim=-1)
            token_lp.append(lp.gather(-1, targets[start : start + _SOFTMAX_CHUNK, None]).squeeze(-1))
            top_lp.append(values)
            top_id.append(ids)
            del lp
        return torch.cat(token_lp), torch.cat(top_id), torch.cat(top_lp)

    @staticmethod
    def _pack(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], cont: Sequence[int]):
        """(loglikelihood as hf computes it, is_greedy, TokenStats) from per-position stats pieces."""
        token_lp = torch.cat([p[0] for p in parts])
        top_id = torch.cat([p[1] for p in parts])
        top_lp = torch.cat([p[2] for p in parts])
        cont_t = torch.tensor(list(cont), dtype=torch.long)
        top_id = top_id.cpu()
        greedy = bool((top_id == cont_t).all())
        loglikelihood = float(token_lp.sum())  # same float32 reduction as hf's `logits.sum()`
        stats = TokenStats(
            token_ids=cont_t.numpy(),
            token_logprobs=token_lp.double().cpu().numpy(),
            top1_ids=top_id.numpy(),
            top1_logprobs=top_lp.double().cpu().numpy(),
        )
        return loglikelihood, greedy, stats

    def _pad(self, rows: list[list[int]], length: int) -> torch.Tensor:
        out = torch.zeros((len(rows), length), dtype=torch.long)  # hf pads with 0 too
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(self.device)

    # -- loglikelihood --------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[LoglikelihoodResult]:
        check_continuations(requests, "hf-calib")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self,
        requests: list[_Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[LoglikelihoodResult]:
        max_len = self.max_length
        batch_size = self._resolve_batch_size(override_bs)

        # 1. effective (truncated) context per request, as hf: input = (ctx + cont)[-(max_len + 1):][:-1]
        unique = unique_truncated_pairs(requests, max_len, "hf-calib")

        if self.share_context:
            scored = self._score_shared(list(unique), batch_size, disable_tqdm)
        else:
            items = [(list(ctx + cont)[:-1], list(cont)) for ctx, cont in unique]
            scored = dict(zip(unique, self._score_full(items, batch_size, disable_tqdm), strict=True))

        results = {key: LoglikelihoodResult(*scored[key]) for key in unique}
        return spread_results(requests, unique, results, self.cache_hook)

    def _score_shared(self, pairs, batch_size: int, disable_tqdm: bool):
        """Score (context, continuation) token pairs, running each distinct context once."""
        groups = group_by_context(pairs)
        out = {}
        pbar = tqdm(total=len(pairs), disable=(disable_tqdm or self.rank != 0), desc="hf-calib loglikelihood")
        for batch in self._context_batches(groups, batch_size):
            if self._pack_continuations and self._packed_size(batch, groups) <= _PACKED_MASK_BUDGET:
                self._score_packed(batch, groups, out, pbar)
                continue
            first, cache = self._score_first_tokens(batch, groups, out, pbar)
            if cache is not None:
                self._score_tails(batch, groups, first, cache, batch_size, out, pbar)
            del cache
        pbar.close()
        return out

    def _context_batches(self, groups, batch_size: int) -> list[list[tuple[int, ...]]]:
        """Contexts in batches of at most ``batch_size``, widest first (the least padding per batch; the
        order does not depend on the request order); equal lengths only where padding is not allowed."""

        def row_width(ctx) -> int:  # a packed row holds the context and every continuation but its last token
            return len(ctx) + sum(len(c) - 1 for c in groups[ctx]) if self._pack_continuations else len(ctx)

        batches: list[list[tuple[int, ...]]] = []
        for ctx in sorted(groups, key=lambda c: (-row_width(c), -len(c), c)):
            if (
                batches
                and len(batches[-1]) < batch_size
                and (self._pad_contexts or len(batches[-1][0]) == len(ctx))
            ):
                batches[-1].append(ctx)
            else:
                batches.append([ctx])
        return batches

    def _score_first_tokens(self, batch, groups, out, pbar):
        """Phase A: one forward of the batch's contexts; the logits of each context's last position give
        every continuation's first token, and one-token continuations are finished here.

        Returns the first-token statistics of every pair and the contexts' KV cache (``None`` when no
        continuation of the batch has a second token).
        """
        lengths = [len(c) for c in batch]
        inputs = self._pad([list(c) for c in batch], max(lengths))
        need_cache = any(len(cont) > 1 for ctx in batch for cont in groups[ctx])
        kwargs = {"use_cache": need_cache}
        rows = torch.arange(len(batch), device=self.device)
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        if self._accepts_logits_to_keep():
            # only the last real position of each context goes through the LM head
            kwargs["logits_to_keep"] = 1 if len(set(lengths)) == 1 else last[:, None]
        output = self._forward(inputs, **kwargs)
        logits = output.logits
        if "logits_to_keep" in kwargs and logits.ndim == 3 and logits.shape[1] == 1:
            first_logits = logits[:, 0]
        elif logits.ndim == 4:  # an older model head indexing [:, positions, :] with the 2-D positions
            first_logits = logits[rows, rows, 0]
        else:
            first_logits = logits[rows, last]
        cache = self._output_cache(output) if need_cache else None
        del output, logits

        first_lp = F.log_softmax(first_logits, dim=-1, dtype=self.softmax_dtype)  # [b, V]
        first_top_lp, first_top_id = first_lp.max(dim=-1)
        first: dict[tuple, tuple] = {}
        for b, ctx in enumerate(batch):
            for cont in groups[ctx]:
                first[(ctx, cont)] = (
                    first_lp[b, cont[0]].reshape(1),
                    first_top_id[b].reshape(1),
                    first_top_lp[b].reshape(1),
                )
                if len(cont) == 1:
                    out[(ctx, cont)] = self._pack([first[(ctx, cont)]], cont)
                    pbar.update(1)
        return first, cache

    def _score_tails(self, batch, groups, first, cache, batch_size: int, out, pbar) -> None:
        """Phase B: the remaining tokens of longer continuations, ``batch_size`` rows at a time against their
        context's KV cache (selected, and repeated, along the batch dimension), with an attention mask over
        context and continuation and explicit position ids."""
        lengths = [len(c) for c in batch]
        rows_b = [(b, ctx, cont) for b, ctx in enumerate(batch) for cont in groups[ctx] if len(cont) > 1]
        ctx_mask = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
        for b, n in enumerate(lengths):
            ctx_mask[b, :n] = 1
        for start in range(0, len(rows_b), batch_size):
            chunk = rows_b[start : start + batch_size]
            index = torch.tensor([b for b, _, _ in chunk], dtype=torch.long)
            tails = [list(cont[:-1]) for _, _, cont in chunk]
            tail_len = max(len(t) for t in tails)
            tail_ids = self._pad(tails, tail_len)
            tail_mask = torch.zeros((len(chunk), tail_len), dtype=torch.long)
            for r, t in enumerate(tails):
                tail_mask[r, : len(t)] = 1
            attention_mask = torch.cat([ctx_mask[index], tail_mask], dim=1).to(self.device)
            ctx_len = torch.tensor([lengths[b] for b, _, _ in chunk], dtype=torch.long)
            position_ids = (ctx_len[:, None] + torch.arange(tail_len)[None, :]).to(self.device)
            logits = self._forward(
                tail_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_kwarg: self._select_cache(cache, index.to(self.device))},
            ).logits
            for r, (_, ctx, cont) in enumerate(chunk):
                targets = torch.tensor(cont[1:], device=self.device)
                rest = self._stats(logits[r, : len(cont) - 1], targets)
                out[(ctx, cont)] = self._pack([first[(ctx, cont)], rest], cont)
                pbar.update(1)
            del logits

    @staticmethod
    def _packed_size(batch, groups) -> int:
        """Elements of the 4-D mask a packed forward of ``batch`` needs (0: nothing to pack, use phase A)."""
        widths = [len(ctx) + sum(len(c) - 1 for c in groups[ctx]) for ctx in batch]
        if all(w == len(ctx) for w, ctx in zip(widths, batch, strict=True)):
            return _PACKED_MASK_BUDGET + 1  # one-token continuations only: phase A alone is cheaper
        return len(batch) * max(widths) ** 2

    def _score_packed(self, batch, groups, out, pbar) -> None:
        """Score a batch of contexts and ALL their continuations in one forward, without a KV cache.

        Each row holds a context and every continuation's tail, under the mask of
        :func:`~lm_eval_calib.models.packing.packed_attention_mask` and position ids that restart after
        the context for every tail (:func:`~lm_eval_calib.models.packing.pack_rows`): every continuation
        token sees exactly what it sees in ``hf``'s separate sequence, the shared prompt runs once, and there
        is no phase B.
        """
        packed = pack_rows(batch, groups)
        mask = packed_attention_mask(packed.segment_ids()).to(self.device)
        if self._attn_implementation == "eager":  # eager adds the mask to the scores
            mask = additive_mask(mask, next(self.model.parameters()).dtype)
        keep = packed.kept_columns().to(self.device)
        kwargs = {
            "attention_mask": mask,
            "position_ids": packed.position_ids().to(self.device),
            "use_cache": False,
        }
        if self._accepts_logits_to_keep():
            kwargs["logits_to_keep"] = keep
        logits = self._forward(self._pad(packed.tokens, packed.width), **kwargs).logits
        if logits.ndim == 4:  # an older head (transformers < 5.20) indexes [:, keep, :] with the 2-D keep
            rows_index = torch.arange(len(batch), device=self.device)
            logits = logits[rows_index, rows_index]
        if logits.shape[:2] != keep.shape:  # the model kept every position
            logits = torch.take_along_dim(logits, keep[..., None], dim=1)
        for b, plan in enumerate(packed.plans):
            lp = F.log_softmax(logits[b, : len(packed.columns[b])], dim=-1, dtype=self.softmax_dtype)
            top_lp, top_id = lp.max(dim=-1)
            for cont, preds in plan:
                idx = torch.tensor(preds, device=self.device)
                target = torch.tensor(cont, device=self.device)
                out[(batch[b], cont)] = self._pack([(lp[idx, target], top_id[idx], top_lp[idx])], cont)
                pbar.update(1)
            del lp
        del logits

    @staticmethod
    def _output_cache(output):
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is None:
            raise RuntimeError("hf-calib: the model returned no KV cache although use_cache=True was passed")
        return cache

    @staticmethod
    def _select_cache(cache, index: torch.Tensor):
        """A new cache holding rows ``index`` (with repeats) of ``cache``; ``cache`` itself is left intact."""
        if hasattr(cache, "layers"):
            selected = copy.copy(cache)
            selected.layers = [copy.copy(layer) for layer in cache.layers]
        else:
            selected = copy.deepcopy(cache)
        selected.batch_select_indices(index)
        return selected

    def _score_full(self, items: list[tuple[list[int], list[int]]], batch_size: int, disable_tqdm: bool):
        """Score ``targets`` at the last ``len(targets)`` positions of each ``input``: one forward per item.

        Items are ``(input_tokens, targets)`` with ``input_tokens[-len(targets)+1:] == targets[:-1]`` (the
        input is context + continuation[:-1], or a rolling window). Batched longest first, right-padded,
        without KV cache; the full-vocabulary log-softmax is taken ``_SOFTMAX_CHUNK`` positions at a time.
        """
        order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), tuple(items[i][0])))
        out: list = [None] * len(items)
        pbar = tqdm(total=len(items), disable=(disable_tqdm or self.rank != 0), desc="hf-calib scoring")
        for chunk in self._full_batches([len(items[i][0]) for i in order], order, batch_size):
            width = max(len(items[i][0]) for i in chunk)
            inputs = self._pad([items[i][0] for i in chunk], width)
            logits = self._forward(inputs, use_cache=False).logits
            virtual = logits.shape[1] - width  # prompt-learning adapters prepend virtual tokens
            for r, i in enumerate(chunk):
                inp, targets = items[i]
                end = virtual + len(inp)
                rows = logits[r, end - len(targets) : end]
                part = self._stats(rows, torch.tensor(targets, device=self.device))
                out[i] = self._pack([part], targets)
                pbar.update(1)
            del logits
        pbar.close()
        return out

    def _full_batches(self, widths: list[int], order: list[int], batch_size: int) -> list[list[int]]:
        """Cut ``order`` (longest first; ``widths`` are its items' input lengths, in the same order) into
        batches of at most ``batch_size`` items whose padded logits (items x the batch's first width x
        vocabulary) stay within ``_LOGITS_BUDGET``; an item that alone exceeds it runs alone."""
        vocab = self._vocab_size()
        batches: list[list[int]] = []
        padded = 0
        for index, width in zip(order, widths, strict=True):
            fits = batches and len(batches[-1]) < batch_size
            if fits and (len(batches[-1]) + 1) * padded * vocab <= _LOGITS_BUDGET:
                batches[-1].append(index)
            else:
                batches.append([index])
                padded = width
        return batches

    def _vocab_size(self) -> int:
        head = self.model.get_output_embeddings()
        return int(head.weight.shape[0]) if head is not None else int(self.model.config.vocab_size)

    # -- loglikelihood_rolling ------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[RollingLoglikelihoodResult]:
        batch_size = self._resolve_batch_size(None)
        windows = rolling_windows(self, requests)
        owners = [doc for doc, _, _ in windows]
        items = [(tokens[:-1], cont) for _, tokens, cont in windows]

        scored = self._score_full(items, batch_size, disable_tqdm)
        # hf sums the windows' float log-likelihoods
        windows_scored = [(loglikelihood, stats) for loglikelihood, _, stats in scored]
        return rolling_results(requests, owners, windows_scored, self.cache_hook)


register_backend("hf-calib", HFCalibLM)
