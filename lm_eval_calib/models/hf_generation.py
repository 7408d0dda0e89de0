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
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

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
