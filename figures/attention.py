"""Attention-path figures, drawn from a saved probe table (`mice probe attention`) and its examples file.

`python -m figures.attention PROBE.parquet OUTDIR` draws all three.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from figures import PATH_CONVENTION, save_figure, setup_style

SEGS = ("cls", "q", "sep1", "d", "sep2")
SEG_COLORS = {"cls": "#4d4d4d", "q": "#1f77b4", "sep1": "#8c8c00", "d": "#d95f02", "sep2": "#17a2b8", "pad": "#bbbbbb"}


def _table(probe):
    if isinstance(probe, (str, Path)):
        from mice.results import load_probe

        return load_probe(probe)
    return probe


def plot_layer_heatmaps(probe, out_stem, value: str = "mass", formats=("png", "pdf")):
    """One 5x5 heatmap per layer: head-averaged attention mass from each segment (row) to each (column)."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _table(probe)
    t = t[t["head"] == -1]
    layers = sorted(t["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(2.5 * len(layers) + 0.8, 2.9), squeeze=False)
    for n, (ax, l) in enumerate(zip(axes[0], layers)):
        grid = t[t["layer"] == l].pivot(index="from", columns="to", values=value).reindex(index=SEGS, columns=SEGS)
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1)
        for i in range(len(SEGS)):
            for j in range(len(SEGS)):
                v = grid.iloc[i, j]
                if np.isfinite(v):
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black"
                    )
        ax.set_xticks(range(len(SEGS)), SEGS, rotation=45)
        ax.set_yticks(range(len(SEGS)), SEGS if n == 0 else [])
        ax.set_title(f"layer {l}")
        ax.set_xlabel("to (attended)")
        ax.grid(False)
    axes[0][0].set_ylabel("from (attending)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"attention {value} (mean over heads)")
    fig.suptitle(f"Attention mass by path ({PATH_CONVENTION})", fontsize=9)
    return save_figure(fig, out_stem, formats)


def plot_head_grid(probe, out_stem, value: str = "mass", formats=("png", "pdf")):
    """A 5x5 grid of paths (row = from, column = to), each a layer x head heatmap of attention mass."""
    import matplotlib.pyplot as plt

    setup_style()
    t = _table(probe)
    t = t[t["head"] >= 0]
    n_layers, n_heads = int(t["layer"].max()) + 1, int(t["head"].max()) + 1
    fig, axes = plt.subplots(
        len(SEGS), len(SEGS), figsize=(2.2 * len(SEGS), 1.9 * len(SEGS)), squeeze=False, sharex=True, sharey=True
    )
    im = None
    for i, a in enumerate(SEGS):
        for j, b in enumerate(SEGS):
            ax = axes[i][j]
            sub = t[(t["from"] == a) & (t["to"] == b)]
            grid = np.full((n_layers, n_heads), np.nan)
            grid[sub["layer"].to_numpy(), sub["head"].to_numpy()] = sub[value].to_numpy()
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"{a}->{b}", fontsize=8)
            ax.grid(False)
            if i == len(SEGS) - 1:
                ax.set_xlabel("head")
            if j == 0:
                ax.set_ylabel("layer")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label=f"attention {value}")
    fig.suptitle(f"Attention mass per layer and head ({PATH_CONVENTION})", fontsize=10)
    return save_figure(fig, out_stem, formats)


def plot_example(
    examples, out_stem, example: int = 0, layer: int = -1, head: int | None = None, formats=("png", "pdf")
):
    """Token-level attention pattern of one saved example (mean over heads unless `head`), segments marked."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    setup_style()
    if isinstance(examples, (str, Path)):
        from mice.results import load_examples

        examples = load_examples(examples)
    ex = examples[example]
    pattern = ex["pattern"]
    layer = layer if layer >= 0 else pattern.shape[0] + layer
    p = pattern[layer].mean(0) if head is None else pattern[layer, head]
    tokens, segs = ex["tokens"], ex["segments"]
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * n + 2), max(3.6, 0.22 * n + 1.5)))
    ax.imshow(p, cmap="Blues", vmin=0, vmax=float(p.max()) or 1.0)
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
    ax.set_yticks(range(n), tokens, fontsize=6)
    ax.grid(False)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):  # token labels coloured by segment
        for label, s in zip(labels, segs):
            label.set_color(SEG_COLORS.get(s, "#000"))
    bounds = [i for i in range(1, n) if segs[i] != segs[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="red", lw=0.6)
        ax.axvline(b - 0.5, color="red", lw=0.6)
    handles = [Rectangle((0, 0), 1, 1, color=SEG_COLORS[s]) for s in SEGS if s in segs]
    ax.legend(
        handles, [s for s in SEGS if s in segs], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, title="segment"
    )
    ax.set_xlabel("attended token (to)")
    ax.set_ylabel("attending token (from)")
    who = "mean over heads" if head is None else f"head {head}"
    ax.set_title(f"{ex['query_id']} / {ex['doc_id']}: layer {layer}, {who}\n({PATH_CONVENTION})", fontsize=8)
    return save_figure(fig, out_stem, formats)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m figures.attention PROBE_TABLE OUTDIR", file=sys.stderr)
        return 2
    from mice.results import sidecar

    table, outdir = Path(argv[0]), Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    plot_layer_heatmaps(table, outdir / "attention_layers")
    plot_head_grid(table, outdir / "attention_heads")
    ex = sidecar(table, ".examples.npz")
    if ex.exists():
        plot_example(ex, outdir / "attention_example")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
