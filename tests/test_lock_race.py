"""The output lock under real contention: N processes call `output_lock` on the same output at the same moment,
100 times over, with the lock file absent, empty (a holder killed between create and write), holding a dead
process's record, or holding garbage. Exactly one process holds it every time; the others get `LockError`."""

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys

import pytest

from mice.errors import LockError
from mice.identity import output_lock

TRIALS = 100


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_content(trial: int, dead: int) -> "str | None":
    """What the lock file holds before trial `trial`: nothing, empty, a dead holder's record, garbage."""
    return [
        None,
        "",
        json.dumps({"pid": dead, "host": socket.gethostname()}),
        "5",
        "[1]",
        json.dumps({"pid": 10**20, "host": socket.gethostname()}),
        json.dumps({"pid": 0}),
        json.dumps({"pid": -1, "host": socket.gethostname()}),
    ][trial % 8]


def _contender(root: str, n_trials: int, start, done, results) -> None:
    outcome = []
    for t in range(n_trials):
        start.wait()  # everyone calls the lock at the same moment
        try:
            with output_lock(os.path.join(root, f"out{t}")):
                outcome.append("held")
                done.wait()  # hold it until every contender has tried
        except LockError:
            outcome.append("refused")
            done.wait()
        except Exception as err:  # anything else is a failure of the lock
            outcome.append(f"{type(err).__name__}: {err}")
            done.wait()
    results.put((os.getpid(), outcome))


@pytest.mark.parametrize("n", [2, 3, 6])
def test_exactly_one_holder_every_time(tmp_path, n):
    ctx = mp.get_context("fork")
    dead = _dead_pid()
    for t in range(TRIALS):
        content = _stale_content(t, dead)
        if content is not None:
            (tmp_path / f"out{t}.lock").write_text(content)
    start, done, results = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(tmp_path), TRIALS, start, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120)[1] for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for t in range(TRIALS):
        got = [o[t] for o in outcomes]
        assert got.count("held") == 1 and got.count("refused") == n - 1, (t, _stale_content(t, dead), got)
    assert not list(tmp_path.glob("*.lock"))  # every holder removed its lock


def test_a_lock_of_another_host_is_reported_with_that_host(tmp_path):
    out = tmp_path / "run.trec"
    lock = tmp_path / "run.trec.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere.example"}))
    with pytest.raises(LockError) as err:
        with output_lock(out):
            pass
    msg = str(err.value)
    assert "elsewhere.example" in msg and "pid 4242" in msg and f"delete {lock}" in msg and "--overwrite" in msg
    assert lock.exists()  # never taken over


def test_a_live_kernel_holder_is_named(tmp_path):
    out = tmp_path / "run.trec"
    held_r, held_w = os.pipe()
    stop_r, stop_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child holds the lock until told to stop
        try:
            with output_lock(out):
                os.write(held_w, b"1")
                os.read(stop_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(held_r, 1) == b"1"
        with pytest.raises(LockError, match=f"locked by pid {child} on {socket.gethostname()}"):
            with output_lock(out):
                pass
    finally:
        os.write(stop_w, b"x")
        os.waitpid(child, 0)
    with output_lock(out) as lock:  # released by its holder: free again
        assert json.loads(lock.read_text())["pid"] == os.getpid()
