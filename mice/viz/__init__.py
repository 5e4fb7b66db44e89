"""Interactive, offline views for notebooks and HTML reports (inline SVG/canvas + vanilla JS, no CDN).

- `pair_attention(example)` / `PairAttentionView.from_model(model, q, d)`: one pair's token-level pattern;
- `path_mass(probe_table)`: layer x path (x head) attention mass;
- `knockouts(sweep_or_table, per_query=...)`: layer x path effects, click for per-query values and CIs;
- `mask_view(mask, structural=...)`: the allow-table, click to toggle, JSON out.

Each view has `_repr_html_` (Jupyter) and `.save(path)` (a standalone page that opens offline).
Path convention: `a->b` = tokens of group a attend to tokens of group b.
"""

from mice.viz.html import View, page
from mice.viz.knockouts import KnockoutView, knockouts
from mice.viz.mask import MaskView, mask_view
from mice.viz.pair import PairAttentionView, pair_attention
from mice.viz.paths import PathMassView, path_mass

__all__ = [
    "View",
    "page",
    "PairAttentionView",
    "pair_attention",
    "PathMassView",
    "path_mass",
    "KnockoutView",
    "knockouts",
    "MaskView",
    "mask_view",
]
