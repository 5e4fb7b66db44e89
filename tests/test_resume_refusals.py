"""Resume refusals proven by real resumed runs, through the `mice` entry point on tiny models.

- A sweep (and an attribution) killed with SIGKILL half-way and resumed under another setting (`--strategy`,
  `--modes`) is refused in one line naming the setting; "resuming from …" is printed only by a run that passed
  the lock and the identity checks, never by one that is then refused.
- `ablate search` rerun into the same `--out` with another cross-encoder (its classifier negated) scores the
  reference afresh: `reference.json`, and every delta and Kendall τ measured from it, are the new model's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cli_checks import assert_one_error
from test_data import write_beir_folder
from test_fuzz_inputs import run_main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
WORDS = "sort array mean values plot line axis compute median sum index table file read write model score".split()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny cross-encoder and a 24-query BEIR folder with an 8-deep run: a sweep over every head of it takes
    seconds, long enough to be killed half-way."""
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("resume")
    rng = random.Random(0)
    corpus = {f"d{i}": (rng.choice(WORDS), " ".join(rng.choice(WORDS) for _ in range(12))) for i in range(40)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS) for _ in range(3)) for i in range(24)}
    data = write_beir_folder(root / "ds", corpus, queries, {"test": [(f"q{i}", f"d{i}", 1) for i in range(24)]})
    run = root / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{(q + r) % 40} {r + 1} {10 - r} bm25\n" for q in range(24) for r in range(8)))
    return {"model": tiny_cross_encoder(root / "ce", num_layers=3), "data": data, "run": run, "root": root}


def _killed(argv: list, partial: Path, records: int = 2) -> None:
    """Start `mice ARGV` in its own process and SIGKILL it once its journal holds `records` finished units."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mice", *map(str, argv)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 1 + records:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _sweep(job, out, *extra) -> list:
    return [
        "ablate",
        "sweep",
        "--model",
        job["model"],
        "--dataset",
        job["data"],
        "--run",
        job["run"],
        "--k",
        8,
        "--heads",
        "--out",
        out,
        *extra,
    ]


def test_a_killed_sweep_resumed_with_another_strategy_is_refused_naming_it(job):
    from mice.identity import output_lock

    out = job["root"] / "sweep.csv"
    partial = Path(str(out) + ".partial")
    _killed(_sweep(job, out, "--strategy", "fast"), partial)
    assert partial.exists() and not out.exists()
    kept = partial.read_bytes()

    code, err = run_main(_sweep(job, out, "--strategy", "naive"))
    line = assert_one_error(code, err, str(partial), "strategy", where="naive after fast")
    assert "resuming" not in err, line  # nothing is taken over from a journal that is refused
    assert partial.read_bytes() == kept and not out.exists()

    with output_lock(out):  # another job holds the output: refused before the journal is even read
        code, err = run_main(_sweep(job, out, "--strategy", "fast"))
    assert_one_error(code, err, "lock", where="locked")
    assert "resuming" not in err

    code, err = run_main(_sweep(job, out, "--strategy", "fast"))
    assert code in (0, None), err
    assert f"resuming from {partial} (" in err and out.exists() and not partial.exists()
    assert "naive" not in set(pd.read_csv(out)["mode"])  # (the mode column is the knockout mode)
    assert json.loads((job["root"] / "sweep.meta.json").read_text())["strategy"] == "fast"


def test_a_killed_attribution_resumed_with_other_modes_is_refused_and_says_resuming_only_after(job):
    out = job["root"] / "attr.csv"
    partial = Path(str(out) + ".partial")
    argv = [
        "ablate",
        "attribute",
        "--model",
        job["model"],
        "--dataset",
        job["data"],
        "--split",
        "test",
        "--run",
        job["run"],
        "--k",
        8,
        "--batch-size",
        2,
        "--ig-steps",
        2,
        "--out",
        out,
    ]
    _killed([*argv, "--modes", "renorm,zero"], partial)
    code, err = run_main([*argv, "--modes", "renorm"])
    assert_one_error(code, err, str(partial), "modes")
    assert "resuming" not in err
    code, err = run_main([*argv, "--modes", "renorm,zero"])
    assert code in (0, None), err
    assert f"resuming from {partial} (" in err and out.exists() and not partial.exists()


# ---------------------------------------------------------------------------------------- search reference
def _negated(folder: Path, to: Path) -> Path:
    """A copy of the cross-encoder whose classifier (weight and bias) is negated: every score changes sign."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, to)
    weights = load_file(str(to / "model.safetensors"))
    names = [n for n in weights if n.startswith("classifier.")]
    assert names
    for n in names:
        weights[n] = -weights[n]
    save_file(weights, str(to / "model.safetensors"), metadata={"format": "pt"})
    return to


def _search(model, data, out) -> list:
    return [
        "ablate",
        "search",
        "-m",
        model,
        "-d",
        data,
        "-o",
        out,
        "--queries",
        10,
        "--k",
        8,
        "--preset",
        "tiny",
        "--steps",
        2,
        "--set",
        "batch_size=2",
        "--tolerance",
        0.2,
        "--stages",
        "mask",
        "--merge-layers",
        "1",
    ]


def test_a_search_rerun_with_another_cross_encoder_measures_from_the_new_one(tmp_path):
    from mice.models.testing import tiny_cross_encoder

    from test_train import write_beir

    data = write_beir(tmp_path / "data")
    first = tiny_cross_encoder(tmp_path / "ce", num_layers=4)
    other = _negated(first, tmp_path / "ce-negated")
    out = tmp_path / "search"
    assert run_main(_search(first, data, out))[0] in (0, None)
    ref_first = json.loads((out / "reference.json").read_text())
    table_first = pd.read_parquet(out / "search.parquet")

    code, err = run_main(_search(other, data, out))  # the same --out, another cross-encoder
    assert code in (0, None), err
    ref = json.loads((out / "reference.json").read_text())
    assert ref["scores"] == [-s for s in ref_first["scores"]]  # scored afresh, by the negated model
    fresh = tmp_path / "fresh"
    assert run_main(_search(other, data, fresh))[0] in (0, None)
    table, table_fresh = pd.read_parquet(out / "search.parquet"), pd.read_parquet(fresh / "search.parquet")
    cols = [c for c in table.columns if c.startswith("delta_") or c in ("kendall_tau", "ndcg@10")]
    assert "kendall_tau" in cols
    pd.testing.assert_frame_equal(table[cols], table_fresh[cols], check_exact=True)
    assert not table[cols].equals(table_first[cols])  # (the first model's values were not kept)
