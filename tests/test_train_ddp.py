"""Data parallelism: `accelerate launch --num_processes 2` on CPU (gloo) trains a tiny model; both ranks end with
identical weights, equal (within float tolerance) to one process trained with the doubled batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import write_beir

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys, torch
from mice.train import Trainer, preset
cfg = preset("tiny", "cross-encoder", **json.loads(sys.argv[1]))
trainer = Trainer(cfg, quiet=True)
result = trainer.train()
rank = trainer.acc.process_index
state = {k: v.detach().cpu() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}
torch.save({"state": state, "world": trainer.acc.num_processes, "best_dev": result.best_dev},
           f"{cfg.output}/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    from mice.models.testing import tiny_cross_encoder
    from mice.train import Trainer, preset

    data = write_beir(tmp_path / "data")
    model = tiny_cross_encoder(tmp_path / "student", num_layers=2, seed=0)
    teacher = tiny_cross_encoder(tmp_path / "teacher", num_layers=2, seed=1)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MICE_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    # bce (not listwise): every parameter but the key biases gets a true, non-zero gradient
    common = dict(
        model=str(model),
        dataset=str(data),
        max_steps=4,
        eval_every=2,
        save_every=2,
        seed=5,
        loss="bce+margin-mse",
        teacher=str(teacher),
        lr=3e-4,
        warmup_steps=1,
    )
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out2 = tmp_path / "two"
    # `accelerate launch --cpu` starts one process unless MPI is set up; its torch.distributed launcher
    # (`--multi_gpu`) with ACCELERATE_USE_CPU gives two gloo processes on CPU
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(script),
        json.dumps({**common, "batch_size": 1, "output": str(out2)}),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(out2 / "rank0.pt", weights_only=False)
    r1 = torch.load(out2 / "rank1.pt", weights_only=False)
    assert r0["world"] == 2 and r1["world"] == 2
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # ranks agree exactly
    assert (out2 / "last" / "rng_state_0.pt").exists() and (out2 / "last" / "rng_state_1.pt").exists()
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 2 and summary["steps"] == 4

    single = Trainer(preset("tiny", "cross-encoder", **common, batch_size=2, output=str(tmp_path / "one")), quiet=True)
    res = single.train()
    one = {k: v.detach() for k, v in single.model.state_dict().items()}
    trained = r0["state"]
    for k, v in one.items():
        if k.endswith("attention.self.key.bias"):
            # softmax is invariant to a key bias: its exact gradient is 0, its computed one is rounding noise,
            # which Adam scales up to lr-sized steps — not comparable between two summation orders
            continue
        torch.testing.assert_close(r0["state"][k], v, atol=2e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    from safetensors.torch import load_file

    init = load_file(str(model / "model.safetensors"))
    moved = sum(
        not torch.allclose(trained[f"hooked.model.{k}"], init[k]) for k in init if f"hooked.model.{k}" in trained
    )
    assert moved > len(init) // 2  # training happened: the comparison is not between two untouched models
    assert r0["best_dev"]["RR@10"] == pytest.approx(res.best_dev["RR@10"], abs=1e-6)  # sharded dev eval
