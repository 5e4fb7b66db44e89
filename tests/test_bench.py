"""`mice bench latency` end to end with tiny sizes: every method runs, the CSV has its columns and the ratios
are computed, the figure is drawn from the CSV. No timing assertions (timings depend on the machine)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mice.bench.latency import COLUMNS, METHODS, LatencyConfig, add_ratios, run_latency, targets
from mice.models.testing import tiny_cross_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_cli_tiny(tmp_path, monkeypatch):
    import tempfile

    from typer.testing import CliRunner

    from mice.cli import app

    model = tiny_cross_encoder(tmp_path / "ce", num_layers=4)
    out = tmp_path / "bench.csv"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the benchmark's own folder goes
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "latency",
            "--model",
            str(model),
            "--arch",
            "2+2",
            "--docs",
            "3",
            "--query-len",
            "8",
            "--doc-len",
            "16,24",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert list(scratch.iterdir()) == []  # the temporary backbone, indexes and vectors are removed
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert sorted(df["doc_len"].unique()) == [16, 24]
    assert set(df["method"]) == set(METHODS)
    assert (df["median_ms"] > 0).all() and (df["p10_ms"] <= df["p90_ms"]).all()
    for _, g in df.groupby("doc_len"):
        g = g.set_index("method")
        assert g.loc["cross-encoder", "ratio_vs_ce"] == pytest.approx(1.0)
        np.testing.assert_allclose(g["ratio_vs_ce"], g["median_ms"] / g.loc["cross-encoder", "median_ms"])
        np.testing.assert_allclose(g["speedup_vs_ce"] * g["ratio_vs_ce"], 1.0)
        np.testing.assert_allclose(g["docs_per_s"], 3 / (g["median_ms"] / 1000))
        hidden = 32
        assert g.loc["mice-index", "bytes_per_doc_token"] == 2 * hidden  # float16 states
        assert g.loc["mice-kv", "bytes_per_doc_token"] == 2 * hidden * (1 + 2 * (2 - 1))  # + one live K/V pair
        assert g.loc["maxsim", "bytes_per_doc_token"] == 2 * 128
        assert g.loc["cross-encoder", "bytes_per_doc_token"] == 0
    assert (df["ce_pair_len"] == 8 + df["doc_len"] - 1).all()
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "target:" in res.output
    assert len(targets(df, 24)) == 4


def test_ratios_need_the_cross_encoder():
    df = pd.DataFrame(
        {
            "method": ["mice", "cross-encoder", "mice"],
            "doc_len": [8, 8, 16],
            "median_ms": [2.0, 10.0, 4.0],
            "peak_mem_mb": [1.0, 4.0, 1.0],
        }
    )
    out = add_ratios(df)
    assert out.loc[0, "speedup_vs_ce"] == pytest.approx(5.0) and out.loc[0, "mem_ratio_vs_ce"] == pytest.approx(0.25)
    assert np.isnan(out.loc[2, "ratio_vs_ce"])  # no cross-encoder at that length: no ratio invented


def test_unknown_method_refused():
    from mice.errors import ModelError

    with pytest.raises(ModelError, match="unknown benchmark methods"):
        run_latency(LatencyConfig(methods=("cross-encoder", "bogus")))
