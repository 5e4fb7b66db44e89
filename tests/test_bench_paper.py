"""`mice bench latency --protocol paper` (the authors' measurement) beside `--protocol ours`, tiny sizes, one run.
No timing assertions: only that every method ran, mean ± std are reported and the ratios are consistent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mice.bench.paper import PAPER_COLUMNS, PAPER_METHODS, PaperLatencyConfig, run_paper_latency
from mice.cli import app
from mice.errors import ModelError
from mice.models.testing import tiny_cross_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_both_protocols_in_one_run(tmp_path):
    model = tiny_cross_encoder(tmp_path / "ce", num_layers=4)
    out = tmp_path / "bench.csv"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "latency",
            "--protocol",
            "ours,paper",
            "--model",
            str(model),
            "--arch",
            "2+2",
            "--docs",
            "3",
            "--query-len",
            "8",
            "--doc-len",
            "24",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--paper-batch",
            "4",
            "--paper-runs",
            "3",
            "--paper-warmup",
            "1",
            "--methods",
            "cross-encoder,mice-index,maxsim",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    ours = pd.read_csv(out)
    assert set(ours["method"]) == {"cross-encoder", "mice-index", "maxsim"}
    paper = pd.read_csv(tmp_path / "bench-paper.csv")
    assert list(paper.columns) == PAPER_COLUMNS and list(paper["method"]) == list(PAPER_METHODS)
    assert (paper["protocol"] == "paper").all() and (paper["batch"] == 4).all() and (paper["doc_len"] == 24).all()
    assert (paper["mean_ms"] > 0).all() and (paper["std_ms"] >= 0).all() and (paper["runs"] == 3).all()
    ce = float(paper.loc[paper["method"] == "cross-encoder", "mean_ms"].iloc[0])
    np.testing.assert_allclose(paper["speedup_vs_ce"], ce / paper["mean_ms"])
    np.testing.assert_allclose(paper["docs_per_s"], 4 / (paper["mean_ms"] / 1000))
    assert "--protocol paper" in res.output and "±" in res.output and "--protocol ours" in res.output


def test_paper_protocol_alone_and_its_errors(tmp_path):
    model = tiny_cross_encoder(tmp_path / "ce", num_layers=3)
    df = run_paper_latency(
        PaperLatencyConfig(
            batch=2, doc_len=16, warmup=0, runs=2, model=str(model), layers=(1, 2), methods=("mice", "late-interaction")
        ),
        log=lambda s: None,
    )
    assert list(df["method"]) == ["mice", "late-interaction"] and df["speedup_vs_ce"].isna().all()
    with pytest.raises(ModelError, match="unknown methods"):
        run_paper_latency(PaperLatencyConfig(model=str(model), methods=("maxsim",)))
    bad = CliRunner().invoke(app, ["bench", "latency", "--protocol", "theirs", "--out", str(tmp_path / "x.csv")])
    assert "--protocol" in str(bad.exception)
