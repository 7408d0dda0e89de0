"""Packed rows for ``hf-calib``: a context and all its continuations in one sequence, and the mask that keeps
every continuation token's view exactly what it is in the continuation's own sequence.

A row holds a context followed by every continuation's tokens but the last (its "tail"; the last token is
only predicted, never input). With the usual causal mask a tail token would also see the tails before it;
:func:`packed_attention_mask` lets it see the context and its own tail's earlier tokens only, and the
position ids restart after the context for every tail, so each continuation token is computed exactly as in
``hf``'s separate ``context + continuation`` sequence while the shared context runs once.

Pure functions of token ids (the mask of torch tensors): no model here, so both are tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PAD_SEGMENT", "PackedRows", "pack_rows", "packed_attention_mask"]

#: Segment id of padding positions; 0 is the context, ``j + 1`` the tail of continuation ``j``.
PAD_SEGMENT = -1

Tokens = tuple[int, ...]


@dataclass(frozen=True)
class PackedRows:
    """The layout of a packed batch, one entry per context (row), before padding.

    Attributes:
        tokens: the row's input ids: context, then each continuation's tail.
        positions: position id of every token (the context's, then restarting after it for each tail).
        segments: 0 for context tokens, ``j + 1`` for tokens of continuation ``j``'s tail.
        columns: the row positions whose logits are needed; column 0 is the context's last position (it
            predicts every continuation's first token), then one column per tail token.
        plans: per continuation of the row, ``(continuation, indices into columns)``: the column that predicts
            each of its tokens.
    """

    tokens: list[list[int]]
    positions: list[list[int]]
    segments: list[list[int]]
    columns: list[list[int]]
    plans: list[list[tuple[Tokens, list[int]]]]

    @property
    def width(self) -> int:
        return max(len(row) for row in self.tokens)

    def segment_ids(self) -> torch.Tensor:
        """``[rows, width]`` segment ids, :data:`PAD_SEGMENT` after each row's end."""
        out = torch.full((len(self.tokens), self.width), PAD_SEGMENT, dtype=torch.long)
        for b, seg in enumerate(self.segments):
            out[b, : len(seg)] = torch.tensor(seg, dtype=torch.long)
        return out

    def position_ids(self) -> torch.Tensor:
        """``[rows, width]`` position ids, 0 after each row's end."""
        out = torch.zeros((len(self.tokens), self.width), dtype=torch.long)
        for b, pos in enumerate(self.positions):
            out[b, : len(pos)] = torch.tensor(pos, dtype=torch.long)
        return out

    def kept_columns(self) -> torch.Tensor:
        """``[rows, most columns]`` positions to keep logits at (short rows repeat their last column)."""
        n_cols = max(len(c) for c in self.columns)
        return torch.tensor([c + [c[-1]] * (n_cols - len(c)) for c in self.columns], dtype=torch.long)


def pack_rows(contexts: Sequence[Tokens], continuations: Mapping[Tokens, Sequence[Tokens]]) -> PackedRows:
    """One packed row per context of ``contexts``, holding all of ``continuations[context]``."""
    tokens, positions, segments, columns, plans = [], [], [], [], []
    for ctx in contexts:
        n = len(ctx)
        row, pos, seg, cols, plan = list(ctx), list(range(n)), [0] * n, [n - 1], []
        for j, cont in enumerate(continuations[ctx]):
            preds = [0]  # column 0: the context's last position predicts every first token
            for t, token in enumerate(cont[:-1]):
                preds.append(len(cols))
                cols.append(len(row))
                row.append(token)
                pos.append(n + t)
                seg.append(j + 1)
            plan.append((tuple(cont), preds))
        tokens.append(row)
        positions.append(pos)
        segments.append(seg)
        columns.append(cols)
        plans.append(plan)
    return PackedRows(tokens, positions, segments, columns, plans)


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, width, width]`` boolean mask (True: may attend) for packed rows of ``segment_ids``.

    A query attends causally to the context (segment 0) and to earlier tokens of its own segment. Padding
    queries see the context too, so no row of the mask is empty (an all-masked row gives NaN in sdpa).
    """
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must be [rows, width], got shape {tuple(segment_ids.shape)}")
    width = segment_ids.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=segment_ids.device).tril()
    key_seg, query_seg = segment_ids[:, None, :], segment_ids[:, :, None]
    allowed = causal[None] & ((key_seg == 0) | (key_seg == query_seg))
    return allowed[:, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as eager attention takes it: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
