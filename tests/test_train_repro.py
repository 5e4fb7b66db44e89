"""Reproducible training across processes: two `mice train` runs of the same job, each in its own interpreter with
its own PYTHONHASHSEED and its own empty cache (so each builds its collection, BM25 index and teacher scores from
nothing), write byte-identical weights.

The collection is an embedded docstring collection of a package written here whose docstrings carry an object's
repr, `<object object at 0x...>`, as pybind11 signatures do: its address differs from one interpreter to the next.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mice.models.testing import _WORDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mice_reprpkg"


def write_package(site: Path, n: int = 60, seed: int = 0) -> str:
    """An importable package of `n` documented functions: each summary shares three words with its description,
    and every description starts with the repr of an object made at import time."""
    rng = random.Random(seed)
    funcs = []
    for i in range(n):
        words = rng.sample(_WORDS, 14)
        summary = f"Compute {' '.join(words[:3])} of the input."
        body = f"Default ADDRESS. {' '.join(words)} with the given values."
        funcs.append(f'def op_{i}(x=None):\n    """{summary}\n\n    {body}\n    """\n')
    folder = site / PACKAGE
    folder.mkdir(parents=True)
    tail = textwrap.dedent("""
        for _f in list(globals().values()):
            if callable(_f) and getattr(_f, "__doc__", None) and "ADDRESS" in _f.__doc__:
                _f.__doc__ = _f.__doc__.replace("ADDRESS", repr(object()))
    """)
    (folder / "__init__.py").write_text("\n".join(funcs) + tail)
    return PACKAGE


def _train(site: Path, model: str, out: Path, cache: Path, hash_seed: int, extra: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(site), os.environ.get("PYTHONPATH", "")]),
        "PYTHONHASHSEED": str(hash_seed),
        "MICE_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    args = [sys.executable, "-m", "mice", "train", "--preset", "tiny", "--model", model]
    args += ["--dataset", f"embedded:docs?packages={PACKAGE}&fractions=0.7,0.3,0", "-o", str(out)]
    args += ["--set", "num_threads=1", "--quiet", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra",
    [[], ["--set", "loss=listwise+margin-mse", "--set", "teacher=biencoder:packaged", "--set", "teacher_scale=10"]],
    ids=["listwise", "biencoder-teacher"],
)
def test_two_processes_with_other_hash_seeds_train_identical_bytes(tmp_path, tiny_bert, extra):
    site = tmp_path / "site"
    write_package(site)
    runs = [tmp_path / f"run{s}" for s in (1, 2)]
    procs = [_train(site, str(tiny_bert), runs[i], tmp_path / f"cache{i}", s, extra) for i, s in enumerate((1, 2))]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    if extra:
        summary = json.loads((runs[0] / "summary.json").read_text())
        assert summary["teacher"]["pairs_scored"] > 0  # the teacher scored pairs in this process
    for folder in ("best", "last"):
        first, second = ((run / folder / "model.safetensors").read_bytes() for run in runs)
        assert first == second, f"{folder}/model.safetensors differs between the two processes"
    # each process built the collection from nothing, to the same bytes
    tables = [sorted((tmp_path / f"cache{i}" / "embedded").glob("*.parquet")) for i in (0, 1)]
    assert len(tables[0]) == 1 and tables[0][0].read_bytes() == tables[1][0].read_bytes()
