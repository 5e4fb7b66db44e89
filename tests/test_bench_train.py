"""`mice bench train` end to end on a tiny model and BEIR folder: every mode gets every phase, the ratios are
medians over the cross-encoder's student step. No timing assertions (timings depend on the machine)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mice.bench.train import COLUMNS, MODES, PHASES
from mice.cli import app
from mice.models.testing import tiny_cross_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_bench_cli_tiny(tmp_path):
    from test_train import write_beir

    data = write_beir(tmp_path / "data")
    model = tiny_cross_encoder(tmp_path / "ce", num_layers=3)
    out = tmp_path / "train.csv"
    args = ["--model", model, "--dataset", data, "--preset", "tiny", "--steps", 2, "--warmup", 1]
    args += ["--eval-pairs", 5, "--eval-every", 1, "--threads", 1, "--out", out]
    res = CliRunner().invoke(app, ["bench", "train", *map(str, args)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    for mode in MODES:
        assert set(df.loc[df["mode"] == mode, "phase"]) == set(PHASES)
    assert (df["median_ms"] >= 0).all() and (df["runs"] == 2).all()
    wide = df.pivot(index="mode", columns="phase", values="median_ms")
    assert df.set_index(["mode", "phase"]).loc[("cross-encoder", "student"), "ratio_vs_ce_step"] == pytest.approx(1)
    np.testing.assert_allclose(
        df["ratio_vs_ce_step"], df["median_ms"] / wide.loc["cross-encoder", "student"], rtol=1e-9
    )
    assert "late-interaction" in res.output and "eval" in res.output  # the table is printed


def test_train_bench_refuses_unknown_modes(tmp_path):
    from cli_checks import assert_one_error
    from test_fuzz_inputs import run_main

    argv = ["--modes", "cross-encoder,colbert"]
    code, err = run_main(["bench", "train", "--out", str(tmp_path / "x"), *argv])
    assert_one_error(code, err, "--modes", where=" ".join(argv))
