"""Per-token statistics and the result types that carry them through lm-eval.

lm-eval's model API returns ``(loglikelihood, is_greedy)`` for ``loglikelihood`` and a float for
``loglikelihood_rolling``. Calibration tasks also need, for every scored token, the log-probability of the
actual token and the top-1 token over the whole vocabulary with its log-probability. Models of this package
(``hf-calib``) return :class:`LoglikelihoodResult` / :class:`RollingLoglikelihoodResult`: they ARE the plain
tuple / float lm-eval expects (equality, indexing, unpacking, arithmetic, JSON, pickling for lm-eval's request
cache) and carry a :class:`TokenStats` in ``.token_stats``. Tasks read it with :func:`token_stats_of`, which
answers ``None`` for a plain model's result, and check :func:`model_provides_token_stats` before inference.

numpy only: importing this module does not import torch or lm-eval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PROVIDES_TOKEN_STATS_ATTR",
    "LoglikelihoodResult",
    "RollingLoglikelihoodResult",
    "TokenStats",
    "model_provides_token_stats",
    "token_stats_of",
]

#: Name of the class attribute (``True``) by which a model declares that its results carry token statistics.
PROVIDES_TOKEN_STATS_ATTR = "provides_token_stats"

_FIELDS = ("token_ids", "token_logprobs", "top1_ids", "top1_logprobs")
_DTYPES = {
    "token_ids": np.int64,
    "token_logprobs": np.float64,
    "top1_ids": np.int64,
    "top1_logprobs": np.float64,
}


@dataclass(frozen=True, eq=False)
class TokenStats:
    """Statistics of a sequence of scored tokens, one entry per token, in order.

    Attributes:
        token_ids: the actual (scored) token ids, int64.
        token_logprobs: log-probability the model gave the actual token, float64.
        top1_ids: the most probable token id over the whole vocabulary at that position, int64.
        top1_logprobs: its log-probability, float64 (always >= ``token_logprobs``).
    """

    token_ids: np.ndarray
    token_logprobs: np.ndarray
    top1_ids: np.ndarray
    top1_logprobs: np.ndarray

    def __post_init__(self) -> None:
        n = None
        for name in _FIELDS:
            value = np.asarray(getattr(self, name), dtype=_DTYPES[name])
            if value.ndim != 1:
                raise ValueError(f"TokenStats.{name} must be one-dimensional, got shape {value.shape}")
            if n is None:
                n = value.shape[0]
            elif value.shape[0] != n:
                raise ValueError(
                    "TokenStats fields must have the same length, got "
                    + ", ".join(f"{f}={np.shape(getattr(self, f))}" for f in _FIELDS)
                )
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> TokenStats:
        return cls(*(np.zeros(0, dtype=_DTYPES[f]) for f in _FIELDS))

    @classmethod
    def concatenate(cls, parts: Iterable[TokenStats]) -> TokenStats:
        """One TokenStats holding ``parts`` one after the other (e.g. the windows of a rolling document)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenStats:
        """Inverse of :meth:`to_dict`."""
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise ValueError(f"TokenStats.from_dict: missing field(s) {missing}; expected {list(_FIELDS)}")
        return cls(*(np.asarray(data[f], dtype=_DTYPES[f]) for f in _FIELDS))

    def to_dict(self) -> dict[str, list]:
        """JSON-able form: a dict of four plain lists (ints and floats)."""
        return {f: getattr(self, f).tolist() for f in _FIELDS}

    # -- sequence behaviour -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def __getitem__(self, index) -> TokenStats:
        """A slice (or index array, or single position) of the tokens, as a TokenStats."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 or None)
        return TokenStats(*(getattr(self, f)[index] for f in _FIELDS))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenStats):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # holds arrays: not hashable

    def __repr__(self) -> str:
        more = "..." if len(self) > 8 else ""
        return f"TokenStats(n={len(self)}, token_ids={self.token_ids.tolist()[:8]}{more})"

    def first_non_finite(self) -> tuple[str, int, float] | None:
        """``(field, position, value)`` of the first NaN or infinite log-probability, or None.

        A model in half precision can overflow, and a broken checkpoint gives NaN logits; tasks check this
        where each record is made, so the error names the task and document instead of surfacing as a
        NaN metric at aggregation.
        """
        for name in ("token_logprobs", "top1_logprobs"):
            values = getattr(self, name)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                return name, int(bad[0]), float(values[bad[0]])
        return None

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def confidence(self) -> np.ndarray:
        """Top-1 probability at every position: ``exp(top1_logprobs)``."""
        return np.exp(self.top1_logprobs)

    @property
    def correct(self) -> np.ndarray:
        """Whether the top-1 token is the actual token, per position (bool)."""
        return self.top1_ids == self.token_ids

    @property
    def token_probs(self) -> np.ndarray:
        """Probability of the actual token at every position."""
        return np.exp(self.token_logprobs)

    @property
    def loglikelihood(self) -> float:
        """Sum of the actual tokens' log-probabilities (float64)."""
        return float(self.token_logprobs.sum())

    @property
    def is_greedy(self) -> bool:
        """Whether every actual token is the top-1 token (lm-eval's ``is_greedy``)."""
        return bool(self.correct.all())


class LoglikelihoodResult(tuple):
    """lm-eval's ``(loglikelihood: float, is_greedy: bool)`` tuple, plus ``.token_stats``.

    Compares, hashes, indexes, unpacks and serialises to JSON exactly like the plain tuple; pickles (lm-eval's
    SQLite request cache) with its statistics.
    """

    token_stats: TokenStats

    def __new__(cls, loglikelihood: float, is_greedy: bool, token_stats: TokenStats):
        if not isinstance(token_stats, TokenStats):
            raise TypeError(f"token_stats must be a TokenStats, got {type(token_stats).__name__}")
        self = super().__new__(cls, (float(loglikelihood), bool(is_greedy)))
        self.token_stats = token_stats
        return self

    @property
    def loglikelihood(self) -> float:
        return self[0]

    @property
    def is_greedy(self) -> bool:
        return self[1]

    def __reduce__(self):
        return (LoglikelihoodResult, (self[0], self[1], self.token_stats))

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class RollingLoglikelihoodResult(float):
    """lm-eval's rolling log-likelihood (a float), plus ``.token_stats`` for every token of the document."""

    token_stats: TokenStats

    def __new__(cls, loglikelihood: float, token_stats: TokenStats):
        if not isinstance(token_stats, TokenStats):
            raise TypeError(f"token_stats must be a TokenStats, got {type(token_stats).__name__}")
        self = super().__new__(cls, float(loglikelihood))
        self.token_stats = token_stats
        return self

    def __reduce__(self):
        return (RollingLoglikelihoodResult, (float(self), self.token_stats))

    def __repr__(self) -> str:
        return float.__repr__(self)


def token_stats_of(result: Any) -> TokenStats | None:
    """The :class:`TokenStats` a model attached to one ``loglikelihood``/``loglikelihood_rolling`` result.

    ``None`` when the result is a plain tuple or float (a model that does not provide token statistics).
    """
    stats = getattr(result, "token_stats", None)
    return stats if isinstance(stats, TokenStats) else None


def model_provides_token_stats(lm: Any) -> bool:
    """Whether ``lm`` (also behind lm-eval's ``CachingLM``) declares ``provides_token_stats = True``."""
    try:
        return getattr(lm, PROVIDES_TOKEN_STATS_ATTR, False) is True
    except Exception:  # a wrapper whose __getattr__ raises something other than AttributeError
        return False
