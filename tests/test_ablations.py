"""Knockout sweeps, mask derivation and searches: parity with naive full forwards, a planted mechanism found,
resumable sweeps, masks usable by the model, figures from saved tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ablations import (
    Knockout,
    SweepEngine,
    ablate_masks,
    check_knockout,
    choose_interaction_layers,
    derive_mask,
    knockout_set,
    load_sweep,
    merge_layer_search,
    sweep,
)
from ablations.planted import MECHANISM
from mice import HookedCrossEncoder, InteractionMask
from mice.errors import DataError, MaskError
from mice.models.testing import PAIRS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted_sweep(planted, tmp_path_factory):
    folder, ds, run = planted
    out = tmp_path_factory.mktemp("sweep") / "ablation.parquet"
    return sweep(str(folder), ds, "test", run, k=8, max_queries=8, out=out), out


# ---------------------------------------------------------------------- parity: fast sweep == naive forwards
@pytest.mark.parametrize("family", ["bert", "electra", "roberta"])
@pytest.mark.parametrize("mode", ["renorm", "zero"])
def test_fast_sweep_scores_equal_naive_full_forwards(tiny_models, family, mode):
    model = HookedCrossEncoder.from_pretrained(tiny_models[family])
    batch = model.tokenize(PAIRS)
    kos = knockout_set(model.n_layers, model.n_heads, paths="q->d,d->q,cls->q,cls->d,d->d,q->*,sep1->sep1", heads=[1])
    full = InteractionMask.full(model.n_layers)
    assert check_knockout(Knockout(0, "q->*"), full).startswith("invalid")  # q would attend nothing
    kos = [ko for ko in kos if check_knockout(ko, full) is None]
    assert {ko.layer for ko in kos} == {0, 1, 2} and any(ko.head == 1 for ko in kos)
    ref = SweepEngine(model, mode, strategy="naive")
    st = ref.prepare(batch)
    expected = ref.score(st, kos)
    with torch.no_grad():  # the naive engine is what a user would write by hand
        by_hand = model(batch, mask=InteractionMask.full(model.n_layers).with_blocked("q->d", [1]), mode=mode)
    assert torch.allclose(expected[kos.index(Knockout(1, "q->d"))], by_hand, atol=1e-6)
    for strategy in ("fast", "replicate"):
        eng = SweepEngine(model, mode, strategy=strategy)
        got = eng.score(eng.prepare(batch), kos)
        assert (got - expected).abs().max().item() <= 1e-5, strategy
    changed = (expected - st.clean).abs().amax(1) > 1e-4
    assert changed.float().mean() > 0.5  # the knockouts really do something
    # a last-layer knockout of a path not read by [CLS] leaves the score exactly unchanged
    last = kos.index(Knockout(2, "d->q"))
    assert torch.equal(SweepEngine(model, mode).score(st, [kos[last]])[0], st.clean)


@pytest.mark.parametrize("mode", ["renorm", "zero"])
def test_fast_sweep_parity_on_top_of_a_base_mask(tiny_bert, mode):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    base = InteractionMask.from_preset("mask2", model.n_layers)
    kos = [ko for ko in knockout_set(model.n_layers, model.n_heads, heads=[0, 3]) if check_knockout(ko, base) is None]
    naive = SweepEngine(model, mode, base, strategy="naive")
    fast = SweepEngine(model, mode, base, strategy="fast")
    expected = naive.score(naive.prepare(batch), kos)
    got = fast.score(fast.prepare(batch), kos)
    assert (got - expected).abs().max().item() <= 1e-5
    # whole masks restart from the first layer where they differ, and equal the full forward
    m3 = InteractionMask.from_preset("mask3", model.n_layers, k=2)
    with torch.no_grad():
        assert torch.allclose(fast.score_mask(fast.prepare(batch), m3), model(batch, mask=m3, mode=mode), atol=1e-5)


def test_sweep_tables_equal_across_strategies(tiny_bert, planted):
    _, ds, run = planted
    kw = dict(k=6, max_queries=4, paths="q->d,d->q,cls->q,q->q", layers="1:3", heads=[0])
    fast = sweep(str(tiny_bert), ds, "test", run, strategy="fast", **kw).table
    naive = sweep(str(tiny_bert), ds, "test", run, strategy="naive", **kw).table
    num = ["ndcg@10", "rr@10", "mean_abs_dscore", "kendall_tau"]
    np.testing.assert_allclose(fast[num].to_numpy(), naive[num].to_numpy(), atol=1e-5)
    assert len(fast) == 2 * 4 * 2 and (fast["head"] == 0).sum() == 8


def test_skipped_knockouts_are_recorded(tiny_bert, planted):
    _, ds, run = planted
    base = InteractionMask.from_preset("mask2", 3)
    assert check_knockout(Knockout(0, "d->q"), base) == "already blocked by the base mask"
    assert check_knockout(Knockout(0, "sep1->sep1"), base).startswith("invalid")  # sep1 attends only itself
    assert check_knockout(Knockout(0, "q->d"), base) is None
    res = sweep(
        str(tiny_bert), ds, "test", run, k=4, max_queries=2, base="mask2", paths="d->q,sep1->sep1,q->d", layers="0"
    )
    t = res.table.set_index("path")
    assert t.loc["d->q", "status"] == "skipped" and "already blocked" in t.loc["d->q", "reason"]
    assert t.loc["sep1->sep1", "status"] == "skipped" and "nothing to attend" in t.loc["sep1->sep1", "reason"]
    assert t.loc["q->d", "status"] == "ok" and np.isfinite(t.loc["q->d", "ndcg@10"])
    assert np.isnan(t.loc["d->q", "ndcg@10"])
    with pytest.raises(MaskError, match="outside"):
        knockout_set(3, 4, layers="0:6")
    with pytest.raises(MaskError, match="unknown segment"):
        knockout_set(3, 4, paths="q->doc")


# ---------------------------------------------------------------------- the planted mechanism is found
def test_sweep_finds_the_planted_mechanism(planted_sweep):
    res, _ = planted_sweep
    t = res.table
    assert res.meta["clean"]["ndcg@10"] == 1.0  # the planted model ranks perfectly
    assert len(t) == 3 * 25 and t["status"].isin(["ok", "structural"]).all()
    struct = t[t["status"] == "structural"]  # last-layer rows other than [CLS]: measured, exactly no effect
    assert len(struct) == 20 and (struct["layer"] == 2).all() and (struct["abs_dscore"] == 0).all()
    assert res.meta["rank_by"] == "delta_margin" and (t["rank_by"] == "delta_margin").all()
    # the sensitive measure separates the route with CIs that exclude zero, and nothing else is harmful
    route_rows = t.set_index(["layer", "path"]).loc[[MECHANISM["match"], MECHANISM["readout"]]]
    assert (route_rows["delta_margin_ci_high"] < 0).all() and (route_rows["flip_rate"] > 0.2).all()
    t = t.set_index(["layer", "path"])
    match, readout = MECHANISM["match"], MECHANISM["readout"]
    route = [match, readout]
    drops = -t["delta_ndcg@10"]
    assert set(drops.nlargest(2).index) == set(route)
    assert drops[match] > 0.3 and drops[readout] > 0.3
    others = drops.drop(route)
    assert others.abs().max() < 1e-9  # nothing else matters for the ranking
    assert t.loc[match, "p_value"] < 0.01 and t.loc[match, "kendall_tau"] < 0.5
    assert t.loc[match, "mean_abs_dscore"] > 5 * t["mean_abs_dscore"].drop(route).max()
    # q->d in other layers, and anything in layer 0, is irrelevant
    assert t.loc[(0, "q->d"), "mean_abs_dscore"] == 0.0 and t.loc[(2, "q->d"), "mean_abs_dscore"] == 0.0
    # per-query values are saved for every knockout, and the clean run too
    pq = res.per_query
    assert set(pq["path"]) >= {"clean", "q->d"} and len(pq) == (75 + 1) * 8


def test_derivation_keeps_the_mechanism_and_removes_the_rest(planted, planted_sweep, tmp_path):
    folder, ds, run = planted
    _, out = planted_sweep
    d = derive_mask(out, data=ds, run=run, tolerance=0.01, max_steps=None)  # model, split, k: from the sweep's metadata
    mask = d.mask
    (ml, mp), (rl, rp) = MECHANISM["match"], MECHANISM["readout"]
    assert mask.allowed(ml, mp) and mask.allowed(rl, rp)
    assert int((~mask.tables[:, :5, :5]).sum()) >= 50  # most of the 75 (layer, path) cells are gone
    assert not mask.allowed(0, "q->d") and not mask.allowed(2, "q->d") and not mask.allowed(1, "d->d")
    steps = d.steps
    assert steps["decision"].iloc[0] == "start"
    assert set(steps["decision"]) <= {"start", "removed", "kept", "invalid", "structural"}
    # last-layer rows other than [CLS] go without a re-check, and are labelled so
    struct = steps[steps["decision"] == "structural"]
    assert len(struct) and (struct["layer"] == 2).any() and struct["value"].isna().all()
    assert (struct.loc[struct["layer"] == 2, "path"].str.split("->").str[0] != "cls").all()
    assert (steps.loc[steps["decision"] == "removed", "rel_loss"] <= 0.01).all()
    assert d.meta["held_out_queries"] == 8  # the 8 queries the sweep did not see
    # saved: JSON with provenance, steps table, report; the mask loads and the model accepts it
    from figures.derivation import plot_derivation  # drawn by the caller: ablations never import figures

    figure = plot_derivation(d.steps, tmp_path / "mask.steps.png", tolerance=0.01)[0]
    path = d.save(tmp_path / "mask.json", figure=figure)
    loaded = InteractionMask.load(path)
    assert loaded == mask and loaded.provenance["tolerance"] == 0.01 and loaded.provenance["metric"] == "ndcg@10"
    assert loaded.provenance["steps"][0]["decision"] == "start" and loaded.provenance["derived_from"].endswith(
        "ablation.parquet"
    )
    report = (tmp_path / "mask.report.md").read_text()
    assert f"`{mp}` @ {ml}" in report and "a->b" in report and "![derivation steps](mask.steps.png)" in report
    model = HookedCrossEncoder.from_pretrained(folder)
    pairs = [(ds.queries("test")[q], ds.corpus()[dd]) for q, dd, _ in ds.qrels("test").itertuples(index=False)]
    scores = model.predict(pairs, mask=str(path))
    assert np.isfinite(scores).all()
    rel = ds.qrels("test")["relevance"].to_numpy() > 0
    assert scores[rel].min() > scores[~rel].max() - 1e-6  # still ranks perfectly under the derived mask


def test_derivation_stops_at_the_tolerance(planted, planted_sweep):
    _, ds, run = planted
    res, _ = planted_sweep
    # with the route made removable first (a doctored sweep), the search must stop right there
    t = res.table.copy()
    route = (t["layer"] == MECHANISM["match"][0]) & (t["path"] == MECHANISM["match"][1])
    t.loc[route, "delta_ndcg@10"] = 1.0
    doctored = type(res)(t, res.per_query, res.meta)
    d = derive_mask(doctored, data=ds, run=run, tolerance=0.05, measure="delta_ndcg@10")
    checked = d.steps[~d.steps["decision"].isin(["start", "structural"])]
    assert len(checked) == 1 and checked["decision"].iloc[0] == "kept"
    assert (checked["layer"].iloc[0], checked["path"].iloc[0]) == MECHANISM["match"]
    assert d.meta["re_checks"] == 1 and d.mask.allowed(*MECHANISM["match"])


def test_merge_layer_search_finds_where_query_meets_document(planted, tmp_path):
    folder, ds, run = planted
    res = merge_layer_search(str(folder), ds, "test", run, k=8, base="mask2", tolerance=0.01)
    t = res.table.set_index("k")
    assert list(t.index) == [-1, 0, 1, 2, 3]
    assert res.chosen_k == MECHANISM["match"][0]  # q->d may be blocked below the layer where it carries relevance
    assert t.loc[2, "ndcg@10"] < 0.8 and not t.loc[2, "within_tolerance"]
    assert res.mask.name == "mask3(k=1)" and res.mask == InteractionMask.from_preset("mask3", 3, k=1)
    assert res.mask.provenance["chosen_k"] == 1 and len(res.mask.provenance["table"]) == 5
    res.mask.save(tmp_path / "m.json")
    assert InteractionMask.load(tmp_path / "m.json") == res.mask


def test_zero_shot_preset_table(planted, tmp_path):
    folder, ds, run = planted
    res = ablate_masks(
        str(folder),
        ds,
        "test",
        run,
        k=8,
        masks="mask0,mask2,mask3:k=1,sparse_ce,prettr(1)",
        out=tmp_path / "presets.csv",
    )
    t = res.table.set_index("mask")
    assert list(t.index) == ["mask0", "mask2", "mask3(k=1)", "sparse_ce", "prettr(k=1)"]
    assert t.loc["mask2", "delta_ndcg@10"] == 0.0  # mask2 keeps q->d and cls->q
    assert t.loc["sparse_ce", "delta_ndcg@10"] < -0.3  # sparse_ce blocks q->d everywhere
    assert load_sweep(tmp_path / "presets.csv").table["mask"].tolist() == list(t.index)
    assert (tmp_path / "presets.per_query.csv").exists()


# ---------------------------------------------------------------------- resumable sweeps
class _Interrupt(Exception):
    pass


def test_interrupted_sweep_resumes_to_the_identical_table(tiny_bert, planted, tmp_path):
    _, ds, run = planted
    kw = dict(k=5, max_queries=3, layers="0:3", paths="q->d,d->q,cls->q,q->q,d->d", heads=[2], unit_size=4)
    out = tmp_path / "sweep.csv"
    calls = []

    def stop_after_two(done, total):
        calls.append((done, total))
        if done == 2:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        sweep(str(tiny_bert), ds, "test", run, out=out, callback=stop_after_two, **kw)
    partial = tmp_path / "sweep.csv.partial"
    assert partial.exists() and not out.exists()
    lines = partial.read_text().splitlines()
    assert len(lines) == 3  # header + two finished units
    with open(partial, "a") as fh:
        fh.write('{"unit": 7, "rows": [')  # a torn line from a kill mid-write is discarded
    calls.clear()
    resumed = sweep(str(tiny_bert), ds, "test", run, out=out, callback=lambda d, t: calls.append((d, t)), **kw)
    total_units = 9  # 30 knockouts: 10 per layer, in units of <= 4 (4 + 4 + 2)
    assert calls[-1] == (total_units - 2, total_units - 2)
    assert out.exists() and not partial.exists()
    fresh = sweep(str(tiny_bert), ds, "test", run, out=tmp_path / "fresh.csv", **kw)
    pd.testing.assert_frame_equal(resumed.table, fresh.table, check_exact=True)
    pd.testing.assert_frame_equal(resumed.per_query, fresh.per_query, check_exact=True)
    on_disk = load_sweep(out)
    pd.testing.assert_frame_equal(on_disk.table, pd.read_csv(tmp_path / "fresh.csv"), check_exact=True)
    assert on_disk.meta["query_ids"] == fresh.meta["query_ids"] and len(on_disk.per_query) == len(fresh.per_query)


def test_partial_results_of_another_sweep_are_refused(tiny_bert, planted, tmp_path):
    _, ds, run = planted
    out = tmp_path / "s.parquet"
    with pytest.raises(_Interrupt):
        sweep(
            str(tiny_bert),
            ds,
            "test",
            run,
            k=4,
            max_queries=2,
            layers="0:2",
            out=out,
            callback=lambda d, t: (_ for _ in ()).throw(_Interrupt()),
        )
    with pytest.raises(DataError, match="different sweep"):
        sweep(str(tiny_bert), ds, "test", run, k=4, max_queries=2, layers="0:2", out=out, mode="zero")
    res = sweep(str(tiny_bert), ds, "test", run, k=4, max_queries=2, layers="0:2", out=out, mode="zero", restart=True)
    assert (res.table["mode"] == "zero").all() and out.exists()


# ---------------------------------------------------------------------- layer-drop and figures
def test_layer_drop_choice_and_figure(tmp_path):
    from figures.derivation import plot_layer_drop

    rows = [
        {"interaction_layers": b, "contextual_layers": a, "metric": "nDCG@10", "value": v}
        for a, vals in ((3, [0.10, 0.46, 0.49, 0.495]), (2, [0.12, 0.40, 0.475, 0.48]))
        for b, v in zip(range(1, 5), vals)
    ]
    path = tmp_path / "layer_drop.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    choice = choose_interaction_layers(path, "ndcg@10", tolerance=0.02).set_index("contextual_layers")
    assert choice.loc[3, "chosen_interaction_layers"] == 3 and choice.loc[2, "chosen_interaction_layers"] == 3
    assert choice.loc[3, "reference"] == 0.495
    choice = choose_interaction_layers(path, "nDCG@10", tolerance=0.02, reference=0.6)
    assert choice["chosen_interaction_layers"].isna().all()
    with pytest.raises(DataError, match="missing"):
        choose_interaction_layers(pd.DataFrame({"value": [1.0]}), "ndcg@10")
    made = plot_layer_drop(path, tmp_path / "layer_drop", formats=("png",))
    assert made[0].stat().st_size > 1000


def test_knockout_and_derivation_figures_render_from_saved_tables(planted_sweep, tiny_bert, planted, tmp_path):
    from figures.derivation import plot_merge_layer
    from figures.knockouts import main, plot_head_sweep, plot_mask_ablation

    _, out = planted_sweep
    assert main([str(out), str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "knockouts_layers.png").stat().st_size > 1000
    _, ds, run = planted
    sweep(
        str(tiny_bert), ds, "test", run, k=4, max_queries=2, paths="q->d,d->q", heads=True, out=tmp_path / "heads.csv"
    )
    assert plot_head_sweep(tmp_path / "heads.csv", tmp_path / "heads", formats=("png",))[0].exists()
    ab = ablate_masks(
        str(tiny_bert), ds, "test", run, k=4, max_queries=2, masks="mask1,mask2", out=tmp_path / "masks.parquet"
    )
    assert plot_mask_ablation(tmp_path / "masks.parquet", tmp_path / "masks", formats=("png",))[0].exists()
    assert len(ab.table) == 2
    merge = pd.DataFrame(
        {
            "k": [-1, 0, 1, 2],
            "mask": ["none", "mask2", "mask3(k=1)", "mask3(k=2)"],
            "ndcg@10": [0.5, 0.49, 0.48, 0.3],
            "chosen": [False, False, True, False],
        }
    )
    merge.to_csv(tmp_path / "merge.csv", index=False)
    assert plot_merge_layer(tmp_path / "merge.csv", tmp_path / "merge", formats=("png",))[0].exists()


def test_cli_sweep_derive_and_merge_layer(planted, tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import write_beir
    from mice.rank.runs import write_run

    folder, ds, run = planted
    write_beir(ds, tmp_path / "beir")
    write_run(run, tmp_path / "run.trec")
    r = CliRunner()
    common = [
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
    ]
    res = r.invoke(
        app,
        [
            "ablate",
            "sweep",
            *common,
            "--out",
            str(tmp_path / "sw.csv"),
            "--max-queries",
            "8",
            "--layers",
            "1:3",
            "--paths",
            "q->d,cls->q,d->d,q->q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "8 knockouts" in res.output
    meta = json.loads((tmp_path / "sw.meta.json").read_text())
    assert meta["source"]["dataset"] == str((tmp_path / "beir").resolve()) and meta["model_spec"] == str(folder)
    assert meta["source"]["run"] == str((tmp_path / "run.trec").resolve())
    res = r.invoke(
        app,
        [
            "ablate",
            "derive",
            "--sweep",
            str(tmp_path / "sw.csv"),
            "--out",
            str(tmp_path / "m.json"),
            "--tolerance",
            "0.01",
        ],
    )
    assert res.exit_code == 0, res.output
    mask = InteractionMask.load(tmp_path / "m.json")
    assert mask.allowed(1, "q->d") and mask.allowed(2, "cls->q") and not mask.allowed(1, "d->d")
    res = r.invoke(
        app,
        [
            "ablate",
            "merge-layer",
            *common,
            "--out",
            str(tmp_path / "merge.csv"),
            "--mask-out",
            str(tmp_path / "m3.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "chosen k = 1" in res.output
    assert InteractionMask.load(tmp_path / "m3.json") == InteractionMask.from_preset("mask3", 3, k=1)
