"""The trained late-interaction baseline (`mice.models.late_interaction`): MaxSim semantics, the three scoring
paths agree, save/load, and `mice train --mode late-interaction` distils it from a cross-encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mice.cli import app
from mice.errors import ModelError
from mice.models.late_interaction import MaxSimScorer, TokenVectors, is_late_interaction_folder
from mice.models.testing import PAIRS, tiny_cross_encoder

pytestmark = pytest.mark.usefixtures("one_thread")
QUERIES = [q for q, _ in PAIRS]
DOCS = [d for _, d in PAIRS]


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    return tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny", num_layers=2, seed=4)


@pytest.fixture(scope="module")
def model(ce):
    return MaxSimScorer.from_pretrained(ce, seed=3, max_query_length=16, max_doc_length=40)


def test_maxsim_is_sum_over_query_tokens_of_best_document_token(model):
    q = model.encode_texts([QUERIES[0]], "query")
    d = model.encode_texts(DOCS[:2], "doc")
    q, d = TokenVectors(q.vectors.detach(), q.mask), TokenVectors(d.vectors.detach(), d.mask)
    with torch.no_grad():
        ours = model.maxsim_pairs(TokenVectors(q.vectors.expand(2, -1, -1), q.mask.expand(2, -1)), d)
    for i in range(2):
        qv = q.vectors[0, q.mask[0]]
        dv = d.vectors[i, d.mask[i]]
        by_hand = sum(max(float(qt @ dt) for dt in dv) for qt in qv.detach())
        assert abs(float(ours[i]) - by_hand) < 1e-5
    assert torch.allclose(q.vectors[0, q.mask[0]].norm(dim=-1), torch.ones(int(q.mask[0].sum())), atol=1e-5)


def test_forward_predict_and_stored_vectors_agree(model):
    pairs = [(QUERIES[0], d) for d in DOCS] + [(QUERIES[1], DOCS[0])]
    pred = model.predict(pairs, batch_size=3)
    with torch.no_grad():
        fwd = model([QUERIES[0]], DOCS).numpy()[0]
    np.testing.assert_allclose(pred[: len(DOCS)], fwd, atol=1e-5, rtol=0)
    alone = model.predict([pairs[-1]])
    np.testing.assert_allclose(pred[-1:], alone, atol=1e-5, rtol=0)  # batch neighbours do not matter
    batch = model.tokenize(DOCS, "doc")
    stored = model.encode_documents(batch["input_ids"], batch["attention_mask"], dtype=torch.float32)
    qids = model.tokenize([QUERIES[0]], "query")["input_ids"]
    np.testing.assert_allclose(model.score(qids, stored, batch_size=2), fwd, atol=1e-5, rtol=0)


def test_predict_in_length_order_gives_every_pair_its_own_score(model):
    """`predict` encodes each distinct query once and the documents longest first: every score is the pair's
    forward score alone, in input order, whatever the batch size (and on an empty input, nothing)."""
    pairs = [(q, d) for q in QUERIES[:3] for d in DOCS[::-1]] + [(QUERIES[0], DOCS[1])]
    with torch.no_grad():
        alone = np.array([float(model([q], [d])[0, 0]) for q, d in pairs])
    for batch_size in (1, 4, 64):
        np.testing.assert_allclose(model.predict(pairs, batch_size=batch_size), alone, atol=1e-5, rtol=0)
    assert model.predict([]).shape == (0,)


def test_save_and_load(model, tmp_path):
    model.save_pretrained(tmp_path / "li")
    assert is_late_interaction_folder(tmp_path / "li")
    back = MaxSimScorer.from_pretrained(tmp_path / "li")
    assert back.li_config.max_query_length == 16 and back.li_config.max_doc_length == 40
    np.testing.assert_allclose(back.predict(PAIRS), model.predict(PAIRS), atol=1e-6, rtol=0)
    longer = MaxSimScorer.from_pretrained(tmp_path / "li", max_query_length=64)  # overridable at re-ranking
    assert longer.li_config.max_query_length == 64
    with pytest.raises(ModelError, match="max_doc_length"):
        MaxSimScorer.from_pretrained(tmp_path / "li", max_doc_length=100_000)
    cfg = json.loads((tmp_path / "li" / "late_interaction.json").read_text())
    (tmp_path / "li" / "late_interaction.json").write_text(json.dumps({**cfg, "format": "other/9"}))
    with pytest.raises(ModelError, match="unknown format"):
        MaxSimScorer.from_pretrained(tmp_path / "li")


def test_train_distils_from_the_cross_encoder(ce, tmp_path, monkeypatch):
    from tests.test_train import write_beir

    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "data", n_train=24, n_dev=8)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--mode",
            "late-interaction",
            "--model",
            str(ce),
            "--dataset",
            str(data),
            "-o",
            str(out),
            "--max-steps",
            "4",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert is_late_interaction_folder(out / "best")
    trained = MaxSimScorer.from_pretrained(out / "last")  # best/ may be step 0 (tiny evaluates at start)
    fresh = MaxSimScorer.from_pretrained(ce, seed=0)
    assert not torch.equal(trained.proj.weight, fresh.proj.weight)  # the projection learned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["spec"] == str(ce) and summary["teacher"]["pairs_scored"] > 0  # the CE taught it
    log = pd.read_csv(out / "train_log.csv")
    assert log["dev_rr10"].notna().any() and np.isfinite(log["loss"].dropna()).all()
