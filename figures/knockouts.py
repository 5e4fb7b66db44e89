"""Knockout figures, drawn from saved sweep / mask-ablation tables (`mice ablate sweep|presets`).

`python -m figures.knockouts SWEEP_TABLE OUTDIR` draws the layer x path map (and the per-head maps when the
sweep has per-head rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from figures import PATH_CONVENTION, save_figure, setup_style


def _table(t):
    if isinstance(t, (str, Path)):
        from mice.results import load_sweep

        return load_sweep(t).table
    return getattr(t, "table", t)


def _default_metric(t, metric):
    if metric:
        return metric
    if "rank_by" in t.columns and len(t) and str(t["rank_by"].iloc[0]) in t.columns:
        return str(t["rank_by"].iloc[0])
    return "delta_ndcg@10"


def plot_sweep(
    sweep, out_stem, metric: str | None = None, alpha: float = 0.05, mode: str | None = None, formats=("png", "pdf")
):
    """Layer x path map of layer-level knockouts (a sweep or an attribution table): colour = `metric` (default:
    the measure that ranked them, e.g. the relevant-vs-non-relevant margin change); `*` = its 95% bootstrap CI
    excludes zero (or, without CIs, paired t-test p < alpha); `s` = structural (cannot change the score: no
    evidence needed); grey = skipped (already blocked, or a segment would have nothing to attend to)."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _table(sweep)
    t = t[t["head"] == -1]
    if mode is None and "mode" in t and len(t):
        mode = "renorm" if (t["mode"] == "renorm").any() else str(t["mode"].iloc[0])
    if mode is not None:
        t = t[t["mode"] == mode]
    metric = _default_metric(t, metric)
    paths = list(dict.fromkeys(t["path"]))
    layers = sorted(t["layer"].unique())
    grid = np.full((len(layers), len(paths)), np.nan)
    stars = np.zeros_like(grid, dtype=bool)
    struct = np.zeros_like(grid, dtype=bool)
    values = t[metric].to_numpy(dtype=float)
    lo, hi = f"{metric}_ci_low", f"{metric}_ci_high"
    if lo in t and hi in t:
        sig = ((t[lo] > 0) | (t[hi] < 0)).to_numpy()
        sig_label = "95% CI excludes 0"
    else:
        pvals = t["p_value"].to_numpy(dtype=float) if "p_value" in t else np.ones(len(t))
        sig = pvals < alpha
        sig_label = f"p<{alpha}"
    for n, (layer, path, status) in enumerate(zip(t["layer"], t["path"], t["status"])):
        i, j = layers.index(layer), paths.index(path)
        if status in ("ok", "structural"):
            grid[i, j] = values[n] if np.isfinite(values[n]) else 0.0
            stars[i, j] = bool(sig[n]) and status == "ok"
            struct[i, j] = status == "structural"
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    lim = lim or 1.0
    fig, ax = plt.subplots(figsize=(0.42 * len(paths) + 2.2, 0.45 * len(layers) + 1.6))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for i, j in zip(*np.nonzero(stars)):
        ax.text(j, i, "*", ha="center", va="center", fontsize=9, color="black")
    for i, j in zip(*np.nonzero(struct)):
        ax.text(j, i, "s", ha="center", va="center", fontsize=6, color="#555555")
    ax.set_xticks(range(len(paths)), paths, rotation=90, fontsize=7)
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("path knocked out")
    ax.set_ylabel("layer")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(
        f"Knockouts ({mode}): {metric}; * {sig_label}; s = structural; grey = skipped\n({PATH_CONVENTION})", fontsize=8
    )
    return save_figure(fig, out_stem, formats)


def plot_head_sweep(sweep, out_stem, metric: str | None = None, mode: str | None = None, formats=("png", "pdf")):
    """Per-head knockouts (a head-level sweep or attribution table): one layer x head map per path; structural
    cells are hatched."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _table(sweep)
    if mode is None and "mode" in t and len(t):
        mode = "renorm" if (t["mode"] == "renorm").any() else str(t["mode"].iloc[0])
    if mode is not None and "mode" in t:
        t = t[t["mode"] == mode]
    metric = _default_metric(t, metric)
    t = t[(t["head"] >= 0) & (t["status"].isin(["ok", "structural"]))]
    if t.empty:
        raise ValueError("the table has no per-head knockouts (run it with --heads)")
    from mice.masks import all_paths

    present = list(dict.fromkeys(t["path"]))
    paths = [p for p in all_paths() if p in present] + [p for p in present if p not in all_paths()]
    n_layers, n_heads = int(t["layer"].max()) + 1, int(t["head"].max()) + 1
    cols = min(5, len(paths))
    rows = int(np.ceil(len(paths) / cols))
    lim = float(np.nanmax(np.abs(t[metric].to_numpy(dtype=float)))) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 1, 2.3 * rows + 0.8), squeeze=False)
    fig.subplots_adjust(hspace=0.65, wspace=0.35)
    im = None
    for ax, p in zip(axes.ravel(), paths):
        sub = t[t["path"] == p]
        grid = np.full((n_layers, n_heads), np.nan)
        grid[sub["layer"].to_numpy(), sub["head"].to_numpy()] = sub[metric].to_numpy(dtype=float)
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        st = sub[sub["status"] == "structural"]
        for l, h in zip(st["layer"], st["head"]):
            ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, hatch="///", lw=0, color="#888888"))
        ax.set_title(p, fontsize=8)
        ax.set_xlabel("head", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.grid(False)
    for ax in axes.ravel()[len(paths) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label=metric)
    fig.suptitle(f"Per-head knockouts ({mode}): {metric}; hatched = structural ({PATH_CONVENTION})", fontsize=9)
    return save_figure(fig, out_stem, formats)


def plot_mask_ablation(table, out_stem, metric: str = "ndcg@10", formats=("png", "pdf")):
    """Zero-shot whole-mask ablations (presets): `metric` per mask against the clean model."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _table(table)
    clean = float((t[metric] - t[f"delta_{metric}"]).iloc[0])
    fig, ax = plt.subplots(figsize=(0.7 * len(t) + 2, 3))
    colors = ["#c44e52" if p < 0.05 else "#4c72b0" for p in t.get("p_value", np.ones(len(t)))]
    ax.bar(range(len(t)), t[metric], color=colors)
    ax.axhline(clean, color="black", ls="--", lw=1, label=f"clean {clean:.3f}")
    ax.set_xticks(range(len(t)), t["mask"], rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    mode = str(t["mode"].iloc[0]) if "mode" in t and len(t) else ""
    ax.set_title(f"Masks applied zero-shot ({mode}); red = p<0.05\n({PATH_CONVENTION})", fontsize=8)
    return save_figure(fig, out_stem, formats)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m figures.knockouts SWEEP_TABLE OUTDIR", file=sys.stderr)
        return 2
    table, outdir = Path(argv[0]), Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    t = _table(table)
    if "mask" in t.columns:
        plot_mask_ablation(t, outdir / "mask_ablation")
        return 0
    if (t["head"] == -1).any():
        plot_sweep(t, outdir / "knockouts_layers")
    if (t["head"] >= 0).any():
        plot_head_sweep(t, outdir / "knockouts_heads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
