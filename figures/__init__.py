"""Figures are drawn only from saved result tables, never by re-running models.

Shared look: seaborn style, and every figure about paths says the convention `a->b` = a attends b.
"""

from __future__ import annotations

from pathlib import Path

PATH_CONVENTION = "a->b: tokens of a attend to tokens of b"


def setup_style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")


def save_figure(fig, out_stem, formats=("png", "pdf")) -> list[Path]:
    """Write `out_stem.png` and `out_stem.pdf` (atomically) and close the figure."""
    import matplotlib.pyplot as plt

    from mice.files import atomic_path

    out_stem = Path(out_stem)
    paths = []
    for fmt in formats:
        path = out_stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths
