"""`mice ablate search`: the trained successive-halving search on tiny random models and a tiny BEIR folder —
deterministic, resumable after a real SIGKILL, reusing its cached candidates when widened, writing a
mice-config/1 file that `mice train --config` consumes in both modes, and drawing curves at equal steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from ablations.search import SearchConfig, curve, search
from mice.cli import app
from mice.derived import DerivedConfig
from mice.errors import MiceError
from mice.models.testing import tiny_cross_encoder

from test_train import train_env

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from train_env(tmp_path_factory, "search", ce=dict(num_layers=4, seed=0))


def config(env, **kw) -> SearchConfig:
    base = dict(
        model=env["ce"],
        dataset=env["data"],
        queries=10,
        k=8,
        train_preset="tiny",
        steps=2,
        train={"batch_size": 2},
        seeds=(0, 1),
        tolerance=0.2,
    )
    return SearchConfig(**{**base, **kw})


def cli_args(env, out) -> list[str]:
    return [
        "ablate",
        "search",
        "-m",
        env["ce"],
        "-d",
        env["data"],
        "-o",
        str(out),
        "--queries",
        "10",
        "--k",
        "8",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--set",
        "batch_size=2",
        "--tolerance",
        "0.2",
    ]


@pytest.fixture(scope="module")
def first(env):
    return search(config(env), env["root"] / "first")


def test_search_is_deterministic_and_halves_by_steps(env, first):
    again = search(config(env), env["root"] / "again")
    pd.testing.assert_frame_equal(first.table, again.table, check_exact=True)
    pd.testing.assert_frame_equal(first.per_query, again.per_query, check_exact=True)
    a, b = first.config.to_dict(), again.config.to_dict()
    for d in (a, b):
        d["provenance"].pop("created")
    assert a == b
    t = first.table
    trained = t[t["trained"]]
    # successive halving: six mask candidates at 2 steps, the better half at 4, two finalists at 8 under 2 seeds
    rungs = trained[trained["stage"] == "mask"].groupby("rung").agg(n=("candidate", "size"), steps=("steps", "max"))
    assert rungs["n"].tolist() == [6, 3, 2] and rungs["steps"].tolist() == [2, 4, 8]
    finalists = trained[trained["finalist"]]
    assert (finalists["n_seeds"] >= 2).all() and set(finalists["seeds"]) == {"0,1"}
    # the best trained finalist is the bar; the chosen one is the most efficient finalist within tolerance
    ok = finalists[(finalists["stage"] == "mask") & finalists["within_tolerance"]]
    chosen = finalists[finalists["chosen"] & (finalists["stage"] == "mask")]
    if len(ok):
        assert len(chosen) == 1
        eff = ok["efficiency"].map(json.loads)
        assert json.loads(chosen["efficiency"].iloc[0]) == max(eff)
    else:
        assert chosen.empty and first.config.decision == "cross-encoder"
    # mask3(k=3) on a 4-layer model: q reads d only in the last layer, [CLS] never sees it: flagged, not chosen
    k3 = t[(t["candidate"] == "mask3(k=3)")]
    assert k3["collapsed"].all() and not k3["chosen"].any()


def test_a_rung_cap_sends_only_the_finalists_to_the_last_rung(env):
    """The demo's quick budget: every candidate at s steps, then the best `finalists` at eta * s under 2 seeds."""
    res = search(config(env, eta=3, max_rungs=2, finalists=2, stages=("mask",)), env["root"] / "capped")
    t = res.table[res.table["trained"]]
    rungs = t.groupby("rung").agg(n=("candidate", "size"), steps=("steps", "max"), seeds=("n_seeds", "min"))
    assert rungs["n"].tolist() == [6, 2] and rungs["steps"].tolist() == [2, 6] and rungs["seeds"].tolist() == [1, 2]
    promoted = set(t[(t["rung"] == 0) & t["promoted"]]["candidate"])
    assert promoted == set(t[t["rung"] == 1]["candidate"])


def test_promotion_on_every_seed_from_a_rung(env, first):
    """`seeded_from=1`: rung 0 on the first seed, every later rung on all seeds; the seeds continue rung to rung,
    so the budget is each candidate's last steps times its seeds, and the same seed-0 runs are reused."""
    res = search(config(env, stages=("mask",), seeded_from=1), env["root"] / "seeded")
    t = res.table[res.table["trained"]]
    rungs = t.groupby("rung").agg(n=("candidate", "size"), steps=("steps", "max"), seeds=("n_seeds", "min"))
    assert rungs["n"].tolist() == [6, 3, 2] and rungs["seeds"].tolist() == [1, 2, 2]
    last = t.loc[t.groupby("candidate")["rung"].idxmax()]
    assert res.meta["steps_total"] == int((last["steps"] * last["n_seeds"]).sum()) == 3 * 2 + 1 * 4 * 2 + 2 * 8 * 2
    assert res.config.budget["seeded_from"] == 1 and "seeded_from" not in first.config.budget
    one = first.table[first.table["trained"] & (first.table["stage"] == "mask") & (first.table["rung"] == 0)]
    pd.testing.assert_frame_equal(
        t[t["rung"] == 0].reset_index(drop=True)[["candidate", "ndcg@10"]],
        one.reset_index(drop=True)[["candidate", "ndcg@10"]],
        check_exact=True,
    )
    with pytest.raises(MiceError, match="seeded_from"):
        search(config(env, seeded_from=-1), env["root"] / "bad")


def test_every_curve_point_records_its_steps(first):
    t = first.table
    assert t["steps"].notna().all() and (t.loc[~t["trained"], "steps"] == 0).all()
    mask_curve = curve(t, "mask")
    assert len(mask_curve) == 6 and mask_curve["steps"].nunique() == 1
    assert len(curve(t, "mask", trained=False)) == 6
    bad = t.copy()
    bad.loc[bad[(bad["trained"]) & (bad["rung"] == 0)].index[0], "steps"] = 3
    with pytest.raises(MiceError, match="mixes step counts"):
        curve(bad, "mask")


def test_constant_schedule_continues_exactly(env):
    """The rung scheme's premise: a run resumed to 2s steps under the constant schedule is the 2s-step run."""
    from mice.train import Trainer, preset

    def cfg(out, steps, resume=False):
        return preset(
            "tiny",
            "masked",
            model=env["ce"],
            dataset=env["data"],
            output=str(out),
            mask="mask2",
            lr_schedule="constant",
            max_steps=steps,
            save_every=steps,
            eval_every=steps,
            dev_split=None,
            batch_size=2,
            resume=resume,
        )

    root = env["root"] / "schedule"
    Trainer(cfg(root / "straight", 4), quiet=True).train()
    Trainer(cfg(root / "rungs", 2), quiet=True).train()
    Trainer(cfg(root / "rungs", 4, resume=True), quiet=True).train()
    a = load_file(str(root / "straight" / "last" / "model.safetensors"))
    b = load_file(str(root / "rungs" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_sigkill_then_resume_gives_the_same_result(env, first):
    out = env["root"] / "killed"
    cmd = [sys.executable, "-m", "mice", *cli_args(env, out)]
    envvars = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded machine trains slowly; the kill needs 4 finished evaluations
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("candidates/*/seed-*/eval-*.json"))) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "derived.json").exists()
    done = len(list(out.glob("candidates/*/seed-*/eval-*.json")))
    res = runner.invoke(app, cli_args(env, out))
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(out / "search.parquet")
    pd.testing.assert_frame_equal(table, first.table, check_exact=True)
    meta = json.loads((out / "search.json").read_text())
    assert 0 < meta["steps_trained_this_run"] < meta["steps_total"] and done >= 4


def test_widened_search_reuses_cached_candidates(env):
    out = env["root"] / "widen"
    narrow = search(config(env, merge_layers=(1,)), out)
    evals = {p: p.read_bytes() for p in out.glob("candidates/*/seed-*/eval-*.json")}
    mtimes = {p: p.stat().st_mtime_ns for p in evals}
    wide = search(config(env, merge_layers=(1, 2, 3)), out)
    for p, content in evals.items():  # nothing finished is redone
        assert p.read_bytes() == content and p.stat().st_mtime_ns == mtimes[p]
    assert wide.meta["steps_trained_this_run"] < wide.meta["steps_total"]
    rung0 = lambda r: r.table[r.table["trained"] & (r.table["rung"] == 0)].set_index("candidate")  # noqa: E731
    # the layer stage follows the mask stage's decision, which a wider search may change: compare the shared rows
    shared = rung0(narrow).index.intersection(rung0(wide).index)
    assert len(shared) >= 4
    pd.testing.assert_frame_equal(
        rung0(narrow).loc[shared, ["ndcg@10", "kendall_tau"]],
        rung0(wide).loc[shared, ["ndcg@10", "kendall_tau"]],
        check_exact=True,
    )
    # a rerun finds everything cached: nothing is trained
    assert search(config(env, merge_layers=(1, 2, 3)), out).meta["steps_trained_this_run"] == 0


def test_derived_config_round_trips_through_train_in_both_modes(env):
    from mice.models.mice_model import MICEModel
    from mice.models.loader import saved_mask

    out = env["root"] / "layers"
    res = search(config(env, stages=("layers",), contextual_layers=1, tolerance=0.9), out)
    derived = out / "derived.json"
    cfg = DerivedConfig.load(derived)
    assert cfg.decision == "mice" and cfg.contextual_layers == 1 and cfg.interaction_layers >= 2
    assert res.table.loc[res.table["chosen"], "b"].iloc[0] == cfg.interaction_layers
    base = ["train", "--preset", "tiny", "--config", str(derived), "-d", env["data"], "--max-steps", "2", "--quiet"]
    r = runner.invoke(app, base + ["--mode", "mice", "-o", str(env["root"] / "t-mice")])
    assert r.exit_code == 0, r.output
    model = MICEModel.from_pretrained(env["root"] / "t-mice" / "best")
    assert (model.contextual_layers, model.interaction_layers) == (1, cfg.interaction_layers)
    r = runner.invoke(app, base + ["--mode", "masked", "-o", str(env["root"] / "t-masked")])
    assert r.exit_code == 0, r.output
    assert saved_mask(env["root"] / "t-masked" / "best") == cfg.interaction_mask()
    shown = runner.invoke(app, ["mask", "show", str(derived)])
    assert shown.exit_code == 0 and f"MICE-ℓ1+{cfg.interaction_layers}" in shown.output and "q->d" not in shown.output
    assert "cls" in shown.output  # the mask's allow-table follows the configuration


def test_the_layer_stage_tries_both_cls_cross_attentions_and_the_file_carries_the_choice(env):
    """`cls_cross=("none", "uniform")`: every b under both modes (b = 1 collapses under none only, since its
    `[CLS]` never reads the document); the none candidates keep the keys of a none-only search, so widening to
    uniform reuses them; the chosen mode reaches `mice train --config` and the saved model."""
    from mice.models.mice_model import MICEModel

    out = env["root"] / "cls-cross"
    narrow = search(config(env, stages=("layers",), contextual_layers=1, tolerance=0.9), out)
    evals = {p: p.read_bytes() for p in out.glob("candidates/*/seed-*/eval-*.json")}
    res = search(
        config(env, stages=("layers",), contextual_layers=1, tolerance=0.9, cls_cross=("none", "uniform")), out
    )
    for p, content in evals.items():
        assert p.read_bytes() == content  # the none candidates were reused, not retrained
    t = res.table[res.table["trained"] & (res.table["rung"] == 0)]
    assert sorted(zip(t["b"], t["cls_cross"])) == [(b, m) for b in (1, 2, 3) for m in ("none", "uniform")]
    assert set(t.loc[t["cls_cross"] == "none", "candidate"]) == set(
        narrow.table.loc[narrow.table["trained"] & (narrow.table["rung"] == 0), "candidate"]
    )
    b1 = t[t["b"] == 1].set_index("cls_cross")["collapsed"]
    assert b1["none"] and not b1["uniform"]
    chosen = res.table[res.table["chosen"]].iloc[0]
    cfg = DerivedConfig.load(out / "derived.json")
    assert (cfg.interaction_layers, cfg.cls_cross_attention) == (chosen["b"], chosen["cls_cross"])
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--config",
            str(out / "derived.json"),
            "-d",
            env["data"],
            "--max-steps",
            "2",
            "--quiet",
            "--mode",
            "mice",
            "-o",
            str(env["root"] / "t-cls"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (
        MICEModel.from_pretrained(env["root"] / "t-cls" / "best").mice_config.cls_cross_attention == chosen["cls_cross"]
    )
    with pytest.raises(MiceError, match="cls_cross"):
        config(env, cls_cross=("none", "mean")).validate()
    with pytest.raises(MiceError, match="cls_cross_attention 'mean'"):
        DerivedConfig(
            decision="mice",
            num_layers=4,
            contextual_layers=1,
            interaction_layers=2,
            mask={"num_layers": 4},
            cls_cross_attention="mean",
        )


def test_a_decision_without_mice_refuses_mice_training(env, first, tmp_path):
    cfg = DerivedConfig(decision="cross-encoder", num_layers=4, tolerance=0.01)
    path = cfg.save(tmp_path / "none.json")
    r = runner.invoke(app, ["train", "--preset", "tiny", "--config", str(path), "-m", env["ce"], "--mode", "mice"])
    assert r.exit_code != 0 and "no configuration within tolerance" in str(r.exception or r.output)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "mice-config/1", "decision": "mice", "num_layers": 4}))
    r = runner.invoke(app, ["mask", "show", str(bad)])
    assert r.exit_code != 0 and "bad.json" in str(r.exception or r.output)


def test_search_refuses_bad_settings(env):
    r = runner.invoke(app, cli_args(env, env["root"] / "bad") + ["--stages", "mask,heads"])
    assert r.exit_code != 0 and "stages" in str(r.exception or r.output)
    r = runner.invoke(app, cli_args(env, env["root"] / "bad") + ["--cut", "all"])
    assert r.exit_code != 0 and "cut: 'all' (halving, significant)" in str(r.exception or r.output)
    with pytest.raises(MiceError, match="finalists get >= 2 seeds"):
        config(env, seeds=(0,)).validate()
    with pytest.raises(MiceError, match="sample: expected first or random"):
        config(env, sample="all").validate()
    with pytest.raises(MiceError, match="draw: a replicate draws its dev queries at random"):
        config(env, sample="first", draw=1).validate()
    # a split with no layer above it: the layer stage's own error, not one from working out the equal finals
    with pytest.raises(MiceError, match="no interaction layers left above a=4"):
        search(config(env, stages=("layers",), contextual_layers=4), env["root"] / "bad-a")


def test_search_runs_on_modernbert(env):
    ce = tiny_cross_encoder(
        env["root"] / "modernbert",
        family="modernbert",
        num_layers=4,
        hidden=64,
        heads=4,
        intermediate=128,
        local_attention=16,
        global_every=3,
    )
    res = search(
        config(env, model=str(ce), stages=("layers",), contextual_layers=1, tolerance=0.9),
        env["root"] / "search-modernbert",
    )
    t = res.table
    assert set(t.loc[t["trained"], "b"]) == {1, 2, 3} and res.config.decision == "mice"
    assert t.loc[(t["b"] == 1) & t["trained"], "collapsed"].all()  # b = 1: [CLS] never reads the document


def test_tolerance_is_against_the_best_trained_finalist():
    """Trained rows are compared with trained rows (the fine-tune itself costs effectiveness); the untouched
    cross-encoder is the reference only for a layer stage run alone."""
    from ablations.search import Candidate, Search, SearchConfig

    s = Search.__new__(Search)
    s.cfg = SearchConfig(model="-", tolerance=0.05)
    s.ref_pq = {"ndcg@10": [0.50, 0.50]}  # the cross-encoder: 0.50

    def fin(*rows):
        return [
            (Candidate("mask", n, "masked", n, a, None, (a or 0, i)), {"ndcg@10": v, "collapsed": c})
            for i, (n, a, v, c) in enumerate(rows)
        ]

    rows = fin(("mask0", None, 0.46, False), ("mask3(k=1)", 1, 0.44, False), ("mask3(k=2)", 2, 0.60, True))
    chosen, d = s._choose(rows)
    # 0.44 is 4.3% below the best trained finalist (0.46; the collapsed 0.60 never counts), 12% below the CE
    assert chosen.name == "mask3(k=1)" and d["best"] == 0.46 and not d["best_is_reference"]
    assert [r["within_tolerance"] for _, r in rows] == [True, True, False]
    chosen, d = s._choose(fin(("mask0", None, 0.46, False), ("mask3(k=1)", 1, 0.44, False)), with_reference=True)
    assert chosen is None and d["best"] == 0.50 and d["best_is_reference"]  # 8% and 12% below the CE
    # the layer stage: the mask stage's finalists are controls, so a weak MICE is not chosen
    layers = [
        (Candidate("layers", f"MICE-l1+{b}", "mice", None, 1, b, (-b,)), {"ndcg@10": v, "collapsed": False})
        for b, v in ((2, 0.30), (3, 0.31))
    ]
    chosen, d = s._choose(layers, controls=[{"ndcg@10": 0.46, "collapsed": False}])
    assert chosen is None and d["best"] == 0.46
    # one b under two [CLS] modes costs the same: the more effective of them is chosen, whichever comes first
    both = [
        (Candidate("layers", n, "mice", None, 1, 3, (-3,), cls_cross=m), {"ndcg@10": v, "collapsed": False})
        for n, m, v in (("MICE-l1+3", "none", 0.44), ("MICE-l1+3 (uniform)", "uniform", 0.45))
    ]
    for rows in (both, both[::-1]):
        chosen, _ = s._choose(rows, controls=[{"ndcg@10": 0.46, "collapsed": False}])
        assert chosen.cls_cross == "uniform"


def test_promotion_carries_the_efficient_candidates_within_tolerance():
    """`promote="efficient"`: the rung's best goes on (it sets the bar), then whoever is within tolerance of it,
    most efficient first, so that what the final rule would choose is not cut for being less effective than
    masks that keep `d->q`; `best` ranks by effectiveness alone. Collapsed candidates go last."""
    from ablations.search import Candidate, Search, SearchConfig

    def rung(*rows):
        return [
            (Candidate("mask", n, "masked", n, a, None, eff), {"ndcg@10": v, "collapsed": c})
            for n, a, eff, v, c in rows
        ]

    rows = rung(
        ("mask0", None, (0, 0), 0.4174, False),
        ("mask1", None, (0, 1), 0.4266, False),
        ("mask2", 0, (0, 2), 0.4222, False),
        ("mask3(k=1)", 1, (1, 3), 0.4168, False),
        ("mask3(k=2)", 2, (2, 3), 0.4101, False),
        ("mask3(k=3)", 3, (3, 3), 0.30, False),
        ("mask3(k=5)", 5, (5, 3), 0.4300, True),
    )
    s = Search.__new__(Search)
    s.cfg = SearchConfig(model="-", tolerance=0.05)
    order = [c.name for c, _ in s._promotion_order(rows)]
    # 0.4101 is 3.9% below 0.4266; mask3(k=3) is 30% below; the collapsed one is last despite its score
    assert order == ["mask1", "mask3(k=2)", "mask3(k=1)", "mask2", "mask0", "mask3(k=3)", "mask3(k=5)"]
    s.cfg = SearchConfig(model="-", tolerance=0.05, promote="best")
    assert [c.name for c, _ in s._promotion_order(rows)][:3] == ["mask1", "mask2", "mask0"]
    with pytest.raises(MiceError, match="promote"):
        SearchConfig(model="-", promote="all").validate()


def test_a_rung_cuts_only_what_it_tells_apart():
    """`cut="significant"`: halving's count goes on, and so does every other non-collapsed candidate whose paired
    test against the rung's best (per query) does not tell them apart; `halving` cuts whoever is not promoted.
    Every row records its p-value against the best either way."""
    import numpy as np

    from ablations.search import Candidate, Search, SearchConfig

    rng = np.random.default_rng(0)
    best = rng.uniform(0.2, 0.8, 60)
    swing = np.tile([0.05, -0.05], 30)
    pqs = {
        "mask1": best,
        "mask2": best - 0.002 - swing,  # 0.2 points lower on average, swinging 5 per query
        "mask0": best - rng.normal(0.15, 0.05, 60),  # clearly lower
        "mask3(k=1)": best - rng.normal(0.0, 0.05, 60),
    }  # within noise but collapsed: never goes on beyond keep

    def rung():
        return [
            (
                Candidate("mask", n, "masked", n, None, None, (0, i)),
                {"ndcg@10": float(np.mean(v)), "collapsed": n == "mask3(k=1)"},
            )
            for i, (n, v) in enumerate(pqs.items())
        ]

    s = Search.__new__(Search)
    s.cfg = SearchConfig(model="-", tolerance=0.01, promote="best")
    scored = rung()
    assert [c.name for c in s._promote(scored, pqs, keep=1)] == ["mask1"]
    p = {c.name: r["p_vs_best"] for c, r in scored}
    assert np.isnan(p["mask1"]) and p["mask0"] < 1e-10 and p["mask2"] > 0.05
    s.cfg = SearchConfig(model="-", tolerance=0.01, promote="best", cut="significant")
    scored = rung()
    assert [c.name for c in s._promote(scored, pqs, keep=1)] == ["mask1", "mask2"]
    rows = {c.name: r for c, r in scored}
    assert rows["mask2"]["tie"] and rows["mask2"]["promoted"] and not rows["mask0"]["promoted"]
    assert not rows["mask3(k=1)"]["promoted"] and "tie" not in rows["mask1"]
    s.cfg = SearchConfig(model="-", tolerance=0.01, promote="best", cut="significant", cut_alpha=0.5)
    assert [c.name for c in s._promote(rung(), {**pqs, "mask2": best - 0.01 - rng.normal(0, 0.01, 60)}, 1)] == [
        "mask1"
    ]  # a steady one-point loss over 60 queries is told apart
    for bad in (dict(cut="all"), dict(cut="significant", cut_alpha=0.0)):
        with pytest.raises(MiceError, match="cut"):
            SearchConfig(model="-", **bad).validate()


def test_a_significant_cut_keeps_halvings_rungs_and_equal_finals(env, first):
    """On a tiny model: the rungs' steps are halving's (the budget stays bounded); a rung promotes at least
    halving's count; every cut candidate is collapsed or told apart from its rung's best; with a level no test
    reaches, every non-collapsed candidate reaches the finals, all at the same steps; rung 0 is the same training
    as under halving."""
    res = search(config(env, stages=("mask",), cut="significant", cut_alpha=1e-12), env["root"] / "ties")
    t = res.table[res.table["trained"]]
    assert t.groupby("rung")["steps"].max().tolist() == [2, 4, 8]
    rung0 = t[t["rung"] == 0]
    assert (rung0["promoted"] | rung0["collapsed"]).all() and rung0["tie"].sum() == rung0["promoted"].sum() - 3
    fin = t[t["finalist"]]
    assert set(fin["candidate"]) == set(rung0.loc[~rung0["collapsed"], "candidate"]) and fin["steps"].nunique() == 1
    assert (fin["n_seeds"] == 2).all() and res.config.budget["cut"] == "significant"
    under_halving = first.table[first.table["trained"] & (first.table["stage"] == "mask") & (first.table["rung"] == 0)]
    pd.testing.assert_frame_equal(
        rung0.reset_index(drop=True)[["candidate", "ndcg@10", "p_vs_best"]],
        under_halving.reset_index(drop=True)[["candidate", "ndcg@10", "p_vs_best"]],
        check_exact=True,
    )
    cut = under_halving[~under_halving["promoted"]]
    assert len(cut) == 3 and "cut" not in first.config.budget


def test_the_report_says_why_there_is_no_mice(first):
    """Without a MICE decision the report names the best document-independent candidate with its CI."""
    from mice.app.report import _no_mice

    t = first.table
    text = _no_mice(t, "ndcg@10")
    ok = t[t["trained"] & ~t["collapsed"] & t["a"].notna()]
    stage = ok[ok["stage"] == "layers"] if (ok["stage"] == "layers").any() else ok[ok["stage"] == "mask"]
    r = stage.sort_values(["rung", "ndcg@10"], ascending=False).iloc[0]
    assert text.startswith("**No MICE configuration at this budget.**") and r["candidate"] in text
    assert f"[{r['ndcg@10_ci_low']:.4f}, {r['ndcg@10_ci_high']:.4f}]" in text
    assert f"after {int(r['steps'])} steps" in text


def test_both_stages_finalists_train_equal_steps(env):
    """The layer stage's choice is measured against the mask stage's finalists, so under `equal_finals` its
    finals train the mask stage's final steps even when its own halving ends earlier; the rule is asserted."""
    from ablations.search import final_rung, finals

    # _stage's halving: 6 candidates -> 3 -> 2 (rung 2); a rung cap ends it early; <= finalists: rung 0
    assert [final_rung(n, 2, 2, None) for n in (1, 2, 3, 4, 6, 9)] == [0, 0, 1, 1, 2, 3]
    assert final_rung(9, 2, 3, 2) == 1 and final_rung(9, 2, 2, 1) == 0
    out = env["root"] / "equal"
    # a wide tolerance chooses a deep split (mask3(k=2): two b's, finalists from rung 0 on)
    res = search(config(env, tolerance=0.9), out)
    t = res.table[res.table["trained"]]
    assert res.config.budget["final_steps"] == 8
    fin = finals(res.table)
    assert set(fin["stage"]) == {"mask", "layers"} and set(fin["steps"]) == {8}
    layers = t[t["stage"] == "layers"]
    assert layers["rung"].max() == 0 and len(curve(res.table, "layers")) == len(layers)
    # the earlier rule: the layer finals stop at their own last rung (2 steps), unequal to the masks' 8
    old = search(config(env, tolerance=0.9, equal_finals=False), out)
    assert old.config.budget["final_steps"] is None
    assert set(old.table[old.table["trained"] & (old.table["stage"] == "layers")]["steps"]) == {2}
    with pytest.raises(MiceError, match="finalists trained unequal steps"):
        finals(old.table)


def test_the_demo_search_stage_adopts_an_earlier_searchs_candidates(env):
    """A demo search stage re-run under another key starts in a fresh work folder; it moves the earlier search's
    content-keyed candidates in, so nothing is retrained and the result is the same."""
    from mice.app.demo import Demo, get_preset

    root = env["root"] / "adopt"
    cfg = config(env, stages=("mask",), max_rungs=1)
    before = search(cfg, root / "search")
    assert before.meta["steps_trained_this_run"] > 0
    work = root / ".search.partial"
    Demo(root, get_preset("tiny"))._adopt_candidates(work)
    assert not any((root / "search" / "candidates").iterdir())
    after = search(cfg, work)
    assert after.meta["steps_trained_this_run"] == 0
    pd.testing.assert_frame_equal(before.table, after.table, check_exact=True)
