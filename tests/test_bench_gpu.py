"""`mice bench gpu --device cpu --smoke`: the script a GPU machine runs first, checked end to end on the CPU (every
section, both precisions, every storage). No timing assertions: the numbers only have to exist and be positive."""

from __future__ import annotations

import pandas as pd
import pytest

from mice.bench.gpu import COLUMNS, SECTIONS, TRAIN_METHODS

from cli_checks import assert_one_error


def test_smoke_writes_every_section(tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app

    out = tmp_path / "gpu"
    res = CliRunner().invoke(
        app, ["bench", "gpu", "--device", "cpu", "--smoke", "--out", str(out), "--storages", "float16,pq"]
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "gpu.csv")
    assert list(df.columns) == COLUMNS
    assert "(skipped)" not in set(df["method"])
    for section in SECTIONS:
        for dtype in ("fp32", "bf16"):
            rows = df[(df["section"] == section) & (df["compute_dtype"] == dtype)]
            assert len(rows) > 0, (section, dtype)
            assert (rows["value"] > 0).all(), rows
    for section in ("latency-paper", "latency-ours", "train"):
        ce = df[(df["section"] == section) & (df["method"] == "cross-encoder")]
        assert (ce["speedup_vs_ce"] == 1.0).all()
    train = df[df["section"] == "train"]
    assert set(train["method"]) == set(TRAIN_METHODS) and (train["unit"] == "steps/s").all()
    assert set(df.loc[df["section"] == "latency-paper", "method"]) == {"cross-encoder", "mice", "late-interaction"}
    assert set(df.loc[df["section"] == "index-build", "method"]) == {"index float16", "index pq"}
    md = (out / "gpu.md").read_text()
    assert md.count("\n| ") == len(df) + 1  # the header and one line per row
    assert (df["device"] == "cpu").all() and df["device_name"].notna().all()


def test_budget_skips_units_and_says_so(tmp_path):
    from mice.bench.gpu import GPUBenchConfig, run_gpu_bench

    df = run_gpu_bench(
        GPUBenchConfig(device="cpu", smoke=True, budget_s=0.0, dtypes=("fp32",)), tmp_path, log=lambda s: None
    )
    assert (df["method"] == "(skipped)").all() and len(df) == len(SECTIONS)
    assert df["note"].str.startswith("budget:").all()
    assert pd.read_csv(tmp_path / "gpu.csv").shape[0] == len(SECTIONS)


@pytest.mark.parametrize(
    "argv,flag",
    [(["--sections", "latency,train"], "--sections"), (["--arch", "4"], "--arch"), (["--dtypes", "fp8"], "--dtypes")],
)
def test_bad_options_refused(argv, flag, tmp_path):
    from test_fuzz_inputs import run_main

    code, err = run_main(["bench", "gpu", "--device", "cpu", "--smoke", "--out", str(tmp_path / "o"), *argv])
    assert_one_error(code, err, flag, where=" ".join(argv))
