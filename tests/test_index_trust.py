"""Trustworthy index builds: a `mice index build` killed with SIGKILL resumes, verifying the sha256 of
every shard it keeps; its temporary files are removed; another identity is refused naming what differs;
`--overwrite` always recovers; the folder is locked while a build writes it."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mice.data import InMemoryDataset, write_beir
from mice.errors import IndexError_, LockError
from mice.index.store import DocIndex, IndexConfig, build_index
from mice.models.mice_model import MICEModel
from mice.models.testing import _WORDS, tiny_cross_encoder

from cli_checks import assert_one_error

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _corpus(n, seed=0):
    rng = random.Random(seed)
    return {f"doc{i}": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 60))) for i in range(n)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("idxtrust")
    ce = tiny_cross_encoder(root / "ce", num_layers=3, seed=4)
    model = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=2)
    folder = model.save_pretrained(root / "mice")
    corpus = _corpus(600)
    beir = write_beir(
        InMemoryDataset("big", corpus, {"test": {"q0": "alpha"}}, {"test": [("q0", "doc1", 1)]}), root / "beir"
    )
    return {"root": root, "model": model, "folder": str(folder), "beir": str(beir), "corpus": corpus}


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _build_args(env, out, *extra, dataset=None):
    return [
        sys.executable,
        "-m",
        "mice",
        "index",
        "build",
        "--model",
        env["folder"],
        "--dataset",
        dataset or env["beir"],
        "--out",
        str(out),
        "--storage-dtype",
        "float32",
        "--shard-size",
        "50",
        "--batch-size",
        "16",
        *map(str, extra),
    ]


def _cli(args):
    return subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)


def _one_error(res, *fragments):
    return assert_one_error(res.returncode, res.stderr, *fragments)


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _states(index: DocIndex, ids):
    return index.states(index.positions(ids)).hidden


def test_sigkilled_build_resumes_verifies_kept_shards_and_cleans_temporaries(env, tmp_path):
    out = tmp_path / "idx"
    proc = subprocess.Popen(_build_args(env, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 180
    while not (out / "shard-00002.json").exists():
        assert proc.poll() is None, "the build finished before it could be killed: " + proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() and Path(str(out) + ".lock").exists()
    kept = sorted(out.glob("shard-*.json"))
    assert len(kept) >= 3
    # whatever the kill left mid-shard, plus a temporary of the kind a kill inside a shard write leaves
    (out / f".shard-{len(kept):05d}.states.bin.{proc.pid}.tmp").write_bytes(b"\0" * 4096)
    # a kept shard damaged after the kill (same size, one byte flipped): must be rebuilt, not kept
    record = json.loads((out / "shard-00001.json").read_text())
    _flip(out / "shard-00001.states.bin")

    _one_error(
        _cli(_build_args(env, out, "--shard-size", 25)), "other settings", "shard_size (50 -> 25)", "--overwrite"
    )
    res = _cli(_build_args(env, out))
    assert res.returncode == 0, res.stderr
    assert not list(out.glob(".*.tmp")) and not Path(str(out) + ".lock").exists()
    log = (out / "build.log").read_text()
    assert "shard-00001.states.bin is damaged" in log and "removing .shard-" in log
    assert "shard 1/12 kept (checksums verified)" in log
    index = DocIndex.open(out, model=env["model"], verify=True)  # every sha256 checks out
    rebuilt = json.loads((out / "shard-00001.json").read_text())
    assert rebuilt["files"]["states"]["sha256"] == record["files"]["states"]["sha256"]
    fresh = build_index(
        env["model"], env["corpus"], tmp_path / "fresh", IndexConfig(dtype="float32", shard_size=50, batch_size=16)
    )
    ids = list(env["corpus"])
    assert torch.equal(_states(index, ids), _states(fresh, ids))


def test_overwrite_always_recovers(env, tmp_path):
    corpus = dict(list(env["corpus"].items())[:30])
    beir = write_beir(
        InMemoryDataset("small", corpus, {"test": {"q0": "alpha"}}, {"test": [("q0", "doc1", 1)]}), tmp_path / "beir"
    )
    out = tmp_path / "idx"
    config = IndexConfig(dtype="float32", shard_size=10, batch_size=16)
    build_index(env["model"], corpus, out, config)
    _flip(out / "shard-00002.states.bin")
    with pytest.raises(IndexError_, match="checksum"):
        DocIndex.open(out)
    (out / "build.json").write_text("{not json")  # and the build record is torn too
    _one_error(_cli(_build_args(env, out, dataset=str(beir))), "build.json", "--overwrite")
    (out / "manifest.json").write_text("garbage")
    res = _cli(_build_args(env, out, "--overwrite", "--shard-size", 10, dataset=str(beir)))
    assert res.returncode == 0, res.stderr
    fixed = DocIndex.open(out, model=env["model"], verify=True)
    assert len(fixed) == 30
    # a half-written build under other settings is replaced as well
    (out / "manifest.json").unlink()
    (out / "shard-00001.json").unlink()
    built = build_index(env["model"], corpus, out, IndexConfig(dtype="int8", shard_size=7), overwrite=True)
    assert built.dtype == "int8" and len(DocIndex.open(out, verify=True)) == 30


def test_a_finished_index_with_a_damaged_shard_is_repaired_by_a_rerun(env, tmp_path):
    corpus = dict(list(env["corpus"].items())[:30])
    out = tmp_path / "idx"
    config = IndexConfig(dtype="float16", shard_size=10, batch_size=16)
    first = build_index(env["model"], corpus, out, config)
    reference = _states(first, list(corpus)).clone()
    _flip(out / "shard-00000.states.bin")
    repaired = build_index(env["model"], corpus, out, config)
    assert torch.equal(_states(repaired, list(corpus)), reference)
    DocIndex.open(out, verify=True)


def test_changed_texts_or_model_refuse_the_resume(env, tmp_path):
    corpus = dict(list(env["corpus"].items())[:20])
    out = tmp_path / "idx"
    config = IndexConfig(dtype="float32", shard_size=10)
    build_index(env["model"], corpus, out, config)
    (out / "manifest.json").unlink()  # as if interrupted before the end
    edited = {**corpus, "doc3": corpus["doc3"] + " changed"}  # same ids, one text differs
    with pytest.raises(IndexError_, match=r"differs: content"):
        build_index(env["model"], edited, out, config)
    other = MICEModel.from_cross_encoder(
        tiny_cross_encoder(tmp_path / "other", num_layers=3, seed=9), contextual_layers=1, interaction_layers=2
    )
    with pytest.raises(IndexError_, match=r"differs: doc_states"):
        build_index(other, corpus, out, config)
    assert len(build_index(env["model"], corpus, out, config)) == 20  # the same job still resumes


def test_a_live_builder_locks_the_folder(env, tmp_path):
    corpus = dict(list(env["corpus"].items())[:10])
    out = tmp_path / "idx"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(str(out) + ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            build_index(env["model"], corpus, out, IndexConfig(shard_size=5))
        assert not out.exists() or not list(out.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait()
    assert len(build_index(env["model"], corpus, out, IndexConfig(shard_size=5))) == 10


def test_a_torn_shard_record_is_a_clear_error_and_is_repaired(env, tmp_path):
    corpus = dict(list(env["corpus"].items())[:20])
    out = tmp_path / "idx"
    config = IndexConfig(dtype="float32", shard_size=10)
    build_index(env["model"], corpus, out, config)
    (out / "shard-00001.json").write_text('{"name": "shard-00001", "doc')  # torn
    with pytest.raises(IndexError_, match="corrupted shard record"):
        DocIndex.open(out)
    assert len(build_index(env["model"], corpus, out, config)) == 20  # the rerun rebuilds that shard
    DocIndex.open(out, verify=True)
