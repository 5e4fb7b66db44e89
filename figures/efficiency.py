"""Latency vs effectiveness: one point per method, drawn from the saved benchmark and evaluation tables."""
from __future__ import annotations

import pandas as pd

from figures import save_figure, setup_style

# evaluation run name -> benchmark method timing it
RUN_TO_METHOD = {"cross-encoder": "cross-encoder", "masked": "masked", "mice": "mice-index",
                 "late-interaction": "maxsim"}
LABELS = {"late-interaction": "late interaction (MaxSim, trained)"}


def latency_vs_effectiveness(bench: pd.DataFrame, results: pd.DataFrame, doc_len: int | None = None,
                             domain: str = "in", measure: str = "nDCG@10") -> pd.DataFrame:
    """Join each evaluated run with the latency of the method that would serve it (BM25: no re-ranking cost).

    The late-interaction point is the trained ColBERT-style baseline (`mice train --mode late-interaction`):
    its effectiveness is its own run's, its latency MaxSim over its stored token vectors.
    """
    doc_len = doc_len or int(bench["doc_len"].max())
    lat = bench[bench["doc_len"] == doc_len].set_index("method")["median_ms"]
    if "queries" in results:  # the demo's query sets: the one every run was evaluated on
        results = results[results["queries"] == ("subset" if (results["queries"] == "subset").any() else "all")]
    res = results[(results["domain"] == domain) & (results["measure"] == measure)].set_index("run")["value"]
    rows = []
    for run, method in RUN_TO_METHOD.items():
        if run in res.index and method in lat.index:
            label = LABELS.get(run, run)
            rows.append({"label": label, "method": method, "median_ms": float(lat[method]), measure: float(res[run])})
    if "bm25" in res.index:
        rows.append({"label": "BM25 (first stage only)", "method": "bm25", "median_ms": 0.0, measure: float(res["bm25"])})
    return pd.DataFrame(rows)


def plot_latency_vs_effectiveness(bench: pd.DataFrame, results: pd.DataFrame, out_stem, doc_len: int | None = None,
                                  domain: str = "in", measure: str = "nDCG@10"):
    import matplotlib.pyplot as plt

    setup_style()
    df = latency_vs_effectiveness(bench, results, doc_len, domain, measure)
    doc_len = doc_len or int(bench["doc_len"].max())
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for _, r in df.iterrows():
        x = max(r["median_ms"], 1e-1)
        ax.scatter([x], [r[measure]], s=50)
        ax.annotate(r["label"], (x, r[measure]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"re-ranking latency, ms per query ({int(bench['docs'].iloc[0])} docs × {doc_len} tokens, log)")
    ax.set_ylabel(f"{measure} ({domain}-domain test)")
    ax.set_title("Latency vs effectiveness")
    return save_figure(fig, out_stem)
