"""The document (cluster) bootstrap: the item bootstrap draw for draw on one-item documents, a plain loop's
numbers on many-item documents, and the right size of error bar on correlated tokens."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lm_eval_calib.metrics import (
    METRICS,
    CalibrationData,
    CalibrationInputError,
    bootstrap_stderr,
    bootstrap_values,
    compute_metric,
)
from lm_eval_calib.metrics.bootstrap import MAX_CHUNK_ELEMENTS
from lm_eval_calib.metrics.cluster_bootstrap import (
    WIDTH_BINNED,
    Documents,
    _values,
    cluster_bootstrap_interval,
    cluster_bootstrap_stderr,
    cluster_bootstrap_values,
    document_groups,
)
from lm_eval_calib.options import CalibrationOptions
from lm_eval_calib.record_metrics import make_aggregation, record_groups
from lm_eval_calib.records import make_record, records_to_data, token_record

FIELDS = ("confidence", "correct", "brier", "nll")
NO_CELLS = 10**9  # the cell threshold of _values: never use shared confidence cells


def _resamples(key: str, wanted: int) -> int:
    return min(wanted, 20) if METRICS[key].batched is None else wanted  # smECE: relplot, one call each


def token_sample(seed: int, sizes: list[int], ties: bool = False) -> tuple[CalibrationData, np.ndarray]:
    """Token-like items: each document has its own accuracy offset, so its tokens are correlated."""
    rng = np.random.default_rng(seed)
    groups = document_groups(np.asarray(sizes))
    shift = rng.normal(0.0, 1.0, size=len(sizes))[groups]
    conf = rng.uniform(0.02, 1.0, size=groups.shape[0])
    if ties:
        conf = np.round(conf, 1)
        conf[conf == 0] = 0.1
    logit = np.log(conf / np.maximum(1.0 - conf, 1e-9)) + shift
    correct = (rng.uniform(size=conf.shape[0]) < 1.0 / (1.0 + np.exp(-logit))).astype(float)
    return CalibrationData.from_top_label(conf, correct, rng.exponential(2.0, size=conf.shape[0])), groups


# ------------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("key", list(METRICS))
def test_one_item_per_document_is_the_item_bootstrap_draw_for_draw(key: str, ties: bool) -> None:
    data, _ = token_sample(0, [1] * 150, ties=ties)
    n = _resamples(key, 200)
    item = bootstrap_values(key, data, n, seed=7)
    # the general document path itself (not the shortcut to the item bootstrap), the same seed
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        general = _values(METRICS[key], Documents.build(data, np.arange(len(data))), n, 7, 10, NO_CELLS)
    np.testing.assert_allclose(general, item, rtol=0, atol=1e-12, equal_nan=True)
    # the public function on one-item documents, documents labelled in any order: the item bootstrap
    labels = np.random.default_rng(1).permutation(len(data)) * 3 + 5
    public = cluster_bootstrap_values(key, data, labels, n, seed=7)
    np.testing.assert_array_equal(public, item)


# ------------------------------------------------------------------------------------------------- (b)
def _plain_loop(key: str, data: CalibrationData, groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """An independent recomputation: documents in the documented canonical order (sorted by their mean
    confidence, correctness, Brier, NLL, then size), D positions drawn per resample by numpy's Generator
    seeded with ``seed`` (the whole ``(n, D)`` block in one call, as the bootstrap does while ``n * D`` fits
    one chunk), every item of each drawn document pooled, the metric's plain point estimate."""
    labels = sorted(set(groups.tolist()))
    members = {d: np.flatnonzero(groups == d) for d in labels}

    def summary(d: int) -> tuple:
        items = members[d]
        return (*(float(np.mean(getattr(data, f)[items])) for f in FIELDS), len(items))

    canonical = sorted(labels, key=summary)  # Python's sort is stable, as the lexsort
    assert n * len(canonical) <= MAX_CHUNK_ELEMENTS
    draws = np.random.default_rng(seed).integers(0, len(canonical), size=(n, len(canonical)))
    out = []
    for row in draws:
        items = np.concatenate([members[canonical[position]] for position in row])
        pooled = CalibrationData(*(getattr(data, f)[items] for f in FIELDS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(compute_metric(key, pooled, 10))
    return np.array(out)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("key", list(METRICS))
def test_matches_a_plain_loop_over_drawn_documents(key: str, ties: bool) -> None:
    data, groups = token_sample(2, [40, 3, 17, 1, 60, 25, 8, 33, 12, 50], ties=ties)
    n = _resamples(key, 60)
    got = cluster_bootstrap_values(key, data, groups, n, seed=11)
    np.testing.assert_allclose(got, _plain_loop(key, data, groups, n, 11), rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("key", ["ece", "ece_em", "nll", "auroc", "prr"])
def test_independent_of_the_order_of_documents_and_items(key: str) -> None:
    data, groups = token_sample(3, [30, 5, 44, 12, 20, 9])
    shuffle = np.random.default_rng(4).permutation(len(data))
    moved = CalibrationData(*(getattr(data, f)[shuffle] for f in FIELDS))
    relabelled = (100 - groups)[shuffle]  # other labels, other order
    first = cluster_bootstrap_values(key, data, groups, 100, seed=5)
    np.testing.assert_allclose(
        cluster_bootstrap_values(key, moved, relabelled, 100, seed=5), first, atol=1e-12
    )


@pytest.mark.parametrize("key", sorted(WIDTH_BINNED | {"acc", "brier", "nll"}))
def test_per_document_totals_equal_the_item_path(key: str) -> None:
    """The metrics computed from per-document sums give the item path's numbers on the same weights."""
    data, groups = token_sample(5, [70, 2, 31, 45, 9, 18, 1, 26], ties=True)
    docs = Documents.build(data, groups)
    rows = np.random.default_rng(6).integers(0, 3, size=(25, docs.n_documents))
    rows[0] = 0
    rows[0, 3] = docs.n_documents  # one document drawn every time
    from lm_eval_calib.metrics.cluster_bootstrap import _cells_for

    cells = _cells_for(METRICS[key], docs, 10, NO_CELLS)
    assert cells is not None and len(cells.prepared) < len(data)
    via_cells = METRICS[key].batched(cells.prepared, cells.weights(rows), 10)
    via_items = METRICS[key].batched(docs.prepared, docs.item_weights(rows), 10)
    np.testing.assert_allclose(via_cells, via_items, rtol=0, atol=1e-12)


@pytest.mark.parametrize("key", ["ece_em", "ece_debiased", "auroc", "aurc", "prr"])
def test_shared_cells_of_a_large_sample_agree_with_the_exact_path(key: str) -> None:
    """Above the item bootstrap's cell threshold the order-based metrics use its confidence cells (drawn
    documents exact, values inside a cell pooled): the stderr agrees with the exact path's within a few
    percent (the cells lose only the spread of confidence inside 1/2048 of the items)."""
    data, groups = token_sample(6, [3000] * 20)
    docs = Documents.build(data, groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = _values(METRICS[key], docs, 200, 1234, 10, NO_CELLS)
        cells = _values(METRICS[key], docs, 200, 1234, 10, 1000)
    assert np.std(cells, ddof=1) == pytest.approx(np.std(exact, ddof=1), rel=0.03)
    assert np.corrcoef(cells, exact)[0, 1] > 0.99  # the same draws, resample by resample


# ------------------------------------------------------------------------------------------------- (c)
def _replicate(rng: np.random.Generator, n_docs: int, per_doc: int) -> tuple[CalibrationData, np.ndarray]:
    """One synthetic evaluation: documents with their own difficulty (a logit shift of sd 1.2), all tokens of
    a document sharing it; confidence ignores it, so accuracy, ECE and Brier vary with the documents."""
    groups = np.repeat(np.arange(n_docs), per_doc)
    shift = rng.normal(-0.3, 1.2, size=n_docs)[groups]
    conf = rng.beta(4.0, 2.0, size=groups.shape[0])
    logit = np.log(conf / (1.0 - conf)) + shift
    correct = (rng.uniform(size=conf.shape[0]) < 1.0 / (1.0 + np.exp(-logit))).astype(float)
    return CalibrationData.from_top_label(conf, correct), groups


@pytest.mark.parametrize("key", ["acc", "ece", "brier"])
def test_cluster_stderr_matches_the_spread_over_replications(key: str) -> None:
    """On strongly within-document-correlated data the token bootstrap's stderr is several times too small;
    the document bootstrap's is the real sampling spread of the metric.

    Truth: the standard deviation of the metric over R = 400 independent synthetic evaluations (relative
    standard error about 1/sqrt(2R) = 3.5%). Estimate: the bootstrap stderr averaged over 20 of them (a
    bootstrap stderr from 30 documents scatters by about 1/sqrt(2 * 30) = 13%, so the mean by about 3%,
    and it is biased low by sqrt((D-1)/D), under 2% at D = 30). A ratio within 15% of 1 is four combined
    standard errors; the token stderr, which ignores the documents, is below half the truth here (the design
    effect 1 + (m - 1) * rho is about 30 at m = 200 tokens per document)."""
    rng = np.random.default_rng(2024)
    n_docs, per_doc = 30, 200
    samples = [_replicate(rng, n_docs, per_doc) for _ in range(400)]
    truth = np.std([compute_metric(key, data) for data, _ in samples], ddof=1)
    cluster = np.mean(
        [cluster_bootstrap_stderr(key, d, g, 400, seed=i) for i, (d, g) in enumerate(samples[:20])]
    )
    token = np.mean([bootstrap_stderr(key, d, 400, seed=i) for i, (d, _) in enumerate(samples[:20])])
    assert cluster / truth == pytest.approx(1.0, abs=0.15), (cluster, truth)
    assert token < 0.5 * truth and cluster > 2.0 * token, (token, cluster, truth)


# ---------------------------------------------------------------------------------------- the records
def test_aggregation_stderr_resamples_the_records_documents() -> None:
    data, groups = token_sample(8, [50, 20, 35, 10, 44])
    records = [
        token_record(data.confidence[groups == d], data.correct[groups == d], data.nll[groups == d], None)
        for d in range(5)
    ]
    assert np.array_equal(record_groups(records), groups)
    options = CalibrationOptions()
    pooled = records_to_data(records)
    for key in ("ece", "acc", "auroc"):
        stderr = make_aggregation(key, options, "t").calibration_stderr(records, n_resamples=300)
        assert stderr == cluster_bootstrap_stderr(key, pooled, groups, 300, seed=options.bootstrap_seed)
        assert stderr != bootstrap_stderr(key, pooled, 300, seed=options.bootstrap_seed)


def test_option_records_keep_the_item_bootstrap() -> None:
    rng = np.random.default_rng(9)
    records = [make_record(rng.normal(size=4).tolist(), int(rng.integers(0, 4))) for _ in range(120)]
    options = CalibrationOptions()
    for key in ("ece", "brier", "prr"):
        stderr = make_aggregation(key, options, "t").calibration_stderr(records, n_resamples=300)
        assert stderr == bootstrap_stderr(key, records_to_data(records), 300, seed=options.bootstrap_seed)


def test_interval_uses_the_same_resamples() -> None:
    data, groups = token_sample(10, [25, 40, 15, 30, 20, 35])
    values = cluster_bootstrap_values("ece", data, groups, 500, seed=3)
    low, high = cluster_bootstrap_interval("ece", data, groups, 500, seed=3)
    assert (low, high) == tuple(np.percentile(values, [2.5, 97.5]))


def test_bad_groups_are_named() -> None:
    data, groups = token_sample(11, [5, 5])
    with pytest.raises(CalibrationInputError, match="one document label per item"):
        cluster_bootstrap_stderr("ece", data, groups[:-1])
    with pytest.raises(CalibrationInputError, match="integer document labels"):
        cluster_bootstrap_stderr("ece", data, groups.astype(float))
    with pytest.raises(CalibrationInputError, match="n_resamples"):
        cluster_bootstrap_stderr("ece", data, groups, n_resamples=0)
    with pytest.raises(CalibrationInputError, match="item counts"):
        document_groups([3, -1])
