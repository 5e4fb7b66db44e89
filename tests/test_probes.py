"""Attention-path probes: masses are proper distributions, masks show up, results and figures round-trip."""

import numpy as np
import pandas as pd
import pytest

from mice import HookedCrossEncoder, InteractionMask
from mice.models.testing import PAIRS
from probes import attention_examples, attention_paths, layer_means, load_examples, load_probe, probe_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def test_masses_sum_to_one_over_to_in_the_full_model(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    table = attention_paths(model, PAIRS, batch_size=2)
    assert set(table.columns) >= {"layer", "head", "from", "to", "path", "mass", "std", "n_pairs"}
    assert len(table) == model.n_layers * (model.n_heads + 1) * 25
    sums = table.groupby(["layer", "head", "from"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    tok = table.groupby(["layer", "head", "from"])["token_mass"].sum()
    np.testing.assert_allclose(tok.to_numpy(), 1.0, atol=1e-5)
    assert (table["n_pairs"] == len(PAIRS)).all()
    assert (table["std"] > 0).any()
    # head -1 is the per-pair mean of the heads, so its mass is the mean of the per-head masses
    heads = table[table["head"] >= 0].groupby(["layer", "from", "to"])["mass"].mean()
    mean_rows = layer_means(table).set_index(["layer", "from", "to"])["mass"]
    np.testing.assert_allclose(heads.sort_index().to_numpy(), mean_rows.sort_index().to_numpy(), atol=1e-6)


def test_mass_matches_a_direct_computation_from_the_cache(tiny_bert):
    """One pair, one layer, one head: the mass of q->d is the mean over query tokens of their weight on d."""
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    pair = PAIRS[0]
    table = attention_paths(model, [pair])
    batch = model.tokenize([pair])
    _, cache = model.run_with_cache(batch)
    seg = batch["segment_ids"][0]
    from mice.segments import SEG

    p = cache["blocks.1.attn.hook_pattern"][0, 2]
    expected = p[seg == SEG["q"]][:, seg == SEG["d"]].sum(-1).mean().item()
    got = table.query("layer == 1 and head == 2 and path == 'q->d'")["mass"].item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_blocked_paths_carry_no_mass_under_a_mask(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    mask = InteractionMask.from_preset("mask2", model.n_layers)
    renorm = attention_paths(model, PAIRS, mask=mask)
    assert renorm.loc[renorm["path"] == "d->q", "mass"].abs().max() == 0.0
    np.testing.assert_allclose(renorm.groupby(["layer", "head", "from"])["mass"].sum(), 1.0, atol=1e-5)
    zero = attention_paths(model, PAIRS, mask=mask, mode="zero")
    assert zero.loc[zero["path"] == "d->q", "mass"].abs().max() == 0.0
    assert (zero.groupby(["layer", "head", "from"])["mass"].sum() < 0.999).any()  # not renormalised


def test_probe_over_a_run_saves_table_meta_and_examples(planted, tmp_path):
    folder, ds, run = planted
    out = tmp_path / "probe.parquet"
    table = probe_attention(str(folder), ds, out, split="test", run=run, k=4, max_queries=3, examples=2)
    assert table.attrs["meta"]["n_pairs"] == 12 and table.attrs["meta"]["n_queries"] == 3
    back = load_probe(out)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), table.reset_index(drop=True), check_like=True)
    assert back.attrs["meta"]["source"]["k"] == 4
    exs = load_examples(tmp_path / "probe.examples.npz")
    assert len(exs) == 2
    ex = exs[0]
    n = len(ex["tokens"])
    assert ex["pattern"].shape == (3, 4, n, n) and len(ex["segments"]) == n
    np.testing.assert_allclose(ex["pattern"].sum(-1), 1.0, atol=1e-5)
    # the planted readout: in layer 2, [CLS] (head 0) puts nearly all its attention on the query words
    cls_q = table.query("layer == 2 and head == 0 and path == 'cls->q'")["mass"].item()
    assert cls_q > 0.99
    # the chosen example is the query's relevant document
    rel = ds.qrels("test")
    assert ((rel["query_id"] == ex["query_id"]) & (rel["doc_id"] == ex["doc_id"]) & (rel["relevance"] > 0)).any()


def test_examples_from_plain_pairs(tiny_bert):
    exs = attention_examples(str(tiny_bert), PAIRS[:2], n=2)
    assert [e["query_id"] for e in exs] == ["p0", "p1"]
    assert exs[0]["tokens"][0] == "[CLS]" and exs[0]["segments"][0] == "cls"


def test_attention_figures_render_from_saved_files(planted, tmp_path):
    from figures.attention import plot_example, plot_head_grid, plot_layer_heatmaps

    folder, ds, run = planted
    out = tmp_path / "probe.csv"
    probe_attention(str(folder), ds, out, split="test", run=run, k=3, max_queries=2, examples=1)
    png = ("png",)
    made = plot_layer_heatmaps(out, tmp_path / "layers", formats=png) + plot_head_grid(
        out, tmp_path / "heads", formats=png
    )
    made += plot_example(tmp_path / "probe.examples.npz", tmp_path / "example", layer=2, head=0, formats=png)
    assert [p.name for p in made] == ["layers.png", "heads.png", "example.png"]
    for p in made:
        assert p.stat().st_size > 1000


def test_a_random_query_sample_is_seeded_nested_and_its_held_out_queries_continue_the_order(planted):
    """Ids often sort by topic, so `sample="random"` takes the first N of one seeded order: the same draw every
    time, smaller samples inside larger ones, and a derivation's held-out queries are the next of that order."""
    from ablations.derive import held_out
    from mice.errors import DataError
    from probes.candidates import from_run

    _, ds, run = planted
    every = from_run(ds, "test", run, k=4).query_ids
    assert len(every) >= 10
    first = from_run(ds, "test", run, k=4, max_queries=5)
    assert first.query_ids == every[:5] and "sample" not in first.source
    r5 = from_run(ds, "test", run, k=4, max_queries=5, sample="random")
    r8 = from_run(ds, "test", run, k=4, max_queries=8, sample="random")
    assert r5.query_ids == from_run(ds, "test", run, k=4, max_queries=5, sample="random").query_ids
    assert r5.query_ids == sorted(r5.query_ids) and r5.query_ids != first.query_ids
    assert set(r5.query_ids) < set(r8.query_ids)
    assert from_run(ds, "test", run, k=4, max_queries=5, sample="random", seed=1).query_ids != r5.query_ids
    assert r5.source["sample"] == "random" and r5.source["seed"] == 0
    rest = held_out({"query_ids": r5.query_ids, "source": r5.source}, ds, "test", run, 4, check_queries=3)
    assert set(rest.query_ids) == set(r8.query_ids) - set(r5.query_ids)
    with pytest.raises(DataError, match="sample='some'"):
        from_run(ds, "test", run, k=4, max_queries=5, sample="some")
