"""Which token groups can still reach a `[CLS]`-pooled score, layer by layer, under an interaction mask.

The score reads the `[CLS]` state after the last layer only. Knocking out `a->b` in layer l changes the rows
of group `a` in layer l and nothing else, so it can reach the score only if the state of `a` after layer l
is read, directly or through later attention, by `[CLS]` at the end. Going down from the top:

    reach[L - 1] = {cls}
    reach[l]     = reach[l + 1] ∪ {b : some a in reach[l + 1] may attend b in layer l + 1 (base mask)}

The knockout search (`ablations.structural`) and the views that mark such cells (`mice.viz`) both read it.
Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from __future__ import annotations

import numpy as np

from mice.masks import InteractionMask
from mice.segments import REAL_SEGMENTS, SEG

N_REAL = len(REAL_SEGMENTS)


def reach(mask: InteractionMask, mode: str = "renorm") -> np.ndarray:
    """bool [L, S]: `reach[l, a]` = the state of group a after layer l can still reach the `[CLS]` score.

    In `zero` mode a blocked cell still takes part in its row's softmax (its weight is zeroed afterwards), so
    its key changes the other weights: the base mask then blocks no information and only the full table counts.
    """
    if mode == "zero":
        mask = InteractionMask.full(mask.num_layers)
    L = mask.num_layers
    out = np.zeros((L, N_REAL), dtype=bool)
    out[L - 1, SEG["cls"]] = True
    for l in range(L - 2, -1, -1):  # noqa: E741 (l is the paper's layer index)
        allow = np.asarray(mask.tables[l + 1])[:N_REAL, :N_REAL]
        out[l] = out[l + 1] | allow[out[l + 1]].any(0)
    return out


def structural_table(mask: InteractionMask, mode: str = "renorm") -> np.ndarray:
    """bool [L, S, S]: cells (l, `a->b`) of `mask` that cannot change the score (rows that never reach `[CLS]`),
    for views and figures that mark them."""
    r = reach(mask, mode)
    return np.repeat(~r[:, :, None], N_REAL, axis=2)
