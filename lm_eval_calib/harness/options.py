"""Per-run calibration options, read from lm-eval's task metadata.

lm-eval merges ``--model_args`` and ``--metadata`` into one flat metadata dict, so our options live under
their own key to avoid clashes: ``--metadata '{"calibration": {"n_bins": 15}}'``. Unknown option names
are an error at task construction, before any inference, so a typo never silently runs the default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

OPTIONS_KEY = "calibration"


@dataclass(frozen=True)
class CalibrationOptions:
    """Settings of the corpus-level calibration metrics of one task."""

    n_bins: int = 10
    """Bins of the binned estimators (ece, ece_em, ece_debiased, mce, rmsce)."""
    bootstrap_seed: int = 1234
    """Seed of the bootstrap that gives every metric its stderr; fixed so reruns report the same."""
    max_bootstrap: int = 1000
    """Cap on bootstrap resamples: lm-eval's default --bootstrap_iters (100000) is far more than a stderr
    needs and would cost minutes on 14k documents."""

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> CalibrationOptions:
        raw = (metadata or {}).get(OPTIONS_KEY) or {}
        if not isinstance(raw, dict):
            raise ValueError(
                f"metadata[{OPTIONS_KEY!r}] must be a mapping such as "
                f'{{"{OPTIONS_KEY}": {{"n_bins": 15}}}}, got {type(raw).__name__} {raw!r}'
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown calibration option(s) {', '.join(map(repr, unknown))} in --metadata; "
                f"known options: {', '.join(known)}"
            )
        values = {}
        for name, value in raw.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "bootstrap_seed" else 1)
            ):
                raise ValueError(f"calibration option {name!r} must be a positive integer, got {value!r}")
            values[name] = value
        return cls(**values)
