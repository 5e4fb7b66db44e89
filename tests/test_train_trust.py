"""Trustworthy training runs: checkpoints load without pickle, a resume under another identity is
refused naming what differs, the output folder is locked. Kills are real SIGKILLs of `mice train` subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mice.errors import IdentityError, LockError
from mice.models.testing import tiny_cross_encoder
from mice.train import Trainer, preset
from mice.train.loop import STATE_FILE, TrainStateError
from test_train import train_env, write_beir

from cli_checks import assert_one_error

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from train_env(tmp_path_factory, "trust", student=dict(num_layers=2, seed=0))


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _train_args(env, out, *extra):
    return [
        sys.executable,
        "-m",
        "mice",
        "train",
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        str(out),
        "--set",
        "num_threads=1",
        "--quiet",
        *map(str, extra),
    ]


def _cli(args, timeout=240):
    return subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=timeout)


def _assert_one_line_error(res, *fragments):
    return assert_one_error(res.returncode, res.stderr, *fragments)


def _step(out: Path) -> int:
    return int(torch.load(out / "last" / STATE_FILE, weights_only=True)["step"])


def _cfg(env, out, **kw):
    return preset("tiny", "cross-encoder", model=env["student"], dataset=env["data"], output=str(out), **kw)


# ------------------------------------------------------------------------------- kill -9, then resume
def test_sigkilled_run_resumes_only_under_the_same_identity(env, tmp_path):
    student = Path(env["student"])
    own = tiny_cross_encoder(tmp_path / "start", num_layers=2, seed=0)  # a copy we may edit in place
    env = {**env, "student": str(own)}
    out = tmp_path / "run"
    # the constant schedule does not read max_steps, so the resume below may stop earlier (the linear one would
    # be refused: its decay ends at max_steps)
    args = _train_args(
        env,
        out,
        "--max-steps",
        5000,
        "--set",
        "save_every=1",
        "--set",
        "eval_every=5000",
        "--set",
        "lr_schedule=constant",
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 180
    while not (out / "last" / STATE_FILE).exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lock = Path(str(out) + ".lock")
    assert json.loads(lock.read_text())["pid"] == proc.pid  # left behind by the killed run
    step = _step(out)
    assert step >= 1
    assert (out / "train.log").read_text().count("\n") >= 1  # progress reached the log file (not a TTY)

    # another setting: refused, naming it; nothing of the checkpoint is touched
    res = _cli(_train_args(env, out, "--resume", "--max-steps", step + 2, "--set", "lr=5e-4"))
    _assert_one_line_error(res, "config.lr", "--overwrite")
    assert _step(out) == step

    # the start model's weights changed in place (same folder, same name): refused
    weights = load_file(str(own / "model.safetensors"))
    original = {k: v.clone() for k, v in weights.items()}
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3
    save_file(weights, str(own / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IdentityError, match="start_model"):  # (in-process: the same code path, no CLI start-up)
        Trainer(
            _cfg(env, out, resume=True, max_steps=step + 2, num_threads=1, lr_schedule="constant"), quiet=True
        ).train()
    save_file(original, str(own / "model.safetensors"), metadata={"format": "pt"})

    # other training data (one judgement changed): refused
    data2 = tmp_path / "data2"
    write_beir(data2)
    qrels = (data2 / "qrels" / "train.tsv").read_text().replace("q0\td0\t1", "q0\td1\t1")
    (data2 / "qrels" / "train.tsv").write_text(qrels)
    with pytest.raises(IdentityError, match=r"differs: data \("):
        Trainer(
            _cfg(
                {**env, "data": str(data2)}, out, resume=True, max_steps=step + 2, num_threads=1, lr_schedule="constant"
            ),
            quiet=True,
        ).train()
    assert _step(out) == step

    # the same job resumes (the dead run's stale lock is taken over) and finishes
    res = _cli(_train_args(env, out, "--resume", "--max-steps", step + 2, "--set", "lr_schedule=constant"))
    assert res.returncode == 0, res.stderr
    assert _step(out) == step + 2 and not lock.exists()
    # --overwrite starts afresh under the new settings
    res = _cli(_train_args(env, out, "--overwrite", "--max-steps", 2, "--set", "lr=5e-4"))
    assert res.returncode == 0, res.stderr
    assert _step(out) == 2
    assert torch.load(out / "last" / STATE_FILE, weights_only=True)["identity"]["config.lr"] == 5e-4
    assert student.exists()


# ------------------------------------------------------------------------------------------ security
class _Payload:
    """Unpickling this calls `open(marker, "w")`: the file exists iff the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def checkpoint(env, tmp_path):
    out = tmp_path / "ckpt"
    Trainer(_cfg(env, out, max_steps=1, save_every=1), quiet=True).train()
    assert (out / "last" / STATE_FILE).exists()
    return out


def test_crafted_pickle_in_the_state_file_is_refused_and_never_run(env, checkpoint, tmp_path):
    marker = tmp_path / "PWNED"
    state = torch.load(checkpoint / "last" / STATE_FILE, weights_only=True)
    state["step"] = _Payload(marker)  # a real-looking state with one poisoned value
    torch.save(state, checkpoint / "last" / STATE_FILE)
    res = _cli(_train_args(env, checkpoint, "--resume", "--max-steps", 3))
    _assert_one_line_error(res, STATE_FILE, "refused", "--overwrite")
    assert not marker.exists()
    with pytest.raises(TrainStateError):  # the Python API refuses it the same way
        Trainer(_cfg(env, checkpoint, max_steps=3, resume=True), quiet=True).train()
    assert not marker.exists()


def test_crafted_pickle_in_the_rng_file_is_refused_and_never_run(env, checkpoint, tmp_path):
    marker = tmp_path / "PWNED-rng"
    torch.save({"python": _Payload(marker)}, checkpoint / "last" / "rng_state_0.pt")
    with pytest.raises(TrainStateError, match="rng_state_0.pt.*refused"):  # (the same max_steps: the linear
        Trainer(_cfg(env, checkpoint, max_steps=1, resume=True), quiet=True).train()  # schedule reads it)
    assert not marker.exists()


def test_old_pickled_state_format_is_refused(env, checkpoint):
    # what mice-train-state/1 held: numpy RNG arrays next to the tensors, loadable only through pickle
    torch.save(
        {"format": "mice-train-state/1", "step": 1, "rng": np.random.get_state()}, checkpoint / "last" / STATE_FILE
    )
    with pytest.raises(TrainStateError, match="refused"):
        Trainer(_cfg(env, checkpoint, max_steps=3, resume=True), quiet=True).train()
    torch.save({"format": "mice-train-state/1", "step": 1}, checkpoint / "last" / STATE_FILE)  # plain but old
    with pytest.raises(TrainStateError, match="unknown checkpoint format 'mice-train-state/1'"):
        Trainer(_cfg(env, checkpoint, max_steps=3, resume=True), quiet=True).train()


def test_rng_state_round_trips_without_pickle(env, checkpoint):
    from mice.train.loop import _rng_state, _set_rng_state

    import random

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = checkpoint / "rng.pt"
    torch.save(_rng_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_live_writer_locks_the_output(env, tmp_path):
    out = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        Path(str(out) + ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            Trainer(_cfg(env, out, max_steps=1), quiet=True).train()
        assert not out.exists() or not (out / "last").exists()
    finally:
        holder.kill()
        holder.wait()
    Trainer(_cfg(env, out, max_steps=1), quiet=True).train()  # dead holder: the stale lock is taken over
    assert (out / "last" / STATE_FILE).exists() and not Path(str(out) + ".lock").exists()


def test_resume_refused_in_process_names_the_setting(env, checkpoint):
    with pytest.raises(IdentityError, match=r"config\.negatives \(2 -> 1\)"):
        Trainer(_cfg(env, checkpoint, max_steps=3, resume=True, negatives=1), quiet=True).train()
