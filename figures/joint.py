"""The joint search's own measured points, drawn from `joint.parquet` alone: each split's relative fidelity loss
against Baseline ft at every rung it reached, with its one-sided upper bound, against its query-time cost (b)."""

from __future__ import annotations

import pandas as pd

from figures import save_figure, setup_style


def plot_joint(table, out_stem, tolerance: float | None = None, formats=("png", "pdf")):
    """One panel: x = b (shifted by a within each b), y = relative fidelity loss, bars up to the upper bound; the
    last rung's points are the finalists. `table` is joint.parquet (a DataFrame or a path)."""
    import matplotlib.pyplot as plt

    from mice.files import read_table

    setup_style()
    t = table if isinstance(table, pd.DataFrame) else read_table(table)
    t = t[t["a"].notna() & t["loss"].notna()]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    last = int(t["rung"].max()) if len(t) else 0
    for rung, g in t.groupby("rung"):
        x = g["b"] + (g["a"] - g["a"].mean()) * 0.06
        final = int(rung) == last
        ax.errorbar(
            x,
            g["loss"],
            yerr=[g["loss"] * 0, g["loss_upper"] - g["loss"]],
            fmt="s" if final else "o",
            capsize=2,
            color="tab:red" if final else "tab:blue",
            label=f"rung {int(rung)}: {int(g['steps'].max())} steps × {int(g['n_seeds'].max())} seed(s)",
        )
        for xi, (_, r) in zip(x, g.iterrows()):
            ax.annotate(
                f"ℓ{int(r['a'])}+{int(r['b'])}", (xi, r["loss"]), fontsize=6, xytext=(3, -3), textcoords="offset points"
            )
    if tolerance is not None:
        ax.axhline(tolerance, color="black", lw=0.8, ls="--", label=f"tolerance {tolerance:.0%}")
    if len(t):
        ax.set_xticks(range(1, int(t["b"].max()) + 1))
    ax.set(
        xlabel="query-time interaction layers b (cost)",
        ylabel="relative fidelity loss vs Baseline ft",
        title="Joint search: every split it trained (bar: one-sided 95% upper bound)",
    )
    ax.legend(fontsize=6)
    return save_figure(fig, out_stem, formats)
