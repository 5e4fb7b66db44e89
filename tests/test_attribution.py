"""Attribution patching, structural cells and the sensitive effect measures: each checked against the exact
computation it stands for (finite differences, exact knockouts, ir-measures)."""

import numpy as np
import pandas as pd
import pytest
import torch

from ablations.attribution import PathAttribution, attribute, check_exact, load_attribution, spearman
from ablations.engine import SweepEngine
from ablations.knockouts import Knockout, check_knockout, knockout_set
from ablations.metrics import Evaluator, RankEffects
from ablations.planted import MECHANISM
from ablations.structural import reach, structural_cells
from mice import HookedCrossEncoder, InteractionMask
from mice.masks import parse_path
from mice.models.testing import PAIRS
from probes.candidates import from_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _scaled_knockout(model, batch, ko, mode, t):
    """Scores with layer `ko.layer`'s pattern moved a fraction t of the way to the knocked pattern (hooks)."""
    src, dst = parse_path(ko.path)
    seg = batch["segment_ids"]
    S = torch.zeros(6, dtype=torch.bool)
    D = torch.zeros(6, dtype=torch.bool)
    S[src], D[dst] = True, True
    blk = (S[seg].unsqueeze(2) & D[seg].unsqueeze(1)).unsqueeze(1)
    if ko.head >= 0:
        only = torch.zeros(model.n_heads, dtype=torch.bool)
        only[ko.head] = True
        blk = blk & only[None, :, None, None]

    def hook(p, hook=None):
        pk = p * (~blk)
        if mode == "renorm":
            pk = pk / pk.sum(-1, keepdim=True)
        return p + t * (pk - p)

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{ko.layer}.attn.hook_pattern", hook)]):
        return model(batch).double()


@pytest.mark.parametrize("mode", ["renorm", "zero"])
def test_estimate_is_the_directional_derivative_of_the_knockout(tiny_bert, mode):
    """The estimate is exactly the linear term of the knockout: d score(P + t (P_knocked - P)) / dt at t = 0."""
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    kos = [
        Knockout(1, "q->d"),
        Knockout(0, "d->q", 2),
        Knockout(2, "cls->q"),
        Knockout(2, "cls->d", 3),
        Knockout(0, "q->q", 1),
        Knockout(1, "*->d"),
    ]
    clean, est = PathAttribution(model, kos, mode).estimate(batch)
    with torch.no_grad():
        assert torch.allclose(clean, model(batch), atol=1e-6)
    h = 1e-3
    for i, ko in enumerate(kos):
        fd = (_scaled_knockout(model, batch, ko, mode, h) - _scaled_knockout(model, batch, ko, mode, -h)) / (2 * h)
        assert (est[i].double() - fd).abs().max() <= 2e-3 * max(1.0, fd.abs().max().item()), ko
        assert fd.abs().max() > 1e-3, ko  # a real effect, not two zeros agreeing


def test_all_heads_estimate_is_the_sum_of_head_estimates(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    kos = knockout_set(model.n_layers, model.n_heads, paths="q->d,cls->q", heads=True)
    _, est = PathAttribution(model, kos, "zero").estimate(batch)
    key = {ko.key: i for i, ko in enumerate(kos)}
    for l in range(model.n_layers):
        for p in ("q->d", "cls->q"):
            heads = sum(est[key[Knockout(l, p, h).key]] for h in range(model.n_heads))
            assert torch.allclose(est[key[Knockout(l, p).key]], heads, atol=1e-6)


def test_integrated_estimate_converges_to_the_exact_knockout(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    kos = [Knockout(1, "q->d"), Knockout(0, "cls->q")]
    for mode in ("renorm", "zero"):
        eng = SweepEngine(model, mode, strategy="naive")
        st = eng.prepare(batch)
        exact = (eng.score(st, kos) - st.clean).double()
        errs = []
        for steps in (1, 8):
            _, est = PathAttribution(model, kos, mode).estimate(batch, steps=steps)
            errs.append((est.double() - exact).abs().max().item())
        assert errs[1] < errs[0] and errs[1] <= 0.02 * exact.abs().max().item(), (mode, errs)


def test_attribution_ranks_the_planted_paths_first(planted):
    """The planted model saturates its softmaxes and its head, the known weak spot of first-order patching:
    one interpolation step (integrated gradients at the midpoint) ranks the planted route first."""
    folder, ds, run = planted
    res = attribute(str(folder), ds, "test", run, k=8, heads=False, modes="renorm", steps=1, n_boot=200)
    t = res.table[res.table["status"] == "ok"].sort_values("rank")
    top2 = set(zip(t["layer"].head(2), t["path"].head(2)))
    assert top2 == {MECHANISM["match"], MECHANISM["readout"]}
    assert (t["delta_margin_ci_high"].head(2) < 0).all()  # harmful, and the CI excludes zero
    assert t["delta_margin"].iloc[2] > 0.1 * t["delta_margin"].iloc[1]
    assert (res.table["rank_by"] == "delta_margin").all()


def test_attribution_table_and_check_against_exact_knockouts(tiny_bert, planted, tmp_path):
    _, ds, run = planted
    res = attribute(
        str(tiny_bert),
        ds,
        "test",
        run,
        k=6,
        max_queries=6,
        heads=[0, 1],
        modes=("renorm", "zero"),
        n_boot=100,
        out=tmp_path / "attr.csv",
    )
    t, meta = load_attribution(tmp_path / "attr.csv")
    for c in (
        "layer",
        "head",
        "path",
        "mode",
        "estimate",
        "status",
        "rank_by",
        "delta_margin_ci_low",
        "flip_rate",
        "kendall_tau",
        "p_dscore",
    ):
        assert c in t.columns, c
    assert len(t) == 2 * 3 * 25 * 3 and set(t["mode"]) == {"renorm", "zero"}
    assert meta["measure"] == "delta_margin" and meta["n_pairs"] == 36
    assert (t.loc[t["status"] == "structural", "estimate"] == 0).all()
    pq = pd.read_csv(tmp_path / "attr.per_query.csv")
    assert {"query_id", "layer", "head", "path", "mode", "delta_margin"} <= set(pq.columns)
    assert pq["query_id"].nunique() == 6
    cands = from_run(ds, "test", run, k=6, max_queries=6)
    chk = check_exact(str(tiny_bert), cands, res, "renorm")
    assert len(chk) == (t.query("mode == 'renorm' and head == -1 and status == 'ok'")).shape[0]
    assert spearman(chk) > 0.5  # the random tiny model is far from linear, yet the order mostly holds


# ---------------------------------------------------------------------- structural cells
@pytest.mark.parametrize("mode", ["renorm", "zero"])
@pytest.mark.parametrize("base", [None, "mask1"])
def test_structural_cells_are_exactly_those_that_change_no_score(tiny_bert, mode, base):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    base_mask = model.resolve_mask(base) or InteractionMask.full(model.n_layers)
    kos = [ko for ko in knockout_set(model.n_layers, model.n_heads, heads=[1]) if check_knockout(ko, base_mask) is None]
    structural = structural_cells(kos, base_mask, mode=mode)
    eng = SweepEngine(model, mode, None if base is None else base_mask, strategy="naive")  # full forwards
    st = eng.prepare(batch)
    change = (eng.score(st, kos) - st.clean).abs().amax(1)
    for ko, c in zip(kos, change.tolist()):
        if ko.key in structural:
            assert c <= 1e-6, (ko, c)  # float32 rounding of an unchanged [CLS] path
        else:
            assert c >= 5e-6, (ko, c)
    assert structural  # the last layer's non-[CLS] rows at least
    if base == "mask1" and mode == "renorm":  # below the last layer: d and sep2 rows of layer 1 never reach [CLS]
        r = reach(base_mask)
        assert not r[1, 3] and not r[1, 4] and r[1, 1] and not r[0, 4]
        assert Knockout(1, "d->d").key in structural and Knockout(1, "d->q", 1).key in structural
    if mode == "zero":  # a zeroed cell still feeds the softmax denominator: only the last layer is structural
        assert {int(k.split("|")[0]) for k in structural} == {model.n_layers - 1}


# ---------------------------------------------------------------------- sensitive measures
def test_rank_effects_agree_with_ir_measures_and_kendall(planted):
    _, ds, run = planted
    cands = from_run(ds, "test", run, k=8)
    rng = np.random.default_rng(0)
    clean = rng.normal(size=len(cands))
    knocked = clean[None, :] + rng.normal(scale=[[0.1], [1.0], [3.0]], size=(3, len(cands)))
    fx = RankEffects(cands.frame, cands.qrels)
    pq = fx.per_query(clean, knocked)
    ev = Evaluator(cands, ("nDCG@10", "RR@10"))
    clean_pq = ev.per_query(clean)
    for i in range(3):
        _, q = ev.compare(clean, clean_pq, knocked[i])
        np.testing.assert_allclose(pq["delta_ndcg@10"][i], q["delta_ndcg@10"], atol=1e-9)
        np.testing.assert_allclose(pq["delta_rr@10"][i], q["delta_rr@10"], atol=1e-9)
        np.testing.assert_allclose(pq["kendall_tau"][i], q["kendall_tau"], atol=1e-9)
    # flips: identity -> none; order reversed -> all; margin: shifting relevant documents up by 1 -> +1
    same = fx.per_query(clean, clean[None])
    assert (same["flip_rate"] == 0).all() and (same["kendall_tau"] == 1).all() and (same["dscore"] == 0).all()
    rev = fx.per_query(clean, -clean[None])
    assert (rev["flip_rate"] == 1).all() and np.allclose(rev["kendall_tau"], -1)
    up = clean + (fx.rel > 0)
    np.testing.assert_allclose(fx.per_query(clean, up[None])["delta_margin"], 1.0)
    s = fx.summarize(pq, n_boot=500)
    assert (s["flip_rate"].diff().dropna() > 0).all()  # larger perturbations flip more pairs
    assert (s["abs_dscore_ci_low"] <= s["abs_dscore"]).all() and (s["abs_dscore"] <= s["abs_dscore_ci_high"]).all()
    assert (s["p_dscore"] > 0).all() and "p_flip_rate" not in s


# ---------------------------------------------------------------------- derivation from attribution
def test_derivation_from_attribution_is_bounded_logged_and_keeps_the_route(planted, tmp_path, caplog):
    import logging

    from ablations import derive_mask

    folder, ds, run = planted
    out = tmp_path / "attr.parquet"
    attribute(
        str(folder), ds, "test", run, k=8, max_queries=8, heads=False, modes="renorm", steps=1, n_boot=200, out=out
    )
    with caplog.at_level(logging.INFO, logger="mice.ablations"):
        d = derive_mask(out, data=ds, run=run, tolerance=0.01, max_steps=6, check_queries=5, show_progress_bar=True)
    m = d.meta
    assert m["ranked_by"] == "delta_margin" and "attribution" in m["method"]
    assert m["re_checks"] <= 6 and m["held_out_queries"] == 5
    checked = d.steps[d.steps["decision"].isin(["removed", "kept"])]
    assert len(checked) == m["re_checks"]
    assert {"delta_margin_ci_low", "delta_margin_ci_high", "delta_ndcg@10_ci_low"} <= set(d.steps.columns)
    assert (checked["delta_margin_ci_low"] <= checked["delta_margin_ci_high"]).all()
    assert any(c.endswith("@2") for c in m["structural"])
    assert not any(c.startswith("cls->") and c.endswith("@2") for c in m["structural"])
    assert d.mask.allowed(*MECHANISM["match"]) and d.mask.allowed(*MECHANISM["readout"])
    logged = [r.getMessage() for r in caplog.records if r.name == "mice.ablations"]
    assert len(logged) == m["re_checks"] and "left" in logged[-1]


def test_cli_attribute_from_pairs_and_derive_from_it(tiny_bert, planted, tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app

    r = CliRunner()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{q}\t{d}\n" for q, d in PAIRS))
    res = r.invoke(
        app,
        [
            "ablate",
            "attribute",
            "--pairs",
            str(pairs),
            "--model",
            str(tiny_bert),
            "--out",
            str(tmp_path / "T.csv"),
            "--check",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    t = pd.read_csv(tmp_path / "T.csv")
    assert {"layer", "head", "path", "mode", "estimate", "abs_dscore", "abs_dscore_ci_low", "rank_by"} <= set(t.columns)
    assert set(t["head"]) == {-1, 0, 1, 2, 3} and set(t["mode"]) == {"renorm", "zero"}
    assert "Spearman rho" in res.output and (tmp_path / "T.check.csv").exists()
    _bad_pairs_refused(tiny_bert, tmp_path)
    # a dataset + run, then the derivation reads the attribution table
    _attribute_then_derive(r, planted, tmp_path)


def _bad_pairs_refused(tiny_bert, tmp_path):
    """A --pairs line without a tab: exit 2 and the line named (through `python -m mice`)."""
    bad = tmp_path / "bad.tsv"
    bad.write_text("a query\ta doc\nno tab here\n")
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mice",
            "ablate",
            "attribute",
            "--pairs",
            str(bad),
            "--model",
            str(tiny_bert),
            "--out",
            str(tmp_path / "B.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"error: {bad}:2: expected 'query<TAB>document'" in proc.stderr


def _attribute_then_derive(r, planted, tmp_path):
    """`ablate attribute` on a dataset + run, then `ablate derive` reads the attribution table."""
    from mice.cli import app
    from mice.data import write_beir
    from mice.rank.runs import write_run

    folder, ds, run = planted
    write_beir(ds, tmp_path / "beir")
    write_run(run, tmp_path / "run.trec")
    res = r.invoke(
        app,
        [
            "ablate",
            "attribute",
            "--model",
            str(folder),
            "--dataset",
            str(tmp_path / "beir"),
            "--split",
            "test",
            "--run",
            str(tmp_path / "run.trec"),
            "--k",
            "8",
            "--max-queries",
            "8",
            "--no-heads",
            "--modes",
            "renorm",
            "--ig-steps",
            "1",
            "--out",
            str(tmp_path / "A.parquet"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = r.invoke(
        app,
        [
            "ablate",
            "derive",
            "--sweep",
            str(tmp_path / "A.parquet"),
            "--out",
            str(tmp_path / "m.json"),
            "--max-rechecks",
            "4",
            "--check-queries",
            "4",
            "--log",
            str(tmp_path / "derive.log"),
        ],
    )
    assert res.exit_code == 0, res.output
    log = (tmp_path / "derive.log").read_text().splitlines()
    assert log and all("about" in line and "left" in line for line in log) and "/" in log[-1]
    mask = InteractionMask.load(tmp_path / "m.json")
    assert mask.provenance["re_checks"] <= 4 and mask.provenance["ranked_by"] == "delta_margin"
    assert mask.allowed(*MECHANISM["match"]) and mask.allowed(*MECHANISM["readout"])


def test_check_from_saved_tables_restricts_estimates_to_the_swept_queries(tiny_bert, planted):
    """compare_tables on a sweep of fewer queries equals attributing those queries alone (parity)."""
    from ablations import sweep
    from ablations.attribution import compare_tables

    _, ds, run = planted
    kw = dict(k=6, heads=False, modes="renorm", n_boot=0)
    wide = attribute(str(tiny_bert), ds, "test", run, max_queries=6, **kw)
    narrow = attribute(str(tiny_bert), ds, "test", run, max_queries=3, **kw)
    sw = sweep(str(tiny_bert), ds, "test", run, k=6, max_queries=3, n_resamples=10, n_boot=0)
    got = compare_tables(wide.table, sw.table, per_query=wide.per_query, query_ids=sw.meta["query_ids"])
    ref = compare_tables(narrow.table, sw.table)
    assert len(got) == len(ref) == 3 * 25 - 20
    for c in ("estimate", "estimate_abs", "estimate_delta_margin", "estimate_flip_rate", "exact"):
        np.testing.assert_allclose(got[c].to_numpy(), ref[c].to_numpy(), rtol=1e-4, atol=1e-6, err_msg=c)  # batching
