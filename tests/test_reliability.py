"""Trustworthy runs: resumes keyed by content, clear one-line errors, a lock per output.

Every kill here is a real SIGKILL of a `mice` subprocess, taken while its `.partial` sidecar holds some but not all
queries."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mice.errors import LockError, MaskError, ModelError
from mice.masks import InteractionMask
from mice.rank.runs import read_run
from word_collection import write_word_collection

N_QUERIES, N_DOCS = 120, 12


def _env(tmp_path):
    return {
        **os.environ,
        "MICE_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A BEIR folder with enough queries that a re-ranking takes seconds, a first-stage run, a tiny model."""
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("reliab")
    folder, run_path = write_word_collection(root, N_QUERIES, N_DOCS * 4, N_DOCS)
    model = tiny_cross_encoder(root / "ce", family="bert", num_layers=2)
    return folder, run_path, model


def _rerank_cmd(big, out, *extra):
    folder, run_path, model = big
    return [
        sys.executable,
        "-m",
        "mice",
        "rerank",
        "--model",
        str(model),
        "--dataset",
        str(folder),
        "--run",
        str(run_path),
        "--out",
        str(out),
        "--k",
        str(N_DOCS),
        "--batch-size",
        "1",
        *extra,
    ]


def _kill_midway(cmd, partial: Path, env) -> None:
    """Start `cmd`, SIGKILL it once its sidecar holds at least one finished query (and before it finishes)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if partial.exists() and len(partial.read_bytes().splitlines()) >= 2:
                break
            assert proc.poll() is None, "the job finished before it could be killed; make it longer"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    records = len(partial.read_bytes().splitlines()) - 1
    assert 1 <= records < N_QUERIES


def _run(cmd, env):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_resume_with_another_mask_is_refused(big, tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "x.trec"
    partial = out.with_name("x.trec.partial")
    _kill_midway(_rerank_cmd(big, out, "--mask", "mask2"), partial, env)
    res = _run(_rerank_cmd(big, out, "--mask", "mask3:k=1"), env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "mask" in err[0] and "--overwrite" in err[0]
    assert not out.exists() and partial.exists()  # nothing lost, nothing mixed
    # --overwrite starts afresh; the result equals a clean mask3:k=1 run
    assert _run(_rerank_cmd(big, out, "--mask", "mask3:k=1", "--overwrite"), env).returncode == 0
    clean = tmp_path / "clean.trec"
    assert _run(_rerank_cmd(big, clean, "--mask", "mask3:k=1"), env).returncode == 0
    assert out.read_bytes() == clean.read_bytes()


def test_same_job_resumes_to_the_same_bytes(big, tmp_path):
    env = _env(tmp_path)
    out, clean = tmp_path / "a.trec", tmp_path / "clean.trec"
    _kill_midway(_rerank_cmd(big, out, "--mask", "mask2"), out.with_name("a.trec.partial"), env)
    res = _run(_rerank_cmd(big, out, "--mask", "mask2"), env)
    assert res.returncode == 0 and "resuming" in res.stderr
    assert _run(_rerank_cmd(big, clean, "--mask", "mask2"), env).returncode == 0
    assert out.read_bytes() == clean.read_bytes()


def test_resume_after_weights_changed_in_place_is_refused(big, tmp_path):
    import shutil

    from mice.models.testing import tiny_cross_encoder

    env = _env(tmp_path)
    folder, run_path, model = big
    own = tmp_path / "model"
    shutil.copytree(model, own)
    out = tmp_path / "w.trec"
    cmd = [*_rerank_cmd(big, out)]
    cmd[cmd.index(str(model))] = str(own)
    _kill_midway(cmd, out.with_name("w.trec.partial"), env)
    other = tiny_cross_encoder(tmp_path / "other", family="bert", num_layers=2, seed=7)
    shutil.copy(other / "model.safetensors", own / "model.safetensors")  # same folder, new weights
    res = _run(cmd, env)
    assert res.returncode == 2 and "weights" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "option,value",
    [
        ("--batch-size", "-4"),
        ("--batch-size", "0"),
        ("--k", "0"),
        ("--k", "-3"),
        ("--max-length", "0"),
        ("--max-length", "1"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(big, tmp_path, option, value):
    from test_fuzz_inputs import check, run_main

    out = tmp_path / "n.trec"
    cmd = _rerank_cmd(big, out)[3:]  # the real entry point, in-process
    if option in cmd:
        cmd[cmd.index(option) + 1] = value
    else:
        cmd += [option, value]
    code, err = run_main(cmd)
    check(code, err, f"{option} {value}", must_mention=option)
    assert not out.exists() and not out.with_name("n.trec.partial").exists()


def test_api_refuses_bad_batch_sizes(tiny_bert):
    from mice.errors import MiceError
    from mice.models.loader import load

    model = load(tiny_bert)
    for bad in (0, -1, 2.5):
        with pytest.raises(MiceError, match="batch_size"):
            model.predict([("q", "d")], batch_size=bad)
    with pytest.raises(TypeError):
        model.predict([("q", "d")], convert_to_tensor=True)  # unknown keyword arguments are not swallowed


# ----------------------------------------------------------------------------------------------- model folders
def test_model_folder_problems_are_one_line_model_errors(tiny_bert, tmp_path):
    import shutil

    from mice.models.loader import load

    with pytest.raises(ModelError, match="no such model folder"):
        load(tmp_path / "nowhere" / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"empty/config.json: missing"):
        load(empty)
    noconf = tmp_path / "noconf"
    shutil.copytree(tiny_bert, noconf)
    (noconf / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json: missing"):
        load(noconf)
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_bert, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors"):
        load(trunc)
    flipped = tmp_path / "flipped"
    shutil.copytree(tiny_bert, flipped)
    raw = bytearray((flipped / "model.safetensors").read_bytes())
    raw[3] ^= 0xFF  # the header length
    (flipped / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="model.safetensors"):
        load(flipped)


def test_options_a_scorer_cannot_honour_are_refused(tiny_bert, tmp_path):
    from mice.models.mice_model import MICEModel
    from mice.models.loader import load
    from mice.models.testing import tiny_cross_encoder

    three = tiny_cross_encoder(tmp_path / "three", num_layers=3)  # b = 2: [CLS] sees the document through q
    mice_dir = MICEModel.from_cross_encoder(three, contextual_layers=1, interaction_layers=2).save_pretrained(
        tmp_path / "mice"
    )
    with pytest.raises(ModelError, match="--mask does not apply"):
        load(mice_dir, mask="mask2")
    with pytest.raises(ModelError, match="--index"):
        load(tiny_bert, index=tmp_path / "idx")
    with pytest.raises(ModelError, match="--max-query-length"):
        load(tiny_bert, max_query_length=8)
    with pytest.raises(ModelError, match="--mask"):
        load("biencoder:packaged", mask="mask2")
    # MICE honours --max-length (document length) instead of ignoring it
    long_doc = " ".join(["array values along the axis"] * 30)
    short, full = load(mice_dir, max_length=8), load(mice_dir, max_length=128)
    assert short.mice_config.max_doc_length == 8 and full.mice_config.max_doc_length == 128
    assert not np.allclose(short.predict([("sort", long_doc)]), full.predict([("sort", long_doc)]))


def test_scoring_defaults_to_the_trained_length(tiny_bert, tmp_path, caplog):
    from mice.models.hooked import HookedCrossEncoder
    from mice.models.loader import load

    model = HookedCrossEncoder.from_pretrained(tiny_bert, max_length=24)
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["mice_max_length"] == 24
    assert load(tmp_path / "saved").max_length == 24
    with caplog.at_level("WARNING", logger="mice"):
        assert load(tmp_path / "saved", max_length=48).max_length == 48
        load(tmp_path / "saved", max_length=48)
    assert sum("trained at" in r.message for r in caplog.records) == 1  # warned once
    with pytest.raises(ModelError, match="exceeds"):
        load(tmp_path / "saved", max_length=100_000)


# ----------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    "rule,match",
    [
        ({"block": 5}, "rule 0"),
        ({"block": None}, "rule 0"),
        ({"block": []}, "rule 0"),
        ({"allow": [3]}, "rule 0"),
        ({"block": ["q->d"], "layers": {"start": 2}}, "rule 0"),
        ({"block": ["q->d"], "layers": "some"}, "rule 0"),
    ],
)
def test_wrong_typed_mask_rules_are_mask_errors(rule, match):
    with pytest.raises(MaskError, match=match):
        InteractionMask(6, [rule])


def test_mask_specs_with_bad_parameters():
    for spec in ("mask3:k=x", "mask3(x)", "prettr:k=", "mask3:k=99"):
        with pytest.raises(MaskError):
            InteractionMask.parse(spec, 6)


def test_one_layer_convention():
    """A list is a list of layers; a range is explicit ({start, end} in JSON, range() in Python); /1 files keep
    their [start, end) meaning when loaded."""
    as_list = InteractionMask(6, [{"block": ["q->d"], "layers": [0, 3]}])
    as_range = InteractionMask(6, [{"block": ["q->d"], "layers": {"start": 0, "end": 3}}])
    py_range = InteractionMask.full(6).with_blocked("q->d", range(0, 3))
    assert [l for l in range(6) if not as_list.allowed(l, "q->d")] == [0, 3]
    assert [l for l in range(6) if not as_range.allowed(l, "q->d")] == [0, 1, 2]
    assert py_range == as_range
    v1 = InteractionMask.from_dict(
        {"format": "mice-mask/1", "num_layers": 6, "rules": [{"block": ["q->d"], "layers": [0, 3]}]}
    )
    assert v1 == as_range and InteractionMask.from_dict(v1.to_dict()) == as_range


def test_masks_are_immutable():
    m = InteractionMask.from_preset("mask2", 4)
    with pytest.raises(Exception):
        m.rules = ()
    with pytest.raises(ValueError):
        m.tables[0, 0, 0] = False
    with pytest.raises(AttributeError):
        m.rules.append({"block": ["q->d"]})


# ----------------------------------------------------------------------------------------------- lock
def test_output_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    from mice.identity import output_lock

    out = tmp_path / "run.trec"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(str(out) + ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(out) as lock:  # the holder is dead: its lock is stale and taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not Path(str(out) + ".lock").exists()


def test_a_second_process_on_a_locked_output_is_refused(big, tmp_path):
    """A live process holds the output's lock (taken through the same `output_lock`); `mice rerank` on that
    output is refused with one line naming the holder, and writes nothing."""
    env = _env(tmp_path)
    out = tmp_path / "l.trec"
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time, pathlib\n"
                "from mice.identity import output_lock\n"
                f"with output_lock({str(out)!r}):\n"
                f"    pathlib.Path({str(ready)!r}).write_text('1')\n"
                "    time.sleep(120)\n"
            ),
        ],
        env=env,
    )
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.02)
        res = _run(_rerank_cmd(big, out, "--mask", "mask2"), env)
        assert res.returncode == 2 and f"locked by pid {holder.pid}" in res.stderr
        assert not out.exists() and not out.with_name("l.trec.partial").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _run(_rerank_cmd(big, out, "--mask", "mask2"), env).returncode == 0  # the dead holder's lock is stale
    assert read_run(out)["query_id"].nunique() == N_QUERIES


# ----------------------------------------------------------------------------------------------- hook layer
def test_wrapping_one_hf_model_twice_keeps_both_wrappers_working(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mice.models.hooked import HookedCrossEncoder

    hf = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    first = HookedCrossEncoder(hf, tok)
    pairs = [("sort an array", "return a sorted copy"), ("plot", "draw lines and markers on the axes")]
    batch = first.tokenize(pairs)
    _, cache1 = first.run_with_cache(batch)
    second = HookedCrossEncoder(hf, tok)
    _, cache1_again = first.run_with_cache(batch)
    _, cache2 = second.run_with_cache(batch)
    from transformer_lens import ActivationCache

    assert isinstance(cache1, ActivationCache)
    name = "blocks.1.attn.hook_pattern"
    assert name in cache1_again.keys() and name in cache2.keys()  # the first wrapper is still connected
    torch.testing.assert_close(cache1[name], cache1_again[name])
    # a hook on one wrapper does not leak into the other
    seen = []
    second.blocks[0].attn.hook_pattern.add_hook(lambda t, hook: seen.append(1))
    first(batch)
    assert not seen
    second(batch)
    assert seen
    second.reset_hooks()
