"""``hf-calib``'s generation path: ``hf``'s ``generate_until`` plus the log-probs of the generated tokens.

The generated text is unchanged (``hf``'s own ``generate_until`` runs); while ``generate`` runs, a forward
hook on the model reads, at every step, the log-softmax of the model's raw next-token logits (before any
logits processor: the model's own distribution) and keeps the entry of the token chosen, which it learns at
the next step's input. That is one ``[batch, vocab]`` log-softmax per step, no second forward pass and no
``[steps, batch, vocab]`` tensor. Each result becomes a :class:`~lm_eval_calib.generation.text.GeneratedText`
holding the log-probs of exactly the tokens that spell the returned text (cut at the stop sequence); when
the cut falls inside a token, or a special token sits inside the text, it stays a plain string and the task
rescores it. A NaN or infinite log-prob (NaN weights, a half-precision overflow) stops the run with an error
naming the request's task and document (:mod:`lm_eval_calib.models.generated`).

Sampled generations (``do_sample``) are not recorded: no estimator reads their log-probs.

``generate_samples`` (``provides_engine_sampling``) draws the K samples of the sampling estimators: ONE
``generate`` call of K rows per prompt, its prompt prefilled once and the KV cache repeated to the K rows
(``num_return_sequences=K`` where the model takes no cache), seeded with the document's seed in a forked
torch RNG (the global RNG is left as it was), so the same seed gives the same K texts whatever the batching
or the order of the documents. Prompts are encoded, truncated, stopped and cut exactly as ``hf``'s
``generate_until`` does it; the stopping criteria track all K rows (lm-eval's own track ``context.shape[0]``
rows, which would let one row's stop sequence end the others).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.models.utils_hf import stop_sequences_criteria

from lm_eval_calib.models.generated import request_label, with_generation_logprobs

eval_logger = logging.getLogger(__name__)

_Rows = dict[str, list[tuple[list[int], list[float]]]]


class _StepRecorder:
    """Forward hook collecting the log-prob of each generated token (see the module docstring)."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is None:
            return
        logprobs = F.log_softmax(logits[:, -1, :].float(), dim=-1)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.pending is not None and input_ids is not None:
            self.steps.append(self.pending.gather(-1, input_ids[:, -1:].to(logprobs.device)).squeeze(-1))
        self.pending = logprobs

    def finish(self, new_tokens: torch.Tensor) -> list[list[float]] | None:
        """Per row, the log-prob of each new token; None when the hook did not see one call per token."""
        if self.pending is not None and new_tokens.shape[1] > 0:
            last = new_tokens[:, -1:].to(self.pending.device)
            self.steps.append(self.pending.gather(-1, last).squeeze(-1))
        self.pending = None
        if len(self.steps) != new_tokens.shape[1]:
            return None
        if not self.steps:
            return [[] for _ in range(new_tokens.shape[0])]
        return torch.stack(self.steps, dim=1).double().cpu().tolist()


class GenerationLogprobsMixin:
    """Mixed into :class:`~lm_eval_calib.models.hf_calib.HFCalibLM` in front of ``HFLM``."""

    #: Read by generation calibration: sequence probabilities need no rescoring.
    provides_generation_logprobs = True
    #: Read by generation calibration: a prompt's K samples come from one seeded ``generate_samples`` call.
    provides_engine_sampling = True
    _gen_rows: _Rows | None = None
    _gen_batch: list[str] | None = None

    def tok_batch_encode(self, strings, *args, **kwargs):
        if self._gen_rows is not None:  # hf's generate_until encodes each batch right before generating it
            self._gen_batch = list(strings)
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        rows, batch = self._gen_rows, self._gen_batch
        if (
            rows is None
            or batch is None
            or len(batch) != context.shape[0]
            or generation_kwargs.get("do_sample")
        ):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        recorder = _StepRecorder()
        handle = self._base_model().register_forward_hook(recorder, with_kwargs=True)
        try:
            out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            handle.remove()
        new_tokens = out[:, context.shape[1] :]
        logprobs = recorder.finish(new_tokens)
        if logprobs is None:
            eval_logger.warning(
                "hf-calib: generation log-probs not recorded for a batch; they will be rescored"
            )
        else:
            for ctx, ids, lps in zip(batch, new_tokens.tolist(), logprobs, strict=True):
                rows.setdefault(ctx, []).append((ids, lps))
        self._gen_batch = None
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self._gen_rows = {}
        try:
            texts = super().generate_until(requests, disable_tqdm=disable_tqdm)
            rows = self._gen_rows
        finally:
            self._gen_rows, self._gen_batch = None, None
        pairs = zip(requests, texts, strict=True)
        return [self._with_logprobs(req, text, rows.get(req.args[0], ())) for req, text in pairs]

    def _with_logprobs(self, request, text: str, candidates) -> Any:
        special = getattr(self.tokenizer, "all_special_ids", ()) or ()
        where = request_label(request, "hf-calib")
        return with_generation_logprobs(text, candidates, self.tok_decode, special, where)

    # -- the sampling estimators' samples -------------------------------------------------------------------
    def generate_samples(self, requests, n: int, seeds: Sequence[int]) -> list[list[str]]:
        """For each request, ``n`` samples from ONE ``generate`` call seeded with its seed (module docstring).

        Requests are ``generate_until`` instances whose settings sample (``do_sample: true`` and a positive
        temperature); the results do not go to lm-eval's request cache.
        """
        if len(seeds) != len(requests):
            raise ValueError(f"hf-calib: {len(seeds)} seeds for {len(requests)} requests; give one each")
        if int(n) < 1:
            raise ValueError(f"hf-calib: generate_samples needs n >= 1 samples per prompt, got {n}")
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        out: list[list[str]] = []
        for request, seed in zip(requests, seeds, strict=True):
            context, gen_kwargs = request.args
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            kwargs.pop("seed", None)
            if not kwargs.get("do_sample") or not kwargs.get("temperature"):
                raise ValueError(
                    f"{request_label(request, 'hf-calib')}: generate_samples draws samples, but the request "
                    f"is greedy ({gen_kwargs!r}); K greedy answers would be K copies of one. Set "
                    "do_sample: true and a temperature > 0"
                )
            ids, mask = self.tok_batch_encode(
                [context], left_truncate_len=self.max_length - max_gen_toks, truncation=self.truncation
            )
            ids, mask = ids.to(self.device), mask.to(self.device)
            max_length = kwargs.pop("max_length", ids.shape[1] + max_gen_toks)
            rows = self._sample_rows(ids, mask, max_length, until, int(n), int(seed), kwargs)
            out.append([self._sample_text(row[ids.shape[1] :], until) for row in rows])
        return out

    def _sample_rows(self, ids, mask, max_length: int, until: list[str], n: int, seed: int, kwargs: dict):
        """``n`` generated rows of one prompt, sampled under ``seed`` in a forked RNG.

        Where the model takes a KV cache (``share_context``), the prompt but its last token is prefilled ONCE
        and its cache repeated to ``n`` rows, so ``generate`` computes only the last prompt token and the new
        ones (``num_return_sequences`` would prefill the prompt ``n`` times); otherwise
        ``num_return_sequences=n``.
        """
        device = self.device
        forked = [device.index or 0] if device.type != "cpu" else []
        device_type = device.type if device.type != "cpu" else "cuda"
        stopping = stop_sequences_criteria(self.tokenizer, until, ids.shape[1], n)
        prefill_once = getattr(self, "share_context", False) and ids.shape[1] > 1
        with torch.random.fork_rng(devices=forked, device_type=device_type), torch.no_grad():
            torch.manual_seed(seed)
            with torch.autocast(
                device_type=device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ):
                if prefill_once:
                    prefix = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
                    cache = self._output_cache(prefix)
                    cache.batch_repeat_interleave(n)
                    del prefix
                    more = {self._cache_kwarg: cache}
                    ids, mask = ids.expand(n, -1), mask.expand(n, -1)
                else:
                    more = {"num_return_sequences": n}
                rows = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_length=max_length,
                    stopping_criteria=stopping,
                    pad_token_id=self.tokenizer.pad_token_id,
                    use_cache=True,
                    **more,
                    **kwargs,
                )
        return rows.tolist()

    def _sample_text(self, tokens: list[int], until: list[str]) -> str:
        """One sample's text, cut as ``hf``'s ``generate_until`` cuts a generation."""
        think = getattr(self, "think_end_token", None)
        if isinstance(think, int) and think in tokens:
            tokens = tokens[len(tokens) - tokens[::-1].index(think) :]
        text = self.tok_decode(tokens)
        if isinstance(think, int):
            text = text.lstrip()
        return postprocess_generated_text(text, until, think if isinstance(think, str) else None)
