"""The packed rows and attention mask of ``hf-calib`` (:mod:`lm_eval_calib.models.packing`): against a
brute-force reference built from what each continuation token must see, and against scoring each
``context + continuation`` as its own sequence on the tiny model."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lm_eval_calib.models.packing import (
    PAD_SEGMENT,
    additive_mask,
    pack_rows,
    packed_attention_mask,
)
from lm_eval_calib.models.requests import group_by_context


def _random_groups(seed: int, n_contexts: int) -> dict[tuple[int, ...], list[tuple[int, ...]]]:
    """Contexts of 1-9 tokens, each with 1-4 continuations of 1-5 tokens (ids 10-99)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_contexts):
        ctx = tuple(rng.randrange(10, 100) for _ in range(rng.randint(1, 9)))
        for _ in range(rng.randint(1, 4)):
            pairs.append((ctx, tuple(rng.randrange(10, 100) for _ in range(rng.randint(1, 5)))))
    return group_by_context(pairs)


def _own_sequence_views(ctx, conts) -> tuple[list[tuple[int, set[int]]], list[list[int]]]:
    """Brute force from the layout's meaning: the packed position of every input token with the set of
    packed positions it must attend to (exactly its own sequence's earlier tokens and itself), and, per
    continuation, the packed position whose logits predict each of its tokens."""
    views = [(i, set(range(i + 1))) for i in range(len(ctx))]
    predictors = []
    start = len(ctx)
    for cont in conts:
        tail = list(range(start, start + len(cont) - 1))  # where this continuation's tail was placed
        for t, position in enumerate(tail):
            views.append((position, set(range(len(ctx))) | set(tail[: t + 1])))
        predictors.append([len(ctx) - 1, *tail])
        start += len(cont) - 1
    return views, predictors


@pytest.mark.parametrize("seed", range(5))
def test_mask_and_layout_equal_the_brute_force_reference(seed):
    groups = _random_groups(seed, n_contexts=4)
    contexts = sorted(groups)
    packed = pack_rows(contexts, groups)
    mask = packed_attention_mask(packed.segment_ids())
    assert mask.shape == (len(contexts), 1, packed.width, packed.width) and mask.dtype == torch.bool
    for b, ctx in enumerate(contexts):
        row = packed.tokens[b]
        views, predictors = _own_sequence_views(ctx, groups[ctx])
        assert sorted(p for p, _ in views) == list(range(len(row)))
        for position, sees in views:
            assert set(torch.nonzero(mask[b, 0, position]).flatten().tolist()) == sees, (b, position)
        # positions restart after the context: each tail token sits where it sits in its own sequence
        for cont, own_predictors in zip(groups[ctx], predictors, strict=True):
            for t, position in enumerate(own_predictors[1:]):
                assert row[position] == cont[t] and packed.positions[b][position] == len(ctx) + t
        # the kept columns that predict each continuation token are those positions
        for (cont, preds), own_predictors in zip(packed.plans[b], predictors, strict=True):
            assert [packed.columns[b][k] for k in preds] == own_predictors and len(preds) == len(cont)
        # padding queries see the context (and padding), never a continuation: no empty row (NaN in sdpa)
        for position in range(len(row), packed.width):
            expected = [*range(len(ctx)), *range(len(row), position + 1)]
            assert torch.nonzero(mask[b, 0, position]).flatten().tolist() == expected
    assert (packed.segment_ids() == PAD_SEGMENT).sum() == sum(packed.width - len(r) for r in packed.tokens)


def test_mask_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\[rows, width\]"):
        packed_attention_mask(torch.zeros(5, dtype=torch.long))


def test_additive_mask_for_eager_attention():
    mask = packed_attention_mask(torch.tensor([[0, 0, 1, 2]]))
    added = additive_mask(mask, torch.float32)
    assert torch.equal(added == 0, mask) and added.min() == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return {
        impl: AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, attn_implementation=impl, dtype=torch.float32
        )
        for impl in ("sdpa", "eager")
    }


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_forward_equals_each_sequence_on_its_own(tiny_models, impl):
    """One packed forward of two contexts (different widths: padding) gives every continuation token the
    log-prob it gets when ``context + continuation`` runs alone."""
    model = tiny_models[impl]
    groups = _random_groups(seed=11, n_contexts=2)
    contexts = sorted(groups)
    packed = pack_rows(contexts, groups)
    assert len({len(r) for r in packed.tokens}) == 2  # rows of different widths: padding is exercised
    input_ids = torch.zeros((len(contexts), packed.width), dtype=torch.long)
    for b, row in enumerate(packed.tokens):
        input_ids[b, : len(row)] = torch.tensor(row)
    mask = packed_attention_mask(packed.segment_ids())
    if impl == "eager":
        mask = additive_mask(mask, torch.float32)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=packed.position_ids()).logits
        for b, ctx in enumerate(contexts):
            lp = F.log_softmax(logits[b].double(), dim=-1)
            for cont, preds in packed.plans[b]:
                cols = torch.tensor([packed.columns[b][k] for k in preds])
                got = lp[cols, torch.tensor(cont)]
                alone = model(input_ids=torch.tensor([list(ctx + cont[:-1])])).logits[0].double()
                expected = F.log_softmax(alone, dim=-1)[len(ctx) - 1 :][
                    torch.arange(len(cont)), torch.tensor(cont)
                ]
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
