"""Knockouts that provably cannot change a `[CLS]`-pooled score: removed without evidence, labelled *structural*.

The score reads the `[CLS]` state after the last layer only. Knocking out `a->b` in layer l changes the rows
of group `a` in layer l and nothing else, so it can reach the score only if the state of `a` after layer l
is read, directly or through later attention, by `[CLS]` at the end. Going down from the top (`mice.reach`):

    reach[L - 1] = {cls}
    reach[l]     = reach[l + 1] ∪ {b : some a in reach[l + 1] may attend b in layer l + 1 (base mask)}

(In `zero` mode a blocked cell still feeds its row's softmax denominator, so there the base mask is ignored.)
A cell (l, `a->b`) is structural when no group of `a` is in `reach[l]` (with the full mask: every last-layer
row but `[CLS]`'s), or when no pair of the data has a token in both `a` and `b` (a cell no token occupies).
Attention into `pad` is never a knockout target (its weight is exactly zero), so it needs no cell. The rule is
exact for post-LN BERT-family layers and for any model whose head reads `[CLS]` only (`pooler` or
`classifier` on position 0); `tests/test_attribution.py` checks that the structural cells are exactly those
whose exact knockout changes no score.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from __future__ import annotations

import numpy as np

from mice.masks import InteractionMask, parse_path
from mice.reach import N_REAL, reach, structural_table  # noqa: F401 (re-exported)

from ablations.knockouts import Knockout


def occupancy(segment_ids) -> np.ndarray:
    """bool [S, S]: some pair has a token in group a and a token in group b (segment ids of any batches)."""
    occ = np.zeros((N_REAL, N_REAL), dtype=bool)
    seqs = segment_ids if isinstance(segment_ids, (list, tuple)) else [segment_ids]
    for seg in seqs:
        seg = np.asarray(seg.cpu() if hasattr(seg, "cpu") else seg)
        present = np.stack([(seg == s).any(-1) for s in range(N_REAL)], axis=-1)  # [B, S]
        occ |= (present[:, :, None] & present[:, None, :]).any(0)
    return occ


def structural_reason(
    ko: Knockout, base: InteractionMask, occupied: np.ndarray | None = None, mode: str = "renorm"
) -> str | None:
    """Why `ko` provably changes no score on top of `base` in `mode` (None when it may)."""
    src, dst = parse_path(ko.path)
    r = reach(base, mode)[ko.layer]
    if not r[src].any():
        if ko.layer == base.num_layers - 1:
            return "structural: last layer, rows other than [CLS] are read by nobody"
        return "structural: these rows never reach [CLS] under the base mask"
    if occupied is not None and not occupied[np.ix_(src, dst)].any():
        return "structural: no pair has tokens in both groups"
    return None


def structural_cells(
    kos: list[Knockout], base: InteractionMask, occupied: np.ndarray | None = None, mode: str = "renorm"
) -> dict[str, str]:
    """{knockout key: reason} for the structural knockouts among `kos`."""
    out = {}
    for ko in kos:
        why = structural_reason(ko, base, occupied, mode)
        if why is not None:
            out[ko.key] = why
    return out
