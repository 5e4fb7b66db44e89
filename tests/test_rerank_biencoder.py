"""The packaged bi-encoder as a scorer (integration: loads the packaged MiniLM)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from mice.models.biencoder import BiEncoder
from mice.cli import app
from mice.rank.evaluation import evaluate
from mice.rank.runs import read_run

from test_data import write_beir_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder():
    return BiEncoder(device="cpu")


def test_embeddings_match_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    texts = ["sort an array", "Return a sorted copy of an array along the given axis. " * 3, "graph nodes"]
    ref = st.SentenceTransformer(encoder.name_or_path, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(texts, cache=False), ref, atol=1e-5)


def test_predict_is_cosine_and_cached(encoder):
    pairs = [("sort an array", "Return a sorted copy of an array."), ("sort an array", "Plot y versus x as lines.")]
    scores = encoder.predict(pairs)
    q, d1, d2 = encoder.encode([pairs[0][0], pairs[0][1], pairs[1][1]])
    np.testing.assert_allclose(scores, [q @ d1, q @ d2], atol=1e-6)
    assert scores[0] > scores[1] and scores.dtype == np.float32
    assert pairs[0][1] in encoder._cache
    assert encoder.rank("sort an array", [p[1] for p in pairs])[0]["corpus_id"] == 0


def test_batches_are_formed_by_length_then_text(encoder, monkeypatch):
    """Which texts share a batch (hence each one's padding) follows the texts alone, not a set's hash order."""
    chunks = []
    embed = encoder._embed
    monkeypatch.setattr(encoder, "_embed", lambda chunk: chunks.append(list(chunk)) or embed(chunk))
    texts = ["gamma ray", "alpha one", "beta two", "delta", "omega"]
    out = encoder.encode(texts, batch_size=2, cache=False)
    assert chunks == [["delta", "omega"], ["beta two", "alpha one"], ["gamma ray"]]
    chunks.clear()
    again = encoder.encode(texts[::-1], batch_size=2, cache=False)[::-1]
    assert chunks == [["delta", "omega"], ["beta two", "alpha one"], ["gamma ray"]]
    np.testing.assert_array_equal(out, again)


def test_biencoder_reranks_bm25_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    folder = write_beir_folder(tmp_path / "mini")
    bm, out = tmp_path / "bm25.trec", tmp_path / "bi.trec"
    runner = CliRunner()
    assert runner.invoke(app, ["retrieve", "bm25", "-d", str(folder), "-o", str(bm)]).exit_code == 0
    res = runner.invoke(app, ["rerank", "-m", "biencoder:packaged", "-d", str(folder), "-r", str(bm), "-o", str(out)])
    assert res.exit_code == 0, res.output
    from mice.data import load_dataset

    scores = evaluate(
        load_dataset(folder).qrels("test"),
        {"bm25": read_run(bm), "bi": read_run(out)},
        metrics="RR@10",
        n_resamples=100,
    ).set_index("run")["value"]
    assert scores["bi"] == 1.0  # every test query's relevant document is ranked first
