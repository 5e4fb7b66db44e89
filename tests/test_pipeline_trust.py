"""Demo stages resume only the partial work made under their own key: a stage killed with SIGKILL
after its model was trained, rerun with another `ce_steps`, must train and record the new model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mice.app.pipeline import PARTIAL, Pipeline
from mice.models.testing import tiny_cross_encoder
from test_train import write_beir

ROOT = Path(__file__).resolve().parents[1]

# One demo stage, as `Demo.stage_cross_encoder` runs it: `Demo._train` (which returns a model it finds already
# trained in the work folder), then slow work on that model (re-ranking in the real stage) during which we kill.
SCRIPT = r"""
import json, sys, time
from pathlib import Path
from mice.app.demo import Demo, DemoPreset

out, data, backbone, steps, pause = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
demo = Demo(out, DemoPreset(name="t", dataset=data, train_preset="tiny", backbone=backbone, ce_steps=steps,
                            dev_queries=None))

def stage(folder):
    best = demo._train(folder, "cross-encoder", demo.p.ce_steps, model=backbone)
    (folder / "scoring").write_text("started")
    time.sleep(pause)
    return {"model": str(best.relative_to(folder))}

demo.pipe.run("cross_encoder", stage, key=demo.key(("dataset", "train_preset", "backbone", "ce_steps")))
"""


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def test_sigkilled_stage_rerun_with_another_key_trains_the_new_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "data")
    backbone = tiny_cross_encoder(tmp_path / "backbone", num_layers=2, seed=0)
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    out = tmp_path / "demo"
    args = [sys.executable, str(script), str(out), str(data), str(backbone)]
    env = {**_env(), "MICE_CACHE": str(tmp_path / "cache")}

    proc = subprocess.Popen(args + ["3", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    work = out / ".cross_encoder.partial"
    deadline = time.time() + 240
    while not (work / "scoring").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((work / "train" / "summary.json").read_text())["steps"] == 3  # trained under the old key
    assert json.loads((work / PARTIAL).read_text())["key"]["ce_steps"] == 3

    res = subprocess.run(args + ["5", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    done = out / "cross_encoder"
    assert json.loads((done / "stage.json").read_text())["fingerprint"]["ce_steps"] == 5
    summary = json.loads((done / "train" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["max_steps"] == 5  # the recorded model is the new setting's
    assert json.loads((done / "train" / "train_config.json").read_text())["max_steps"] == 5
    assert not work.exists() and not (done / PARTIAL).exists()


def test_partial_work_is_resumed_under_the_same_key_and_discarded_under_another(tmp_path):
    seen = []

    def stage(folder):
        seen.append(sorted(p.name for p in folder.iterdir() if p.name != PARTIAL))
        if not (folder / "half.txt").exists():
            (folder / "half.txt").write_text("half")
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path).run("s", stage, key={"steps": 1})
    with pytest.raises(KeyboardInterrupt):  # another key: the half-done work is not reused
        Pipeline(tmp_path).run("s", stage, key={"steps": 2})
    Pipeline(tmp_path).run("s", stage, key={"steps": 2})  # same key: resumed
    assert seen == [[], [], ["half.txt"]]
    # a work folder without a recorded key (an older mice, or torn) is not trusted either
    (tmp_path / ".t.partial").mkdir()
    (tmp_path / ".t.partial" / "half.txt").write_text("half")
    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path).run("t", stage, key={"steps": 2})
    assert seen[-1] == []
