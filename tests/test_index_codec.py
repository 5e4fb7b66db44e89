"""Compressed indexes (`mice.index.codec`, `--storage pq|residual`): codecs round-trip within stated bounds, an index
re-ranks like the float16 one within a stated bound, builds resume and refuse a corrupted codec, two processes write
the bytes one process writes, and an index twice the address space a process may use re-ranks correctly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mice.errors import IndexError_
from mice.index.codec import AnchorSums, Anchors, PQCodec, ResidualCodec, _pack, _unpack, codec_from_spec
from mice.index.fast_rerank import FastReranker
from mice.index.store import DocIndex, IndexConfig, build_index, build_index_with, content_hash
from mice.models.mice_model import MICEModel
from mice.models.testing import _WORDS, tiny_cross_encoder

from cli_checks import assert_one_error

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
rng = random.Random(0)
CORPUS = {f"doc{i}": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 60))) for i in range(120)}
QUERIES = ["sort the array values", "plot a line figure", "mean of the matrix rows", "index of the table frame"]


def _gaussian(n=6000, h=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, generator=g) * torch.linspace(0.2, 3.0, h)  # unequal variances, as real states


def _rel_err(x, y) -> float:
    return float(((x - y) ** 2).sum() / (x**2).sum())


# ------------------------------------------------------------------------------------------------- codecs
def test_pq_is_exact_on_data_it_can_represent_and_bounded_on_gaussians():
    # every sub-vector takes one of 256 values: 8-bit codes represent the data exactly
    g = torch.Generator().manual_seed(1)
    table = torch.randn(4, 256, 8, generator=g)
    choice = torch.randint(0, 256, (3000, 4), generator=g)
    x = torch.cat([table[j][choice[:, j]] for j in range(4)], dim=1)
    pq = PQCodec.train(x, m=4, iters=30)
    assert _rel_err(x, pq.decode(pq.encode(x))) < 1e-6
    # Gaussian data, 8 values per byte: within 0.35 relative squared error (rate-distortion bound 0.25 at 1 bit
    # per value; Lloyd's k-means reaches ~0.28)
    x = _gaussian()
    for rotation in (False, True):
        pq = PQCodec.train(x, m=8, rotation=rotation)
        codes = pq.encode(x)
        assert codes.shape == (len(x), 8) and codes.dtype == np.uint8
        assert _rel_err(x, pq.decode(codes)) < 0.35
        back = codec_from_spec(pq.spec(), pq.to_bytes())
        assert torch.equal(back.decode(codes), pq.decode(codes)) and (back.encode(x) == codes).all()
    with pytest.raises(IndexError_, match="divide"):
        PQCodec.train(x, m=5)


def test_a_refining_stage_codes_what_the_first_leaves():
    """A second stage of m2 bytes lowers the error of an m-byte pq, round-trips through its bytes, and its codes
    are the first stage's codes followed by m2 more (anchored: after the token id)."""
    x = _gaussian(seed=3)
    one = PQCodec.train(x, m=8)
    two = PQCodec.train(x, m=8, refine_m=4)
    codes = two.encode(x)
    assert codes.shape == (len(x), 12) and two.code_bytes == 12 and two.spec()["refine_m"] == 4
    assert (codes[:, :8] == one.encode(x)).all()  # the same first stage (same seeds)
    assert _rel_err(x, two.decode(codes)) < 0.8 * _rel_err(x, one.decode(one.encode(x)))
    back = codec_from_spec(two.spec(), two.to_bytes())
    assert torch.equal(back.decode(codes), two.decode(codes)) and (back.encode(x) == codes).all()
    ids, pos = torch.arange(len(x)) % 40, torch.arange(len(x)) % 30
    anchored = PQCodec.train(x, m=8, refine_m=4, token_ids=ids, positions=pos, rotation=True)
    codes = anchored.encode(x, ids, pos)
    assert codes.shape == (len(x), 14) and anchored.code_bytes == 14
    back = codec_from_spec(anchored.spec(), anchored.to_bytes())
    assert torch.equal(back.decode(codes, pos), anchored.decode(codes, pos))
    with pytest.raises(IndexError_, match="--pq-refine"):
        PQCodec.train(x, m=8, refine_m=5)


def test_anchors_recover_token_and_position_means_and_round_trip():
    """States that are a token row plus a position row plus small noise: the anchors find both (up to a constant
    moved between them), so anchored pq codes only the noise; without token ids it refuses in one line."""
    g = torch.Generator().manual_seed(2)
    V, P, H, n = 50, 12, 16, 5000
    T, Pos = torch.randn(V, H, generator=g) * 3, torch.randn(P, H, generator=g)
    ids, pos = torch.randint(0, V, (n,), generator=g), torch.randint(0, P, (n,), generator=g)
    noise = 0.05 * torch.randn(n, H, generator=g)
    x = T[ids] + Pos[pos] + noise
    plain = PQCodec.train(x, m=4)
    anchored = PQCodec.train(x, m=4, token_ids=ids, positions=pos)
    assert anchored.code_bytes == 4 + 2 and anchored.spec()["anchors"]["tokens"] == V
    assert _rel_err(x - noise, anchored.anchors(ids, pos)) < 1e-3
    codes = anchored.encode(x, ids, pos)
    assert codes.shape == (n, 6) and (codes[:, :2].copy().view("<u2").reshape(-1) == ids.numpy()).all()
    err_anchored = _rel_err(x, anchored.decode(codes, pos))
    assert err_anchored < 0.2 * _rel_err(x, plain.decode(plain.encode(x))) and err_anchored < 1e-3
    back = codec_from_spec(anchored.spec(), anchored.to_bytes())
    assert torch.equal(back.decode(codes, pos), anchored.decode(codes, pos))
    assert (back.encode(x, ids, pos) == codes).all()
    unseen = torch.full((3,), V + 7)  # an id outside the sample: the mean row
    assert torch.allclose(
        anchored.anchors(unseen, pos[:3])[0] - anchored.anchors.position[pos[0]], anchored.anchors.token[-1]
    )
    # the sums added document by document give the anchors of the whole sample at once (never held at once)
    sums = AnchorSums(H)
    for chunk in torch.arange(n).split(97):
        sums.add(x[chunk], ids[chunk], pos[chunk])
    streamed, whole = sums.fit(), Anchors.fit(x, ids, pos)
    assert torch.equal(streamed.ids, whole.ids)
    assert torch.allclose(streamed.token, whole.token, atol=1e-5) and torch.allclose(
        streamed.position, whole.position, atol=1e-5
    )
    # shrinking: an id seen once moves towards the mean row, an id seen ~100 times barely moves
    once = torch.cat([ids[:-1], torch.tensor([V + 3])])
    plain, shrunk = Anchors.fit(x, once, pos), Anchors.fit(x, once, pos, shrink=4.0)
    rare, common = plain.rows(torch.tensor([V + 3, int(ids[0])]))
    assert torch.allclose(
        shrunk.token[rare], (plain.token[rare] + 4 * shrunk.token[-1]) / 5, atol=0.05 * float(plain.token[rare].norm())
    )
    assert float((shrunk.token[common] - plain.token[common]).norm()) < 0.1 * float(plain.token[common].norm())
    with pytest.raises(IndexError_, match="token ids"):
        anchored.encode(x)
    with pytest.raises(IndexError_, match="positions"):
        anchored.decode(codes)


@pytest.mark.parametrize("bits,bound", [(1, 0.35), (2, 0.15)])
def test_residual_round_trip_bounds(bits, bound):
    x = _gaussian()
    codec = ResidualCodec.train(x, centroids=64, bits=bits)
    codes = codec.encode(x)
    assert codes.shape == (len(x), 2 + 64 * bits // 8) and codec.code_bytes == codes.shape[1]
    assert _rel_err(x, codec.decode(codes)) < bound
    back = codec_from_spec(codec.spec(), codec.to_bytes())
    assert torch.equal(back.decode(codes), codec.decode(codes))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bit_packing_round_trips(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=(7, 64)).astype(np.uint8)
    packed = _pack(values, bits)
    assert packed.shape == (7, 64 * bits // 8)
    assert (_unpack(packed, bits, 64) == values).all()


# ------------------------------------------------------------------------------------------------- indexes
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny", num_layers=4, seed=3)
    return MICEModel.from_cross_encoder(folder, contextual_layers=1, interaction_layers=3)


@pytest.fixture(scope="module")
def indexes(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("cidx")
    configs = {
        "float16": {},
        "pq": {"pq_m": 8},
        "pq-anchored": {"dtype": "pq", "pq_m": 8, "anchors": True, "pq_refine": 4},
        "residual": {"bits": 2, "centroids": 64},
    }
    return {
        k: build_index(model, CORPUS, root / k, IndexConfig(**{"dtype": k, **kw}, shard_size=32, train_tokens=2048))
        for k, kw in configs.items()
    }


def test_compressed_index_reranks_like_float16(model, indexes):
    """Stated bound (H = 32, pq 8 B/token = 16× below float16; anchored and refined pq 2 + 8 + 4; residual 2 + 8
    B/token): per query, the Spearman correlation of the scores with the float16 index's is ≥ 0.8 and the stored
    states decode within 0.35 relative squared error of the float16 ones; anchors and a refining stage lower pq's
    error at least twofold."""
    ids = list(CORPUS)
    ref = indexes["float16"]
    ref_states = ref.states(ref.positions(ids))
    ref_scores = [FastReranker(model, ref).score(q, ids) for q in QUERIES]
    errors = {}
    for kind in ("pq", "pq-anchored", "residual"):
        idx = indexes[kind]
        assert idx.bytes_per_token() == idx.codec.code_bytes == {"pq": 8, "pq-anchored": 14, "residual": 10}[kind]
        st = idx.states(idx.positions(ids))
        assert torch.equal(st.mask, ref_states.mask)
        errors[kind] = _rel_err(ref_states.hidden[st.mask], st.hidden[st.mask])
        assert errors[kind] < 0.35
        assert float(st.hidden[~st.mask].abs().sum()) == 0.0  # padding stays zero
        rr = FastReranker(model, idx)
        for q, r in zip(QUERIES, ref_scores):
            assert spearmanr(r, rr.score(q, ids))[0] >= 0.8, (kind, q)
        info = idx.info()
        assert info["bytes_per_token"] == idx.codec.code_bytes and info["codec_bytes"] == len(idx.codec.to_bytes())
    assert errors["pq-anchored"] < 0.5 * errors["pq"], errors


def test_codec_checked_and_kv_refused(model, indexes, tmp_path):
    import shutil

    with pytest.raises(IndexError_, match="--kv"):
        IndexConfig(dtype="pq", kv=True)
    plain = IndexConfig(dtype="pq").codec_settings()  # the codec's settings are part of the build identity
    assert IndexConfig(dtype="pq", anchors=True).codec_settings() != plain
    assert IndexConfig(dtype="pq", pq_refine=8).codec_settings() != plain
    copy = tmp_path / "pq"
    shutil.copytree(indexes["pq"].path, copy)
    data = bytearray((copy / "codec.bin").read_bytes())
    data[100] ^= 0xFF
    (copy / "codec.bin").write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="codec"):
        DocIndex.open(copy)


@pytest.mark.parametrize("anchors", [False, True])
def test_interrupted_compressed_build_resumes_to_the_same_bytes(model, tmp_path, anchors):
    corpus = dict(list(CORPUS.items())[:40])
    config = IndexConfig(dtype="pq", pq_m=8, anchors=anchors, shard_size=10, batch_size=4, train_tokens=512)
    out, calls = tmp_path / "idx", []

    def encode_then_fail(ids):
        calls.append(ids)
        if len(calls) == 5:  # the codec's sample was drawn; killed in the middle of a shard
            raise KeyboardInterrupt
        texts = [corpus[d] for d in ids]
        for i, s, tok in model.iter_document_states(texts, batch_size=config.batch_size, with_token_ids=True):
            yield ids[i], s, tok  # as build_index encodes (states depend on the batch's padding in the last bits)

    with pytest.raises(KeyboardInterrupt):
        build_index_with(model, list(corpus), encode_then_fail, out, config, content=content_hash(corpus.items()))
    assert (out / "codec.json").exists() and not (out / "manifest.json").exists()
    codec_mtime = (out / "codec.bin").stat().st_mtime_ns
    resumed = build_index(model, corpus, out, config)
    assert (out / "codec.bin").stat().st_mtime_ns == codec_mtime  # the codec was kept, not trained again
    fresh = build_index(model, corpus, tmp_path / "fresh", config)
    for name in sorted(p.name for p in fresh.path.glob("*.bin")):
        assert (out / name).read_bytes() == (fresh.path / name).read_bytes(), name
    assert resumed.manifest["codec"] == fresh.manifest["codec"]


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "MICE_CACHE": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def test_two_processes_build_the_bytes_one_process_builds(model, tmp_path):
    from mice.data import InMemoryDataset, write_beir

    mice_dir = model.save_pretrained(tmp_path / "mice")
    beir = write_beir(
        InMemoryDataset("w", dict(list(CORPUS.items())[:48]), {"test": {"q0": "x"}}, {"test": [("q0", "doc1", 1)]}),
        tmp_path / "beir",
    )
    common = [
        "index",
        "build",
        "--model",
        mice_dir,
        "--dataset",
        beir,
        "--shard-size",
        8,
        "--storage",
        "pq",
        "--pq-m",
        8,
        "--anchors",
        "--train-tokens",
        600,
    ]
    for out, launcher in ((tmp_path / "one", []), (tmp_path / "two", ["--nproc", "2"])):
        res = subprocess.run(
            [sys.executable, "-m", "mice", *launcher, *map(str, common), "--out", str(out)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "build.log.rank1").exists()  # rank 1 wrote shards of its own
    files = sorted(p.name for p in one.glob("*.bin"))
    assert "codec.bin" in files and len(files) == 7 and files == sorted(p.name for p in two.glob("*.bin"))
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert {k for k in m1 if m1[k] != m2[k]} <= {"created", "checksum"}


@pytest.mark.parametrize(
    "options,kind,bytes_per_token",
    [
        (["--storage", "residual", "--bits", "1", "--centroids", "16"], "residual", 2 + 32 // 8),
        (["--storage", "pq", "--pq-m", "4", "--anchors", "--pq-refine", "2"], "pq", 2 + 4 + 2),
    ],
)
def test_cli_build_and_info_print_bytes_per_token(model, tmp_path, options, kind, bytes_per_token):
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import InMemoryDataset, write_beir

    mice_dir = model.save_pretrained(tmp_path / "mice")
    beir = write_beir(
        InMemoryDataset("w", dict(list(CORPUS.items())[:20]), {"test": {"q0": "x"}}, {"test": [("q0", "doc1", 1)]}),
        tmp_path / "beir",
    )
    res = CliRunner().invoke(
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
            *options,
            "--train-tokens",
            "300",
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["index", "info", str(tmp_path / "idx")])
    assert res.exit_code == 0 and "bytes per token" in res.output and kind in res.output
    assert DocIndex.open(tmp_path / "idx").bytes_per_token() == bytes_per_token


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--storage", "pq", "--pq-m", "5"], "--pq-m"),
        (["--storage", "pq", "--kv"], "--kv"),
        (["--storage", "residual", "--bits", "3"], "bits"),
        (["--storage", "residual", "--anchors"], "anchors"),
        (["--storage", "pq", "--pq-m", "8", "--pq-refine", "5"], "--pq-refine"),
        (["--storage", "zip"], "zip"),
    ],
)
def test_bad_codec_options_are_one_line(model, tmp_path, argv, fragment):
    from mice.data import InMemoryDataset, write_beir
    from test_fuzz_inputs import run_main

    mice_dir = model.save_pretrained(tmp_path / "mice")
    beir = write_beir(
        InMemoryDataset("w", dict(list(CORPUS.items())[:6]), {"test": {"q0": "x"}}, {"test": [("q0", "doc1", 1)]}),
        tmp_path / "beir",
    )
    code, err = run_main(
        [
            "index",
            "build",
            "--model",
            str(mice_dir),
            "--dataset",
            str(beir),
            "--out",
            str(tmp_path / "o"),
            "--train-tokens",
            "300",
            *argv,
        ]
    )
    assert_one_error(code, err, fragment, where=" ".join(argv))


# ----------------------------------------------------------------------------------- larger than the process
_CHILD = textwrap.dedent("""
    import resource, sys, json
    import numpy as np, torch
    torch.set_num_threads(1)
    from mice.index.fast_rerank import FastMICE, FastReranker
    from mice.index.store import DocIndex
    from mice.models.mice_model import DocStates, MICEModel

    def _states_of(doc_id, hidden, length=512):  # as the test's
        g = torch.Generator().manual_seed(int(doc_id[1:]))
        return torch.randn(length, hidden, generator=g)

    model = MICEModel.from_pretrained(sys.argv[1])
    vm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")][0]) * 1024
    if sys.argv[3] == "baseline":
        print(vm); sys.exit(0)
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    budget = None if sys.argv[4] == "unbounded" else 32 << 20
    try:
        index = DocIndex.open(sys.argv[2], model=model, verify=False, max_mapped_bytes=budget or (1 << 40))
        rr = FastReranker(model, index, batch_size=16)
        fast = FastMICE(model)
        n = len(index)
        worst = 0.0
        for q in range(3):  # candidates spread over every shard
            ids = [f"d{(q * 7919 + j * (n // 40)) % n}" for j in range(40)]
            got = rr.score(f"query {q} sort the array", ids)
            states = [_states_of(d, index.hidden_size).to(torch.float16).float() for d in ids]
            want = fast.score_states(fast.prepare(f"query {q} sort the array"), DocStates.from_list(states)).numpy()
            worst = max(worst, float(np.abs(got - want).max()))
    except (MemoryError, OSError) as err:
        print(json.dumps({"error": type(err).__name__})); sys.exit(0)
    print(json.dumps({"worst": worst, "index_bytes": int(sum(index.manifest["bytes"].values())), "limit": limit}))
""")


def _states_of(doc_id: str, hidden: int, length: int = 512) -> torch.Tensor:
    """The states of synthetic document `doc_id` (seeded by its number; the child process has a copy)."""
    g = torch.Generator().manual_seed(int(doc_id[1:]))
    return torch.randn(length, hidden, generator=g)


def test_an_index_twice_the_address_space_limit_reranks_correctly(model, tmp_path):
    """The child process may map baseline + 384 MiB of address space (RLIMIT_AS, what `ulimit -v` sets); the index
    is 2× that whole limit. Re-ranked from it with bounded shard mapping, scores equal those from the states
    themselves; mapping every shard at once fails under the same limit (the limit bites)."""
    mice_dir = model.save_pretrained(tmp_path / "mice")
    child = tmp_path / "child.py"
    child.write_text(_CHILD)

    def run(*args):
        res = subprocess.run(
            [sys.executable, str(child), str(mice_dir), str(tmp_path / "big"), *map(str, args)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout.strip().splitlines()[-1]

    limit = int(run("baseline", "-")) + (384 << 20)
    per_doc = 512 * model.hidden_size * 2  # float16
    n_docs = -(-2 * limit // per_doc)
    ids = [f"d{i}" for i in range(n_docs)]

    def encode(batch):
        for d in batch:
            yield d, _states_of(d, model.hidden_size)

    index = build_index_with(model, ids, encode, tmp_path / "big", IndexConfig(dtype="float16", shard_size=512))
    assert sum(index.manifest["bytes"].values()) >= 2 * limit
    del index
    bounded = json.loads(run(limit, "bounded"))
    assert "error" not in bounded, bounded
    assert bounded["worst"] <= 1e-4 and bounded["index_bytes"] >= 2 * bounded["limit"]
    assert "error" in json.loads(run(limit, "unbounded"))
