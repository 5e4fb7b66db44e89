"""The decision, made trustworthy: fidelity to the cross-encoder, non-inferiority by the CI's bound (not the mean),
confirmation on held-out queries, the joint (a, b) search, the frontier (resumable after SIGKILL) and regret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablations.decision import choose, cost_key, fidelity_per_query, relative_loss
from ablations.frontier import FrontierConfig, frontier, pareto
from ablations.joint import JointConfig, JointSearch, grid, joint_search, validate_search
from ablations.regret import fidelity_validity, regret, simple_rules, summarize
from mice.errors import MiceError

from test_train import train_env

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ planted scores
def test_fidelity_is_one_for_the_reference_ranking_and_falls_with_swaps():
    groups = [np.arange(0, 5), np.arange(5, 12)]
    ref = np.array([5, 4, 3, 2, 1, 0.1, 0.9, 0.3, 0.8, 0.5, 0.4, 0.2])
    assert np.allclose(fidelity_per_query(groups, ref, ref), 1.0)
    assert np.allclose(fidelity_per_query(groups, ref, ref * 3 + 1), 1.0)  # only the order counts
    swapped = ref.copy()
    swapped[[0, 4]] = swapped[[4, 0]]  # the top and bottom documents of the first query change places
    f = fidelity_per_query(groups, ref, swapped)
    assert f[0] < 1.0 and f[1] == 1.0
    # by hand, depth 10 over 5 documents: gains 10..6 by the reference's rank, the swap puts gain 6 first
    disc = 1 / np.log2(np.arange(2, 7))
    assert f[0] == pytest.approx((np.array([6, 9, 8, 7, 10]) * disc).sum() / (np.array([10, 9, 8, 7, 6]) * disc).sum())


def test_a_mean_within_tolerance_does_not_qualify_when_its_ci_is_not():
    rng = np.random.default_rng(0)
    control = np.full(200, 0.8)
    noisy = 0.8 * (1 - 0.03) + rng.normal(0, 0.25, 200)  # mean loss ~3%, a wide CI
    tight = 0.8 * (1 - 0.03) + rng.normal(0, 0.01, 200)  # the same mean loss, a narrow CI
    wide, narrow = relative_loss(noisy, control), relative_loss(tight, control)
    assert wide.mean < 0.05 and wide.upper > 0.05 and not wide.qualifies(0.05)
    assert narrow.mean < 0.05 and narrow.upper <= 0.05 and narrow.qualifies(0.05)
    # the cheaper candidate (b = 2) is the noisy one: refused by its bound, the b = 3 one is chosen
    cands = [
        {"name": "MICE-l1+2", "a": 1, "b": 2, "values": noisy},
        {"name": "MICE-l1+3", "a": 1, "b": 3, "values": tight},
    ]
    choice = choose(cands, control, tolerance=0.05)
    assert choice.chosen == "MICE-l1+3"
    assert [r["qualifies"] for r in choice.records] == [False, True]


def test_cost_orders_by_b_then_the_largest_a_and_collapsed_candidates_never_qualify():
    assert sorted([(2, 1), (1, 3), (3, 1), (2, 2)], key=lambda ab: cost_key(ab[1], ab[0])) == [
        (3, 1),
        (2, 1),
        (2, 2),
        (1, 3),
    ]  # (a, b): b first, then the larger a
    control = np.full(50, 0.5)
    same = control.copy()
    cands = [
        {"name": "MICE-l2+1", "a": 2, "b": 1, "values": same, "collapsed": True},
        {"name": "MICE-l1+2", "a": 1, "b": 2, "values": same},
    ]
    assert choose(cands, control, 0.05).chosen == "MICE-l1+2"


def test_confirmation_on_held_out_queries_falls_through_to_the_next_candidate():
    control = np.full(100, 0.8)
    good = np.full(100, 0.79) + np.linspace(-0.005, 0.005, 100)
    held = {
        "MICE-l2+2": (np.full(60, 0.5), np.full(60, 0.8)),  # fails there: 37% worse on held-out queries
        "MICE-l1+3": (np.full(60, 0.79), np.full(60, 0.8)),
    }
    cands = [{"name": n, "a": int(n[6]), "b": int(n[8]), "values": good} for n in ("MICE-l1+3", "MICE-l2+2")]
    seen = []

    def confirm(c):
        seen.append(c["name"])
        return held[c["name"]]

    choice = choose(cands, control, 0.05, confirm=confirm)
    assert seen == ["MICE-l2+2", "MICE-l1+3"] and choice.chosen == "MICE-l1+3"
    recs = {r["name"]: r for r in choice.records}
    assert recs["MICE-l2+2"]["qualifies"] and not recs["MICE-l2+2"]["confirmed"]
    assert recs["MICE-l1+3"]["confirmed"]
    held["MICE-l1+3"] = (np.full(60, 0.6), np.full(60, 0.8))
    assert choose(cands, control, 0.05, confirm=lambda c: held[c["name"]]).chosen is None


def test_the_grid_is_every_feasible_split_without_a_hand_set_cap():
    names = [c.name for c in grid(6)]
    assert len(names) == 15 and names[0] == "MICE-l5+1" and names[-1] == "MICE-l1+5"
    assert {c.b for c in grid(12)} == set(range(1, 12))
    with pytest.raises(MiceError, match="no MICE"):
        grid(1)


def _frontier_table(values: dict[tuple[int, int], tuple[float, float]], control: float = 0.5) -> pd.DataFrame:
    rows = [
        {
            "configuration": f"MICE-l{a}+{b}",
            "kind": "mice",
            "a": a,
            "b": b,
            "cost": b,
            "domain": "in",
            "ndcg@10": nd,
            "loss_high": up,
            "collapsed": b == 1,
        }
        for (a, b), (nd, up) in values.items()
    ]
    rows.append(
        {
            "configuration": "baseline-ft",
            "kind": "control",
            "a": None,
            "b": None,
            "cost": 4,
            "domain": "in",
            "ndcg@10": control,
            "loss_high": np.nan,
            "collapsed": False,
        }
    )
    return pd.DataFrame(rows)


def test_regret_against_the_frontier():
    t = _frontier_table({(3, 1): (0.6, -0.1), (2, 2): (0.47, 0.08), (1, 2): (0.49, 0.04), (1, 3): (0.5, 0.01)})
    assert regret(t, 1, 2, 0.05)["regret"] == 0 and regret(t, 1, 2, 0.05)["same_as_truth"]
    assert regret(t, 1, 3, 0.05)["regret"] == pytest.approx(0.0)  # b = 3 is the best at cost <= 3
    assert regret(t, 1, 3, 0.05)["extra_cost"] == 1  # ... but one layer dearer than the cheapest qualifying
    r = regret(t, 2, 2, 0.05)  # does not qualify: the best qualifying at b <= 2 is l1+2
    assert r["regret"] == pytest.approx(0.02) and r["truth"] == "MICE-l1+2"
    assert regret(t, None, None, 0.05)["miss"]  # no MICE while one qualifies
    assert regret(t, None, None, 0.05)["pick"] == "no MICE"
    rules = simple_rules(6)
    assert rules["fixed l[L/3]+3"] == (2, 3)
    zs = pd.DataFrame({"a": [2, 1], "b": [2, 3], "loss_upper": [0.2, 0.03], "collapsed": [False, False]})
    assert simple_rules(4, zs, screen_a=1)["zero-shot"] == (1, 3)
    picks = pd.DataFrame(
        [
            {
                "procedure": "joint search",
                "pick": "MICE-l1+2",
                "b": 2,
                "regret": 0.0,
                "miss": False,
                "same_as_truth": True,
                "compute_share": 0.1,
            }
        ]
        * 4
        + [
            {
                "procedure": "joint search",
                "pick": "MICE-l2+2",
                "b": 2,
                "regret": 0.02,
                "miss": False,
                "same_as_truth": False,
                "compute_share": 0.12,
            }
        ]
    )
    s = summarize(picks).iloc[0]
    assert (s["same_b"], s["same_pick"], s["median_regret"]) == (5, 4, 0.0)
    front = pareto(t)
    assert set(t[front]["configuration"]) == {"MICE-l1+2", "MICE-l1+3"}  # collapsed b = 1 is off the front


def test_fidelity_validity_is_spearman_over_trained_configurations():
    t = _frontier_table(
        {(3, 1): (0.30, 0.5), (2, 2): (0.47, 0.08), (1, 2): (0.49, 0.04), (1, 3): (0.5, 0.01)}, control=0.52
    )
    t["fidelity"] = [0.80, 0.90, 0.95, 0.97, 0.99]  # l3+1, l2+2, l1+2, l1+3, control: the order of nDCG@10
    v = fidelity_validity(t).set_index("configurations")
    assert v.loc["all", "spearman"] == pytest.approx(1.0) and v.loc["all", "n"] == 5
    assert v.loc["re-ranking", "n"] == 4  # the collapsed b = 1 row is left out
    t.loc[t["configuration"] == "MICE-l1+3", "fidelity"] = 0.85  # one configuration out of order
    rho = fidelity_validity(t).set_index("configurations").loc["all", "spearman"]
    assert rho == pytest.approx(0.7)  # rank differences 0, 1, 1, -2, 0: 1 - 6 * 6 / (5 * 24)
    # per-query values add a bootstrap CI: far-apart configurations keep their order under resampling,
    # configurations whose means overlap do not
    rng = np.random.default_rng(0)
    names = list(t["configuration"])
    apart = {
        n: {"fidelity": f + rng.normal(0, 0.01, 400), "in": x + rng.normal(0, 0.01, 300)}
        for n, f, x in zip(names, t["fidelity"], t["ndcg@10"])
    }
    v = fidelity_validity(t, apart).set_index("configurations").loc["all"]
    assert v["spearman_low"] == v["spearman_high"] == pytest.approx(0.7)
    close = {
        n: {"fidelity": f + rng.normal(0, 0.5, 400), "in": x + rng.normal(0, 0.5, 300)}
        for n, f, x in zip(names, t["fidelity"], t["ndcg@10"])
    }
    v = fidelity_validity(t, close).set_index("configurations").loc["all"]
    assert v["spearman_low"] <= 0.3 and v["spearman_high"] >= 0.9  # the same planted order, now unresolved


# ---------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from train_env(tmp_path_factory, "decision", ce=dict(num_layers=3, seed=0), ce4=dict(num_layers=4, seed=0))


def _tiny_joint(env) -> JointConfig:
    return JointConfig(
        model=env["ce"],
        dataset=env["data"],
        train_preset="tiny",
        train={"batch_size": 2},
        steps=1,
        eta=2,
        finalists=2,
        seeds=(0, 1),
        k=6,
        confirm_queries=4,
        fidelity_queries=6,
        tolerance=0.9,
    )


def test_joint_search_on_a_tiny_model(env):
    cfg = _tiny_joint(env)
    table, meta, derived = joint_search(cfg, env["root"] / "joint")
    assert set(table[table["rung"] == 0]["candidate"]) == {"MICE-l1+1", "MICE-l2+1", "MICE-l1+2", "baseline-ft"}
    # b = 1 cannot re-rank ([CLS] never reads the document): found constant before training, never trained
    flat = table[table["b"] == 1]
    assert len(flat) == 2 and flat["collapsed"].all() and (flat["steps"] == 0).all()
    assert not any((env["root"] / "joint" / "candidates").glob("MICE-l*-1-*/seed-*/train"))
    final = table[table["finalist"]]
    assert set(final["n_seeds"]) == {2} and final["steps"].nunique() == 1 and "baseline-ft" in set(final["candidate"])
    assert meta["pools"] == {"screen": 6, "confirm": 4}
    chosen = [r for r in meta["decision"] if r.get("confirmed")]
    assert derived.decision == "mice" and len(chosen) == 1
    assert f"MICE-l{derived.contextual_layers}+{derived.interaction_layers}" == meta["chosen"] == chosen[0]["name"]
    assert derived.budget["steps_total"] == meta["steps_total"] > 0
    # runs the search is done with keep their weights only: no optimizer state, no copy in best/
    cands = env["root"] / "joint" / "candidates"
    lasts = list(cands.glob("*/seed-*/train/last"))
    assert len(lasts) >= 3 and all((p / "model.safetensors").exists() for p in lasts)
    assert not list(cands.rglob("trainer_state.pt")) and not list(cands.glob("*/seed-*/train/best"))
    assert len(list(cands.glob("MICE-*/untrained-*.json"))) == 3  # the collapse check, kept for a rerun
    # a rerun reuses every trained model and measurement: the same table, nothing trained
    again, meta2, _ = joint_search(cfg, env["root"] / "joint")
    pd.testing.assert_frame_equal(table, again)
    assert meta2["steps_trained_this_run"] == 0
    # another draw holds out other dev queries and trains its own seeds
    other, meta3, _ = joint_search(
        JointConfig(**{**cfg.__dict__, "draw": 1, "keep_checkpoints": True}), env["root"] / "joint-1"
    )
    kept = list((env["root"] / "joint-1" / "candidates").glob("*/seed-*/train/last/trainer_state.pt"))
    assert len(kept) == len(lasts)  # --keep-checkpoints: every run can still continue
    trained_seeds = other["seeds"].str.split(",").explode().loc[lambda x: x != ""].astype(int)
    assert meta3["config"]["draw"] == 1 and set(trained_seeds) >= {1000}


def test_joint_search_confirms_in_labels_and_ranks_early_rungs_on_part_of_the_pool(env):
    from ablations.decision import relative_loss

    # four layers: three trainable splits (l1+2, l2+2, l1+3), so halving has rungs before the final one
    cfg = JointConfig(**{**_tiny_joint(env).__dict__, "model": env["ce4"], "rung_queries": 3, "finalists": 1})
    out = env["root"] / "joint-rung"
    table, meta, _ = joint_search(cfg, out)
    trained = table[table["steps"] > 0]
    early, final = trained[~trained["finalist"]], trained[trained["finalist"]]
    assert len(early) and set(early["pool"]) == {"rung"} and set(early["queries"]) == {3}
    assert set(final["pool"]) == {"screen"} and set(final["queries"]) == {6}
    # the confirmation is the non-inferiority rule on held-out labelled nDCG@10, not on fidelity
    rec = next(r for r in meta["decision"] if "confirm_loss" in r)
    search = JointSearch(cfg, out)
    search._setup()
    steps, seeds = meta["final_steps"], search.seeds()
    ndcg = {
        n: search._values(c, seeds, steps, "confirm", "ndcg@10")
        for n, c in [(rec["name"], next(c for c in grid(4) if c.name == rec["name"])), ("baseline-ft", search.control)]
    }
    want = relative_loss(ndcg[rec["name"]], ndcg["baseline-ft"], alpha=cfg.alpha)
    assert rec["confirm_loss"] == pytest.approx(want.mean) and rec["confirm_upper"] == pytest.approx(want.upper)
    # the rung pool is part of the screening pool: its reference scores, taken from the screen's, are the
    # cross-encoder's own scores of those pairs
    from mice.models.loader import load

    search._references()
    direct = search._pool_scores(load(cfg.model, max_length=search.max_length), search.pools["rung"])
    assert len(direct) == len(search.pools["rung"]) < len(search.pools["screen"])
    np.testing.assert_allclose(search.ref["rung"], direct, rtol=0, atol=1e-5)


def test_max_rungs_caps_the_halving(env):
    # one rung: every trainable split is a finalist at the first rung's steps, with every seed
    cfg = JointConfig(**{**_tiny_joint(env).__dict__, "model": env["ce4"], "finalists": 1, "max_rungs": 1})
    table, meta, _ = joint_search(cfg, env["root"] / "joint-one-rung")
    trained = table[table["steps"] > 0]
    assert set(trained["rung"]) == {0} and trained["finalist"].all() and set(trained["n_seeds"]) == {2}
    assert meta["final_steps"] == cfg.steps and len(trained) == 4  # l1+2, l2+2, l1+3 and the control
    with pytest.raises(MiceError, match="max_rungs must be >= 1"):
        joint_search(JointConfig(**{**cfg.__dict__, "max_rungs": 0}), env["root"] / "joint-zero-rungs")


def test_a_search_that_confirms_nothing_says_which_finalist_failed_confirmation():
    from ablations.decision import Choice

    search = object.__new__(JointSearch)  # the decision's file only: no model, no pools
    search.jcfg, search.num_layers = JointConfig(model="m"), 6
    recs = [
        {"name": "MICE-l3+3", "a": 3, "b": 3, "loss": 0.06, "loss_upper": 0.062, "collapsed": False},
        {"name": "MICE-l2+4", "a": 2, "b": 4, "loss": 0.033, "loss_upper": 0.035, "collapsed": False},
    ]
    recs[0]["qualifies"], recs[1]["qualifies"] = False, True
    recs[1].update(confirm_loss=0.038, confirm_upper=0.058, confirmed=False)
    meta = {"final_steps": 180, "pools": {"screen": 1000, "confirm": 448}, "steps_total": 1860}
    derived = search.derived_config(Choice(None, recs), meta | {"labelled": {}, "ci_width": 0.004})
    assert derived.decision == "cross-encoder" and derived.provenance["fallback"]["b"] == 4
    why = derived.provenance["why"]
    assert "MICE-l2+4 qualified on fidelity but failed confirmation on 448 held-out labelled queries" in why
    assert "(3.8%, upper 5.8%)" in why and "MICE-l3+3 qualified" not in why


def test_labelled_sets_confirm_beside_the_held_out_dev_queries_on_queries_the_screening_left(env):
    """A set may both screen (unlabelled) and confirm (labelled): on disjoint queries, the held-out dev queries
    first; the dev split itself cannot be named (its held-out part confirms already)."""
    train = f"{env['data']}@train"
    base = {**_tiny_joint(env).__dict__, "fidelity": (train,), "fidelity_queries": 9, "confirm_extra": (train,)}
    search = JointSearch(JointConfig(**base), env["root"] / "joint-extra")
    search._setup()
    screen = set(search.screen.frame["query_id"])
    confirm = list(dict.fromkeys(search.confirm_pool.frame["query_id"]))
    assert len(screen) == 9 and sum(q.startswith(train) for q in screen) == 3  # 6 dev queries left, then train
    dev = [q for q in confirm if not q.startswith(train)]
    assert len(dev) == 4 and not screen & set(confirm)
    assert len(confirm) - len(dev) == 37  # every train query but the 3 screened (each has BM25 candidates)
    labelled = set(search.confirm_pool.qrels["query_id"])
    assert set(confirm) <= labelled  # the extra queries keep their judgements
    capped = JointSearch(JointConfig(**{**base, "confirm_extra_queries": 5}), env["root"] / "joint-extra-5")
    capped._setup()
    assert capped.confirm_pool.frame["query_id"].nunique() == 4 + 5
    with pytest.raises(MiceError, match="confirm set .*@dev is the split whose held-out part confirms"):
        JointConfig(**{**base, "confirm_extra": (f"{env['data']}@dev",)}).validate()
    with pytest.raises(MiceError, match="confirm set 'x' is not dataset@split"):
        JointConfig(**{**base, "confirm_extra": ("x",)}).validate()


def test_mice_ablate_joint_confirms_on_the_extra_labelled_sets(env):
    from typer.testing import CliRunner

    from mice.cli import app

    out, train = env["root"] / "joint-cli", f"{env['data']}@train"
    args = ["ablate", "joint", "-m", env["ce"], "-d", env["data"], "-o", str(out), "--preset", "tiny"]
    args += ["--steps", "1", "--eta", "2", "--seeds", "0,1", "--confirm-queries", "4", "--fidelity", train]
    args += ["--fidelity-queries", "9", "--confirm-extra", train, "--confirm-extra-queries", "5"]
    args += ["--tolerance", "0.9", "--set", "batch_size=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "joint.json").read_text())
    assert meta["config"]["confirm_extra"] == [train] and meta["pools"] == {"screen": 9, "confirm": 4 + 5}
    # the docs script splits each finalist's confirmation into its dev and extra parts, from the saved values
    import runpy

    script = runpy.run_path(str(ROOT / "docs" / "scripts" / "joint_replay.py"))
    rows = script["confirmations"](out)
    assert {r["finalist"] for r in rows} == {r["name"] for r in meta["decision"]}
    assert all((r["all"][3], r["dev"][3], r["extra"][3]) == (9, 4, 5) for r in rows)
    tried = {r["name"]: r for r in meta["decision"] if "confirm_loss" in r}
    assert tried  # the tiny tolerance qualifies a finalist, so one was confirmed
    for r in rows:  # the whole pool's loss is the one the search confirmed on
        if r["finalist"] in tried:
            assert r["all"][:2] == pytest.approx(
                (tried[r["finalist"]]["confirm_loss"], tried[r["finalist"]]["confirm_upper"])
            )
    bad = CliRunner().invoke(app, [*args[:-4], "--confirm-extra", "nowhere"])
    assert bad.exit_code != 0 and "confirm set 'nowhere' is not dataset@split" in str(bad.exception or bad.output)


def test_joint_search_refuses_an_empty_screening_pool(env):
    cfg = JointConfig(**{**_tiny_joint(env).__dict__, "confirm_queries": None})
    with pytest.raises(MiceError, match="screening pool is empty.*--fidelity"):
        joint_search(cfg, env["root"] / "joint-empty")


FRONTIER_SCRIPT = """
import sys
from ablations.frontier import FrontierConfig, frontier
cfg = FrontierConfig(model=sys.argv[1], dataset=sys.argv[2], tests=(("in", sys.argv[2] + "@dev"),), test_k=6,
                     fidelity=(), fidelity_queries=6, k=6, steps=2, seeds=(0, 1), train_preset="tiny",
                     train={"batch_size": 2}, late_interaction=False)
frontier(cfg, sys.argv[3], log=print)
"""


def _run_frontier(env, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", FRONTIER_SCRIPT, env["ce"], env["data"], str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_frontier_resumes_after_sigkill(env, capsys):
    whole = env["root"] / "frontier-whole"
    proc = _run_frontier(env, whole)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
    info = json.loads((whole / "frontier.json").read_text())
    assert info["runs_finished"] == info["runs_total"] == 2 * 4  # control + 3 MICE, 2 seeds
    assert not list((whole / "candidates").rglob("trainer_state.pt"))  # finished runs keep their weights only
    killed = env["root"] / "frontier-killed"
    proc = _run_frontier(env, killed)
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / "frontier.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads((killed / "frontier.json").read_text())
    assert 0 < partial["runs_finished"] < partial["runs_total"]
    proc = _run_frontier(env, killed)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
    from mice.files import read_table

    a, b = read_table(whole / "frontier.parquet"), read_table(killed / "frontier.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert set(a["configuration"]) == {"baseline-ft", "MICE-l1+1", "MICE-l2+1", "MICE-l1+2", "cross-encoder"}
    assert a.loc[a["kind"] == "mice", "loss_high"].notna().all()
    # the docs' table and figure are written from the saved results alone
    import runpy

    script = runpy.run_path(str(ROOT / "docs" / "scripts" / "frontier_results.py"))
    script["main"]([str(whole), "tiny", "--img", str(env["root"] / "img")])
    printed = capsys.readouterr().out
    assert (env["root"] / "img" / "frontier-tiny.png").stat().st_size > 0
    assert "8 of 8 runs" in printed and "| MICE-l1+2 | 2 | 2 |" in printed and "| in | all | 4 |" in printed
    # a demo run holding this frontier draws it and reports it (figures read the saved table only)
    import shutil

    from figures.make import make_all
    from mice.app.report import report_markdown

    run = env["root"] / "run-with-frontier"
    (run / "frontier").mkdir(parents=True)
    for name in ("frontier.parquet", "frontier.json"):
        shutil.copyfile(whole / name, run / "frontier" / name)
    made = make_all(run, run / "figures")
    assert [p.name for p in made] == ["frontier.png"]
    text = report_markdown(run)
    assert "## The frontier" in text and "(8 of 8 runs finished)" in text and "figures/frontier.png" in text


def test_two_frontier_workers_share_the_runs_and_agree_with_one(env):
    """Two processes on one folder: each run trains once (by one of them), both return the whole frontier, and
    it is the one-process frontier (the same per-query measurements, seed for seed)."""
    one = env["root"] / "frontier-whole"
    if not (one / "frontier.parquet").exists():
        assert _run_frontier(env, one).wait(timeout=600) == 0
    two = env["root"] / "frontier-two-workers"
    procs = [_run_frontier(env, two) for _ in range(2)]
    logs = []
    for proc in procs:
        assert proc.wait(timeout=900) == 0
        logs.append(proc.stdout.read())
    trained = [line.strip() for log in logs for line in log.splitlines() if line.strip().startswith("train ")]
    assert len(trained) == len(set(trained)) == 8, logs  # control + 3 MICE, 2 seeds: each once
    assert all("train " in log for log in logs), logs  # both worked
    from mice.files import read_table

    pd.testing.assert_frame_equal(read_table(one / "frontier.parquet"), read_table(two / "frontier.parquet"))
    info = json.loads((two / "frontier.json").read_text())
    assert info["runs_finished"] == info["runs_total"] == 8
    assert {v["configurations"] for v in info["fidelity_validity"]} == {"all", "re-ranking"}
    full = [v for v in info["fidelity_validity"] if v["configurations"] == "all"][0]
    assert full["n"] == 4 and -1 <= full["spearman_low"] <= full["spearman_high"] <= 1


def test_the_joint_search_is_scored_against_the_frontier(env, capsys):
    whole = env["root"] / "frontier-whole"
    if not (whole / "frontier.parquet").exists():
        assert _run_frontier(env, whole).wait(timeout=600) == 0
    cfg = _tiny_joint(env)
    picks, summary = validate_search(cfg, whole, env["root"] / "validate", replicates=2)
    searched = picks[picks["procedure"] == "joint search"]
    assert list(searched["draw"]) == [0, 1] and (searched["steps"] > 0).all()
    total = json.loads((whole / "frontier.json").read_text())["steps_total"]
    assert searched["compute_share"].tolist() == pytest.approx((searched["steps"] / total).tolist())
    assert {"fixed l[L/3]+3", "zero-shot"} <= set(picks["procedure"])
    assert summary.set_index("procedure").loc["joint search", "replicates"] == 2
    assert (env["root"] / "validate" / "validation_summary.csv").exists()
    # the docs script prints one row per procedure, from validation.csv alone
    import runpy

    capsys.readouterr()
    script = runpy.run_path(str(ROOT / "docs" / "scripts" / "frontier_results.py"))
    script["main"](
        [str(whole), "tiny", "--img", str(env["root"] / "img"), "--validation", str(env["root"] / "validate")]
    )
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| joint search | 2 |")]
    assert len(rows) == 1 and rows[0].count("|") == 9
    # replayed from the saved measurements alone (nothing trains), "as run" is the decision each draw made
    from ablations.regret import load_frontier

    replay = runpy.run_path(str(ROOT / "docs" / "scripts" / "joint_replay.py"))["replay"]
    table, _ = load_frontier(whole)
    variants = {"as run": (None,) * 4, "half the screening": (None, 3, None, None), "dev only": (None,) * 3 + ("dev",)}
    for r, pick in searched.set_index("draw")["pick"].items():
        rows = replay(env["root"] / "validate" / f"draw-{r}", table, variants)
        assert [x["variant"] for x in rows] == list(variants) and rows[0]["pick"] == pick
        assert rows[2]["pick"] == pick  # no --confirm-extra: every held-out query is a dev query
        bare = replay(env["root"] / "validate" / f"draw-{r}", None, variants)  # no frontier: picks, no regret
        assert [x["pick"] for x in bare] == [x["pick"] for x in rows] and bare[0]["regret"] is None


def test_frontier_refuses_bad_settings(env):
    with pytest.raises(MiceError, match="distinct seeds"):
        frontier(FrontierConfig(model=env["ce"], seeds=(0, 0)), env["root"] / "bad")
    with pytest.raises(MiceError, match="distinct domain"):
        frontier(FrontierConfig(model=env["ce"], tests=(("in", "x"), ("in", "y"))), env["root"] / "bad")
