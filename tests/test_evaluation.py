"""Evaluation: ir-measures values against hand computation, per-query values, paired tests, Holm, CLI."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mice.cli import app
from mice.errors import DataError
from mice.rank.evaluation import evaluate, holm, paired_test, per_query, summary_table
from mice.rank.runs import make_qrels, make_run, write_qrels, write_run

QRELS = make_qrels([("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d9", 0), ("q2", "d5", 1), ("q3", "d7", 1)])
RUN = make_run(
    [
        ("q1", "d3", 3.0),
        ("q1", "d1", 2.0),
        ("q1", "d2", 1.0),
        ("q2", "d4", 2.0),
        ("q2", "d6", 1.5),
        ("q2", "d5", 1.0),
        ("qX", "d1", 1.0),
    ]
)  # qX is not judged; q3 is judged but absent from the run


def test_ndcg_and_rr_match_hand_computation():
    table = per_query(QRELS, RUN, metrics="nDCG@10,RR@10")
    got = table.set_index(["query_id", "measure"])["value"]
    # trec_eval nDCG: gain = relevance grade, discount log2(rank + 1)
    dcg_q1 = 2 / math.log2(3) + 1 / math.log2(4)
    idcg_q1 = 2 / math.log2(2) + 1 / math.log2(3)
    assert got[("q1", "nDCG@10")] == pytest.approx(dcg_q1 / idcg_q1, abs=1e-9)
    assert got[("q2", "nDCG@10")] == pytest.approx((1 / math.log2(4)) / 1.0, abs=1e-9)
    assert got[("q3", "nDCG@10")] == 0.0  # judged but unanswered counts as 0
    assert got[("q1", "RR@10")] == pytest.approx(1 / 2)
    assert got[("q2", "RR@10")] == pytest.approx(1 / 3)
    assert set(table["query_id"]) == {"q1", "q2", "q3"}  # unjudged qX ignored
    res = evaluate(QRELS, {"run": RUN}, metrics=["nDCG@10"])
    mean = (dcg_q1 / idcg_q1 + 0.5 + 0.0) / 3
    assert res.loc[0, "value"] == pytest.approx(mean) and res.loc[0, "n_queries"] == 3


def test_paired_test_identical_shifted_and_exact():
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.6, 0.7])
    same = paired_test(a, a.copy())
    assert same.p_ttest == 1.0 and same.p_randomization == 1.0 and same.delta == 0.0
    # randomisation p-value vs the exact sign-flip distribution (2^8 assignments)
    diff = np.array([0.05, 0.2, -0.03, 0.15, 0.1, 0.02, -0.01, 0.12])
    b = a + diff
    exact = np.mean(
        [abs(np.dot(s, diff)) >= abs(diff.sum()) - 1e-12 for s in itertools.product([-1, 1], repeat=len(diff))]
    )
    t = paired_test(a, b, n_resamples=20000, seed=1)
    assert t.p_randomization == pytest.approx(exact, abs=0.01)
    from scipy import stats

    assert t.p_ttest == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert t.delta == pytest.approx(diff.mean()) and t.n == 8
    # Series are aligned by query id, whatever their order
    sa = pd.Series(a, index=[f"q{i}" for i in range(8)])
    sb = pd.Series(b, index=sa.index)[::-1]
    assert paired_test(sa, sb, n_resamples=20000, seed=1) == t
    with pytest.raises(DataError, match="same queries"):
        paired_test(sa, sb.iloc[1:])


def test_holm():
    p = holm([0.01, 0.04, 0.03, np.nan])
    # sorted: 0.01*3, 0.03*2, 0.04*1 -> monotone: 0.03, 0.06, 0.06
    assert p[:3].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(p[3])


def test_evaluate_marks_significance_against_first_run():
    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(40)]
    qrels = make_qrels([(q, "rel", 1) for q in qids])
    good = make_run([(q, d, s) for q in qids for d, s in (("rel", 2.0), ("x", 1.0))])
    bad = make_run([(q, d, s) for q in qids for d, s in (("rel", 1.0), ("x", 2.0))])
    mixed = make_run(
        [(q, d, s) for i, q in enumerate(qids) for d, s in (("rel", 2.0 if rng.random() < 0.5 else 0.0), ("x", 1.0))]
    )
    res = evaluate(qrels, {"bad": bad, "good": good, "mixed": mixed}, metrics="RR@10,nDCG@10", n_resamples=2000)
    assert set(res["run"]) == {"bad", "good", "mixed"} and len(res) == 6
    rr = res[res["measure"] == "RR@10"].set_index("run")
    assert rr.loc["good", "value"] == 1.0 and rr.loc["bad", "value"] == 0.5
    assert rr.loc["good", "p_ttest_holm"] < 0.05 and rr.loc["good", "p_randomization_holm"] < 0.05
    assert np.isnan(rr.loc["bad", "p_ttest"])
    wide = summary_table(res)
    assert list(wide.index) == ["bad", "good", "mixed"]
    assert wide.loc["good", "RR@10"].endswith("†‡") and "†" not in wide.loc["bad", "RR@10"]


def test_evaluate_cli(tmp_path):
    qrels_path = write_qrels(QRELS, tmp_path / "qrels.txt")
    better = make_run([("q1", "d1", 3.0), ("q1", "d2", 2.0), ("q2", "d5", 1.0), ("q3", "d7", 1.0)])
    a, b = write_run(RUN, tmp_path / "a.trec"), write_run(better, tmp_path / "b.trec")
    out, agg = tmp_path / "perq.parquet", tmp_path / "agg.csv"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(a),
            str(b),
            "--qrels",
            str(qrels_path),
            "--metrics",
            "nDCG@10,P@1",
            "--out",
            str(out),
            "--results",
            str(agg),
            "--resamples",
            "500",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "a.trec" in result.output and "b.trec" in result.output and "nDCG@10" in result.output
    perq = pd.read_parquet(out)
    assert len(perq) == 2 * 3 * 2 and set(perq["run"]) == {"a.trec", "b.trec"}
    top = perq[(perq["run"] == "b.trec") & (perq["measure"] == "nDCG@10")]["value"]
    assert (top == 1.0).all()
    assert set(pd.read_csv(agg)["measure"]) == {"nDCG@10", "P@1"}
    bad = CliRunner().invoke(app, ["evaluate", str(a), "--qrels", str(qrels_path), "--metrics", "nDCG@x"])
    assert bad.exit_code != 0 and isinstance(bad.exception, DataError)
