"""`mice bench codec`: what a compressed index costs in ranking quality and speed, against float16, in one run.

For a MICE model and one or more datasets (every query of `split` of each): BM25's top-`depth` candidates; one
float16 index and one index per compressed storage over the union of the candidates (documents of several
datasets are kept apart by a `<dataset number>:` prefix); every query re-ranked from each index by
`mice.index.fast_rerank.FastReranker`; per-query nDCG@10. Reported per storage:
- nDCG@10 (mean over all queries of all datasets) and its ratio to float16's, with a 95% paired bootstrap CI of
  that ratio (queries resampled with replacement, the same resample for both indexes, `bootstrap` times);
- bytes per document token (codes only; the codebooks are a constant `codec_bytes` per index);
- agreement with the float16 scores: mean Spearman correlation per query and mean overlap of the top 10;
- re-ranking throughput (pairs/s, median of `repeats` passes over all queries, the indexes' passes interleaved so
  that a change of machine load hits all alike) and its ratio to float16's, measured in the same process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

COLUMNS = [
    "storage",
    "settings",
    "bytes_per_token",
    "bytes_vs_fp16",
    "codec_bytes",
    "ndcg10",
    "ndcg10_fp16",
    "ndcg_ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "spearman",
    "top10_overlap",
    "pairs_per_s",
    "pairs_per_s_fp16",
    "throughput_ratio",
    "build_s",
    "queries",
    "pairs",
    "documents",
    "tokens",
    "depth",
    "model",
    "datasets",
    "split",
    "threads",
    "load_avg",
    "date",
]
_KEYS = {
    "m": ("pq_m", int),
    "refine": ("pq_refine", int),
    "rotation": ("rotation", lambda v: v.lower() in ("1", "true", "yes")),
    "anchors": ("anchors", lambda v: v.lower() in ("1", "true", "yes")),
    "centroids": ("centroids", int),
    "bits": ("bits", int),
    "train": ("train_tokens", int),
}


def parse_storage(spec: str) -> dict:
    """ "pq", "pq:m=32", "pq:m=48:rotation=1", "pq:m=32:refine=12:anchors=1", "residual:bits=2:centroids=4096" ->
    IndexConfig keywords."""
    from mice.errors import MiceError
    from mice.index.store import normalise_dtype

    kind, *rest = spec.split(":")
    out = {"dtype": normalise_dtype(kind)}
    for part in rest:
        key, _, value = part.partition("=")
        if key not in _KEYS or not value:
            raise MiceError(f"--storage {spec!r}: expected kind[:key=value...] with keys {', '.join(_KEYS)}")
        name, cast = _KEYS[key]
        try:
            out[name] = cast(value)
        except ValueError:
            raise MiceError(f"--storage {spec!r}: {key}={value!r} is not a number") from None
    return out


@dataclass
class CodecBenchConfig:
    model: str
    datasets: tuple[str, ...]
    storages: tuple[str, ...] = ("pq", "pq:m=32")
    arch: str | None = None
    split: str = "test"
    depth: int = 100
    repeats: int = 3
    batch_size: int = 64
    train_tokens: int = 65536
    bootstrap: int = 10_000
    threads: int | None = None
    device: str | None = None
    seed: int = 0
    workdir: str | None = None


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of mean(b) / mean(a) over queries resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    ma, mb = a[idx].mean(1), b[idx].mean(1)
    ratio = np.where(ma > 0, mb / np.where(ma > 0, ma, 1), np.nan)
    lo, hi = np.nanpercentile(ratio, [2.5, 97.5])
    return float(lo), float(hi)


def _candidates(config: CodecBenchConfig):
    """(texts {doc key: text}, queries [(query key, text, [doc keys])], qrels DataFrame on the keys)."""
    import pandas as pd

    from mice.data import load_dataset
    from mice.rank.first_stage import bm25_run

    texts, queries, qrels = {}, [], []
    for i, spec in enumerate(config.datasets):
        ds = load_dataset(spec)
        corpus, qtexts = ds.corpus(), ds.queries(config.split)
        run = bm25_run(ds, config.split, k=config.depth)
        for qid, g in run.groupby("query_id", sort=True):
            ids = g.sort_values("score", ascending=False, kind="stable")["doc_id"].astype(str).tolist()
            keys = [f"{i}:{d}" for d in ids]
            texts.update({k: corpus[d] for k, d in zip(keys, ids)})
            queries.append((f"{i}:{qid}", qtexts[str(qid)], keys))
        q = ds.qrels(config.split).copy()
        q["query_id"] = f"{i}:" + q["query_id"].astype(str)
        q["doc_id"] = f"{i}:" + q["doc_id"].astype(str)
        qrels.append(q)
    return texts, queries, pd.concat(qrels, ignore_index=True)


def run_codec_bench(config: CodecBenchConfig, log: Callable[[str], None] = print):
    """Build the indexes, re-rank, evaluate; returns a DataFrame with `COLUMNS` (float16 first)."""
    import os

    import torch

    from mice.cli.index import load_mice
    from mice.index.fast_rerank import FastReranker
    from mice.index.store import IndexConfig, build_index

    if config.threads:
        torch.set_num_threads(int(config.threads))
    model = load_mice(config.model, config.arch, config.device)
    texts, queries, qrels = _candidates(config)
    pairs = sum(len(k) for _, _, k in queries)
    log(f"  {len(queries)} queries, {pairs} pairs, {len(texts)} documents to index")
    settings = [{"dtype": "float16"}] + [
        {"train_tokens": config.train_tokens, **parse_storage(s)} for s in config.storages
    ]
    names = ["float16"] + list(config.storages)
    own = config.workdir is None
    work = Path(tempfile.mkdtemp(prefix="mice-codec-")) if own else Path(config.workdir)
    try:
        indexes, build_s = {}, {}
        for name, kw in zip(names, settings):
            t0 = time.perf_counter()
            indexes[name] = build_index(
                model,
                texts,
                work / name.replace(":", "_").replace("=", "-"),
                IndexConfig(batch_size=32, **kw),
                overwrite=True,
            )
            build_s[name] = time.perf_counter() - t0
            log(f"  built {name}: {indexes[name].bytes_per_token():.1f} B/token in {build_s[name]:.1f} s")
        rerankers = {n: FastReranker(model, idx, batch_size=config.batch_size) for n, idx in indexes.items()}
        scores = {n: [rerankers[n].score(text, keys) for _, text, keys in queries] for n in names}  # (warm-up)
        times = {n: [] for n in names}
        for _ in range(max(1, config.repeats)):
            for n in names:
                t0 = time.perf_counter()
                for _, text, keys in queries:
                    rerankers[n].score(text, keys)
                times[n].append(time.perf_counter() - t0)
        return _report(
            config,
            names,
            settings,
            indexes,
            build_s,
            scores,
            times,
            queries,
            qrels,
            pairs,
            float(os.getloadavg()[0]),
            log,
        )[COLUMNS]
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _report(config, names, settings, indexes, build_s, scores, times, queries, qrels, pairs, load_avg, log):
    import pandas as pd
    import torch
    from scipy.stats import spearmanr

    from mice.rank.evaluation import per_query

    ndcg = {}
    for n in names:
        run = pd.DataFrame(
            [(qk, d, float(s)) for (qk, _, keys), sc in zip(queries, scores[n]) for d, s in zip(keys, sc)],
            columns=["query_id", "doc_id", "score"],
        )
        pq = per_query(qrels[qrels["query_id"].isin(run["query_id"].unique())], run, ["nDCG@10"])
        ndcg[n] = pq.set_index("query_id")["value"].sort_index()
    ref = ndcg["float16"].to_numpy()
    ref_speed = pairs / float(np.median(times["float16"]))
    rows = []
    for n, kw in zip(names, settings):
        vals = ndcg[n].reindex(ndcg["float16"].index).to_numpy()
        lo, hi = bootstrap_ratio(ref, vals, config.bootstrap, config.seed)
        rho = [spearmanr(a, b)[0] if len(a) > 2 else np.nan for a, b in zip(scores["float16"], scores[n])]
        top = [
            len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / min(10, len(a))
            for a, b in zip(scores["float16"], scores[n])
        ]
        idx = indexes[n]
        speed = pairs / float(np.median(times[n]))
        rows.append(
            {
                "storage": n,
                "settings": ", ".join(f"{k}={v}" for k, v in kw.items()),
                "bytes_per_token": idx.bytes_per_token(),
                "bytes_vs_fp16": idx.bytes_per_token() / indexes["float16"].bytes_per_token(),
                "codec_bytes": idx.info().get("codec_bytes", 0),
                "ndcg10": float(vals.mean()),
                "ndcg10_fp16": float(ref.mean()),
                "ndcg_ratio": float(vals.mean() / max(ref.mean(), 1e-12)),
                "ratio_ci_low": lo,
                "ratio_ci_high": hi,
                "spearman": float(np.nanmean(rho)),
                "top10_overlap": float(np.mean(top)),
                "pairs_per_s": speed,
                "pairs_per_s_fp16": ref_speed,
                "throughput_ratio": speed / ref_speed,
                "build_s": build_s[n],
                "queries": len(ref),
                "pairs": pairs,
                "documents": len(idx),
                "tokens": idx.n_tokens,
                "depth": config.depth,
                "model": config.model + (f" --arch {config.arch}" if config.arch else ""),
                "datasets": " + ".join(config.datasets),
                "split": config.split,
                "threads": torch.get_num_threads(),
                "load_avg": load_avg,
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
        )
        r = rows[-1]
        log(
            f"  {n:24s} {r['bytes_per_token']:6.1f} B/token  nDCG@10 {r['ndcg10']:.4f} (fp16 {r['ndcg10_fp16']:.4f}, "
            f"ratio {r['ndcg_ratio']:.4f} [{lo:.4f}, {hi:.4f}])  spearman {r['spearman']:.4f}  top-10 overlap "
            f"{r['top10_overlap']:.3f}  {speed:,.0f} pairs/s ({r['throughput_ratio']:.2f}× fp16)"
        )
    return pd.DataFrame(rows)
