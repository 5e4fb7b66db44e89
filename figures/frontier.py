"""The MICE frontier, drawn from `frontier.parquet` alone: query-time cost against nDCG@10 with CIs and the Pareto
front, the merge-layer view (a, with every layer above it interacting) and the layer-drop view (b for each a)."""

from __future__ import annotations

import pandas as pd

from figures import save_figure, setup_style


def _errorbar(ax, t: pd.DataFrame, x: str, **kw):
    yerr = [t["ndcg@10"] - t["ndcg@10_low"], t["ndcg@10_high"] - t["ndcg@10"]]
    ax.errorbar(t[x], t["ndcg@10"], yerr=yerr, fmt="o", capsize=3, **kw)


def _cost_panel(ax, t: pd.DataFrame, num_layers: int) -> None:
    mice = t[t["kind"] == "mice"]
    live = mice[~mice["collapsed"].astype(bool)] if "collapsed" in mice else mice
    dead = mice.drop(index=live.index)
    _errorbar(ax, live, "cost", color="tab:blue", label="MICE-ℓa+b (x = b)")
    if len(dead):
        ax.scatter(dead["cost"], dead["ndcg@10"], marker="x", color="grey", label="collapsed (b = 1)")
    for kind, color, label in (
        ("control", "tab:red", "Baseline ft (x = L)"),
        ("late-interaction", "tab:green", "late interaction (x = 0)"),
    ):
        part = t[t["kind"] == kind]
        if len(part):
            _errorbar(ax, part, "cost", color=color, label=label)
    ref = t[t["kind"] == "cross-encoder"]
    if len(ref):
        ax.axhline(float(ref["ndcg@10"].iloc[0]), color="black", lw=0.8, ls="--", label="cross-encoder")
    front = t[t["pareto"].astype(bool)].sort_values("cost") if "pareto" in t else t.iloc[:0]
    if len(front):
        ax.step(front["cost"], front["ndcg@10"], where="post", color="tab:orange", lw=1.5, label="Pareto front")
    for _, r in live.iterrows():
        ax.annotate(
            f"ℓ{int(r['a'])}+{int(r['b'])}",
            (r["cost"], r["ndcg@10"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.set_xticks(range(0, num_layers + 1))
    ax.set(xlabel="query-time interaction layers (cost)", ylabel="test nDCG@10", title="cost vs effectiveness")
    ax.legend(fontsize=6, loc="lower right")


def _merge_panel(ax, t: pd.DataFrame, num_layers: int) -> None:
    m = t[(t["kind"] == "mice") & (t["a"] + t["b"] == num_layers)].sort_values("a")
    _errorbar(ax, m, "a", color="tab:blue")
    ax.plot(m["a"], m["ndcg@10"], color="tab:blue", lw=0.8)
    ax.set_xticks(range(1, num_layers))
    ax.set(xlabel="merge layer a (b = L - a)", ylabel="test nDCG@10", title="merge-layer view")


def _drop_panel(ax, t: pd.DataFrame) -> None:
    m = t[t["kind"] == "mice"]
    for a, g in m.groupby("a"):
        g = g.sort_values("b")
        ax.errorbar(
            g["b"],
            g["ndcg@10"],
            yerr=[g["ndcg@10"] - g["ndcg@10_low"], g["ndcg@10_high"] - g["ndcg@10"]],
            marker="o",
            capsize=2,
            label=f"a = {int(a)}",
        )
    if len(m):
        ax.set_xticks(range(1, int(m["b"].max()) + 1))
    ax.set(xlabel="interaction layers b", ylabel="test nDCG@10", title="layer-drop view")
    ax.legend(fontsize=6)


def plot_frontier(table, out_stem, domain: str = "in", num_layers: int | None = None, formats=("png", "pdf")):
    """Three panels for one test set; `table` is frontier.parquet (a DataFrame or a path)."""
    import matplotlib.pyplot as plt

    from mice.files import read_table

    setup_style()
    table = table if isinstance(table, pd.DataFrame) else read_table(table)
    t = table[table["domain"] == domain]
    num_layers = num_layers or int(t["cost"].max())
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    _cost_panel(axes[0], t, num_layers)
    _merge_panel(axes[1], t, num_layers)
    _drop_panel(axes[2], t)
    seeds = int(t["seeds"].max()) if len(t) else 0
    fig.suptitle(f"MICE frontier ({domain}; {int(t['steps'].max())} steps x {seeds} seeds; 95% CIs over queries)")
    return save_figure(fig, out_stem, formats)
