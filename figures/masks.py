"""A mask as a figure: one allow-grid per distinct layer group (rows attend columns: a->b = a attends b)."""

from __future__ import annotations

import numpy as np

from figures import PATH_CONVENTION, save_figure, setup_style


def plot_mask(mask, out_stem):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from mice.segments import REAL_SEGMENTS, SEG

    setup_style()
    n = SEG["pad"]
    groups: list[list[int]] = []
    for l in range(mask.num_layers):
        if groups and np.array_equal(mask.tables[groups[-1][0]], mask.tables[l]):
            groups[-1].append(l)
        else:
            groups.append([l])
    fig, axes = plt.subplots(1, len(groups), figsize=(2.6 * len(groups) + 0.5, 2.9), squeeze=False)
    cmap = ListedColormap(["#f2f2f2", "#3b75af"])
    for ax, g in zip(axes[0], groups):
        ax.imshow(mask.tables[g[0], :n, :n].astype(int), cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks(range(n), REAL_SEGMENTS, rotation=45)
        ax.set_yticks(range(n), REAL_SEGMENTS)
        ax.set_xlabel("attended (to)")
        ax.set_title(f"layer {g[0]}" if len(g) == 1 else f"layers {g[0]}-{g[-1]}")
        ax.grid(False)
    axes[0][0].set_ylabel("attending (from)")
    fig.suptitle(f"mask {mask.name!r}: blue = allowed ({PATH_CONVENTION})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)
