"""mice.viz without a browser: inputs are checked with clear errors, the Python side of each view computes what
the page shows (the browser tests compare the two), and nothing in a fragment points at the network."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from mice import InteractionMask
from mice.errors import DataError, MaskError
from mice.viz import KnockoutView, MaskView, PairAttentionView, PathMassView


def _pattern(L=2, H=3, T=7, seed=0):
    x = np.random.default_rng(seed).normal(size=(L, H, T, T))
    p = np.exp(x)
    return p / p.sum(-1, keepdims=True)


SEGS7 = ["cls", "q", "q", "sep1", "d", "d", "sep2"]


def test_pair_view_checks_shapes_and_segments():
    with pytest.raises(DataError, match=r"\[layers, heads, T, T\]"):
        PairAttentionView(np.zeros((2, 7, 7)), ["t"] * 7, SEGS7)
    with pytest.raises(DataError, match="6 tokens and 7 segments"):
        PairAttentionView(_pattern(), ["t"] * 6, SEGS7)
    with pytest.raises(DataError, match="unknown segment"):
        PairAttentionView(_pattern(), ["t"] * 7, SEGS7[:-1] + ["doc"])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        PairAttentionView(_pattern() * 3, ["t"] * 7, SEGS7)


def test_pair_view_drops_padding_and_computes_path_mass():
    p = _pattern(T=8)
    v = PairAttentionView(p, [f"t{i}" for i in range(8)], SEGS7 + ["pad"])
    assert v.pattern.shape == (2, 3, 7, 7) and v.segments == SEGS7
    q, d = [1, 2], [4, 5]
    expected = p[1, :, :7, :7].mean(0)[q][:, d].sum(1).mean()
    assert v.path_mass("q->d", layer=1) == pytest.approx(expected)
    assert v.path_mass("q->d", layer=1, head=2) == pytest.approx(p[1, 2][q][:, d].sum(1).mean())


def test_pair_view_layer_subset_and_size_guard(monkeypatch):
    p = _pattern(L=4)
    v = PairAttentionView(p, ["t"] * 7, SEGS7, layers=[1, 3])
    assert v.pattern.shape[0] == 2 and v.data()["layer_ids"] == [1, 3] and v.data()["layer"] == 1
    assert v.path_mass("q->d", layer=3) == pytest.approx(PairAttentionView(p, ["t"] * 7, SEGS7).path_mass("q->d", 3))
    with pytest.raises(DataError, match=r"layers \[4\] outside"):
        PairAttentionView(p, ["t"] * 7, SEGS7, layers=[4])
    monkeypatch.setattr(PairAttentionView, "MAX_BYTES", 2 * 3 * 7 * 7 * 2 - 1)  # two layers' worth, minus one byte
    with pytest.raises(DataError, match="MiB of attention to embed.*layers="):
        PairAttentionView(p, ["t"] * 7, SEGS7, layers=[0, 1])
    assert PairAttentionView(p, ["t"] * 7, SEGS7, layers=[0]).pattern.shape[0] == 1


def test_path_mass_view_needs_probe_columns():
    with pytest.raises(DataError, match="lacks column"):
        PathMassView(pd.DataFrame({"layer": [0], "head": [0], "mass": [0.1]}))


def test_knockout_view_value_columns_and_t_interval():
    from scipy import stats

    t = pd.DataFrame({"layer": [0, 0], "path": ["q->d", "d->q"], "delta_ndcg@10": [-0.1, 0.0]})
    with pytest.raises(DataError, match="no column 'estimate'"):
        KnockoutView(t, value="estimate")
    with pytest.raises(DataError, match="say which column"):
        KnockoutView(t.drop(columns="delta_ndcg@10").assign(x=1.0))
    vals = np.array([-0.3, -0.1, 0.0, -0.2])
    pq = pd.DataFrame({"query_id": list("abcd"), "layer": 0, "path": "q->d", "delta_ndcg@10": vals})
    with pytest.raises(DataError, match="per-query table lacks"):
        KnockoutView(t, per_query=pq.drop(columns="query_id"))
    data = KnockoutView(t, per_query=pq).data()
    cell = data["cells"]["0|-1|q->d"]
    half = stats.t.ppf(0.975, 3) * vals.std(ddof=1) / 2
    assert cell["ci_low"] == pytest.approx(vals.mean() - half) and cell["ci_high"] == pytest.approx(vals.mean() + half)
    assert data["cells"]["0|-1|d->q"]["ci_low"] is None  # no per-query values, no interval
    both = pd.concat([t.assign(mode="zero"), t.assign(mode="renorm", **{"delta_ndcg@10": [0.5, 0.5]})])
    with pytest.raises(DataError, match="several knockout modes"):
        KnockoutView(both)
    assert KnockoutView(both, mode="renorm").data()["cells"]["0|-1|q->d"]["value"] == 0.5
    with pytest.raises(DataError, match="several rows for"):
        KnockoutView(pd.concat([t, t]))
    with_ci = KnockoutView(t.assign(ci_low=[-0.2, -0.1], ci_high=[0.0, 0.1])).data()
    assert with_ci["cells"]["0|-1|q->d"]["ci_low"] == -0.2 and "from the table" in with_ci["ci_label"]


def test_mask_view_structural_forms_agree_and_are_checked():
    mask = InteractionMask.from_preset("mask1", 4)
    listed = MaskView(mask, structural=[(3, "q->*"), (3, "d->cls")]).structural
    arr = np.zeros((4, 6, 6), dtype=bool)
    arr[3, 1, :5] = True
    arr[3, 3, 0] = True
    assert np.array_equal(listed, MaskView(mask, structural=arr).structural)
    with pytest.raises(MaskError, match="layer 4 outside"):
        MaskView(mask, structural=[(4, "q->d")])
    with pytest.raises(MaskError, match="unknown segment"):
        MaskView(mask, structural=[(0, "q->doc")])
    with pytest.raises(MaskError, match=r"bool array \[4, 5, 5\]"):
        MaskView(mask, structural=np.zeros((3, 5, 5), dtype=bool))


def test_mask_view_reads_configs_and_toggles_like_python(tmp_path):
    mask = InteractionMask.from_preset("mask2", 3)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"a": 1, "b": 2, "mask": mask.to_dict(), "tolerance": 0.01}))
    assert MaskView(cfg).mask == mask
    with pytest.raises(MaskError, match="format"):
        MaskView({"rules": []})
    edited = MaskView(mask).toggled([(0, "d->q"), (2, "q->d")])
    assert edited.allowed(0, "d->q") and not edited.allowed(2, "q->d") and not edited.allowed(1, "d->q")
    assert edited == InteractionMask.from_dict(json.loads(json.dumps(edited.to_dict())))


def test_fragments_reference_no_network():
    views = [PairAttentionView(_pattern(), ["t"] * 7, SEGS7), MaskView(InteractionMask.from_preset("mask0", 2))]
    for v in views:
        urls = set(re.findall(r"https?://[^\s'\"]+", v.html()))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls  # an XML namespace name, never fetched
        assert "</script>" not in v.html().split("<script>", 1)[1][: -len("</script>")]


def test_notebooks_are_committed_without_outputs():
    """The notebooks show interactive views when run; in git they stay stripped (no outputs, no counts)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "notebooks"
    notebooks = sorted(root.glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} cell {i}"


def test_report_html_inlines_figures_and_builds_a_toc(tmp_path):
    """The Markdown-to-page step alone: relative and spaced figure paths inline, headings get anchors, views
    land in their section, and a missing figure is a clear error."""
    from mice.viz.report import render_report_html

    (tmp_path / "fig dir").mkdir()
    png = bytes.fromhex("89504e470d0a1a0a")  # PNG magic is enough: the browser tests decode real figures
    (tmp_path / "fig dir" / "a b.png").write_bytes(png)
    md = "# R\n\n## One\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n![cap](fig dir/a b.png)\n\n### Sub\n\n## Two\n\ntext\n"
    view = MaskView(InteractionMask.from_preset("mask0", 2))
    page = render_report_html(
        md.replace("](fig dir/a b.png)", "](<fig dir/a b.png>)"),
        tmp_path,
        views={"One": [("cap", view)], "Absent": [("later", view)]},
    )
    assert 'src="data:image/png;base64,iVBORw0KGgo=" data-source="a b.png"' in page
    assert [a for a in re.findall(r'<a href="#([^"]+)"', page)] == ["one", "sub", "two", "interactive-views"]
    assert page.index('id="sub"') < page.index('data-kind="mask"') < page.index('id="two"')  # at the end of One
    assert page.count('data-kind="mask"') == 2 and '<table class="md-table">' in page
    with pytest.raises(DataError, match="figure nope.png not found"):
        render_report_html("![x](nope.png)", tmp_path)
