"""Mask-derivation figures, drawn from saved tables: greedy steps (`<mask>.steps.csv`), merge-layer search
(`mice ablate merge-layer` table), layer-drop results of trained MICE variants, and the trained search's curves
(`mice ablate search`: search.parquet).

`python -m figures.derivation steps|merge|layer-drop TABLE OUT_STEM [METRIC]`.
"""

from __future__ import annotations

import sys
from pathlib import Path


from figures import PATH_CONVENTION, save_figure, setup_style

DECISION_STYLE = {
    "removed": ("o", "#55a868"),
    "kept": ("X", "#c44e52"),
    "invalid": ("s", "#8c8c8c"),
    "start": ("D", "#4c72b0"),
    "structural": ("|", "#8172b2"),
}


def _read(t):
    if isinstance(t, (str, Path)):
        from mice.files import read_table

        return read_table(t)
    return t


def plot_derivation(
    steps,
    out_stem,
    metric: str = "ndcg@10",
    tolerance: float | None = None,
    reference: float | None = None,
    formats=("png", "pdf"),
):
    """Each greedy step: the held-out metric of the trial mask (green = path removed, red = kept, grey = invalid)
    and the cumulative mask's metric; the dashed line is the tolerance floor."""
    import matplotlib.pyplot as plt

    setup_style()
    s = _read(steps)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * len(s) + 2.5), 3.4))
    ax.plot(s["step"], s["current"], color="#4c72b0", lw=1.2, label="cumulative mask")
    for decision, (marker, color) in DECISION_STYLE.items():
        if decision == "structural":  # no re-check: drawn on the cumulative line
            sub = s[s["decision"] == decision]
            y = sub["current"]
            label = "structural (no re-check)"
        else:
            sub = s[(s["decision"] == decision) & s["value"].notna()]
            y = sub["value"]
            label = decision
        if len(sub):
            ax.scatter(sub["step"], y, marker=marker, color=color, s=22, label=label, zorder=3)
    if reference is not None and tolerance is not None:
        ax.axhline(
            reference * (1 - tolerance), color="black", ls="--", lw=0.8, label=f"tolerance floor ({tolerance:g})"
        )
    labels = ["base" if d == "start" else f"{p}@{int(l)}" for p, l, d in zip(s["path"], s["layer"], s["decision"])]
    if len(s) <= 80:
        ax.set_xticks(s["step"], labels, rotation=90, fontsize=6)
    ax.set_xlabel("path removed @ layer (in the order tried)")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"Greedy mask derivation ({PATH_CONVENTION})", fontsize=9)
    return save_figure(fig, out_stem, formats)


def plot_merge_layer(table, out_stem, metric: str = "ndcg@10", formats=("png", "pdf")):
    """Metric vs k for base + `q->d` blocked in layers [0, k); the chosen k is circled."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _read(table)
    ks = t[t["k"] >= 0]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(ks["k"], ks[metric], marker="o", color="#4c72b0", label="mask3(k): q->d blocked in [0, k)")
    full = t[t["k"] == -1]
    if len(full):
        ax.axhline(float(full[metric].iloc[0]), color="black", lw=0.8, ls=":", label="full model")
    if "chosen" in t and t["chosen"].any():
        c = t[t["chosen"]].iloc[0]
        ax.scatter(
            [c["k"]],
            [c[metric]],
            s=160,
            facecolors="none",
            edgecolors="#c44e52",
            lw=1.5,
            label=f"chosen k = {int(c['k'])}",
            zorder=3,
        )
    ax.set_xlabel("k (first layer where the query reads the document)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title(f"Merge-layer search ({PATH_CONVENTION})", fontsize=8)
    return save_figure(fig, out_stem, formats)


def plot_layer_drop(table, out_stem, metric: str | None = None, formats=("png", "pdf")):
    """Metric vs number of interaction layers b, one line per number of contextualisation layers a."""
    import matplotlib.pyplot as plt

    from mice.results import load_layer_drop

    setup_style()
    t = load_layer_drop(_read(table))
    metric = metric or str(t["metric"].iloc[0])
    t = t[t["metric"].str.lower() == metric.lower()]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for a, sub in t.groupby("contextual_layers"):
        sub = sub.sort_values("interaction_layers")
        ax.plot(sub["interaction_layers"], sub["value"], marker="o", label=f"a = {a} contextual")
    if "reference" in t and t["reference"].notna().any():
        ax.axhline(float(t["reference"].dropna().iloc[0]), color="black", ls=":", lw=0.8, label="reference")
    ax.set_xlabel("interaction layers b (MICE-ℓa+b)")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted(t["interaction_layers"].unique()))
    ax.legend(fontsize=7)
    ax.set_title("Layer-drop search over trained MICE variants", fontsize=9)
    return save_figure(fig, out_stem, formats)


def plot_search(
    table, stage: str, out_stem, metric: str = "ndcg@10", reference: float | None = None, formats=("png", "pdf")
):
    """One stage of the trained search: every candidate after the first rung's steps (equal for all, with 95%
    CIs over queries) beside the same candidate untrained (zero-shot), the finalists' seed-averaged values at
    their final steps, and the cross-encoder; the chosen candidate is circled."""
    import matplotlib.pyplot as plt
    import numpy as np

    from mice.results import curve

    setup_style()
    t = _read(table)
    trained, zero = curve(t, stage), curve(t, stage, trained=False)
    names = list(trained["candidate"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(names) + 2), 3.4))
    lo, hi = trained[metric] - trained[f"{metric}_ci_low"], trained[f"{metric}_ci_high"] - trained[metric]
    steps = int(trained["steps"].iloc[0])
    ax.errorbar(
        x,
        trained[metric],
        yerr=[lo, hi],
        marker="o",
        color="#4c72b0",
        capsize=2,
        lw=1.2,
        label=f"trained {steps} steps (95% CI)",
    )
    z = zero.set_index("candidate").reindex(names)
    ax.plot(x, z[metric], marker="s", ls="--", color="#8c8c8c", lw=1, label="zero-shot (0 steps)")
    flat = trained[trained["collapsed"].astype(bool)] if "collapsed" in trained else trained.iloc[:0]
    if len(flat):  # every document of a query scored alike: the first stage's order, never chosen
        ax.scatter(
            [names.index(c) for c in flat["candidate"]],
            flat[metric],
            marker="x",
            s=60,
            color="#c44e52",
            zorder=4,
            label="collapsed (does not re-rank)",
        )
    fin = t[(t["stage"] == stage) & t["trained"] & t["finalist"].astype(bool)]
    if len(fin):
        pos = [names.index(c) for c in fin["candidate"]]
        ax.scatter(
            pos,
            fin[metric],
            marker="D",
            color="#55a868",
            zorder=3,
            label=f"finalists: {int(fin['steps'].iloc[0])} steps x {int(fin['n_seeds'].iloc[0])} seeds",
        )
        chosen = fin[fin["chosen"].astype(bool)]
        if len(chosen):
            ax.scatter(
                [names.index(chosen["candidate"].iloc[0])],
                chosen[metric],
                s=170,
                facecolors="none",
                edgecolors="#c44e52",
                lw=1.5,
                zorder=4,
                label="chosen",
            )
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.8, ls=":", label="cross-encoder")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"dev {metric}")
    # beside the axes: inside, it can hide the chosen finalist
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    title = {"mask": "Mask steps and merge layer, trained", "layers": "Interaction layers b, trained"}.get(stage, stage)
    ax.set_title(f"{title} ({PATH_CONVENTION})", fontsize=8)
    return save_figure(fig, out_stem, formats)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (3, 4) or argv[0] not in ("steps", "merge", "layer-drop"):
        print("usage: python -m figures.derivation steps|merge|layer-drop TABLE OUT_STEM [METRIC]", file=sys.stderr)
        return 2
    kind, table, out = argv[0], argv[1], argv[2]
    metric = argv[3] if len(argv) == 4 else None
    if kind == "steps":
        plot_derivation(table, out, metric=metric or "ndcg@10")
    elif kind == "merge":
        plot_merge_layer(table, out, metric=metric or "ndcg@10")
    else:
        plot_layer_drop(table, out, metric=metric)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
