"""`mice bench scale` end to end on a tiny random model and a tiny BEIR folder: the command runs, the table has its
columns, the storage figures are what the storage format says, and the projection's arithmetic is right. No timing
assertions (timings depend on the machine)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mice.bench.scale import COLUMNS, CORPORA, PROJECTION_COLUMNS, Corpus, project, stored_vector_bytes

from cli_checks import assert_one_error

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN = 32  # mice.models.testing.tiny_cross_encoder's default


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-layer tiny cross-encoder and a BEIR folder of 12 documents and 3 test queries."""
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("scale")
    folder = root / "data"
    (folder / "qrels").mkdir(parents=True)
    words = "array sort mean plot axis value matrix sum line figure index table frame column row".split()
    rng = np.random.default_rng(0)
    with open(folder / "corpus.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(words, 5 + 3 * i))}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for i in range(3):
            fh.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.choice(words, 4))}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3))
    )
    return tiny_cross_encoder(root / "ce", num_layers=4), folder


def test_scale_cli_tiny(tiny, tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app

    model, data = tiny
    out = tmp_path / "scale.csv"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "scale",
            "--model",
            str(model),
            "--arch",
            "2+2",
            "--dataset",
            str(data),
            "--docs",
            "8",
            "--queries",
            "2",
            "--candidates",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "3",
            "--threads",
            "1",
            "--project",
            "--processes",
            "1,8,64",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert (df["processes"] == 1).all() and (df["threads"] == 1).all() and (df["device"] == "cpu").all()
    assert df["date"].notna().all() and (df["hidden"] == HIDDEN).all()
    assert (df["cpu_s"] >= 0).all() and (df["cpu_share"] >= 0).all()
    np.testing.assert_allclose(df["cpu_share"], df["cpu_s"] / (df["median_s"] * df["threads"]))

    _check_builds(df)
    _check_reranks(df)

    proj = pd.read_csv(tmp_path / "scale-projection.csv")
    assert list(proj.columns) == PROJECTION_COLUMNS
    assert set(proj["processes"]) == {1, 8, 64} and set(proj["corpus"]) == {c.name for c in CORPORA}
    assert len(proj) == len(CORPORA) * 4 * 3
    for text in (
        "index build and storage",
        "re-ranking throughput per process",
        "projection at hidden size 384",
        "linear",
        "MS MARCO passage",
        "618,927,610 tokens",
    ):
        assert text in res.output, text


def _check_builds(df):
    """The build rows of `test_scale_cli_tiny`: rates, bytes per token with and without cached K/V."""
    builds = df[df["section"] == "build"].set_index(["dtype", "kv"])
    assert set(builds.index) == {("float16", False), ("float16", True), ("int8", False), ("int8", True)}
    assert (builds["documents"] == 8).all() and (builds["tokens"] > 8).all()
    np.testing.assert_allclose(builds["docs_per_s"], 8 / builds["median_s"])
    np.testing.assert_allclose(builds["tokens_per_s"], builds["tokens"] / builds["median_s"])
    np.testing.assert_allclose(builds["tokens_per_cpu_s"], builds["tokens"] / builds["cpu_s"].clip(lower=1e-9))
    live = 2 - 1  # MICE-ℓ2+2: one live cross-attention layer, its K and V cached per token
    for kv in (False, True):
        vectors = 1 + (2 * live if kv else 0)
        fp16, int8 = builds.loc[("float16", kv)], builds.loc[("int8", kv)]
        assert fp16["stored_vectors_per_token"] == vectors == int8["stored_vectors_per_token"]
        assert fp16["bytes_per_token"] == 2 * HIDDEN * vectors  # as the index reports it (manifest bytes / tokens)
        assert fp16["bytes_per_token_states"] == 2 * HIDDEN
        assert fp16["bytes_per_token_kv"] == 2 * HIDDEN * (vectors - 1)
        assert int8["bytes_per_token"] == (HIDDEN + 4) * vectors  # one byte per value + a float32 scale per vector
        assert int8["bytes_vs_fp16"] == pytest.approx((HIDDEN + 4) / (2 * HIDDEN))  # about half (0.505 at H=384)
        assert 0.5 < int8["bytes_vs_fp16"] < 0.6 and fp16["bytes_vs_fp16"] == 1.0
        assert int8["build_speed_vs_fp16"] == pytest.approx(int8["docs_per_s"] / fp16["docs_per_s"])


def _check_reranks(df):
    """The re-ranking rows of `test_scale_cli_tiny`: every method, its rate and its speed-up."""
    rr = df[df["section"] == "rerank"].set_index("method")
    assert set(rr.index) == {
        "cross-encoder",
        "mice (on the fly)",
        "mice-index (float16 states)",
        "mice-kv (float16 K/V)",
        "mice-index (int8 states)",
        "mice-kv (int8 K/V)",
    }
    assert (rr["pairs"] == 2 * 4).all() and (rr["queries"] == 2).all() and (rr["candidates"] == 4).all()
    np.testing.assert_allclose(rr["pairs_per_s"], 8 / rr["median_s"])
    assert rr.loc["cross-encoder", "speedup_vs_ce"] == pytest.approx(1.0)
    np.testing.assert_allclose(rr["speedup_vs_ce"], rr["pairs_per_s"] / rr.loc["cross-encoder", "pairs_per_s"])
    assert rr.loc["mice-kv (int8 K/V)", "bytes_per_token"] == (HIDDEN + 4) * 3


def test_scale_compressed_rows_and_projection(tiny, tmp_path):
    """pq and residual builds get their rows (states only), re-ranking rows, and projection rows for MS MARCO
    passage at N = 1, 8, 64 with the storage format's size at H=384 (48 B and 50 B per token)."""
    from typer.testing import CliRunner

    from mice.cli import app

    model, data = tiny
    out = tmp_path / "scale.csv"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "scale",
            "--model",
            str(model),
            "--arch",
            "2+2",
            "--dataset",
            str(data),
            "--docs",
            "12",
            "--queries",
            "2",
            "--candidates",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--dtypes",
            "float16,pq,residual",
            "--project",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    builds = df[df["section"] == "build"].set_index(["dtype", "kv"])
    assert set(builds.index) == {("float16", False), ("float16", True), ("pq", False), ("residual", False)}
    assert builds.loc[("pq", False), "bytes_per_token"] == HIDDEN // 8 == stored_vector_bytes("pq", HIDDEN)
    assert builds.loc[("residual", False), "bytes_per_token"] == 2 + HIDDEN // 8
    assert builds.loc[("pq", False), "bytes_vs_fp16"] == pytest.approx(1 / 16)
    rr = set(df.loc[df["section"] == "rerank", "method"])
    assert {"mice-index (pq states)", "mice-index (residual states)"} <= rr
    proj = pd.read_csv(tmp_path / "scale-projection.csv")
    marco = proj[(proj["corpus"] == "MS MARCO passage") & (proj["dtype"] == "pq")].set_index("processes")
    assert set(marco.index) == {1, 8, 64} and (marco["bytes_per_token"] == 48).all()
    assert marco.loc[1, "gib"] == pytest.approx(618_927_610 * 48 / 2**30)
    fit_h = builds.loc[("pq", False), "codec_s"] * 65536 / builds.loc[("pq", False), "codec_states"] / 3600
    assert builds.loc[("pq", False), "codec_s"] > 0 and builds.loc[("float16", False), "codec_s"] == 0
    assert marco.loc[64, "build_hours"] == pytest.approx(fit_h + (marco.loc[1, "build_hours"] - fit_h) / 64)
    res_rows = proj[(proj["corpus"] == "MS MARCO passage") & (proj["dtype"] == "residual")]
    assert (res_rows["bytes_per_token"] == 50).all()


def test_projection_arithmetic():
    corpus = Corpus("X", 1000, 50, "assumed")
    builds = [
        {
            "dtype": "float16",
            "kv": False,
            "bytes_per_token": 768.0,
            "stored_vectors_per_token": 1,
            "hidden": 384,
            "tokens_per_s": 2000.0,
            "tokens_per_cpu_s": 1000.0,
        },
        {
            "dtype": "int8",
            "kv": True,
            "bytes_per_token": 108.0,
            "stored_vectors_per_token": 3,
            "hidden": 32,
            "tokens_per_s": 500.0,
        },
    ]
    p = project(pd.DataFrame(builds), corpora=[corpus], processes=(1, 4))
    assert list(p.columns) == PROJECTION_COLUMNS and len(p) == 4
    fp16 = p[p["dtype"] == "float16"].set_index("processes")
    assert (fp16["tokens"] == 50_000).all()
    assert (fp16["bytes"] == 50_000 * 768).all() and fp16.loc[1, "gib"] == pytest.approx(50_000 * 768 / 2**30)
    assert fp16.loc[1, "build_hours"] == pytest.approx(50_000 / 2000 / 3600)
    assert fp16.loc[4, "build_hours"] == pytest.approx(50_000 / (2000 * 4) / 3600)  # linear in N
    np.testing.assert_allclose(fp16["core_hours"], 50_000 / 1000 / 3600)  # total CPU time: the same for every N
    assert (
        "1,000 passages × 50 tokens = 50,000 tokens × 768 B/token (measured) = 38,400,000 B"
        in fp16.loc[1, "size_arithmetic"]
    )
    assert fp16.loc[4, "time_arithmetic"].startswith("50,000 tokens ÷ (2,000 tokens/s × 4) = 6 s")
    # measured at another hidden size: the storage format's size at 384 (3 vectors × (384 + 4) bytes), not 108
    int8 = p[p["dtype"] == "int8"].set_index("processes")
    assert (int8["bytes_per_token"] == 3 * 388).all() and (int8["stored"] == "states + K/V").all()
    assert (int8["bytes"] == 50_000 * 3 * 388).all()
    assert "3 vectors × 388 B at H=384" in int8.loc[1, "size_arithmetic"]
    assert int8["core_hours"].isna().all()  # no CPU time measured, none projected

    # the shipped corpora: MS MARCO passage, 8,841,823 passages × 70 tokens, float16 states at H=384
    marco = project(pd.DataFrame(builds[:1]), processes=(1,))
    row = marco[marco["corpus"] == "MS MARCO passage"].iloc[0]
    assert row["tokens"] == 618_927_610 and row["bytes"] == 618_927_610 * 768
    assert row["gib"] == pytest.approx(442.7, abs=0.05)
    nq = marco[marco["corpus"] == "BEIR NQ"].iloc[0]
    assert nq["tokens"] == 268_146_800 and nq["bytes"] == 268_146_800 * 768


def test_a_codebook_fit_is_projected_once_not_per_token():
    """pq: the fit (10 s on 5,000 states here) is scaled to the 65,536-state sample, once; the per-token rate is
    the build's without the fit, divided over N processes."""
    rec = {
        "dtype": "pq",
        "kv": False,
        "bytes_per_token": 48.0,
        "stored_vectors_per_token": 1,
        "hidden": 384,
        "tokens_per_s": 100.0,
        "tokens_per_cpu_s": 50.0,
        "codec_s": 10.0,
        "codec_states": 5000,
        "tokens_per_s_encode": 200.0,
    }
    p = project(pd.DataFrame([rec]), corpora=[Corpus("X", 100_000, 10, "assumed")], processes=(1, 4))
    p = p.set_index("processes")
    fit = 10.0 * 65536 / 5000
    assert p.loc[1, "build_hours"] == pytest.approx((fit + 1_000_000 / 200) / 3600)
    assert p.loc[4, "build_hours"] == pytest.approx((fit + 1_000_000 / 800) / 3600)
    assert p.loc[1, "core_hours"] == pytest.approx((fit + 1_000_000 / 100) / 3600)  # CPU rate scaled alike
    assert p.loc[4, "time_arithmetic"].startswith(f"{fit:,.0f} s codebook fit + 1,000,000 tokens")


def test_stored_vector_bytes():
    assert stored_vector_bytes("float16", 384) == 768
    assert stored_vector_bytes("fp16", 384) == 768
    assert stored_vector_bytes("int8", 384) == 388
    assert stored_vector_bytes("float32", 384) == 1536
    assert stored_vector_bytes("pq", 384) == 48 and stored_vector_bytes("residual", 384) == 50


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--queries", "0"], "--queries"),
        (["--candidates", "-1"], "--candidates"),
        (["--docs", "0"], "--docs"),
        (["--processes", "1,0"], "--processes"),
        (["--processes", "x"], "--processes"),
        (["--arch", "0+2"], "--arch"),
        (["--dtypes", "bf7"], "bf7"),
        (["--out", "x.txt"], "--out"),
    ],
)
def test_bad_options_refused(argv, flag, tmp_path):
    from test_fuzz_inputs import run_main

    code, err = run_main(["bench", "scale", *argv])
    assert_one_error(code, err, flag, where=" ".join(argv))
