"""Layer-drop search for MICE: how many interaction layers b (on top of a contextualisation layers) are needed.

This step needs trained models, so it consumes their evaluation results instead of running anything: a table
with one row per (variant, metric) — columns `interaction_layers` (b), `contextual_layers` (a), `metric`,
`value`, optionally `reference` (e.g. the teacher cross-encoder's value) and `model`. The choice: for each a,
the smallest b whose value is within `tolerance` (relative) of the reference (default: the best value of
that a). The paper's facts to expect: b = 1 collapses (`[CLS]` never reads the document), b = 3 is enough on
MiniLM.
"""

from __future__ import annotations

import pandas as pd

from mice.errors import DataError
from mice.results import load_layer_drop  # noqa: F401 (re-exported)

from ablations.metrics import relative_loss


def choose_interaction_layers(
    table, metric: str, tolerance: float = 0.01, reference: float | None = None
) -> pd.DataFrame:
    """One row per contextual_layers a: the reference, the chosen (smallest within tolerance) b and its value."""
    t = load_layer_drop(table)
    t = t[t["metric"].str.lower() == metric.lower()]
    if t.empty:
        raise DataError(f"layer-drop results have no rows for metric {metric!r}")
    rows = []
    for a, sub in t.groupby("contextual_layers"):
        sub = sub.sort_values("interaction_layers")
        if reference is not None:
            ref = reference
        elif "reference" in sub and sub["reference"].notna().any():
            ref = float(sub["reference"].dropna().iloc[0])
        else:
            ref = float(sub["value"].max())
        losses = [relative_loss(ref, v) for v in sub["value"]]
        ok = [b for b, loss in zip(sub["interaction_layers"], losses) if loss <= tolerance + 1e-12]
        b = int(min(ok)) if ok else None
        rows.append(
            {
                "contextual_layers": int(a),
                "reference": ref,
                "chosen_interaction_layers": b,
                "value": float(sub.loc[sub["interaction_layers"] == b, "value"].iloc[0]) if ok else float("nan"),
                "tolerance": tolerance,
                "metric": metric,
            }
        )
    return pd.DataFrame(rows)
