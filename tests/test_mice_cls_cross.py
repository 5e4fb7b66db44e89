"""`cls_cross_attention`: none (the paper's text) vs uniform (the authors' code), on tiny random BERTs.

Both variants must agree across the three ways of scoring (autograd forward, `predict`'s no-grad shortcut, and
the fast/index path), and only `none` collapses at b = 1."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mice.errors import ModelError
from mice.index.fast_rerank import FastMICE, FastReranker
from mice.index.store import IndexConfig, build_index
from mice.models.mice_model import MICEModel
from mice.models.testing import PAIRS, _WORDS, tiny_cross_encoder

QUERIES = [q for q, _ in PAIRS]
DOCS = [d for _, d in PAIRS]
CORPUS = {
    f"doc{i}": " ".join(random.Random(i).choice(_WORDS) for _ in range(random.Random(50 + i).randint(2, 40)))
    for i in range(24)
}
LONG_QUERY = "sparse matrix sum along the given axis of the input array with default dtype"

pytestmark = pytest.mark.usefixtures("one_thread")


def _fast_scores(fast, query, docs):
    """The fast path on documents encoded on the fly (what the index stores, without the index)."""
    return fast.score_states(fast.prepare(query), fast.model.encode_doc_batch(list(docs))).numpy()


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    return tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny", num_layers=4, seed=5)


@pytest.mark.parametrize("mode,collapses", [("none", True), ("uniform", False)])
def test_one_interaction_layer_collapses_only_under_none(ce, mode, collapses):
    m = MICEModel.from_cross_encoder(ce, contextual_layers=3, interaction_layers=1, cls_cross_attention=mode)
    for q in QUERIES[:2]:
        scores = m.predict([(q, d) for d in DOCS])
        if collapses:
            assert np.ptp(scores) < 1e-5, scores  # the score ignores the document
        else:
            assert np.ptp(scores) > 1e-3, scores  # [CLS] reads the document's mean value
        # the fast path agrees (constant under none, per document under uniform)
        fast = _fast_scores(FastMICE(m), q, DOCS)
        np.testing.assert_allclose(fast, scores, atol=1e-5, rtol=0)


def test_uniform_cls_row_is_the_mean_value_through_the_sublayer(ce):
    m = MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2, cls_cross_attention="uniform")
    with torch.no_grad():
        qs = m.encode_query(QUERIES[:2])
        doc = m.encode_doc_batch(DOCS[:2])  # padded batch: the mean must skip padding
        out = m.cross_block(0, qs.hidden, doc)
        for i in range(2):
            n = int(doc.mask[i].sum())
            values = m.cross[0].self.value(doc.hidden[i, :n])  # [n, H]: uniform weights over real tokens
            expect = m.cross[0].output(values.mean(0)[None, None], qs.hidden[i : i + 1, :1])
            torch.testing.assert_close(out[i : i + 1, :1], expect, atol=1e-6, rtol=0)
    none = MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2)
    with torch.no_grad():
        assert torch.equal(none.cross_block(0, qs.hidden, doc)[:, 0], qs.hidden[:, 0])


@pytest.mark.parametrize("mode", ["none", "uniform"])
def test_shortcut_forward_and_batch_neighbours_agree(ce, mode):
    """`predict` (no grad: last layer's [CLS] row only) equals the autograd forward, and a pair's score does
    not depend on the other documents of its batch (padding never enters the average)."""
    m = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=3, cls_cross_attention=mode)
    pairs = [(QUERIES[0], d) for d in DOCS]
    fast = m.predict(pairs, batch_size=5)
    alone = np.array([m.predict([p])[0] for p in pairs])
    with torch.enable_grad():
        full = m([QUERIES[0]] * len(DOCS), doc_batch=DOCS).detach().numpy()
    np.testing.assert_allclose(fast, full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast, alone, atol=1e-5, rtol=0)


def test_uniform_makes_the_last_cross_attention_live(ce):
    none = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=3)
    uni = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=3, cls_cross_attention="uniform")
    assert (none.live_cross_layers, uni.live_cross_layers) == (2, 3)
    uni.train()
    loss = uni([QUERIES[0]] * 3, doc_batch=DOCS[:3]).sum()
    loss.backward()
    assert uni.cross[2].self.value.weight.grad.abs().sum() > 0  # reaches the score through [CLS]
    assert uni.cross[2].self.key.weight.grad.abs().sum() == 0  # keys only serve query rows, which stop there


@pytest.mark.parametrize("mode", ["none", "uniform"])
def test_index_path_matches_on_the_fly(ce, mode, tmp_path):
    m = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=3, cls_cross_attention=mode)
    idx = build_index(m, CORPUS, tmp_path / "idx", IndexConfig(dtype="float32", kv=True, shard_size=10, batch_size=6))
    ids = list(CORPUS)
    for q in (QUERIES[0], LONG_QUERY):  # short query: absorbed keys/values; long: projected
        ref = m.predict([(q, CORPUS[d]) for d in ids])
        for use_kv in (False, True):
            rr = FastReranker(m, idx.path, use_kv=use_kv, batch_size=7)
            np.testing.assert_allclose(rr.score(q, ids), ref, atol=1e-5, rtol=0)
        for absorb in (True, False):
            np.testing.assert_allclose(
                _fast_scores(FastMICE(m, absorb=absorb), q, [CORPUS[d] for d in ids]), ref, atol=1e-5, rtol=0
            )


def test_mode_is_saved_and_validated(ce, tmp_path):
    m = MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2, cls_cross_attention="uniform")
    m.save_pretrained(tmp_path / "m")
    back = MICEModel.from_pretrained(tmp_path / "m")
    assert back.mice_config.cls_cross_attention == "uniform"
    np.testing.assert_allclose(back.predict(PAIRS), m.predict(PAIRS), atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="cls_cross_attention"):
        MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2, cls_cross_attention="mean")


def test_query_length_is_overridable_when_loading(ce, tmp_path):
    """A model trained with short queries can re-rank long-query sets with the paper's longer cap."""
    short = MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2, max_query_length=6)
    short.save_pretrained(tmp_path / "m")
    pairs = [(LONG_QUERY, d) for d in DOCS]
    as_saved = MICEModel.from_pretrained(tmp_path / "m")
    longer = MICEModel.from_pretrained(tmp_path / "m", max_query_length=64)
    assert as_saved.mice_config.max_query_length == 6 and longer.mice_config.max_query_length == 64
    assert as_saved.tokenize_queries([LONG_QUERY])["input_ids"].shape[1] == 6
    assert longer.tokenize_queries([LONG_QUERY])["input_ids"].shape[1] > 6
    assert not np.allclose(as_saved.predict(pairs), longer.predict(pairs), atol=1e-4)
    np.testing.assert_allclose(
        longer.predict(pairs),
        MICEModel.from_cross_encoder(ce, contextual_layers=2, interaction_layers=2, max_query_length=64).predict(pairs),
        atol=1e-5,
        rtol=0,
    )
