"""The paper's significance test: Welch's t-test on per-query values averaged over seeds (`mice evaluate
--paper-test`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from typer.testing import CliRunner

from mice.cli import app
from mice.errors import DataError
from mice.rank.evaluation import paper_test, per_query, seed_average
from mice.rank.runs import make_qrels, make_run, write_qrels, write_run

N_Q = 40
QRELS = make_qrels([(f"q{i}", f"q{i}-rel", 1) for i in range(N_Q)])


def _run(rank_of_rel: np.ndarray) -> pd.DataFrame:
    """Each query: 10 documents, the relevant one at position rank_of_rel[i] (0 = top)."""
    rows = []
    for i, r in enumerate(rank_of_rel):
        docs = [f"q{i}-n{j}" for j in range(9)]
        docs.insert(int(r), f"q{i}-rel")
        rows += [(f"q{i}", d, float(10 - k)) for k, d in enumerate(docs)]
    return make_run(rows)


def _seeds(rng, low, high, n=3):
    return [_run(rng.integers(low, high, size=N_Q)) for _ in range(n)]


def test_welch_on_seed_averages_matches_hand_computation():
    rng = np.random.default_rng(0)
    groups = {"base": _seeds(rng, 2, 8), "better": _seeds(rng, 0, 2), "same": None, "worse": _seeds(rng, 6, 10, 2)}
    groups["same"] = groups["base"]
    tables, members = {}, {}
    for system, seed_runs in groups.items():
        members[system] = []
        for k, run in enumerate(seed_runs):
            name = f"{system}#{k}"
            tables[name] = per_query(QRELS, run, ["RR@10"])
            members[system].append(name)
    res = paper_test(tables, members, "base").set_index("system")
    base = np.mean([tables[f"base#{k}"]["value"].to_numpy() for k in range(3)], axis=0)
    better = np.mean([tables[f"better#{k}"]["value"].to_numpy() for k in range(3)], axis=0)
    # Welch by hand: t = (m1 - m2) / sqrt(s1²/n1 + s2²/n2), Welch–Satterthwaite degrees of freedom
    v1, v2 = better.var(ddof=1) / N_Q, base.var(ddof=1) / N_Q
    t = (better.mean() - base.mean()) / np.sqrt(v1 + v2)
    dof = (v1 + v2) ** 2 / (v1**2 / (N_Q - 1) + v2**2 / (N_Q - 1))
    p = 2 * stats.t.sf(abs(t), dof)
    assert np.isclose(res.loc["better", "p_welch"], p, rtol=1e-9)
    assert np.isclose(res.loc["better", "value"], better.mean())
    assert res.loc["better", "arrow"] == "↑" and res.loc["worse", "arrow"] == "↓"
    assert res.loc["same", "arrow"] == "" and res.loc["same", "p_welch"] == 1.0
    assert np.isnan(res.loc["base", "p_welch"]) and res.loc["base", "seeds"] == 3 and res.loc["worse", "seeds"] == 2
    avg = seed_average([tables[f"base#{k}"] for k in range(3)]).set_index("query_id")["value"]
    by_hand = pd.concat([tables[f"base#{k}"].set_index("query_id")["value"] for k in range(3)], axis=1).mean(axis=1)
    pd.testing.assert_series_equal(avg.sort_index(), by_hand.sort_index(), check_names=False)


def test_cli_groups_seeds_and_prints_arrows(tmp_path):
    rng = np.random.default_rng(1)
    qrels = write_qrels(QRELS, tmp_path / "qrels.txt")
    files = {}
    for system, (lo, hi) in {"ce": (2, 8), "mice": (0, 2)}.items():
        files[system] = [write_run(r, tmp_path / f"{system}-{k}.trec") for k, r in enumerate(_seeds(rng, lo, hi, 2))]
    out = tmp_path / "paper.csv"
    args = [
        "evaluate",
        "ce=" + ",".join(map(str, files["ce"])),
        "mice=" + ",".join(map(str, files["mice"])),
        "--qrels",
        str(qrels),
        "--metrics",
        "RR@10",
        "--resamples",
        "200",
        "--paper-test",
        "ce",
        "--paper-results",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ce#0" in result.output and "mice#1" in result.output  # every seed is evaluated on its own
    assert "↑" in result.output and "Welch" in result.output
    table = pd.read_csv(out)
    assert list(table["system"]) == ["ce", "mice"] and table.loc[1, "arrow"] == "↑" and table.loc[1, "seeds"] == 2
    bad = CliRunner().invoke(app, args[:-4] + ["--paper-test", "nope"])
    assert isinstance(bad.exception, DataError) and "nope" in str(bad.exception)
