"""The lm-eval task class behind every calibration task.

It is an ordinary ``ConfigurableTask`` for a multiple-choice config (prompt, choices, few-shot and data all
come from YAML) with three changes: each document yields a calibration record instead of lm-eval's
``acc``/``acc_norm`` values, the corpus-level aggregations are the calibration metrics with bootstrap
stderrs, and few-shot examples can be drawn per category (MMLU's 5-shot uses the dev questions of the
question's own subject, which lm-eval's samplers cannot do for a pooled task). Nothing here is
MMLU-specific, so any multiple-choice config can be wrapped the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

from lm_eval.api.metrics import mean
from lm_eval.api.samplers import FirstNSampler

from lm_eval_calib.harness.base import CalibrationTaskBase
from lm_eval_calib.harness.results import option_logliks
from lm_eval_calib.records import make_record


class CalibrationTask(CalibrationTaskBase):
    """A multiple-choice task scored for calibration (confidence = softmax over option log-likelihoods)."""

    output_types = ("multiple_choice",)
    fewshot_group_field: ClassVar[str | None] = None
    """Document field whose value selects the few-shot pool (first-n within that group); None = lm-eval's
    configured sampler over the whole few-shot split."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        self._group_samplers = self._build_group_samplers()

    def plain_aggregations(self) -> dict:
        # ``acc`` keeps lm-eval's own per-document 0/1 value and mean aggregation, so it is bit-for-bit the
        # accuracy lm-eval reports for the same prompts; every other metric aggregates the records.
        return {"acc": (mean, True)} | super().plain_aggregations()

    def _build_group_samplers(self) -> dict[Any, FirstNSampler]:
        if self.fewshot_group_field is None or self.fewshot_docs() is None:
            return {}
        pools: dict[Any, list] = defaultdict(list)
        for doc in self.fewshot_docs():
            pools[doc[self.fewshot_group_field]].append(doc)
        return {group: FirstNSampler(docs, rnd=None) for group, docs in pools.items()}

    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any):
        if self._group_samplers and num_fewshot > 0:
            group = doc[self.fewshot_group_field]
            if group not in self._group_samplers:
                raise ValueError(
                    f"{self.config.task}: no few-shot examples with {self.fewshot_group_field}={group!r} in "
                    f"the {self.fewshot_cfg.split!r} split; use --num_fewshot 0 or supply that split"
                )
            self.sampler = self._group_samplers[group]
        return super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)

    def _target_index(self, doc: dict, choices: list[str]) -> int:
        target = self.doc_to_target(doc)
        if isinstance(target, str):
            if target not in choices:
                raise ValueError(f"{self.config.task}: target {target!r} is not one of the choices {choices}")
            return choices.index(target)
        if isinstance(target, list):
            raise ValueError(
                f"{self.config.task}: calibration needs one gold option per document, got {target}"
            )
        return int(target)

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> Any:
        # Checked here as well as in process_results: this runs before any inference.
        if self.OUTPUT_TYPE == "multiple_choice":
            self.check_options(doc, self.doc_to_choice(doc))
        return super().construct_requests(doc, ctx, **kwargs)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        choices = self.doc_to_choice(doc)
        self.check_options(doc, choices)
        where = repr(self.doc_to_text(doc)[:60])
        logliks = option_logliks(results, len(choices), self.config.task, where)
        record = make_record(logliks, self._target_index(doc, choices), self.category(doc))
        floored = self.floored_values(record, results)
        return {"acc": float(record["correct"])} | self.record_values(record) | floored
