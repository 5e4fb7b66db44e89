"""Scale-out: `mice --nproc 2 …` starts two real processes (torch.distributed's elastic launcher, gloo on
CPU) that split the work, and they write what one process writes: the same index arrays and manifest ids, a
byte-identical run file, equal sweep / mask-ablation / attribution tables. A rank SIGKILLed mid-way is relaunched
and the job resumes to the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cli_checks import assert_one_error
from word_collection import write_word_collection

REPO = Path(__file__).resolve().parents[1]
N_QUERIES, N_DOCS, K = 60, 48, 12


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A small BEIR folder, a first-stage run and a tiny 3-layer cross-encoder."""
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("dist")
    folder, run = write_word_collection(root, N_QUERIES, N_DOCS, K)
    model = tiny_cross_encoder(root / "ce", family="bert", num_layers=3)
    return {"root": root, "data": folder, "run": run, "model": model}


def _env(root: Path) -> dict:
    # one thread per process in both set-ups, so that the only difference is the number of processes
    return {
        **os.environ,
        "MICE_CACHE": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def _mice(job, *args, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = ["--nproc", str(nproc)] if nproc > 1 else []
    res = subprocess.run(
        [sys.executable, "-m", "mice", *launcher, *map(str, args)],
        env=_env(job["root"]),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=job["root"],
    )
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _data_args(job, *extra):
    return ["--model", job["model"], "--dataset", job["data"], "--run", job["run"], "--k", K, *extra]


def test_rerank_two_processes_write_the_same_bytes(job):
    one, two = job["root"] / "rr1.trec", job["root"] / "rr2.trec"
    _mice(job, "rerank", *_data_args(job, "--out", one, "--batch-size", 4))
    res = _mice(job, "rerank", *_data_args(job, "--out", two, "--batch-size", 4), nproc=2)
    assert two.read_bytes() == one.read_bytes()
    assert res.stdout.count("wrote") == 1  # one report per job, not one per process
    assert not list(job["root"].glob("rr2.trec.partial*")) and not list(job["root"].glob("rr2.trec*.lock"))


def test_index_build_and_index_rerank_two_processes_write_the_same_outputs(job):
    from mice.models.mice_model import MICEModel

    mice_dir = MICEModel.from_cross_encoder(
        str(job["model"]), contextual_layers=1, interaction_layers=2
    ).save_pretrained(job["root"] / "mice")
    one, two = job["root"] / "idx1", job["root"] / "idx2"
    common = ["index", "build", "--model", mice_dir, "--dataset", job["data"], "--shard-size", 8]
    _mice(job, *common, "--out", one)
    _mice(job, *common, "--out", two, nproc=2)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert {k for k in m1 if m1[k] != m2[k]} <= {"created", "checksum"}  # the build time differs, nothing else
    assert m1["shards"] == m2["shards"] and m1["ids_hash"] == m2["ids_hash"] and len(m1["shards"]) == 6
    arrays = sorted(p.name for p in one.glob("shard-*"))
    assert arrays == sorted(p.name for p in two.glob("shard-*")) and any(a.endswith(".bin") for a in arrays)
    for name in arrays:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert (two / "build.log.rank1").exists()  # rank 1 wrote shards of its own
    runs = [job["root"] / f"idx-rr{n}.trec" for n in (1, 2)]
    for n, out in zip((1, 2), runs):  # MICE from the index, 1 and 2 processes
        _mice(
            job,
            "rerank",
            "--model",
            mice_dir,
            "--dataset",
            job["data"],
            "--run",
            job["run"],
            "--k",
            K,
            "--index",
            one,
            "--out",
            out,
            nproc=n,
        )
    assert runs[0].read_bytes() == runs[1].read_bytes() and len(runs[0].read_text().splitlines()) == N_QUERIES * K


@pytest.mark.parametrize("command", ["sweep", "presets", "attribute"])
def test_ablation_tables_two_processes_equal_one(job, command):
    extra = ["--split", "test", "--max-queries", 24]
    one, two = job["root"] / f"{command}1.parquet", job["root"] / f"{command}2.parquet"
    _mice(job, "ablate", command, *_data_args(job, *extra, "--out", one))
    _mice(job, "ablate", command, *_data_args(job, *extra, "--out", two), nproc=2)
    for suffix in ("", ".per_query"):
        a = pd.read_parquet(one.with_name(one.stem + suffix + ".parquet"))
        b = pd.read_parquet(two.with_name(two.stem + suffix + ".parquet"))
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b, check_exact=True)  # same rows, same order, same floats
    meta = json.loads(two.with_name(two.stem + ".meta.json").read_text())
    assert meta["processes"] == 2
    assert not list(job["root"].glob(f"{command}2.parquet.partial*"))


def test_a_killed_rank_is_relaunched_and_the_job_resumes_to_the_same_bytes(job):
    ref, out = job["root"] / "kill-ref.trec", job["root"] / "kill.trec"
    slow = ["--batch-size", 1]  # one pair per forward: slow enough to be caught half-way
    _mice(job, "rerank", *_data_args(job, "--out", ref, *slow))
    cmd = [sys.executable, "-m", "mice", "--nproc", "2", "rerank", *map(str, _data_args(job, "--out", out, *slow))]
    proc = subprocess.Popen(
        cmd, env=_env(job["root"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=job["root"]
    )
    journal, lock = Path(f"{out}.partial.rank1"), Path(f"{out}.rank1.lock")
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # rank 1 has finished some queries, not all
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 2 and lock.exists():
                break
            assert proc.poll() is None, "the job finished before a rank could be killed; make it longer"
            time.sleep(0.02)
        os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)  # rank 1's own process
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # the launcher stops the job when a rank dies
    kept = sum(len(p.read_bytes().splitlines()) - 1 for p in out.parent.glob("kill.trec.partial*"))
    assert 1 <= kept < N_QUERIES and not out.exists()
    _mice(job, "rerank", *_data_args(job, "--out", out, *slow), nproc=2)  # relaunch: resumes
    assert out.read_bytes() == ref.read_bytes()
    assert not list(out.parent.glob("kill.trec.partial*"))


def test_a_resume_with_another_number_of_processes_reuses_the_journals(job):
    """A journal written under another N is read, not redone: a finished query of a one-process journal, planted
    as rank 1's journal with its scores marked (+1000), comes out of a two-process resume as journalled, and
    every other query as one process scores it."""
    import hashlib

    from mice.identity import identity_hash
    from mice.rank.runs import read_run

    ref, out = job["root"] / "n-ref.trec", job["root"] / "n.trec"
    args = _data_args(job, "--out", out, "--batch-size", 1)
    _mice(job, "rerank", *_data_args(job, "--out", ref, "--batch-size", 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mice", "rerank", *map(str, args)],
        env=_env(job["root"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=job["root"],
    )
    journal = Path(f"{out}.partial")
    try:
        while not (journal.exists() and len(journal.read_bytes().splitlines()) >= 2):
            assert proc.poll() is None, "the job finished before it could be killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    header, first = journal.read_text().splitlines()[:2]
    record = json.loads(first)
    record["scores"] = [v + 1000.0 for v in record["scores"]]
    # a journal's records carry a checksum salted by the job (an edited record is refused): plant a valid one
    salt = identity_hash(json.loads(header)["job"])
    body = json.dumps([salt, record["query_id"], record["doc_ids"], record["scores"]], sort_keys=True, allow_nan=True)
    record["sum"] = hashlib.sha256(body.encode()).hexdigest()[:32]
    journal.unlink()
    Path(f"{out}.partial.rank1").write_text(header + "\n" + json.dumps(record) + "\n")
    _mice(job, "rerank", *args, nproc=2)
    got, want = read_run(out), read_run(ref)
    planted = got.query_id == record["query_id"]
    assert planted.sum() == K and (got[planted].score > 900).all()  # read from the journal, not recomputed
    pd.testing.assert_frame_equal(
        got[~planted].reset_index(drop=True), want[want.query_id != record["query_id"]].reset_index(drop=True)
    )
    assert not list(out.parent.glob("n.trec.partial*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nproc", "0", "rerank"], "--nproc"),
        (["--nproc", "two", "rerank"], "launcher option"),
        (["--nproc", "2"], "needs a command"),
        (["--nproc", "2", "--nnodes", "2", "rerank"], "--rdzv-endpoint"),
    ],
)
def test_launcher_usage_errors_are_one_line(argv, message, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mice", *argv], env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert_one_error(res.returncode, res.stderr, message, where=" ".join(argv))
