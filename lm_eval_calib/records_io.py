"""The one reader of per-document calibration records: lm-eval ``--log_samples`` files back into arrays.

Every consumer of a finished run (the report, the study's findings, the tests) reads a task's records here,
so which file belongs to a task, which document an item came from, the categories and the run's
calibration options are decided once:

* **Which file.** lm-eval writes ``samples_<task>_<stamp>.jsonl`` beside ``results_<stamp>.json``, the stamp
  being ``datetime.now().isoformat()`` with ``:`` replaced by ``-``. Names are matched exactly (so
  ``calib_mmlu`` never reads ``calib_mmlu_anatomy``'s file) and the newest stamp wins.
* **Which records.** A calibration task logs its record under :data:`~lm_eval_calib.records.RECORD_LOG_KEY`
  (and the ``acc_norm`` rule's under ``RECORD_LOG_KEY + NORM_SUFFIX``); a plain lm-eval multiple-choice task
  logs its option log-likelihoods, from which :mod:`lm_eval_calib.plain_records` builds the same records.
  They come back in ``doc_id`` order, whatever the file's order (a run of several processes logs rank by
  rank), so every number drawn in item order is the same for the same documents.
* **Which estimator and filter.** A generation calibration task logs one record per confidence estimator
  under ``ece_<estimator>``, once per filter of the task (lm-eval logs each document once per filter);
  :func:`generation_views` lists the ``(filter, estimator)`` pairs of a file and ``read_samples(...,
  estimator=, filter_key=)`` reads one of them. Records without a confidence (an unparseable verbalised
  reply) are left out of the data and counted in ``skipped``.
* **Which options.** ``n_bins``, the bootstrap seed and cap come from the results file's
  ``configs[task].metadata.calibration`` (:meth:`CalibrationOptions.from_metadata`), so every number read back
  is computed as the run computed it.

The metric core stays pure; all file reading lives here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_calib.metrics import CalibrationData, CalibrationInputError, OptionScores
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.plain_records import RULES, SkipDocument, option_record, target_delimiter
from lm_eval_calib.records import NORM_SUFFIX, RECORD_LOG_KEY, record_problem, records_to_data

STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?"
"""lm-eval's file time stamp: ``datetime.now().isoformat().replace(":", "-")``."""
SAMPLES_NAME = re.compile(rf"^samples_(?P<task>.+)_(?P<stamp>{STAMP})\.jsonl$")
RESULTS_NAME = re.compile(rf"^results_(?P<stamp>{STAMP})\.json$")
RECORD_KEYS = {"acc": RECORD_LOG_KEY, "acc_norm": RECORD_LOG_KEY + NORM_SUFFIX}
"""Where a calibration task logs the record of each prediction rule."""


class SamplesError(ValueError):
    """A samples file (or the results file beside it) cannot be read into records; the message says how to
    fix it."""


DAMAGED = "the file is damaged or was edited: rerun lm_eval with --log_samples to write it again"
"""The fix every message about a malformed logged document ends with."""


def _shown(value: Any, limit: int = 80) -> str:
    """A logged value as JSON, cut to ``limit`` characters, for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MISSING = object()
"""The value of a field a logged document lacks (for :func:`_field_error`)."""


def _field_error(path: Path, number: int, field: str, value: Any, expected: str) -> SamplesError:
    """One malformed field of one logged document: the file, the line, the field, what it holds and what it
    should hold."""
    held = "missing" if value is MISSING else _shown(value)
    return SamplesError(f"{path} line {number}: {field} is {held}; expected {expected}; {DAMAGED}")


def samples_name(name: str) -> tuple[str, str] | None:
    """``(task, stamp)`` of an lm-eval samples file name, or ``None`` when it is not one."""
    match = SAMPLES_NAME.match(name)
    return (match["task"], match["stamp"]) if match else None


def results_stamp(name: str) -> str | None:
    """The time stamp of an lm-eval results file name, or ``None`` when it is not one."""
    match = RESULTS_NAME.match(name)
    return match["stamp"] if match else None


def samples_for_results(results_file: Path, task: str) -> Path | None:
    """The samples file lm-eval wrote for ``task`` in the same call as ``results_file``, if any."""
    stamp = results_stamp(Path(results_file).name)
    if stamp is None:
        return None
    path = Path(results_file).parent / f"samples_{task}_{stamp}.jsonl"
    return path if path.is_file() else None


def newest_samples(folder: Path, task: str) -> Path | None:
    """The newest ``samples_<task>_<stamp>.jsonl`` under ``folder`` for exactly ``task``."""
    found = []
    for path in Path(folder).rglob(f"samples_{task}_*.jsonl"):
        parsed = samples_name(path.name)
        if parsed is not None and parsed[0] == task:
            found.append((parsed[1], str(path), path))
    return max(found)[2] if found else None


def read_results(path: Path) -> dict[str, Any]:
    """An lm-eval results file as a dict, or :class:`SamplesError` saying what is wrong with it."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SamplesError(f"{path} is not a readable JSON file ({exc})") from exc
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        held = type(results).__name__ if not isinstance(results, dict) else "no 'results' mapping"
        raise SamplesError(
            f"{path} is not an lm-eval results file (it holds {held}); pass folders written by lm_eval "
            "--output_path"
        )
    return results


def calibration_options(config: Mapping[str, Any] | None) -> CalibrationOptions:
    """The run's calibration options from its task config (lm-eval's ``configs[task]``)."""
    metadata = (config or {}).get("metadata")
    return CalibrationOptions.from_metadata(metadata if isinstance(metadata, dict) else None)


@dataclass(frozen=True)
class TaskRecords:
    """One task's logged documents, decoded: the records and the arrays every consumer needs."""

    task: str
    records: list[dict[str, Any]]
    """One record per scored document, in file order."""
    doc_ids: list[Any]
    """lm-eval's ``doc_id`` of each record (the key that pairs two runs of the same task)."""
    data: CalibrationData
    item_document: np.ndarray
    """Index into ``records`` of each item (the tokens of a document share one)."""
    item_category: np.ndarray
    """Category code of each item (-1 = none); names in ``categories``."""
    categories: list[str]
    scores: OptionScores | None
    """Per-option scores and gold indices when every record is an option record with a usable ``loglik`` and
    ``target`` (for temperature scaling); else None."""
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    rule: str = "acc"
    estimator: str | None = None
    """The confidence estimator of a generation task's records (``seqprob``, ``ptrue``, ...); else None."""
    filter_key: str = "none"
    """The lm-eval filter whose documents were read (generation tasks log each document once per filter)."""
    origin: str = "record"
    """``record``: logged by a calibration task; ``lm-eval``: built from a plain task's log-likelihoods."""
    source: Path | None = None
    skipped: list[str] = field(default_factory=list)
    """Why documents were left out (one line per reason, with a count and an example doc_id)."""
    n_skipped: int = 0
    """Logged documents left out (a plain task's unscorable documents)."""

    @classmethod
    def build(cls, task: str, records: Sequence[dict[str, Any]], doc_ids: Sequence[Any], **extra: Any):
        """Decode ``records`` (option or token records, :mod:`lm_eval_calib.records`) into arrays."""
        records = list(records)
        if not records:
            raise SamplesError(f"{task}: no documents to read")
        try:
            data = records_to_data(records)
        except CalibrationInputError as exc:  # the reader checked each record; this is the pooled sample
            raise SamplesError(f"{extra.get('source') or task}: {exc}") from exc
        sizes = np.fromiter(
            (np.atleast_1d(np.asarray(r["confidence"])).shape[0] for r in records), np.int64, len(records)
        )
        names = sorted({str(r["category"]) for r in records if r.get("category") is not None})
        code = {name: i for i, name in enumerate(names)}
        per_record = np.array(
            [-1 if r.get("category") is None else code[str(r["category"])] for r in records], dtype=np.int64
        )
        return cls(
            task=task,
            records=records,
            doc_ids=list(doc_ids),
            data=data,
            item_document=np.repeat(np.arange(len(records), dtype=np.int64), sizes),
            item_category=np.repeat(per_record, sizes),
            categories=names,
            scores=_option_scores(records),
            **extra,
        )

    def select(self, doc_ids: Iterable[Any]) -> TaskRecords:
        """The same task restricted to ``doc_ids``, in that order (to pair two runs document by document)."""
        index = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        chosen = list(doc_ids)
        missing = [d for d in chosen if d not in index]
        if missing:
            raise SamplesError(f"{self.task}: document(s) {missing[:5]} are not in {self.source}")
        return TaskRecords.build(
            self.task,
            [self.records[index[d]] for d in chosen],
            chosen,
            options=self.options,
            rule=self.rule,
            estimator=self.estimator,
            filter_key=self.filter_key,
            origin=self.origin,
            source=self.source,
            skipped=self.skipped,
            n_skipped=self.n_skipped,
        )


def _option_scores(records: Sequence[Mapping[str, Any]]) -> OptionScores | None:
    """Per-option scores for temperature scaling when every record is an option record with a usable
    ``loglik`` and integer ``target``; else None. Damaged ``loglik``/``target`` drop temperature scaling
    only (the report says so, :mod:`lm_eval_calib.report.integrity`): every other number comes from
    ``confidence``/``correct``."""
    if not all(
        not isinstance(r["confidence"], list)
        and isinstance(r.get("loglik"), list)
        and isinstance(r.get("target"), int)
        and not isinstance(r["target"], bool)
        for r in records
    ):
        return None
    try:
        return OptionScores.build([r["loglik"] for r in records], [r["target"] for r in records])
    except (CalibrationInputError, TypeError, ValueError, OverflowError):
        return None


def _parse_line(path: Path, number: int, raw: bytes) -> Any:
    """One line of a samples file as JSON; a :class:`SamplesError` naming the line when it is not."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SamplesError(
            f"{path} line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            f"line); {DAMAGED}"
        ) from None
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except RecursionError:
        raise SamplesError(f"{path} line {number} is not JSON (nested too deeply); {DAMAGED}") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to read
        raise SamplesError(f"{path} line {number} is not JSON ({exc}); {DAMAGED}") from exc


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every logged document of a samples file with its line number; each is a JSON object whose
    ``filter`` (when present) is text."""
    rows = []
    try:
        with Path(path).open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                row = _parse_line(path, number, raw)
                if row is None:
                    continue
                if not isinstance(row, dict):
                    raise SamplesError(f"{path} line {number} is not a JSON object; {DAMAGED}")
                if not isinstance(row.get("filter", "none"), str):
                    expected = 'text (the lm-eval filter the document was scored under, e.g. "none")'
                    raise _field_error(path, number, "filter", row["filter"], expected)
                rows.append((number, row))
    except OSError as exc:
        raise SamplesError(f"{path} cannot be read ({exc})") from exc
    if not rows:
        raise SamplesError(f"{path} holds no logged documents")
    return rows


def _filters(rows: list[tuple[int, dict]]) -> list[str]:
    """The filters a samples file logs documents under, in lm-eval's order."""
    return list(dict.fromkeys(row.get("filter", "none") for _, row in rows))


def _one_filter(
    rows: list[tuple[int, dict]], path: Path, keep: str | None = None
) -> tuple[list[tuple[int, dict]], list[str]]:
    """lm-eval logs each document once per filter; keep ``keep`` (default ``none``, which multiple-choice
    tasks have only, else the first)."""
    filters = _filters(rows)
    if keep is not None:
        if keep not in filters:
            raise SamplesError(f"{path.name} logs no documents under filter {keep!r} (it has {filters})")
        return [(n, row) for n, row in rows if row.get("filter", "none") == keep], []
    if len(filters) < 2:
        return rows, []
    keep = "none" if "none" in filters else filters[0]
    note = f"{path.name}: responses under filters {filters}; read filter {keep!r}"
    return [(n, row) for n, row in rows if row.get("filter", "none") == keep], [note]


def _estimators(row: Mapping[str, Any]) -> list[str]:
    """The confidence estimators whose generation records a logged document carries (``ece_<estimator>``
    holding a record that names its estimator; ``ece_norm`` is the ``acc_norm`` rule's option record)."""
    prefix = RECORD_LOG_KEY + "_"
    return [
        key[len(prefix) :]
        for key, value in row.items()
        if key.startswith(prefix) and isinstance(value, dict) and value.get("estimator") == key[len(prefix) :]
    ]


def generation_views(path: Path) -> list[tuple[str, str]]:
    """``(filter, estimator)`` of every generation record kind in a samples file, in logged order; empty
    for a file of option or token records."""
    rows = _rows(Path(path))
    estimators = _estimators(rows[0][1])
    return [(filter_key, estimator) for filter_key in _filters(rows) for estimator in estimators]


def has_records(path: Path, rule: str = "acc") -> bool:
    """Whether the first logged document of ``path`` carries a calibration record for ``rule``."""
    with Path(path).open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):  # not UTF-8, not JSON
                    return False
                return isinstance(row, dict) and isinstance(row.get(RECORD_KEYS[rule]), dict)
    return False


def _check_doc_id(path: Path, number: int, row: Mapping[str, Any]) -> None:
    """lm-eval logs each document's index as ``doc_id``: two runs are paired by it, so it must be there and
    be an integer (or text)."""
    if "doc_id" not in row:
        raise SamplesError(f"{path} line {number} has no doc_id; is it an lm-eval samples file?")
    doc_id = row["doc_id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, int | str):
        raise _field_error(path, number, "doc_id", doc_id, "an integer (lm-eval's document index)")


def _document_key(doc_id: int | str) -> tuple[int, int | str]:
    """Records are read in document order, not file order: lm-eval logs a run of several processes rank by
    rank, and whatever draws folds or resamples in item order (cross-fitted recalibration, conformal sets)
    must give the same numbers for the same documents however many processes ran them."""
    return (0, doc_id) if isinstance(doc_id, int) else (1, str(doc_id))


def read_samples(
    path: Path,
    task: str | None = None,
    config: Mapping[str, Any] | None = None,
    rule: str = "acc",
    chat_template: bool = False,
    estimator: str | None = None,
    filter_key: str | None = None,
) -> TaskRecords:
    """Every document of one samples file as records, with the run's options (from ``config``).

    A generation calibration task's file is read for one ``estimator`` under one ``filter_key`` (see
    :func:`generation_views`); without ``estimator`` such a file is a :class:`SamplesError` naming its
    estimators.

    A calibration task's file gives its logged records (``rule`` ``acc``: ``"ece"``, ``acc_norm``:
    ``"ece_norm"``); any other file is read as a plain lm-eval multiple-choice task
    (:mod:`lm_eval_calib.plain_records`; ``config`` gives its target delimiter and output type,
    ``chat_template`` whether the run applied one). Unscorable documents of a plain task are skipped and
    counted in ``skipped``; a file with nothing to score is a :class:`SamplesError`.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    path = Path(path)
    parsed = samples_name(path.name)
    task = task or (parsed[0] if parsed else path.stem)
    if config is not None and not isinstance(config, Mapping):
        raise SamplesError(
            f"{task}: the results file's configs.{task} is {_shown(config)}; expected a mapping (lm-eval's "
            "task config): keep lm-eval's results file as it wrote it"
        )
    try:
        options = calibration_options(config)
    except ValueError as exc:
        raise SamplesError(f"{task}: {exc}") from exc
    all_rows = _rows(path)
    found = _estimators(all_rows[0][1])
    if estimator is not None and estimator not in found:
        raise SamplesError(
            f"{path.name} holds no {estimator!r} records (its generation estimators: {found or 'none'})"
        )
    if estimator is None and found:
        raise SamplesError(
            f"{task} holds generation-task records of estimators {found}: read one with "
            f"estimator=<one of them> (and filter_key=<one of {_filters(all_rows)}>)"
        )
    rows, notes = _one_filter(all_rows, path, filter_key if estimator is not None else None)
    key = RECORD_KEYS[rule] if estimator is None else f"{RECORD_LOG_KEY}_{estimator}"
    logged = key in rows[0][1]
    records, doc_ids = [], []
    skipped: Counter[str] = Counter()
    example: dict[str, Any] = {}
    if not logged:
        output_type = (config or {}).get("output_type")
        if output_type not in (None, "multiple_choice"):
            raise SamplesError(
                f"{task} is a {output_type} task: only multiple-choice tasks (per-option "
                "log-likelihoods) and lm-eval-calib calibration tasks can be calibrated from their samples"
            )
        delimiter = target_delimiter(config, chat_template)
    for number, row in rows:
        _check_doc_id(path, number, row)
        if logged:
            record = row.get(key)
            if not isinstance(record, dict) or "confidence" not in record:
                raise SamplesError(
                    f"{path} line {number} has no calibration record under {key!r} (the first line has one)"
                )
            if record["confidence"] is None:  # an unparseable verbalised reply: counted, never scored
                reason = f"{estimator} gave no confidence (unparseable reply)"
                skipped[reason] += 1
                example.setdefault(reason, (row["doc_id"], number))
                continue
            problem = record_problem(record, prefix=f"{key}.")
            if problem is not None:
                value = record.get(problem.field, MISSING)
                raise _field_error(path, number, f"{key}.{problem.field}", value, problem.expected)
        else:
            try:
                record = option_record(row, rule, delimiter)
            except SkipDocument as exc:
                reason = str(exc)
                skipped[reason] += 1
                example.setdefault(reason, (row["doc_id"], number))
                continue
            except ValueError as exc:  # a document option_record cannot even skip: never a bare traceback
                raise SamplesError(f"{path} line {number}: {exc}; {DAMAGED}") from exc
        records.append(record)
        doc_ids.append(row["doc_id"])
    reasons = [
        f"{task}: skipped {count} of {len(rows)} documents: {reason} (e.g. doc_id {example[reason][0]})"
        for reason, count in skipped.most_common()
    ]
    if not records:
        found = [
            f"{reason} (e.g. doc_id {example[reason][0]}), first at line {example[reason][1]}"
            for reason in skipped
        ]
        raise SamplesError(
            f"{path}: no document of {task} could be scored ({'; '.join(found) or 'empty'}); only "
            "single-answer multiple-choice tasks and lm-eval-calib calibration tasks can be calibrated"
        )
    repeated = [d for d, n in Counter(map(str, doc_ids)).items() if n > 1]
    if repeated:
        raise SamplesError(
            f"{path}: doc_id {repeated[0]} is logged {Counter(map(str, doc_ids))[repeated[0]]} times"
        )
    order = sorted(range(len(doc_ids)), key=lambda i: _document_key(doc_ids[i]))
    records, doc_ids = [records[i] for i in order], [doc_ids[i] for i in order]
    return TaskRecords.build(
        task,
        records,
        doc_ids,
        options=options,
        rule=rule,
        estimator=estimator,
        filter_key=rows[0][1].get("filter", "none"),
        origin="record" if logged else "lm-eval",
        source=path,
        skipped=notes + reasons,
        n_skipped=sum(skipped.values()),
    )


def read_task(
    results_file: Path,
    task: str,
    results: Mapping[str, Any] | None = None,
    rule: str = "acc",
    estimator: str | None = None,
    filter_key: str | None = None,
) -> TaskRecords:
    """``task``'s records from the samples file written with ``results_file``, with that run's options
    (``estimator`` and ``filter_key``: one view of a generation task, see :func:`generation_views`)."""
    results = read_results(results_file) if results is None else results
    samples = samples_for_results(results_file, task)
    if samples is None:
        raise SamplesError(
            f"{Path(results_file).parent}: no samples for {task}; rerun lm_eval with --log_samples to "
            "score it"
        )
    configs = results.get("configs")
    if configs is not None and not isinstance(configs, Mapping):
        raise SamplesError(
            f"{results_file}: configs is {_shown(configs)}; expected a mapping of task names to their "
            "configs (keep lm-eval's results file as it wrote it)"
        )
    config = (configs or {}).get(task)
    return read_samples(
        samples,
        task,
        config,
        rule,
        chat_template=bool(results.get("chat_template")),
        estimator=estimator,
        filter_key=filter_key,
    )


def read_folder_task(
    folder: Path,
    task: str,
    rule: str = "acc",
    estimator: str | None = None,
    filter_key: str | None = None,
) -> TaskRecords:
    """The newest logged run of exactly ``task`` under ``folder`` (an lm-eval ``--output_path``); for a
    generation task the records of one confidence ``estimator`` under one lm-eval filter."""
    samples = newest_samples(folder, task)
    if samples is None:
        raise SamplesError(
            f"{folder}: no samples for {task}; the evaluation did not finish or lacked --log_samples"
        )
    stamp = samples_name(samples.name)[1]
    results_file = samples.parent / f"results_{stamp}.json"
    if not results_file.is_file():
        raise SamplesError(
            f"{samples} has no results_{stamp}.json beside it, so the run's calibration options are unknown; "
            "keep lm-eval's output folder whole"
        )
    return read_task(results_file, task, rule=rule, estimator=estimator, filter_key=filter_key)
