"""MICE document-state index and fast re-ranking: parity with the model, storage formats, resumable builds,
refusal of corrupted or foreign indexes, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from mice.errors import IndexError_
from mice.index.fast_rerank import FastMICE, FastReranker
from mice.index.store import DocIndex, IndexConfig, build_index, build_index_with, content_hash
from mice.models.mice_model import MICEModel
from mice.models.testing import _WORDS, tiny_cross_encoder


def _corpus(n=40, seed=0):
    rng = random.Random(seed)
    return {f"doc{i}": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 60))) for i in range(n)}


CORPUS = _corpus()
QUERIES = {f"q{i}": " ".join(random.Random(100 + i).choice(_WORDS) for _ in range(3 + i)) for i in range(4)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny", num_layers=4, seed=3)
    return MICEModel.from_cross_encoder(folder, contextual_layers=1, interaction_layers=3)


@pytest.fixture(scope="module")
def reference(model):
    """On-the-fly model scores, [query][doc]."""
    ids = list(CORPUS)
    return {q: model.predict([(text, CORPUS[d]) for d in ids]) for q, text in QUERIES.items()}


@pytest.fixture(scope="module")
def indexes(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    out = {}
    for dtype in ("float32", "float16", "int8"):
        out[dtype] = build_index(
            model, CORPUS, root / dtype, IndexConfig(dtype=dtype, kv=True, shard_size=16, batch_size=8)
        )
    return out


def test_fp32_index_equals_model(model, indexes, reference):
    ids = list(CORPUS)
    for use_kv in (False, True):
        rr = FastReranker(model, indexes["float32"].path, use_kv=use_kv, batch_size=7)
        assert rr.use_kv is use_kv
        for q, text in QUERIES.items():
            np.testing.assert_allclose(rr.score(text, ids), reference[q], atol=1e-5, rtol=0)
    # the documents' order and batch neighbours do not matter
    rr = FastReranker(model, indexes["float32"], use_kv=False, batch_size=3)
    perm = ids[::-1]
    np.testing.assert_allclose(rr.score(QUERIES["q1"], perm), reference["q1"][::-1], atol=1e-5, rtol=0)
    # the fast scorer on in-memory states equals the model too
    states = model.encode_documents([CORPUS[d] for d in ids])
    for absorb in (False, True):  # keys/values projected, or absorbed into the query (never formed)
        fast = FastMICE(model, absorb=absorb)
        for q in ("q0", "q3"):
            got = fast.score_states(fast.prepare(QUERIES[q]), states).numpy()
            np.testing.assert_allclose(got, reference[q], atol=1e-5, rtol=0)


def _ndcg10(scores: dict, qrels: pd.DataFrame) -> float:
    import ir_measures
    from ir_measures import nDCG

    run = pd.DataFrame(
        [(q, d, float(s)) for q, per in scores.items() for d, s in per.items()], columns=["query_id", "doc_id", "score"]
    )
    return ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]


def test_fp16_and_int8_keep_the_ranking(model, indexes, reference):
    from scipy.stats import kendalltau

    ids = list(CORPUS)
    rng = random.Random(7)
    qrels = pd.DataFrame(
        [(q, d, rng.choice([0, 0, 1, 2])) for q in QUERIES for d in ids], columns=["query_id", "doc_id", "relevance"]
    )
    ref_run = {q: dict(zip(ids, reference[q])) for q in QUERIES}
    ref_ndcg = _ndcg10(ref_run, qrels)
    taus = {}
    for dtype in ("float16", "int8"):
        for use_kv in (False, True):
            rr = FastReranker(model, indexes[dtype], use_kv=use_kv)
            run = {q: dict(zip(ids, rr.score(text, ids))) for q, text in QUERIES.items()}
            tau = min(kendalltau(reference[q], list(run[q].values()))[0] for q in QUERIES)
            taus[(dtype, use_kv)] = tau
            delta = abs(_ndcg10(run, qrels) - ref_ndcg)
            if dtype == "float16":
                assert tau >= 0.99, (dtype, use_kv, tau)
                assert delta <= 0.001, (dtype, use_kv, delta)
            else:  # 8 bits per value: close, not exact
                assert tau >= 0.9, (dtype, use_kv, tau)
    assert set(taus) == {("float16", False), ("float16", True), ("int8", False), ("int8", True)}


def test_storage_sizes_and_info(model, indexes):
    H, slots = model.hidden_size, 2 * (model.interaction_layers - 1)
    per_value = {"float32": 4, "float16": 2, "int8": 1}
    for dtype, idx in indexes.items():
        info = idx.info()
        assert info["documents"] == len(CORPUS) and info["tokens"] == int(idx.lengths.sum())
        scale = 4 if dtype == "int8" else 0
        assert info["bytes_per_token_states"] == pytest.approx(H * per_value[dtype] + scale)
        assert info["bytes_per_token_kv"] == pytest.approx(slots * (H * per_value[dtype] + scale))
        assert info["shards"] == 3
    storage = FastReranker(model, indexes["float16"], use_kv=True).storage()
    assert storage["read_bytes_per_token"] == storage["kv_bytes_per_token"] == slots * H * 2
    # states are the canonical content: read back equal to what the model computes (fp32 exactly)
    pos = indexes["float32"].positions(["doc5", "doc0"])
    got = indexes["float32"].states(pos)
    ref = model.encode_documents([CORPUS["doc5"], CORPUS["doc0"]])
    assert torch.allclose(got.hidden, ref.hidden, atol=1e-6) and torch.equal(got.mask, ref.mask)


def test_rerank_run(model, indexes, reference):
    ids = list(CORPUS)
    run = pd.DataFrame(
        [(q, d, float(-i)) for q in QUERIES for i, d in enumerate(ids)], columns=["query_id", "doc_id", "score"]
    )
    from mice.data.base import InMemoryDataset
    from mice.index.fast_rerank import IndexScorer
    from mice.rank.rerank import rerank

    rr = FastReranker(model, indexes["float32"])
    ds = InMemoryDataset("idx", CORPUS, {"test": QUERIES}, {"test": [(q, "doc0", 1) for q in QUERIES]})
    scorer = IndexScorer(rr)
    out = rerank(scorer, ds, "test", run, k=10, **scorer.runner_batching(10))  # the path `mice rerank --index` takes
    assert len(out) == 10 * len(QUERIES) and list(out.columns) == ["query_id", "doc_id", "score"]
    got = out[out.query_id == "q0"].set_index("doc_id")["score"]
    for d in ids[:10]:
        assert got[d] == pytest.approx(reference["q0"][ids.index(d)], abs=1e-5)
    assert got.is_monotonic_decreasing
    with pytest.raises(IndexError_):
        rr.score(QUERIES["q0"], ["no-such-doc"])


def test_foreign_model_and_stale_kv_refused(model, indexes, tmp_path):
    other_dir = tiny_cross_encoder(tmp_path / "other", num_layers=4, seed=11)
    other = MICEModel.from_cross_encoder(other_dir, contextual_layers=1, interaction_layers=3)
    with pytest.raises(IndexError_, match="another model"):
        FastReranker(other, indexes["float16"].path)
    # fine-tuned cross-attention: the cached keys/values are stale, the states are not
    tuned = MICEModel.from_cross_encoder(other_dir, contextual_layers=1, interaction_layers=3)
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        tuned.cross[0].self.key.weight.add_(0.01)
    with pytest.raises(IndexError_, match="keys/values"):
        FastReranker(tuned, indexes["float16"], use_kv=True)
    assert FastReranker(tuned, indexes["float16"], use_kv="auto").use_kv is False


def test_fingerprint_covers_a_and_tokenizer(model, tmp_path):
    folder = tiny_cross_encoder(tmp_path / "ce", num_layers=4, seed=3)
    same = MICEModel.from_cross_encoder(folder, contextual_layers=1, interaction_layers=3)
    assert same.fingerprint() == model.fingerprint()
    assert (
        MICEModel.from_cross_encoder(folder, contextual_layers=1, interaction_layers=2).fingerprint()
        == model.fingerprint()
    )  # the document side does not depend on b
    assert (
        MICEModel.from_cross_encoder(folder, contextual_layers=2, interaction_layers=2).fingerprint()
        != model.fingerprint()
    )
    same.mice_config.doc_token_type = 0
    assert same.fingerprint() != model.fingerprint()


def test_corrupted_index_refused(model, tmp_path):
    out = tmp_path / "idx"
    build_index(model, dict(list(CORPUS.items())[:10]), out, IndexConfig(shard_size=4))
    DocIndex.open(out, model=model)
    shard = out / "shard-00001.states.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="shard-00001.*checksum"):
        DocIndex.open(out, model=model)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(IndexError_, match="corrupted shard"):
        DocIndex.open(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tokens"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="manifest checksum"):
        DocIndex.open(out)
    (out / "manifest.json").unlink()
    with pytest.raises(IndexError_, match="not finished"):
        DocIndex.open(out)
    with pytest.raises(IndexError_, match="not a MICE index"):
        DocIndex.open(tmp_path)


def test_interrupted_build_resumes(model, tmp_path):
    corpus = dict(list(CORPUS.items())[:20])
    config = IndexConfig(dtype="float32", shard_size=6, batch_size=4)
    out = tmp_path / "idx"
    calls = []

    def encode_then_fail(ids):
        calls.append(ids)
        if len(calls) == 3:  # killed in the middle of the third shard
            yield ids[0], model.encode_documents([corpus[ids[0]]]).unpadded()[0]
            raise KeyboardInterrupt
        for i, s in model.iter_document_states([corpus[d] for d in ids]):
            yield ids[i], s

    with pytest.raises(KeyboardInterrupt):
        build_index_with(model, list(corpus), encode_then_fail, out, config, content=content_hash(corpus.items()))
    assert not (out / "manifest.json").exists()
    assert (out / "shard-00001.json").exists() and not (out / "shard-00002.json").exists()
    assert not list(out.glob(".*tmp"))  # the torn shard left no temporary files
    done_mtime = (out / "shard-00000.json").stat().st_mtime_ns
    with pytest.raises(IndexError_, match="not finished"):
        DocIndex.open(out)
    with pytest.raises(IndexError_, match="other settings"):
        build_index(model, corpus, out, IndexConfig(dtype="float16", shard_size=6))
    resumed = build_index(model, corpus, out, config)
    assert (out / "shard-00000.json").stat().st_mtime_ns == done_mtime  # finished shards were kept
    fresh = build_index(model, corpus, tmp_path / "fresh", config)
    ids = list(corpus)
    assert torch.allclose(
        resumed.states(resumed.positions(ids)).hidden, fresh.states(fresh.positions(ids)).hidden, atol=1e-5
    )
    assert sorted(resumed.doc_ids) == sorted(fresh.doc_ids) == sorted(ids)
    # a finished build is not redone; other settings need overwrite
    again = build_index(model, corpus, out, config)
    assert again.manifest["checksum"] == resumed.manifest["checksum"]
    over = build_index(model, corpus, out, IndexConfig(dtype="int8", shard_size=6), overwrite=True)
    assert over.dtype == "int8" and len(over) == len(corpus)


def test_cli_build_and_info(model, tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import InMemoryDataset, write_beir

    mice_dir = model.save_pretrained(tmp_path / "mice")
    corpus = dict(list(CORPUS.items())[:12])
    ds = InMemoryDataset("tiny", corpus, {"test": {"q0": QUERIES["q0"]}}, {"test": [("q0", "doc1", 1)]})
    beir = write_beir(ds, tmp_path / "beir")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "--model",
            str(mice_dir),
            "--dataset",
            str(beir),
            "--out",
            str(tmp_path / "idx"),
            "--storage-dtype",
            "int8",
            "--kv",
            "--shard-size",
            "5",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "info", str(tmp_path / "idx"), "--model", str(mice_dir)])
    assert res.exit_code == 0, res.output
    assert "12" in res.output and "bytes per token" in res.output and "index matches" in res.output
    # the short form `mice index --model ... --dataset ... --out ...`
    res = runner.invoke(
        app, ["index", "--model", str(mice_dir), "--dataset", str(beir), "--out", str(tmp_path / "idx2")]
    )
    assert res.exit_code == 0, res.output
    idx = DocIndex.open(tmp_path / "idx2", model=model)
    assert idx.dtype == "float16" and len(idx) == 12


def test_runner_with_index_scorer(model, indexes, tmp_path):
    """`mice.rank.rerank.rerank` with the index adapter equals the same runner with the model on texts."""
    from mice.data import InMemoryDataset
    from mice.index.fast_rerank import IndexScorer
    from mice.rank.rerank import rerank

    ids = list(CORPUS)
    qrels = [(q, ids[i], 1) for i, q in enumerate(QUERIES)]
    ds = InMemoryDataset("tiny", CORPUS, {"test": QUERIES}, {"test": qrels})
    run = pd.DataFrame(
        [(q, d, float(-i)) for q in QUERIES for i, d in enumerate(ids)], columns=["query_id", "doc_id", "score"]
    )
    scorer = IndexScorer(FastReranker(model, indexes["float32"]), cache_size=2)
    fast = rerank(scorer, ds, "test", run, k=12, batch_size=5)
    slow = rerank(model, ds, "test", run, k=12, batch_size=5)
    merged = fast.merge(slow, on=["query_id", "doc_id"], suffixes=("_fast", "_slow"))
    assert len(merged) == 12 * len(QUERIES)
    np.testing.assert_allclose(merged["score_fast"], merged["score_slow"], atol=1e-5, rtol=0)
    out = tmp_path / "run.trec"
    rerank(scorer, ds, "test", run, k=12, batch_size=5, out=out)
    assert out.exists()


def test_cli_rerank_with_index(model, tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import InMemoryDataset, write_beir
    from mice.rank.runs import read_run, write_run

    mice_dir = model.save_pretrained(tmp_path / "mice")
    ids = list(CORPUS)
    ds = InMemoryDataset("tiny", CORPUS, {"test": QUERIES}, {"test": [(q, ids[i], 1) for i, q in enumerate(QUERIES)]})
    beir = write_beir(ds, tmp_path / "beir")
    first = tmp_path / "first.trec"
    write_run(
        pd.DataFrame(
            [(q, d, float(-i)) for q in QUERIES for i, d in enumerate(ids)], columns=["query_id", "doc_id", "score"]
        ),
        first,
    )
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "-m",
            str(mice_dir),
            "-d",
            str(beir),
            "-o",
            str(tmp_path / "idx"),
            "--storage-dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    common = ["rerank", "-m", str(mice_dir), "-d", str(beir), "--run", str(first), "--k", "8", "--split", "test"]
    res = runner.invoke(app, common + ["--out", str(tmp_path / "fast.trec"), "--index", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, common + ["--out", str(tmp_path / "slow.trec")])
    assert res.exit_code == 0, res.output
    fast, slow = read_run(tmp_path / "fast.trec"), read_run(tmp_path / "slow.trec")
    merged = fast.merge(slow, on=["query_id", "doc_id"])
    assert len(merged) == 8 * len(QUERIES)
    np.testing.assert_allclose(merged["score_x"], merged["score_y"], atol=1e-5, rtol=0)
    # an index built by another model is refused with a one-line error
    other = MICEModel.from_cross_encoder(tiny_cross_encoder(tmp_path / "o", num_layers=4, seed=9), 1, 3)
    other_dir = other.save_pretrained(tmp_path / "other")
    res = runner.invoke(
        app,
        [
            "rerank",
            "-m",
            str(other_dir),
            "-d",
            str(beir),
            "--run",
            str(first),
            "--out",
            str(tmp_path / "x.trec"),
            "--index",
            str(tmp_path / "idx"),
        ],
    )
    assert res.exit_code != 0 and isinstance(res.exception, IndexError_)
