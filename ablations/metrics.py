"""Effect of a knockout on the ranking: metric deltas with paired tests, score changes, rank correlation.

Ranking metrics come from ir-measures and the tests from `mice.rank.evaluation` (the same statistics as
`mice evaluate`), computed per query over the re-ranked candidates of the queries looked at.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from mice.rank.evaluation import paired_test, parse_metrics, per_query

from probes.candidates import Candidates


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
        run = pd.DataFrame(
            {
                "query_id": self.cands.frame["query_id"],
                "doc_id": self.cands.frame["doc_id"],
                "score": np.asarray(scores, dtype=np.float64),
            }
        )
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
            nx, ny = (dx**2).sum(), (dy**2).sum()
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


# ---------------------------------------------------------------------- sensitive measures, all knockouts at once
#: Measures that can rank hundreds of knockouts: continuous per pair (score change) or per query (order changes,
#: relevant-vs-non-relevant margin), next to the coarse ΔRR/ΔnDCG. Signed measures get a paired test.
SIGNED = ("dscore", "delta_margin", "delta_rr@10", "delta_ndcg@10")
DEFAULT_MEASURE = "delta_margin"  # the sensitive measure that ranks knockouts when judgements exist


class RankEffects:
    """Per-query effects of many knockouts at once (vectorised over knockouts), with bootstrap CIs over queries.

    Measures (per query; knocked minus clean where signed):
    - `dscore`, `abs_dscore`: mean signed / absolute change of the raw score over the query's candidates;
    - `flip_rate`: share of candidate pairs ordered by the clean scores whose order the knockout reverses
      (or ties); `kendall_tau`: tau-b between the clean and knocked orders;
    - with judgements: `delta_margin`, the change of the mean score margin of relevant over non-relevant
      candidates (a continuous, signed stand-in for the ranking's quality), `delta_rr@10`, `delta_ndcg@10`
      (trec_eval semantics: linear gain, ideal DCG from all of the query's judgements; ties broken by
      candidate order, so equal to ir-measures when there are no tied scores).
    """

    def __init__(self, frame: pd.DataFrame, qrels: pd.DataFrame | None = None):
        self.qids = list(dict.fromkeys(frame["query_id"]))
        codes = pd.Categorical(frame["query_id"], categories=self.qids).codes
        self.groups = [np.flatnonzero(codes == i) for i in range(len(self.qids))]
        self.judged = qrels is not None
        self.rel = np.zeros(len(frame))
        self.idcg = np.zeros(len(self.qids))
        if self.judged:
            grades = {
                (str(q), str(d)): float(r)
                for q, d, r in qrels[["query_id", "doc_id", "relevance"]].itertuples(index=False)
            }
            self.rel = np.array(
                [max(0.0, grades.get((str(q), str(d)), 0.0)) for q, d in zip(frame["query_id"], frame["doc_id"])]
            )
            for i, q in enumerate(self.qids):
                ideal = np.sort(qrels.loc[qrels["query_id"].astype(str) == str(q), "relevance"].to_numpy(float))[::-1]
                ideal = ideal[ideal > 0][:10]
                self.idcg[i] = float((ideal / np.log2(np.arange(2, ideal.size + 2))).sum())

    @property
    def names(self) -> list[str]:
        return ["dscore", "abs_dscore", "flip_rate", "kendall_tau"] + (
            ["delta_margin", "delta_rr@10", "delta_ndcg@10"] if self.judged else []
        )

    def _rank_metrics(self, s: np.ndarray, rel: np.ndarray, idcg: float) -> tuple[np.ndarray, np.ndarray]:
        """RR@10 and nDCG@10 of each row of s [K, n] (stable: ties keep candidate order)."""
        order = np.argsort(-s, axis=1, kind="stable")[:, :10]
        g = rel[order]  # [K, <=10]
        hit = g > 0
        first = np.where(hit.any(1), hit.argmax(1), -1)
        rr = np.where(first >= 0, 1.0 / np.maximum(first + 1, 1), 0.0)
        dcg = (g / np.log2(np.arange(2, g.shape[1] + 2))).sum(1)
        return rr, (dcg / idcg if idcg > 0 else np.zeros_like(dcg))

    def per_query(self, clean: np.ndarray, knocked: np.ndarray) -> dict[str, np.ndarray]:
        """{measure: [K, Q]} for knocked scores [K, N] against clean scores [N]."""
        clean = np.asarray(clean, dtype=np.float64)
        knocked = np.atleast_2d(np.asarray(knocked, dtype=np.float64))
        K, Q = knocked.shape[0], len(self.groups)
        out = {m: np.empty((K, Q)) for m in self.names}
        for i, g in enumerate(self.groups):
            c, x = clean[g], knocked[:, g]
            d = x - c
            out["dscore"][:, i] = d.mean(1)
            out["abs_dscore"][:, i] = np.abs(d).mean(1)
            iu = np.triu_indices(len(g), 1)
            dc = np.sign(c[:, None] - c[None, :])[iu]  # [P]
            dk = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]  # [K, P]
            ordered = dc != 0
            out["flip_rate"][:, i] = ((dk * dc)[:, ordered] <= 0).mean(1) if ordered.any() else 0.0
            nx, ny = (dc**2).sum(), (dk**2).sum(1)
            tau = (dk * dc).sum(1) / np.sqrt(np.maximum(nx * ny, 1e-300))
            out["kendall_tau"][:, i] = np.where(nx == 0, np.nan, np.where(ny == 0, 0.0, tau))
            if self.judged:
                rel = self.rel[g]
                pos, neg = rel > 0, rel <= 0
                out["delta_margin"][:, i] = (d[:, pos].mean(1) - d[:, neg].mean(1)) if pos.any() and neg.any() else 0.0
                rr0, nd0 = self._rank_metrics(c[None], rel, self.idcg[i])
                rr1, nd1 = self._rank_metrics(x, rel, self.idcg[i])
                out["delta_rr@10"][:, i] = rr1 - rr0[0]
                out["delta_ndcg@10"][:, i] = nd1 - nd0[0]
        return out

    def summarize(
        self, pq: dict[str, np.ndarray], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
    ) -> pd.DataFrame:
        """One row per knockout: mean of each measure over queries, percentile bootstrap CI over queries
        (`<m>_ci_low/high`) and, for signed measures, the two-sided one-sample t-test p-value (`p_<m>`:
        the paired t-test of knocked against clean on that measure)."""
        from scipy import stats

        Q = len(self.groups)
        rng = np.random.default_rng(seed)
        counts = np.zeros((Q, n_boot))  # resampled queries as counts: one matmul per measure
        if n_boot:
            idx = rng.integers(0, Q, size=(n_boot, Q))
            np.add.at(counts, (idx.ravel(), np.repeat(np.arange(n_boot), Q)), 1.0)
        cols: dict[str, np.ndarray] = {}
        for m, v in pq.items():
            if np.isnan(v).any():  # undefined for some queries (e.g. tau with a single candidate): row mean
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    v = np.where(np.isnan(v), np.nanmean(v, axis=1, keepdims=True), v)
            cols[m] = v.mean(1)
            boot = v @ counts / Q
            cols[f"{m}_ci_low"] = np.quantile(boot, alpha / 2, axis=1) if n_boot else cols[m]
            cols[f"{m}_ci_high"] = np.quantile(boot, 1 - alpha / 2, axis=1) if n_boot else cols[m]
            if m in SIGNED:
                sd = v.std(1, ddof=1) if Q > 1 else np.zeros(len(v))
                with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # near-constant rows: handled below
                    t = stats.ttest_1samp(v, 0.0, axis=1).pvalue if Q > 1 else np.ones(len(v))
                p = np.where(sd > 1e-12, t, np.where(np.abs(cols[m]) > 1e-12, 0.0, 1.0))
                cols[f"p_{m}"] = p
        return pd.DataFrame(cols)

    def long(self, pq: dict[str, np.ndarray], keys: pd.DataFrame) -> pd.DataFrame:
        """Tidy per-query table: the columns of `keys` (one row per knockout), `query_id`, one column per measure."""
        K, Q = next(iter(pq.values())).shape
        rep = keys.loc[keys.index.repeat(Q)].reset_index(drop=True)
        rep.insert(len(rep.columns), "query_id", np.tile(np.asarray(self.qids, dtype=object), K))
        for m, v in pq.items():
            rep[m] = v.reshape(-1)
        return rep
