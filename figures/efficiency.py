"""Latency per method (`mice bench latency`), and latency vs effectiveness: one point per method, drawn from the
saved benchmark and evaluation tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mice.bench.latency import METHODS
from mice.files import atomic_path, read_table

from figures import save_figure, setup_style

# evaluation run name -> benchmark method timing it
RUN_TO_METHOD = {
    "cross-encoder": "cross-encoder",
    "masked": "masked",
    "mice": "mice-index",
    "late-interaction": "maxsim",
}
LABELS = {"late-interaction": "late interaction (MaxSim, trained)"}


def latency_vs_effectiveness(
    bench: pd.DataFrame, results: pd.DataFrame, doc_len: int | None = None, domain: str = "in", measure: str = "nDCG@10"
) -> pd.DataFrame:
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
        rows.append(
            {"label": "BM25 (first stage only)", "method": "bm25", "median_ms": 0.0, measure: float(res["bm25"])}
        )
    return pd.DataFrame(rows)


def plot_latency_vs_effectiveness(
    bench: pd.DataFrame,
    results: pd.DataFrame,
    out_stem,
    doc_len: int | None = None,
    domain: str = "in",
    measure: str = "nDCG@10",
):
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


def plot_latency(csv_path, out_png) -> Path:
    """Latency per method and document length (log scale, p10–p90 whiskers, speed-up vs the cross-encoder),
    drawn from the saved CSV only."""
    import matplotlib.pyplot as plt

    df = read_table(csv_path)
    setup_style()
    lens = sorted(df["doc_len"].unique())
    fig, axes = plt.subplots(1, len(lens), figsize=(4.2 * len(lens), 3.6), squeeze=False, sharey=True)
    colors = dict(zip(METHODS, ["#444444", "#888888", "#8fb3d9", "#2c6fbb", "#0b3d91", "#d98c2c"]))
    for ax, doc_len in zip(axes[0], lens):
        g = df[df["doc_len"] == doc_len].set_index("method")
        methods = [m for m in METHODS if m in g.index]
        med = g.loc[methods, "median_ms"].to_numpy()
        err = np.vstack([med - g.loc[methods, "p10_ms"].to_numpy(), g.loc[methods, "p90_ms"].to_numpy() - med])
        x = np.arange(len(methods))
        ax.bar(x, med, yerr=err, color=[colors[m] for m in methods], capsize=3)
        ax.set_yscale("log")
        ax.set_xticks(x, methods, rotation=35, ha="right")
        ax.set_title(f"{int(g['docs'].iloc[0])} docs of {doc_len} tokens, {int(g['query_len'].iloc[0])}-token query")
        for xi, m in zip(x, methods):
            s = g.loc[m, "speedup_vs_ce"]
            if np.isfinite(s) and m != "cross-encoder":
                ax.annotate(
                    f"{s:.1f}x",
                    (xi, g.loc[m, "median_ms"]),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 3),
                    textcoords="offset points",
                )
    axes[0][0].set_ylabel("re-ranking latency per query (ms, median)")
    first = df.iloc[0]
    fig.suptitle(
        f"{first['model']} · MICE-ℓ{first['mice']} · {first['device']} ({first['threads']} threads) · {first['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    out_png = Path(out_png)
    for path in (out_png, out_png.with_suffix(".pdf")):  # PNG for reading, PDF for papers
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out_png
