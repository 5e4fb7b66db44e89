"""Effect of a knockout on the ranking: metric deltas with paired tests, score changes, rank correlation.

Ranking metrics come from ir-measures and the tests from `mice.evaluation` (the same statistics as
`mice evaluate`), computed per query over the re-ranked candidates of the queries looked at.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mice.evaluation import paired_test, parse_metrics, per_query

from probes.candidates import Candidates


def metric_names(metrics) -> list[str]:
    """Column names of the measures: `nDCG@10` -> `ndcg@10`."""
    return [str(m).lower() for m in measures(metrics)]


def measures(metrics) -> list:
    """ir-measures objects; also accepts the lower-case column names of saved tables (`ndcg@10`)."""
    import ir_measures

    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    fixed = []
    for m in metrics:
        if isinstance(m, str):
            head, sep, tail = m.partition("@")
            if head not in ir_measures.measures.registry:
                names = {n.lower(): n for n in ir_measures.measures.registry}
                head = names.get(head.lower(), head)
            m = head + sep + tail
        fixed.append(m)
    return parse_metrics(fixed)


class Evaluator:
    """Per-query metrics and comparisons against the clean scores, for one candidate set."""

    def __init__(self, cands: Candidates, metrics=("nDCG@10", "RR@10"), n_resamples: int = 2000):
        if cands.qrels is None:
            from mice.errors import DataError

            raise DataError("measuring a ranking needs judgements: give a dataset split and a run, not bare pairs")
        self.cands = cands
        self.measures = measures(metrics)
        self.names = [str(m).lower() for m in self.measures]
        self.n_resamples = n_resamples
        frame = cands.frame
        self.qids = list(dict.fromkeys(frame["query_id"]))
        codes = pd.Categorical(frame["query_id"], categories=self.qids).codes
        self.groups = [np.flatnonzero(codes == i) for i in range(len(self.qids))]

    def per_query(self, scores: np.ndarray) -> pd.DataFrame:
        """DataFrame indexed by query_id (in candidate order), one column per metric."""
        run = pd.DataFrame({"query_id": self.cands.frame["query_id"], "doc_id": self.cands.frame["doc_id"],
                            "score": np.asarray(scores, dtype=np.float64)})
        long = per_query(self.cands.qrels, run, self.measures)
        long["measure"] = long["measure"].str.lower()
        wide = long.pivot(index="query_id", columns="measure", values="value")
        return wide.reindex(index=self.qids, columns=self.names).fillna(0.0)

    def kendall(self, clean: np.ndarray, knocked: np.ndarray) -> np.ndarray:
        """Kendall tau-b per query between the clean and knocked candidate orders.

        A query whose knocked scores are all tied gets 0 (no order left); one whose clean scores are all tied
        gets NaN.
        """
        out = np.empty(len(self.groups))
        for i, g in enumerate(self.groups):
            x, y = clean[g], knocked[g]
            dx = np.sign(x[:, None] - x[None, :])
            dy = np.sign(y[:, None] - y[None, :])
            nx, ny = (dx ** 2).sum(), (dy ** 2).sum()
            if nx == 0:
                out[i] = np.nan
            elif ny == 0:
                out[i] = 0.0
            else:
                out[i] = float((dx * dy).sum() / np.sqrt(nx * ny))
        return out

    def compare(self, clean: np.ndarray, clean_pq: pd.DataFrame, knocked: np.ndarray) -> tuple[dict, pd.DataFrame]:
        """Summary (metric, delta, p-values, score and order changes) and per-query values of one variant."""
        pq = self.per_query(knocked)
        tau = self.kendall(clean, knocked)
        dscore = np.abs(np.asarray(knocked, dtype=np.float64) - np.asarray(clean, dtype=np.float64))
        row: dict = {}
        for j, m in enumerate(self.names):
            test = paired_test(clean_pq[m].to_numpy(), pq[m].to_numpy(), n_resamples=self.n_resamples)
            row[m] = float(pq[m].mean())
            row[f"delta_{m}"] = float(pq[m].mean() - clean_pq[m].mean())
            if j == 0:
                row["p_value"] = float(test.p_ttest)
            row[f"p_{m}"] = float(test.p_ttest)
            row[f"p_rand_{m}"] = float(test.p_randomization)
        row["mean_abs_dscore"] = float(dscore.mean())
        row["max_abs_dscore"] = float(dscore.max())
        row["kendall_tau"] = float(np.nanmean(tau)) if np.isfinite(tau).any() else float("nan")
        row["n_queries"] = len(self.qids)
        row["n_pairs"] = int(len(knocked))
        qdf = pd.DataFrame({"query_id": self.qids})
        for m in self.names:
            qdf[m] = pq[m].to_numpy()
            qdf[f"delta_{m}"] = (pq[m] - clean_pq[m]).to_numpy()
        qdf["kendall_tau"] = tau
        qdf["mean_abs_dscore"] = [float(dscore[g].mean()) for g in self.groups]
        return row, qdf

    def summary(self, pq: pd.DataFrame) -> dict:
        return {m: float(pq[m].mean()) for m in self.names}


def relative_loss(reference: float, value: float) -> float:
    """(reference - value) / reference; 0 when the reference is 0 and nothing was lost."""
    if reference == 0:
        return 0.0 if value >= 0 else float("inf")
    return (reference - value) / abs(reference)


def significant(p: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    return np.asarray(p, dtype=float) < alpha
