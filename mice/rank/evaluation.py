"""Ranking evaluation with ir-measures, per-query values and paired significance tests.

Conventions:
- Queries are those of the qrels. A judged query that a run does not answer scores 0 on every measure
  (trec_eval's `-c`), so runs are always compared on the same queries.
- `paired_test(a, b)` compares two runs' per-query values of one measure with a paired t-test and a paired
  randomisation (sign-flip) test; `evaluate` applies it to every run against the first (the baseline) and
  corrects each measure's family of comparisons with Holm's method.
These helpers are public so that ablation studies (clean vs knocked-out runs) reuse the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mice.errors import DataError
from mice.rank.runs import make_qrels, make_run

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")


def parse_metrics(metrics: "str | Iterable") -> list:
    """ir-measures measure objects from strings like "nDCG@10,RR@10" (or objects, passed through)."""
    import ir_measures

    if isinstance(metrics, str):
        metrics = [m for m in (x.strip() for x in metrics.split(",")) if m]
    out = []
    for m in metrics:
        if isinstance(m, str):
            try:
                out.append(ir_measures.parse_measure(m))
            except Exception as err:  # noqa: BLE001 - ir-measures raises several types for bad names
                raise DataError(f"unknown measure {m!r} ({err})") from None
        else:
            out.append(m)
    if not out:
        raise DataError("no measures given")
    return out


def per_query(qrels: pd.DataFrame, run: pd.DataFrame, metrics=DEFAULT_METRICS) -> pd.DataFrame:
    """One row per judged query and measure: DataFrame [query_id, measure, value] (measure as its string name).

    Judged queries missing from the run get 0; run queries without judgements are ignored.
    """
    import ir_measures

    measures = parse_metrics(metrics)
    qrels = make_qrels(qrels)
    run = make_run(run)
    values = {(str(m.query_id), str(m.measure)): float(m.value) for m in ir_measures.iter_calc(measures, qrels, run)}
    qids = sorted(qrels["query_id"].unique())
    rows = [(q, str(m), values.get((q, str(m)), 0.0)) for m in measures for q in qids]
    return pd.DataFrame(rows, columns=["query_id", "measure", "value"])


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing per-query values b against a (delta = mean(b) - mean(a))."""

    n: int
    mean_a: float
    mean_b: float
    delta: float
    p_ttest: float
    p_randomization: float


def _aligned(a, b) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if set(a.index) != set(b.index):
            only_a, only_b = len(set(a.index) - set(b.index)), len(set(b.index) - set(a.index))
            raise DataError(
                f"paired test needs the same queries on both sides ({only_a} only in a, {only_b} only in b)"
            )
        b = b.reindex(a.index)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"paired test needs two equally long vectors, got {a.shape} and {b.shape}")
    return a, b


def paired_test(a, b, n_resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """Paired two-sided tests of b against a on the same queries.

    `a`, `b`: per-query values of one measure, as equally long arrays in the same query order or as
    Series indexed by query_id (aligned by index). Returns a `PairedTest` with the t-test p-value
    (scipy `ttest_rel`) and the randomisation-test p-value (random sign flips of the differences,
    `(hits + 1) / (n_resamples + 1)`, seeded so results are reproducible). Identical inputs give p = 1.
    """
    from scipy import stats

    a, b = _aligned(a, b)
    n = a.size
    diff = b - a
    if n == 0:
        raise DataError("paired test on zero queries")
    mean_a, mean_b = float(a.mean()), float(b.mean())
    if n < 2 or np.allclose(diff, 0.0, atol=1e-12):
        p_t = p_r = 1.0
    else:
        if np.allclose(diff, diff[0], atol=1e-12):
            p_t = 0.0  # constant non-zero difference: the t statistic is infinite
        else:
            p_t = float(stats.ttest_rel(b, a).pvalue)
        observed = abs(diff.mean())
        rng = np.random.default_rng(seed)
        hits, done, chunk = 0, 0, max(1, min(n_resamples, 2_000_000 // max(n, 1)))
        while done < n_resamples:
            m = min(chunk, n_resamples - done)
            signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
            hits += int((np.abs(signs @ diff) / n >= observed - 1e-12).sum())
            done += m
        p_r = (hits + 1) / (n_resamples + 1)
    return PairedTest(n=n, mean_a=mean_a, mean_b=mean_b, delta=mean_b - mean_a, p_ttest=p_t, p_randomization=p_r)


def evaluate(
    qrels: pd.DataFrame,
    runs: Mapping[str, pd.DataFrame],
    metrics=DEFAULT_METRICS,
    baseline: str | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    per_query_out: dict | None = None,
) -> pd.DataFrame:
    """Aggregate each run and test it against the baseline (default: the first run).

    Returns a long DataFrame, one row per (run, measure): value (mean over judged queries), delta to the
    baseline, p_ttest / p_randomization (raw) and p_ttest_holm / p_randomization_holm (Holm-corrected over
    the runs compared with the baseline, per measure); the baseline's own p-values are NaN. Pass a dict as
    `per_query_out` to receive each run's per-query table as well.
    """
    if not runs:
        raise DataError("evaluate: no runs")
    names = list(runs)
    baseline = names[0] if baseline is None else baseline
    if baseline not in runs:
        raise DataError(f"evaluate: baseline {baseline!r} is not among the runs {names}")
    measures = parse_metrics(metrics)
    tables = {name: per_query(qrels, run, measures) for name, run in runs.items()}
    if per_query_out is not None:
        per_query_out.update(tables)
    rows = []
    for m in map(str, measures):
        base = tables[baseline]
        base = base[base["measure"] == m].set_index("query_id")["value"]
        block = []
        for name in names:
            vals = tables[name]
            vals = vals[vals["measure"] == m].set_index("query_id")["value"]
            row = {
                "run": name,
                "measure": m,
                "value": float(vals.mean()),
                "n_queries": int(vals.size),
                "delta": float(vals.mean() - base.mean()),
                "p_ttest": np.nan,
                "p_randomization": np.nan,
            }
            if name != baseline:
                t = paired_test(base, vals, n_resamples=n_resamples, seed=seed)
                row.update(p_ttest=t.p_ttest, p_randomization=t.p_randomization)
            block.append(row)
        for key in ("p_ttest", "p_randomization"):
            adjusted = holm([r[key] for r in block])
            for r, p in zip(block, adjusted):
                r[f"{key}_holm"] = float(p)
        rows.extend(block)
    cols = [
        "run",
        "measure",
        "value",
        "n_queries",
        "delta",
        "p_ttest",
        "p_randomization",
        "p_ttest_holm",
        "p_randomization_holm",
    ]
    return pd.DataFrame(rows, columns=cols)


def summary_table(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Wide view of `evaluate`'s output: runs x measures, values with markers.

    `†` marks a Holm-corrected t-test p < alpha against the baseline, `‡` a Holm-corrected randomisation test.
    """

    def cell(r) -> str:
        mark = ("†" if r.p_ttest_holm < alpha else "") + ("‡" if r.p_randomization_holm < alpha else "")
        return f"{r.value:.4f}{mark}"

    wide = results.assign(cell=[cell(r) for r in results.itertuples()])
    order = list(dict.fromkeys(results["run"]))
    measures = list(dict.fromkeys(results["measure"]))
    return wide.pivot(index="run", columns="measure", values="cell").loc[order, measures]


def seed_average(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-query values averaged over a system's seeds (per_query tables of its runs): [query_id, measure, value]."""
    if not tables:
        raise DataError("seed_average: no runs")
    both = pd.concat(tables, ignore_index=True)
    return both.groupby(["query_id", "measure"], as_index=False, sort=True)["value"].mean()


def paper_test(
    tables: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]], baseline: str, alpha: float = 0.05
) -> pd.DataFrame:
    """The MICE paper's test: each system's per-query values are averaged over its seeds, then compared with the
    baseline's (also seed-averaged) by Welch's unequal-variance t-test (two-sided; unpaired, as the paper
    does). `tables`: run name → per_query table; `groups`: system → its run names (one per seed).

    Returns one row per (system, measure): value (mean over queries), seeds, delta to the baseline, p_welch and
    arrow (↑/↓ when p < alpha, by the sign of delta; empty otherwise; the baseline's own row has NaN/empty)."""
    from scipy import stats

    if baseline not in groups:
        raise DataError(f"--paper-test {baseline!r}: no such system (systems: {', '.join(groups)})")
    avg = {name: seed_average([tables[r] for r in runs]) for name, runs in groups.items()}
    rows = []
    for m in dict.fromkeys(avg[baseline]["measure"]):
        base = avg[baseline]
        base = base[base["measure"] == m].set_index("query_id")["value"]
        for name, runs in groups.items():
            vals = avg[name]
            vals = vals[vals["measure"] == m].set_index("query_id")["value"]
            row = {
                "system": name,
                "measure": m,
                "value": float(vals.mean()),
                "seeds": len(runs),
                "n_queries": int(vals.size),
                "delta": float(vals.mean() - base.mean()),
                "p_welch": np.nan,
                "arrow": "",
            }
            if name != baseline:
                a, b = base.to_numpy(float), vals.to_numpy(float)
                if np.array_equal(a, b) or (a.std() == 0 and b.std() == 0 and a.mean() == b.mean()):
                    p = 1.0
                else:
                    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
                row["p_welch"] = p
                if p < alpha:
                    row["arrow"] = "↑" if row["delta"] > 0 else "↓"
            rows.append(row)
    return pd.DataFrame(rows, columns=["system", "measure", "value", "seeds", "n_queries", "delta", "p_welch", "arrow"])
