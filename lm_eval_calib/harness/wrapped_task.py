"""The two task classes of ``calib_<x>``: one wrapped multiple-choice task; a group or tag pooled as one.

:class:`WrappedMultipleChoiceTask` is mixed into the original ``ConfigurableTask`` (or its Python class) by
:func:`lm_eval_calib.harness.wrap_rules.leaf_class`; :class:`PooledCalibrationTask` is built by
:func:`lm_eval_calib.harness.wrap.build` over the wrapped subtasks of a group or tag. What only the data show
(several gold answers, subtasks with different filters) is refused here, when the task is built.
"""

from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING, Any

from lm_eval.api.metrics import mean
from lm_eval.config.task import TaskConfig

from lm_eval_calib.harness.base import (
    CALIBRATION_KEYS,
    CalibrationTaskBase,
    ResultMetric,
    build_record_aggregations,
    result_table,
)
from lm_eval_calib.harness.compat.pooled import PooledTaskBase
from lm_eval_calib.harness.results import option_logliks
from lm_eval_calib.harness.wrap_refusal import (
    PREFIX,
    SINGLE_GOLD_ALTERNATIVE,
    SUBTASKS_KEY,
    WRAPS_KEY,
    Unwrappable,
    WrapRefusal,
    refusal_message,
)
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.records import NORM_SUFFIX, RECORD_LOG_KEY, length_normalised, make_record

if TYPE_CHECKING:
    from lm_eval_calib.harness.wrap import WrapPlan

logger = logging.getLogger("lm_eval_calib")


class WrappedMultipleChoiceTask(CalibrationTaskBase):
    """An lm-eval multiple-choice task, unchanged, plus the calibration of its predictions.

    ``process_results`` returns the original's own metrics (lm-eval's code, same values) and adds, from the
    same log-likelihoods: the option record of the argmax rule (``ece``, ``brier``, ...; ``acc`` too when the
    original does not report it) and, where the original reports ``acc_norm``, the record of that rule
    (``ece_norm``, ``brier_norm``, ...; confidence from ``ll_i / len(choice_i)``).
    """

    output_types = ("multiple_choice",)
    keeps_own_metrics = True
    record_category: Any = None
    """The ``category`` of this task's records (a pooled task sets its subtask's name)."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        if self.first_target_count() > 1:
            raise self._refusal(
                f"its documents have several correct answers (doc_to_target gave "
                f"{self.doc_to_target(self.eval_docs[0])!r} for the first one); calibration needs exactly "
                "one correct option per document"
            )
        clash = sorted(set(self.own_metric_names()) & set(self.result_metrics))
        if clash:
            raise ValueError(
                f"{self.config.task}: the task's own metric(s) {clash} have the names of calibration "
                "metrics; rename them in its metric_list to wrap it"
            )

    def calibration_table(self) -> dict[str, ResultMetric]:
        # Decided once, from the original's metric list as configured (lm-eval's override_metric, e.g. for
        # --predict_only, later replaces that list): does it report acc itself, does it report acc_norm?
        own = set(self.own_metric_names())
        self._adds_acc = "acc" not in own
        self._norm = "acc_norm" in own
        norm = result_table(CALIBRATION_KEYS, NORM_SUFFIX) if self._norm else {}
        return result_table(CALIBRATION_KEYS) | norm

    def plain_aggregations(self) -> dict:
        return ({"acc": (mean, True)} if self._adds_acc else {}) | super().plain_aggregations()

    def _refusal(self, reason: str) -> WrapRefusal:
        name = self.config.task
        original = (self.config.metadata or {}).get(WRAPS_KEY, name)
        subtask = None if name == PREFIX + original else name  # a pooled task's subtask keeps its name
        return WrapRefusal(
            refusal_message(
                PREFIX + original,
                original,
                subtask,
                Unwrappable(reason, SINGLE_GOLD_ALTERNATIVE.format(hint="")),
            )
        )

    def check_target(self, doc: dict) -> None:
        """Refuse, naming the document, a target that lm-eval's multiple-choice scoring cannot score.

        lm-eval decides from the FIRST document whether a task has list targets; a later document with a
        gold list ``[0, 1]`` then crashes its ``process_results`` after inference ("The truth value of an
        array ... is ambiguous"), and a later single target in a task whose first target is a list crashes it
        too. Called for every document when its requests are built (before any model call) and again before
        scoring (requests read from lm-eval's cache are not built).
        """
        gold = self.doc_to_text(doc) if self.options_are_inputs() else self.doc_to_target(doc)
        if isinstance(gold, list) and len(gold) != 1:
            reason = (
                f"has {'several correct answers' if gold else 'no correct answer'} (doc_to_target gave "
                f"{gold!r}); calibration needs exactly one correct option per document"
            )
        elif self.first_target_count() and not isinstance(gold, list):
            reason = (
                f"has a single target (doc_to_target gave {gold!r}) where the first document's is a list, "
                "and lm-eval scores every document of a task the way it scores the first"
            )
        else:
            return
        index = next((i for i, other in enumerate(self.eval_docs) if other == doc), "?")
        raise self._refusal(f"its document {index} ({str(self.doc_to_text(doc))[:60]!r}) {reason}")

    def category(self, doc: dict) -> Any:
        return self.record_category

    def _gold(self, doc: dict, choices: list) -> int | None:
        """The gold option index, read the way lm-eval's multiple-choice scoring reads it; None when there is
        no single valid one."""
        gold = self.doc_to_text(doc) if self.options_are_inputs() else self.doc_to_target(doc)
        if isinstance(gold, list):
            if len(gold) != 1:
                return None
            gold = gold[0]
        if isinstance(gold, str):
            return choices.index(gold) if gold in choices else None
        if isinstance(gold, numbers.Integral) and not isinstance(gold, bool) and 0 <= gold < len(choices):
            return int(gold)
        return None

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> Any:
        # lm-eval-calib's rule for every multiple-choice task, checked before any inference: with one option
        # the answer is right at confidence 1 whatever the model does
        self.check_options(doc, list(self.doc_to_choice(doc)))
        self.check_target(doc)
        return super().construct_requests(doc, ctx, **kwargs)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        self.check_target(doc)
        values = dict(super().process_results(doc, results))  # the original's metrics, by lm-eval's code
        choices = list(self.doc_to_choice(doc))
        where = repr(str(self.doc_to_text(doc))[:60])
        gold = self._gold(doc, choices)
        if gold is None:  # lm-eval warns and scores it wrong; a calibration record has no target to score
            logger.warning(
                "[%s] document %s has no single valid gold option (doc_to_target gave %r for options %r): "
                "its calibration record is left out (the task's own metrics keep it)",
                self.config.task,
                where,
                self.doc_to_target(doc),
                choices,
            )
            return values
        # lm-eval appends unconditional scores after the options for acc_mutual_info; the options come first
        logliks = option_logliks(list(results)[: len(choices)], len(choices), self.config.task, where)
        record = make_record(logliks, gold, self.category(doc))
        values.update(self.floored_values(record, list(results)[: len(choices)]))
        if self._adds_acc:
            values["acc"] = float(record["correct"])
        values.update(self.record_values(record))
        if self._norm:
            norm = make_record(length_normalised(logliks, choices), gold, self.category(doc))
            values.update(self.record_values(norm, RECORD_LOG_KEY + NORM_SUFFIX))
        return values


# -- a group or tag as one task ------------------------------------------------------------------------------
class PooledCalibrationTask(PooledTaskBase):
    """ONE lm-eval task over the documents of every subtask of a group or tag (subtasks in lm-eval's order).

    Each document keeps its own subtask's prompt, few-shot examples, requests, filters and scoring (its
    :class:`WrappedMultipleChoiceTask`); the records carry the subtask as ``category``; every metric is
    aggregated over all documents (``acc``: the size-weighted mean, as lm-eval's ``mmlu`` group reports it).
    ``--limit N`` takes the first N documents of the pooled list, as for ``calib_mmlu``; ``--samples`` indexes
    it. ``--num_fewshot`` reaches every subtask by lm-eval's rule (a subtask configured with 0 shots keeps 0).
    What differs between lm-eval lines (filters, per-document scoring) is in its base,
    :mod:`lm_eval_calib.harness.compat.pooled`.
    """

    OUTPUT_TYPE = "multiple_choice"

    def __init__(self, the_plan: WrapPlan, subtasks: list[WrappedMultipleChoiceTask]) -> None:
        # Task.__init__ would download a dataset; the subtasks have theirs.
        self.subtasks = subtasks
        self.plan = the_plan
        self._instances = None
        self._training_docs = None
        self._fewshot_docs = None
        self.fewshot_rnd = None
        filters = {tuple(f.name for f in sub.filter_ensembles()) for sub in subtasks}
        if len(filters) > 1:
            raise WrapRefusal(
                refusal_message(
                    the_plan.name,
                    the_plan.original,
                    None,
                    Unwrappable(
                        f"its subtasks use different filters {sorted(filters)}", "wrap them one by one"
                    ),
                )
            )
        self._docs: list[dict] = []
        self._owner: dict[int, WrappedMultipleChoiceTask] = {}
        spans: dict[str, list[int]] = {}
        for sub in subtasks:
            start = len(self._docs)
            for doc in self.subtask_docs(sub):
                self._docs.append(doc)
                self._owner[id(doc)] = sub
            spans[sub.config.task] = [start, len(self._docs)]
        logger.info(
            "[%s] one task over the %d documents of %d subtasks (--samples indices: %s)", the_plan.name,
            len(self._docs), len(subtasks), ", ".join(f"{n} [{a}, {b})" for n, (a, b) in spans.items()),
        )  # fmt: skip
        shots = [sub.config.num_fewshot for sub in subtasks]
        metadata = {
            key: value
            for key, value in (subtasks[0].config.metadata or {}).items()
            if key not in ("config_source", "version")
        }
        metadata |= {WRAPS_KEY: the_plan.original, SUBTASKS_KEY: spans}
        self._config = TaskConfig(
            task=the_plan.name,
            output_type=self.OUTPUT_TYPE,
            # a shared default when there is one (lm-eval then leaves the subtasks' own defaults alone)
            num_fewshot=next((n for n in shots if n), next((n for n in shots if n is not None), None)),
            metadata=metadata,
        )
        versions = {str(sub.VERSION) for sub in subtasks}
        self.VERSION = versions.pop() if len(versions) == 1 else "mixed"
        self.calibration = CalibrationOptions.from_metadata(metadata)
        self._aggregations, self._higher_is_better = self._pooled_aggregations()
        self.pool_own_metrics()
        self.UNSAFE_CODE = any(getattr(sub, "UNSAFE_CODE", False) for sub in subtasks)
        self.MULTIMODAL = any(getattr(sub, "MULTIMODAL", False) for sub in subtasks)

    def _pooled_aggregations(self) -> tuple[dict, dict]:
        """The subtasks' own aggregations (one per key), and the calibration rows of every subtask
        aggregated over all pooled documents (:func:`~lm_eval_calib.harness.base.build_record_aggregations`,
        as one task does)."""
        table: dict[str, ResultMetric] = {}
        for sub in self.subtasks:
            table |= sub.result_metrics
        aggregations: dict = {}
        higher: dict = {}
        for sub in self.subtasks:
            for key, fn in sub.aggregation().items():
                if key in table:
                    continue
                if key in aggregations and aggregations[key] is not fn:
                    logger.warning(
                        "[%s] subtasks aggregate %r differently; pooling with %s's", self.plan.name, key,
                        self.subtasks[0].config.task,
                    )  # fmt: skip
                aggregations.setdefault(key, fn)
            for key, value in sub.higher_is_better().items():
                higher.setdefault(key, value)
        aggregations |= build_record_aggregations(table, self.calibration, lambda row: self.plan.name)
        return aggregations, higher

    # what lm-eval asks of a task --------------------------------------------------------------------------
    def download(self, *args: Any, **kwargs: Any) -> None:
        pass

    def dump_config(self) -> dict:
        config = self.config.to_dict()
        config.pop("fewshot_config", None)  # each subtask has its own (its config is lm-eval's)
        return config

    def has_training_docs(self) -> bool:
        return False

    def has_validation_docs(self) -> bool:
        return False

    def has_test_docs(self) -> bool:
        return True

    def test_docs(self) -> list[dict]:
        return self._docs

    def subtask(self, doc: dict) -> WrappedMultipleChoiceTask:
        return self._owner[id(doc)]

    def doc_to_text(self, doc: dict):
        return self.subtask(doc).doc_to_text(doc)

    def doc_to_target(self, doc: dict):
        return self.subtask(doc).doc_to_target(doc)

    def doc_to_choice(self, doc: dict):
        return self.subtask(doc).doc_to_choice(doc)

    def doc_to_prefix(self, doc: dict):
        return self.subtask(doc).doc_to_prefix(doc)

    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any):
        sub = self.subtask(doc)
        return sub.fewshot_context(doc, num_fewshot=sub.config.num_fewshot or 0, **kwargs)

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any):
        return self.subtask(doc).construct_requests(doc, ctx, **kwargs)

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        return self.subtask(doc).process_results(doc, results)

    def build_all_requests(self, **kwargs: Any) -> None:
        # requests are told apart by their document object (cached ones are copies): never from the cache
        super().build_all_requests(**{**kwargs, "cache_requests": False, "rewrite_requests_cache": False})

    def set_fewshot_seed(self, seed: int | None = None) -> None:
        super().set_fewshot_seed(seed)
        for sub in self.subtasks:
            sub.set_fewshot_seed(seed)

    def set_config(self, key: str, value: Any, update: bool = False) -> None:
        super().set_config(key, value, update)
        for sub in self.subtasks:
            if key == "num_fewshot" and sub.get_config("num_fewshot") == 0:
                continue  # lm-eval's rule: a task configured with 0 shots keeps 0
            sub.set_config(key, value, update)

    def override_metric(self, metric_name: str) -> None:
        for sub in self.subtasks:
            sub.override_metric(metric_name)
        self.after_override_metric()
        self._aggregations, self._higher_is_better = self._pooled_aggregations()

    def aggregation(self) -> dict:
        return self._aggregations

    def higher_is_better(self) -> dict:
        return self._higher_is_better
