"""Attribution patching against exact knockouts, drawn from the saved check table
(`mice ablate attribute --check N` writes `<stem>.check.<ext>`; the demo writes `attribute/check.csv`).

`python -m figures.attribution CHECK_TABLE OUT_STEM [MEASURE]`.
"""

from __future__ import annotations

import sys

import numpy as np

from figures import PATH_CONVENTION, save_figure, setup_style


def plot_attribution_check(check, out_stem, measure: str = "", formats=("png", "pdf")):
    """Estimated vs exact effect per layer x path cell (`measure` "" = mean score change, else e.g.
    `delta_margin`), with Spearman rho in the title; the diagonal is exact agreement."""
    import matplotlib.pyplot as plt
    from scipy import stats

    from figures.derivation import _read

    setup_style()
    t = _read(check)
    if "kind" in t:
        t = t[t["kind"] == "layer x path"]
    a = t["estimate" + (f"_{measure}" if measure else "")].to_numpy(float)
    b = t["exact" + (f"_{measure}" if measure else "")].to_numpy(float)
    rho = float(stats.spearmanr(a, b).statistic)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    layers = t["layer"].to_numpy()
    sc = ax.scatter(b, a, c=layers, cmap="viridis", s=16)
    lim = [float(np.nanmin([a.min(), b.min()])), float(np.nanmax([a.max(), b.max()]))]
    ax.plot(lim, lim, color="black", lw=0.7, ls="--", label="estimate = exact")
    for i in np.argsort(-np.abs(b))[:5]:
        ax.annotate(f"{t['path'].iloc[i]}@{layers[i]}", (b[i], a[i]), fontsize=6)
    ax.set_xlabel(f"exact knockout: {measure or 'mean score change'}")
    ax.set_ylabel(f"attribution estimate: {measure or 'mean score change'}")
    fig.colorbar(sc, ax=ax, label="layer")
    mode = str(t["mode"].iloc[0]) if "mode" in t and len(t) else ""
    ax.legend(fontsize=7)
    ax.set_title(
        f"Attribution vs exact ({mode}), {len(t)} layer x path cells: Spearman ρ = {rho:.3f}\n({PATH_CONVENTION})",
        fontsize=8,
    )
    return save_figure(fig, out_stem, formats)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m figures.attribution CHECK_TABLE OUT_STEM [MEASURE]", file=sys.stderr)
        return 2
    plot_attribution_check(argv[0], argv[1], argv[2] if len(argv) == 3 else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
