"""A decision procedure scored against the frontier: regret, stability and compute.

- **Ground truth** (`truth`): on the frontier's in-domain test set, a MICE configuration qualifies when the upper
  bound of its one-sided 95% paired CI of relative nDCG@10 loss against Baseline ft is within the tolerance (the
  same rule the search applies to fidelity), and it does not collapse. The ground-truth choice is the cheapest
  qualifying one (smallest b, then largest a).
- **Regret** of a pick (a, b): the frontier's test nDCG@10 of the best qualifying configuration at equal or lower
  query-time cost (b' <= b) minus the pick's own; when nothing qualifies at that cost (the pick is cheaper than
  the evidence allows), the ground-truth choice's nDCG@10 minus the pick's. A pick of "no MICE" while a
  configuration qualifies has no regret value: it is counted as a miss.
- **Stability**: how often replicates pick the same b (and the same (a, b)).
- **Compute**: a search's training steps as a share of the frontier's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ablations.decision import cost_key
from mice.errors import MiceError


NO_MICE = "no MICE"


def truth(table: pd.DataFrame, tolerance: float, domain: str = "in") -> pd.DataFrame:
    """The frontier's MICE rows of `domain` with `qualifies`, sorted cheapest first."""
    t = table[(table["domain"] == domain) & (table["kind"] == "mice")].copy()
    collapsed = t["collapsed"].astype(bool) if "collapsed" in t else False
    t["qualifies"] = (t["loss_high"] <= tolerance + 1e-12) & ~collapsed
    t["a"], t["b"] = t["a"].astype(int), t["b"].astype(int)
    return t.sort_values(["b", "a"], ascending=[True, False]).reset_index(drop=True)


def regret(table: pd.DataFrame, a: int | None, b: int | None, tolerance: float, domain: str = "in") -> dict:
    """Regret of the pick MICE-ℓa+b (None: no MICE) against the frontier."""
    t = truth(table, tolerance, domain)
    ok = t[t["qualifies"]]
    gt = ok.iloc[0] if len(ok) else None
    out = {
        "truth": None if gt is None else f"MICE-l{gt['a']}+{gt['b']}",
        "truth_ndcg": np.nan if gt is None else float(gt["ndcg@10"]),
    }
    if a is None or b is None:
        return {**out, "pick": NO_MICE, "regret": np.nan, "miss": gt is not None, "same_as_truth": gt is None}
    mine = t[(t["a"] == a) & (t["b"] == b)]
    if not len(mine):
        return {
            **out,
            "pick": f"MICE-l{a}+{b}",
            "regret": np.nan,
            "miss": False,
            "same_as_truth": False,
            "note": "not on the frontier",
        }
    own = float(mine.iloc[0]["ndcg@10"])
    cheaper = ok[ok["b"] <= b]
    best = float(cheaper["ndcg@10"].max()) if len(cheaper) else out["truth_ndcg"]
    return {
        **out,
        "pick": f"MICE-l{a}+{b}",
        "pick_ndcg": own,
        "regret": best - own if np.isfinite(best) else np.nan,
        # query-time layers paid beyond the ground truth's (negative: cheaper than the evidence allows)
        "extra_cost": np.nan if gt is None else int(b) - int(gt["b"]),
        "miss": False,
        "same_as_truth": gt is not None and (gt["a"], gt["b"]) == (a, b),
    }


def simple_rules(
    num_layers: int, zero_shot: pd.DataFrame | None = None, screen_a: int | None = None, tolerance: float = 0.05
) -> dict[str, tuple[int | None, int | None]]:
    """Picks of rules that need no training: the paper's habit ℓ⌊L/3⌋+3 (b capped so a + b <= L); the zero-shot
    pick (the cheapest MICE whose untrained fidelity loss against the cross-encoder has its upper bound within
    tolerance; `zero_shot` rows: a, b, loss_upper, collapsed); the attribution screen's split a with every layer
    above it (b = L - a)."""
    a = max(1, num_layers // 3)
    out = {"fixed l[L/3]+3": (a, min(3, num_layers - a))}
    if zero_shot is not None:
        ok = zero_shot[(zero_shot["loss_upper"] <= tolerance + 1e-12) & ~zero_shot["collapsed"].astype(bool)]
        ok = sorted(ok.itertuples(), key=lambda r: cost_key(r.b, r.a))
        out["zero-shot"] = (int(ok[0].a), int(ok[0].b)) if ok else (None, None)
    if screen_a is not None and 1 <= screen_a < num_layers:
        out["attribution screen"] = (int(screen_a), num_layers - int(screen_a))
    return out


def fidelity_validity(
    table: pd.DataFrame, per_query: dict | None = None, metric: str = "ndcg@10", n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Does the label-free measure order configurations as the test labels do? Per test set, Spearman rho between
    each trained configuration's fidelity (on the screening pool, which no configuration trained on) and its
    test `metric`: over every trained configuration (MICE, Baseline ft, late interaction), and over those that
    re-rank (collapsed ones, which keep the first stage's order, left out). `per_query`
    ({configuration: {"fidelity": per screening query, domain: `metric` per test query}}) adds a 95% bootstrap
    CI, resampling the queries of both pools."""
    rows = []
    trained = table[table["kind"].isin(["mice", "control", "late-interaction"])]
    for domain, t in trained.groupby("domain", sort=False):
        collapsed = t["collapsed"].fillna(False).astype(bool) if "collapsed" in t else False
        for subset, part in (("all", t), ("re-ranking", t[~collapsed])):
            row = {"domain": domain, "configurations": subset, "n": len(part), "spearman": np.nan}
            row.update(spearman_low=np.nan, spearman_high=np.nan)
            if len(part) >= 3:
                row["spearman"] = _spearman(part["fidelity"].to_numpy()[:, None], part[metric].to_numpy()[:, None])[0]
                if per_query is not None:
                    names = list(part["configuration"])
                    fid = np.stack([np.asarray(per_query[n]["fidelity"]) for n in names])
                    met = np.stack([np.asarray(per_query[n][domain]) for n in names])
                    boot = _spearman(*_resampled_means(fid, met, n_boot, seed))
                    row["spearman_low"], row["spearman_high"] = np.nanpercentile(boot, [2.5, 97.5])
            rows.append(row)
    return pd.DataFrame(rows, columns=["domain", "configurations", "n", "spearman", "spearman_low", "spearman_high"])


def validity_text(v: dict) -> str:
    """One row of `frontier.json`'s fidelity_validity as `rho [low, high]` (`n/a` under 3 configurations)."""
    if v["spearman"] is None:
        return "n/a"
    ci = "" if v.get("spearman_low") is None else f" [{v['spearman_low']:.3f}, {v['spearman_high']:.3f}]"
    return f"{v['spearman']:.3f}{ci}"


def _resampled_means(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per configuration (rows), the means of `x` and `y` over `n_boot` resamples of their queries (columns)."""
    rng = np.random.default_rng(seed)
    ix = rng.integers(0, x.shape[1], (n_boot, x.shape[1]))
    iy = rng.integers(0, y.shape[1], (n_boot, y.shape[1]))
    return x[:, ix].mean(-1), y[:, iy].mean(-1)


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho between the rows of `x` and of `y`, one value per column (average ranks for ties)."""
    from scipy import stats

    rx, ry = stats.rankdata(x, axis=0), stats.rankdata(y, axis=0)
    rx, ry = rx - rx.mean(0), ry - ry.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(0) / np.sqrt((rx**2).sum(0) * (ry**2).sum(0))


def summarize(picks: pd.DataFrame) -> pd.DataFrame:
    """One row per procedure: replicates, the modal b and how often it was picked, median regret, misses and
    the compute share."""
    rows = []
    for proc, g in picks.groupby("procedure", sort=False):
        bs = Counter(g["b"].dropna().astype(int))
        ab = Counter(g["pick"].fillna(NO_MICE))
        modal_b, n_b = bs.most_common(1)[0] if bs else (None, 0)
        rows.append(
            {
                "procedure": proc,
                "replicates": len(g),
                "modal_pick": ab.most_common(1)[0][0],
                "same_pick": ab.most_common(1)[0][1],
                "modal_b": modal_b,
                "same_b": n_b,
                "median_regret": float(np.nanmedian(g["regret"])) if g["regret"].notna().any() else np.nan,
                "max_regret": float(np.nanmax(g["regret"])) if g["regret"].notna().any() else np.nan,
                "median_extra_cost": _median(g["extra_cost"]) if "extra_cost" in g else np.nan,
                "misses": int(g["miss"].sum()),
                "same_as_truth": int(g["same_as_truth"].sum()),
                "compute_share": float(g["compute_share"].median()) if "compute_share" in g else 0.0,
            }
        )
    return pd.DataFrame(rows)


def validate_replicates(
    procedure: str,
    replicate: Callable[[int], tuple[int | None, int | None, int]],
    frontier_folder,
    out,
    replicates: int,
    rules: Callable[[], dict[str, tuple[int | None, int | None]]] | None = None,
    tolerance: float = 0.05,
    extra: dict[str, Callable[[int], tuple[int | None, int | None, int]]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score `replicates` runs of a decision procedure against a frontier. `replicate(r)` runs draw r and returns
    its pick (a, b; None, None for no MICE) and its training steps; `extra` procedures are scored on the same
    draws (called after `replicate(r)`, e.g. what the pick turns into); `rules()`, called after the replicates,
    gives picks that need no training, scored once. Writes validation.csv (one row per pick) and
    validation_summary.csv into `out`."""
    from mice.files import write_table

    table, fmeta = load_frontier(frontier_folder)

    def row(name: str, draw: int, a, b, steps: int) -> dict:
        share = steps / fmeta["steps_total"]
        return {"procedure": name, "draw": draw, "a": a, "b": b, "steps": steps, "compute_share": share} | regret(
            table, a, b, tolerance
        )

    rows = []
    for r in range(replicates):
        rows.append(row(procedure, r, *replicate(r)))
        rows += [row(name, r, *fn(r)) for name, fn in (extra or {}).items()]
    rows += [row(name, 0, a, b, 0) for name, (a, b) in (rules() if rules else {}).items()]
    picks = pd.DataFrame(rows)
    summary = summarize(picks)
    write_table(picks, Path(out) / "validation.csv")
    write_table(summary, Path(out) / "validation_summary.csv")
    return picks, summary


def _median(values: pd.Series) -> float:
    return float(np.nanmedian(values)) if values.notna().any() else np.nan


def load_frontier(folder) -> tuple[pd.DataFrame, dict]:
    from mice.files import read_table

    folder = Path(folder)
    if not (folder / "frontier.parquet").exists():
        raise MiceError(f"{folder}: no frontier.parquet (run `mice ablate frontier` first)")
    return read_table(folder / "frontier.parquet"), json.loads((folder / "frontier.json").read_text())
