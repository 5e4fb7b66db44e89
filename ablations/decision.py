"""The decision rule: which configuration is chosen, and with what error.

- **Fidelity** (label-free): how well a candidate reproduces the cross-encoder's own top 10, per query. The
  cross-encoder's ranking of a query's candidates gives graded gains (10 for its first document, 9 for its second,
  …, 0 below its tenth) and the candidate's ranking is scored by nDCG@10 under those gains: 1 when it returns the
  same top 10 in the same order. It needs no judgements, so it can be measured on thousands of queries, where
  labelled nDCG@10 on 40-100 dev queries has CIs of about ±0.1.
- **Non-inferiority.** A candidate qualifies when the upper bound of the one-sided 95% paired bootstrap CI of its
  relative loss against the control (`1 - mean(candidate) / mean(control)`, resampling queries) is at most the
  tolerance. Its mean alone never qualifies it.
- **Cost.** Query-time cost grows with b (the interaction layers run per document at query time); for equal b a
  larger a costs nothing at query time (more of the document is precomputed). So the efficient order is the
  smallest b, then the largest a.
- **Confirmation.** The chosen candidate is re-measured on held-out queries that neither screening nor choice
  used; if it fails non-inferiority there, the next qualifying candidate in cost order is tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

FIDELITY_DEPTH = 10


def fidelity_per_query(
    groups: Sequence[np.ndarray], reference: np.ndarray, scores: np.ndarray, depth: int = FIDELITY_DEPTH
) -> np.ndarray:
    """nDCG@`depth` of `scores`' ranking under gains from `reference`'s ranking, one value per query group.

    Ties keep candidate order (stable sort) on both sides, so a candidate equal to the reference scores 1."""
    reference = np.asarray(reference, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty(len(groups))
    for i, g in enumerate(groups):
        ref_order = np.argsort(-reference[g], kind="stable")
        gains = np.zeros(len(g))
        top = ref_order[:depth]
        gains[top] = depth - np.arange(len(top))
        discount = 1.0 / np.log2(np.arange(2, min(depth, len(g)) + 2))
        ideal = (gains[top] * discount).sum()
        mine = np.argsort(-scores[g], kind="stable")[:depth]
        out[i] = (gains[mine] * discount).sum() / ideal if ideal > 0 else 1.0
    return out


@dataclass(frozen=True)
class Loss:
    """A candidate's relative loss against a control, over paired queries."""

    mean: float  # 1 - mean(candidate) / mean(control)
    upper: float  # upper bound of the one-sided (1 - alpha) bootstrap CI
    lower: float  # the matching lower bound (two-sided 1 - 2 alpha), for reports
    queries: int

    def qualifies(self, tolerance: float) -> bool:
        return bool(self.upper <= tolerance + 1e-12)


def relative_loss(
    candidate: np.ndarray, control: np.ndarray, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> Loss:
    """Paired bootstrap (over queries) of `1 - mean(candidate) / mean(control)`."""
    c = np.asarray(candidate, dtype=np.float64)
    k = np.asarray(control, dtype=np.float64)
    if c.shape != k.shape or c.ndim != 1 or len(c) < 2:
        raise ValueError(f"paired per-query values needed (got {c.shape} and {k.shape})")
    mean = 1.0 - c.mean() / k.mean() if k.mean() != 0 else float("inf")
    idx = np.random.default_rng(seed).integers(0, len(c), size=(n_boot, len(c)))
    ctrl = k[idx].mean(1)
    boot = 1.0 - c[idx].mean(1) / np.where(ctrl == 0, np.nan, ctrl)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return Loss(mean, float("inf"), float("-inf"), len(c))
    return Loss(float(mean), float(np.quantile(boot, 1 - alpha)), float(np.quantile(boot, alpha)), len(c))


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap CI over queries."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    boot = values[idx].mean(1)
    return float(values.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def cost_key(b: int, a: int) -> tuple[int, int]:
    """Sort key, cheapest first at query time: the smallest b, then the largest a."""
    return (int(b), -int(a))


@dataclass
class Choice:
    """The outcome of `choose`: the chosen name (None: nothing qualified and confirmed) and every step's record."""

    chosen: str | None
    records: list[dict]


def choose(
    candidates: Sequence[dict],
    control: np.ndarray,
    tolerance: float,
    confirm: Callable[[dict], tuple[np.ndarray, np.ndarray]] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> Choice:
    """The cheapest candidate that is non-inferior to the control, then confirmed on held-out queries.

    `candidates`: dicts with `name`, `a`, `b` and `values` (per-query, paired with `control`), optionally
    `collapsed` (it does not re-rank: never chosen). `confirm(cand)`
    returns (candidate, control) per-query values on held-out queries; None skips confirmation."""
    ordered = sorted(candidates, key=lambda c: cost_key(c["b"], c["a"]))
    records = []
    for cand in ordered:
        loss = relative_loss(cand["values"], control, alpha=alpha, seed=seed)
        records.append(
            {
                "name": cand["name"],
                "a": cand["a"],
                "b": cand["b"],
                "loss": loss.mean,
                "loss_upper": loss.upper,
                "loss_lower": loss.lower,
                "collapsed": bool(cand.get("collapsed", False)),
                "qualifies": loss.qualifies(tolerance) and not cand.get("collapsed", False),
            }
        )
    for cand, rec in zip(ordered, records):
        if not rec["qualifies"]:
            continue
        if confirm is not None:
            held = relative_loss(*confirm(cand), alpha=alpha, seed=seed)
            rec.update(confirm_loss=held.mean, confirm_upper=held.upper, confirmed=held.qualifies(tolerance))
            if not rec["confirmed"]:
                continue
        return Choice(cand["name"], records)
    return Choice(None, records)
