"""A cross-encoder with a known mechanism, built by hand, and a synthetic collection it ranks perfectly.

Used to check that probes, sweeps and mask derivation find what is there. Task: each query is one or two
colour words; a document is relevant when it contains the paired object word of every query word
(red↔apple, blue↔river, …). The 3-layer BERT model solves it through exactly one route:

- layer 0 does nothing (zero attention values, zero feed-forward);
- layer 1, head 0: each query token looks for its partner object among the document tokens (`q->d`); the
  attention lands on the partner when present and spreads thinly otherwise, and what it reads (an
  "object word" flag) goes into a match channel;
- layer 2, head 0: `[CLS]` reads the match channel of the query tokens (`cls->q`);
- the pooler and classifier turn the [CLS] match value into the score.

So `q->d` in layer 1 carries all the relevance information and `cls->q` in layer 2 reads it out; every other
path can go. (`q->d` in the *last* layer could not matter here or in any model whose score is read from
`[CLS]`: query-token states computed by the last layer are read by nobody.) Post-LayerNorm algebra is kept
simple by storing every feature twice, as +v and -v, so all states have zero mean.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

QUERY_WORDS = ("red", "blue", "green", "black", "white", "brown", "pink", "gray")
OBJECT_WORDS = ("apple", "river", "stone", "cloud", "house", "table", "chair", "horse")
FILLER_WORDS = ("the", "of", "and", "in", "on", "with", "by", "at", "from", "for")
MECHANISM = {"match": (1, "q->d"), "readout": (2, "cls->q")}  # (layer, path) of the planted route

# logical channels (each stored at c and, negated, at c + 32)
_QID, _OID, _IS_Q, _IS_OBJ, _CLS, _MATCH, _READ, _OTHER = 0, 8, 16, 17, 18, 19, 20, 21


def planted_model(folder, alpha: float = 5.0, beta: float = 5.0) -> Path:
    """Build and save the planted 3-layer cross-encoder (BERT, hidden 64, 4 heads) as a plain HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from mice.models.testing import _bert_tokenizer_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _bert_tokenizer_files(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    D, half = 64, 32
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=D,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=16,
        max_position_embeddings=128,
        num_labels=1,
        hidden_act="relu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
    )
    model = BertForSequenceClassification(config)

    def put(weight, row, col, value):  # write a logical feature and its negated mirror
        weight[row, col] = value
        weight[row + half, col] = -value

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_()
            if "LayerNorm.weight" in name:
                p.fill_(1.0)
        emb = model.bert.embeddings.word_embeddings.weight  # [vocab, D]
        emb[:, _OTHER] = 1.0
        emb[:, _OTHER + half] = -1.0

        def word(w, channels):
            i = tok.convert_tokens_to_ids(w)
            emb[i].zero_()
            for c in channels:
                emb[i, c] = 1.0
                emb[i, c + half] = -1.0

        for j, w in enumerate(QUERY_WORDS):
            word(w, [_QID + j, _IS_Q])
        for j, w in enumerate(OBJECT_WORDS):
            word(w, [_OID + j, _IS_OBJ])
        word(tok.cls_token, [_CLS])

        l1 = model.bert.encoder.layer[1]
        for j in range(len(QUERY_WORDS)):
            l1.attention.self.query.weight[j, _QID + j] = alpha  # head 0: query word j ...
            l1.attention.self.key.weight[j, _OID + j] = 1.0  # ... matches object word j
        l1.attention.self.value.weight[0, _IS_OBJ] = 1.0  # reads "is an object word"
        put(l1.attention.output.dense.weight, _MATCH, 0, 1.0)  # into the match channel

        l2 = model.bert.encoder.layer[2]
        l2.attention.self.query.weight[0, _CLS] = beta  # head 0: [CLS] ...
        l2.attention.self.key.weight[0, _IS_Q] = 1.0  # ... attends the query words
        l2.attention.self.value.weight[0, _MATCH] = 1.0  # reads their match channel
        put(l2.attention.output.dense.weight, _READ, 0, 1.0)  # into the readout channel

        model.bert.pooler.dense.weight[0, _READ] = 0.5
        model.bert.pooler.dense.bias[0] = -1.0
        model.classifier.weight[0, 0] = 1.0
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def planted_dataset(n_queries: int = 16, n_candidates: int = 8, seed: int = 0):
    """(InMemoryDataset with split "test", first-stage run DataFrame) for the planted task.

    Each query has one relevant document (its partner objects plus fillers) among `n_candidates`
    candidates; the others hold only non-partner objects and fillers. The run lists the candidates in a
    shuffled order so that the first stage is no oracle.
    """
    from mice.data import InMemoryDataset

    rng = random.Random(seed)
    corpus, queries, qrels, run = {}, {}, [], []
    for qi in range(n_queries):
        colours = rng.sample(range(len(QUERY_WORDS)), 1 + qi % 2)
        qid = f"q{qi:02d}"
        queries[qid] = " ".join(QUERY_WORDS[c] for c in colours)
        others = [j for j in range(len(OBJECT_WORDS)) if j not in colours]
        docs = []
        words = [OBJECT_WORDS[c] for c in colours] + rng.sample(FILLER_WORDS, rng.randint(3, 5))
        rng.shuffle(words)
        docs.append((True, " ".join(words)))
        for _ in range(n_candidates - 1):
            words = [OBJECT_WORDS[j] for j in rng.sample(others, rng.randint(1, 2))]
            words += rng.sample(FILLER_WORDS, rng.randint(3, 5))
            rng.shuffle(words)
            docs.append((False, " ".join(words)))
        rng.shuffle(docs)
        for di, (rel, text) in enumerate(docs):
            did = f"{qid}-d{di}"
            corpus[did] = text
            qrels.append((qid, did, int(rel)))
            run.append((qid, did, float(n_candidates - di)))
    ds = InMemoryDataset("planted", corpus, {"test": queries}, {"test": qrels})
    return ds, pd.DataFrame(run, columns=["query_id", "doc_id", "score"])
