"""MICE-ℓa+b: the semantics of the paper, on tiny random BERTs built in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mice.errors import ModelError
from mice.models.mice_model import DocStates, MICEModel
from mice.models.testing import PAIRS, tiny_cross_encoder

QUERIES = [q for q, _ in PAIRS]
DOCS = [d for _, d in PAIRS]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny", num_layers=4, seed=1)


@pytest.fixture(scope="module")
def mice22(tiny_dir):
    return MICEModel.from_cross_encoder(tiny_dir, contextual_layers=2, interaction_layers=2)


def test_structure_and_init(mice22, tiny_dir):
    from transformers import AutoModelForSequenceClassification

    ce = AutoModelForSequenceClassification.from_pretrained(tiny_dir)
    assert mice22.name == "MICE-ℓ2+2" and len(mice22.layers) == 4 and len(mice22.cross) == 2
    # the cross-attention blocks start as copies of their layer's self-attention, as separate parameters
    for j in range(2):
        src = ce.bert.encoder.layer[2 + j].attention
        assert torch.equal(mice22.cross[j].self.query.weight, src.self.query.weight)
        assert torch.equal(mice22.cross[j].output.dense.weight, src.output.dense.weight)
        assert mice22.cross[j].self.key.weight.data_ptr() != mice22.layers[2 + j].attention.self.key.weight.data_ptr()
    # upper layers dropped
    small = MICEModel.from_cross_encoder(tiny_dir, contextual_layers=1, interaction_layers=2)
    assert len(small.layers) == 3 and small.config.num_hidden_layers == 3
    with pytest.raises(ModelError):
        MICEModel.from_cross_encoder(tiny_dir, contextual_layers=3, interaction_layers=2)
    with pytest.raises(ModelError):
        MICEModel.from_cross_encoder(tiny_dir, contextual_layers=2, interaction_layers=0)


def test_contextual_layers_match_hugging_face(mice22, tiny_dir):
    """The document side is exactly the backbone's layer-a output on `[CLS] d [SEP]` (token type 1)."""
    from transformers import AutoModelForSequenceClassification

    ce = AutoModelForSequenceClassification.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    batch = mice22.tokenize_documents(DOCS)
    assert (batch["token_type_ids"] == 1).all()
    with torch.no_grad():
        ours = mice22.encode_doc_batch(batch)
        ref = ce.bert(**batch, output_hidden_states=True).hidden_states[2]
    m = batch["attention_mask"].bool()
    assert torch.allclose(ours.hidden[m], ref[m], atol=1e-5)


def test_a_document_shared_by_queries_scores_as_when_scored_alone(mice22):
    """`predict` encodes each distinct document once (a pool shares documents across queries): every pair's score
    equals that pair scored alone, whatever the batch size and however the pairs are ordered."""
    pairs = [(q, d) for q in QUERIES for d in DOCS[:3]] + [(QUERIES[0], DOCS[-1]), (QUERIES[-1], DOCS[0])]
    alone = np.array([mice22.predict([p])[0] for p in pairs])
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(mice22.predict(pairs, batch_size=batch_size), alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mice22.predict(pairs[::-1], batch_size=4), alone[::-1], atol=1e-5, rtol=0)


def test_precomputed_states_equal_on_the_fly(mice22):
    pairs = list(zip(QUERIES, DOCS))
    fly = mice22.predict(pairs, batch_size=2)
    states = mice22.encode_documents(DOCS, batch_size=2)
    pre = mice22.predict([(q, None) for q in QUERIES], batch_size=3, doc_states=states)
    np.testing.assert_allclose(pre, fly, atol=1e-5, rtol=0)
    with torch.no_grad():
        direct = mice22(QUERIES, doc_batch=DOCS)
        via_states = mice22(QUERIES, doc_states=states)
    np.testing.assert_allclose(direct.numpy(), fly, atol=1e-5, rtol=0)
    np.testing.assert_allclose(via_states.numpy(), fly, atol=1e-5, rtol=0)


def test_score_does_not_depend_on_batch_neighbours(mice22):
    """Each pair scored alone equals the same pair in a padded batch (padding lengths differ)."""
    long_doc = " ".join(DOCS * 3)
    docs = DOCS + [long_doc, "short"]
    queries = QUERIES + ["x " * 20, QUERIES[0]]
    with torch.no_grad():
        together = mice22(queries, doc_batch=docs)
        alone = torch.cat([mice22([q], doc_batch=[d]) for q, d in zip(queries, docs)])
    assert torch.allclose(together, alone, atol=1e-5)
    # one query shared by many documents (broadcast query side) equals the pairwise form
    with torch.no_grad():
        shared = mice22([QUERIES[0]], doc_batch=docs)
        pairwise = mice22([QUERIES[0]] * len(docs), doc_batch=docs)
    assert torch.allclose(shared, pairwise, atol=1e-5)


def test_one_interaction_layer_collapses(tiny_dir):
    """b = 1: `[CLS]` reads the query before the query reads the document, so the score ignores the document."""
    m = MICEModel.from_cross_encoder(tiny_dir, contextual_layers=3, interaction_layers=1)
    scores = m.predict([(QUERIES[0], d) for d in DOCS])
    assert np.ptp(scores) < 1e-5
    m2 = MICEModel.from_cross_encoder(tiny_dir, contextual_layers=2, interaction_layers=2)
    scores2 = m2.predict([(QUERIES[0], d) for d in DOCS])
    assert np.ptp(scores2) > 1e-4  # two layers let the document reach `[CLS]` through the query


def test_cls_row_passes_cross_attention_unchanged(mice22):
    with torch.no_grad():
        qs = mice22.encode_query(QUERIES[:2])
        doc = mice22.encode_doc_batch(DOCS[:2])
        out = mice22.cross_block(0, qs.hidden, doc)
        other = mice22.encode_doc_batch(DOCS[2:4])
        out2 = mice22.cross_block(0, qs.hidden, other)
    assert torch.equal(out[:, 0], qs.hidden[:, 0])  # identity, not LayerNorm(dense(0) + x)
    assert torch.equal(out2[:, 0], qs.hidden[:, 0])
    assert not torch.allclose(out[:, 1:], out2[:, 1:])  # query tokens do read the document


def test_query_tokens_do_not_attend_cls(mice22):
    m = mice22.query_self_mask(torch.tensor([[1, 1, 1, 0]]))
    assert m[0, 0, 0].tolist() == [True, True, True, False]  # [CLS] attends itself and the query
    assert m[0, 0, 2].tolist() == [False, True, True, False]  # query tokens: not [CLS], not padding
    batch = mice22.tokenize_queries(QUERIES[:1])
    with torch.no_grad():
        h = mice22.contextualize(batch)
        smask = mice22.query_self_mask(batch["attention_mask"])
        base = mice22.self_block(2, h, smask)
        h2 = h.clone()
        h2[:, 0] += 3.0
        moved = mice22.self_block(2, h2, smask)
    assert torch.allclose(base[:, 1:], moved[:, 1:], atol=1e-6)
    assert not torch.allclose(base[:, 0], moved[:, 0])


def test_save_load_round_trip(mice22, tmp_path):
    with torch.no_grad():  # make the cross blocks differ from their initialisation
        mice22.cross[1].self.value.weight.mul_(1.1)
    folder = mice22.save_pretrained(tmp_path / "mice")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["mice"]["contextual_layers"] == 2 and cfg["mice"]["interaction_layers"] == 2
    assert cfg["num_hidden_layers"] == 4 and cfg["model_type"] == "bert"
    assert {"max_query_length", "max_doc_length", "source", "mask"} <= set(cfg["mice"])
    loaded = MICEModel.from_pretrained(folder)
    pairs = list(zip(QUERIES, DOCS))
    np.testing.assert_allclose(loaded.predict(pairs), mice22.predict(pairs), atol=1e-6, rtol=0)
    assert loaded.fingerprint() == mice22.fingerprint()
    assert loaded.kv_fingerprint() == mice22.kv_fingerprint()
    ranked = loaded.rank(QUERIES[0], DOCS, top_k=3, return_documents=True)
    assert len(ranked) == 3 and ranked[0]["score"] >= ranked[1]["score"] and "text" in ranked[0]
    with pytest.raises(ModelError):
        MICEModel.from_pretrained(tmp_path / "nothing")


def test_gradients_flow_and_modes(tiny_dir):
    m = MICEModel.from_cross_encoder(tiny_dir, contextual_layers=2, interaction_layers=2)
    m.train()
    scores = m(QUERIES[:3], doc_batch=DOCS[:3])
    assert scores.shape == (3,) and scores.requires_grad
    (scores**2).sum().backward()
    grads = {name: p.grad for name, p in m.named_parameters()}
    for name in (
        "cross.0.self.key.weight",
        "cross.0.output.dense.weight",
        "backbone.classifier.weight",
        "backbone.bert.encoder.layer.0.attention.self.query.weight",
        "backbone.bert.encoder.layer.3.output.dense.weight",
        "backbone.bert.embeddings.word_embeddings.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # the last layer's cross-attention cannot reach `[CLS]`: a zero (not missing) gradient, as DDP expects
    assert grads["cross.1.self.query.weight"] is not None and grads["cross.1.self.query.weight"].abs().sum() == 0
    # the autograd path (full last layer) and the inference shortcut (`[CLS]` row only) agree
    m.eval()
    with torch.no_grad():
        fast = m(QUERIES[:3], doc_batch=DOCS[:3])
    assert torch.allclose(m(QUERIES[:3], doc_batch=DOCS[:3]).detach(), fast, atol=1e-5)
    m.train()
    # precomputed states (no grad) still train the interaction layers
    m.zero_grad()
    states = m.encode_documents(DOCS[:3])
    m(QUERIES[:3], doc_states=states).sum().backward()
    assert m.cross[0].self.value.weight.grad.abs().sum() > 0
    assert not states.hidden.requires_grad  # document side frozen, query side still trains
    assert m.layers[0].attention.self.query.weight.grad.abs().sum() > 0
    # dropout follows the module mode
    m.config.attention_probs_dropout_prob = 0.5
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.5
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = m(QUERIES[:3], doc_batch=DOCS[:3]), m(QUERIES[:3], doc_batch=DOCS[:3])
    assert not torch.allclose(a, b)
    m.eval()
    with torch.no_grad():
        a, b = m(QUERIES[:3], doc_batch=DOCS[:3]), m(QUERIES[:3], doc_batch=DOCS[:3])
    assert torch.equal(a, b)


def test_other_families(tmp_path):
    for family in ("electra", "roberta"):
        folder = tiny_cross_encoder(tmp_path / family, family=family, num_layers=3)
        m = MICEModel.from_cross_encoder(folder, contextual_layers=1, interaction_layers=2)
        pairs = list(zip(QUERIES, DOCS))
        fly = m.predict(pairs)
        pre = m.predict(pairs, doc_states=m.encode_documents(DOCS))
        assert np.isfinite(fly).all() and np.ptp(fly) > 0
        np.testing.assert_allclose(pre, fly, atol=1e-5, rtol=0)
        m2 = MICEModel.from_pretrained(m.save_pretrained(tmp_path / f"{family}-mice"))
        np.testing.assert_allclose(m2.predict(pairs), fly, atol=1e-6, rtol=0)


def test_doc_states_helpers():
    parts = [torch.randn(3, 4), torch.randn(5, 4), torch.randn(1, 4)]
    ds = DocStates.from_list(parts)
    assert ds.hidden.shape == (3, 5, 4) and ds.lengths.tolist() == [3, 5, 1]
    sub = ds.select([0, 2])
    assert sub.hidden.shape == (2, 3, 4)
    assert all(torch.equal(a, b) for a, b in zip(ds.unpadded(), parts))


@pytest.mark.integration
def test_packaged_minilm_mice33():
    from transformers import AutoModel

    from mice.models.backbone import packaged_model_path

    m = MICEModel.from_cross_encoder("packaged:minilm", contextual_layers=3, interaction_layers=3)
    assert m.name == "MICE-ℓ3+3" and len(m.layers) == 6 and m.hidden_size == 384
    enc = AutoModel.from_pretrained(packaged_model_path(), attn_implementation="eager").eval()
    assert torch.equal(m.base.pooler.dense.weight, enc.pooler.dense.weight)  # pooler from the encoder
    batch = m.tokenize_documents(DOCS)
    with torch.no_grad():
        ref = enc(**batch, output_hidden_states=True).hidden_states[3]
        ours = m.encode_doc_batch(batch).hidden
    mask = batch["attention_mask"].bool()
    assert torch.allclose(ours[mask], ref[mask], atol=1e-4)
    pairs = [(QUERIES[0], d) for d in DOCS]
    fly = m.predict(pairs)
    pre = m.predict(pairs, doc_states=m.encode_documents(DOCS))
    np.testing.assert_allclose(pre, fly, atol=1e-5, rtol=0)
    assert np.ptp(fly) > 0
    again = MICEModel.from_cross_encoder("packaged:minilm", contextual_layers=3, interaction_layers=3)
    np.testing.assert_allclose(again.predict(pairs), fly, atol=1e-6, rtol=0)  # fresh head is seeded
