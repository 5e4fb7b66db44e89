"""Benchmark: a fast knockout sweep against the naive one (each knockout a full forward pass), in one run.

Model: the packaged MiniLM-L6-H384 (6 layers, 12 heads; a fresh, seeded score head: speed does not depend on
the head's training). Knockouts: every single path (25) in every layer (6), i.e. 150, optionally per head too.
Pairs: (summary line, rest of the docstring) of public numpy functions, each query with its own description
and k - 1 others as candidates, so that the sweep's metrics are real.

Prints the scoring time of both strategies (clean pass + all knockouts over all pairs; their scores are
checked to agree), the metric time (identical for both), and the two ratios:
`scoring` = fast / naive scoring, `sweep` = (fast scoring + metrics) / (naive scoring + metrics).

    python -m ablations.bench_sweep [--queries 8] [--k 4] [--max-length 128] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import time


def docstring_collection(n_queries: int, k: int, seed: int = 0):
    """(InMemoryDataset, run) from numpy's docstrings: query = summary line, document = the next paragraph."""
    import numpy
    import pandas as pd

    from mice.data import InMemoryDataset

    items = []
    for name in sorted(dir(numpy)):
        obj = getattr(numpy, name, None)
        doc = inspect.getdoc(obj) if callable(obj) else None
        if not doc:
            continue
        parts = [p.strip() for p in doc.split("\n\n") if p.strip()]
        if (
            len(parts) >= 2
            and 60 < len(parts[1])
            and not parts[1].startswith(("Parameters", "-"))
            and len(parts[0]) > 15
            and "(" not in parts[0][:20]
        ):
            items.append((name, " ".join(parts[0].split()), " ".join(parts[1].split())))
    if len(items) < n_queries + k:
        raise RuntimeError("not enough numpy docstrings for the benchmark collection")
    import random

    rng = random.Random(seed)
    rng.shuffle(items)
    corpus = {name: doc for name, _, doc in items}
    queries, qrels, run = {}, [], []
    names = [n for n, _, _ in items]
    for i, (name, summary, _) in enumerate(items[:n_queries]):
        qid = f"q{i}"
        queries[qid] = summary
        qrels.append((qid, name, 1))
        others = rng.sample([n for n in names if n != name], k - 1)
        for rank, d in enumerate(rng.sample([name] + others, k)):
            run.append((qid, d, float(k - rank)))
    ds = InMemoryDataset("numpy-docstrings", corpus, {"test": queries}, {"test": qrels})
    return ds, pd.DataFrame(run, columns=["query_id", "doc_id", "score"])


def run_benchmark(
    n_queries: int = 8,
    k: int = 4,
    max_length: int = 128,
    heads: bool = False,
    device=None,
    threads: int | None = None,
    batch_size: int = 16,
    repeat: int = 1,
) -> dict:
    import torch

    from mice import HookedCrossEncoder
    from probes.candidates import from_run

    from ablations.engine import SweepEngine
    from ablations.knockouts import knockout_set
    from ablations.metrics import Evaluator
    from ablations.sweep import ScoredBatches

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = HookedCrossEncoder.from_pretrained("packaged:minilm", max_length=max_length, device=device)
    ds, run = docstring_collection(n_queries, k)
    cands = from_run(ds, "test", run, k=k)
    kos = knockout_set(model.n_layers, model.n_heads, heads=heads)

    def scoring(strategy: str):
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        best, scores = float("inf"), None
        for _ in range(repeat):
            batches = ScoredBatches(SweepEngine(model, "renorm", None, strategy), cands.pairs, batch_size)
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                clean = batches.clean()
                scores = batches.knockouts(kos)
            sync()
            best = min(best, time.perf_counter() - t)
        return best, clean, scores

    scoring("fast")  # warm-up (allocations, kernels), not timed
    t_fast, clean, fast = scoring("fast")
    t_naive, clean_naive, naive = scoring("naive")
    diff = float(abs(fast - naive).max())
    evaluator = Evaluator(cands, ("nDCG@10", "RR@10"))
    t = time.perf_counter()
    clean_pq = evaluator.per_query(clean)
    for s in fast:
        evaluator.compare(clean, clean_pq, s)
    t_metrics = time.perf_counter() - t
    lengths = [
        int(b["attention_mask"].sum(1).float().mean())
        for _, b in ScoredBatches(SweepEngine(model, "renorm"), cands.pairs, batch_size).batches
    ]
    return {
        "model": "packaged MiniLM-L6-H384 (6 layers, 12 heads)",
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "knockouts": len(kos),
        "pairs": len(cands),
        "queries": n_queries,
        "k": k,
        "max_length": max_length,
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "batch_size": batch_size,
        "fast_scoring_s": round(t_fast, 3),
        "naive_scoring_s": round(t_naive, 3),
        "metrics_s": round(t_metrics, 3),
        "ratio_scoring": round(t_fast / t_naive, 4),
        "ratio_sweep": round((t_fast + t_metrics) / (t_naive + t_metrics), 4),
        "max_abs_score_diff": diff,
    }


def run_attribution_benchmark(
    n_queries: int = 8,
    k: int = 4,
    max_length: int = 128,
    device=None,
    threads: int | None = None,
    batch_size: int = 16,
    model_path: str | None = None,
    mode: str = "renorm",
    pairs=None,
) -> dict:
    """Head-level screen by attribution patching vs the exact head-level sweep (fast engine), same pairs, one
    run: every layer x head x path cell (plus the all-heads rows) in `mode`. Also the Spearman rho between
    estimated and exact effects over the layer x path cells (non-structural), from the same numbers."""
    import numpy as np
    import torch
    from scipy import stats

    from mice import HookedCrossEncoder
    from probes.candidates import as_candidates, from_run

    from ablations.attribution import PathAttribution
    from ablations.engine import SweepEngine
    from ablations.knockouts import ALL_HEADS, check_knockout, knockout_set
    from mice.masks import InteractionMask
    from ablations.structural import occupancy, structural_cells
    from ablations.sweep import ScoredBatches

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = HookedCrossEncoder.from_pretrained(model_path or "packaged:minilm", max_length=max_length, device=device)
    if pairs is not None:
        cands = as_candidates(pairs)
    else:
        ds, run = docstring_collection(n_queries, k)
        cands = from_run(ds, "test", run, k=k)
    base = InteractionMask.full(model.n_layers)
    kos = [ko for ko in knockout_set(model.n_layers, model.n_heads, heads=True) if check_knockout(ko, base) is None]
    batches = ScoredBatches(SweepEngine(model, mode, None, "fast"), cands.pairs, batch_size)
    struct = structural_cells(kos, base, occupancy([b["segment_ids"] for _, b in batches.batches]), mode)
    live = [ko for ko in kos if ko.key not in struct]
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    pa = PathAttribution(model, live, mode)
    pa.estimate(batches.batches[0][1])  # warm-up, not timed
    sync()
    t = time.perf_counter()
    est = np.empty((len(live), len(cands)))
    for idx, b in batches.batches:
        _, e = pa.estimate(b)
        est[:, idx] = e.double().cpu().numpy()
    sync()
    t_attr = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        clean = batches.clean()
        exact = batches.knockouts(live) - clean[None, :]
    sync()
    t_exact = time.perf_counter() - t
    layer = np.array([ko.head == ALL_HEADS for ko in live])
    rho = lambda a, b: float(stats.spearmanr(a, b).statistic)  # noqa: E731
    return {
        "model": model_path or "packaged MiniLM-L6-H384 (fresh head)",
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "mode": mode,
        "pairs": len(cands),
        "queries": len(cands.query_ids),
        "cells": len(kos),
        "structural": len(struct),
        "estimated": len(live),
        "attribution_s": round(t_attr, 3),
        "exact_head_sweep_s": round(t_exact, 3),
        "ratio_attribution_to_exact": round(t_attr / t_exact, 4),
        "rho_layer_mean_dscore": rho(est[layer].mean(1), exact[layer].mean(1)),
        "rho_layer_mean_abs_dscore": rho(np.abs(est[layer]).mean(1), np.abs(exact[layer]).mean(1)),
        "rho_head_mean_dscore": rho(est[~layer].mean(1), exact[~layer].mean(1)),
        "rho_head_mean_abs_dscore": rho(np.abs(est[~layer]).mean(1), np.abs(exact[~layer]).mean(1)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--heads", action="store_true", help="per-head knockouts too (x13 knockouts)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="take the best of N timings per strategy")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument(
        "--attribution",
        action="store_true",
        help="head-level screen: attribution patching vs the "
        "exact head-level sweep (every layer x head x path), with Spearman rho",
    )
    ap.add_argument("--model", default=None, help="cross-encoder folder (default: packaged MiniLM, fresh head)")
    ap.add_argument("--mode", default="renorm")
    args = ap.parse_args(argv)
    if args.attribution:
        res = run_attribution_benchmark(
            args.queries, args.k, args.max_length, args.device, args.threads, args.batch_size, args.model, args.mode
        )
        if not args.json:
            print(
                f"{res['model']} on {res['device']} ({res['threads']} threads), {res['mode']}: {res['cells']} "
                f"layer x head x path cells ({res['structural']} structural) x {res['pairs']} pairs"
            )
            print(f"  attribution (one forward + backward per batch): {res['attribution_s']:.2f} s")
            print(f"  exact head-level sweep (fast engine):          {res['exact_head_sweep_s']:.2f} s")
            print(
                f"  ratio attribution/exact: {res['ratio_attribution_to_exact']:.4f}; Spearman rho layer x path: "
                f"{res['rho_layer_mean_dscore']:.3f} (mean change), {res['rho_layer_mean_abs_dscore']:.3f} "
                f"(mean |change|); heads: {res['rho_head_mean_dscore']:.3f} / {res['rho_head_mean_abs_dscore']:.3f}"
            )
        print(json.dumps(res))
        return 0
    res = run_benchmark(
        args.queries, args.k, args.max_length, args.heads, args.device, args.threads, args.batch_size, args.repeat
    )
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"{res['model']} on {res['device']} ({res['threads']} threads): {res['knockouts']} knockouts x "
        f"{res['pairs']} pairs (mean {res['mean_tokens']} tokens)"
    )
    print(f"  naive (a full forward per knockout): {res['naive_scoring_s']:.2f} s")
    print(
        f"  fast sweep:                          {res['fast_scoring_s']:.2f} s   (max |score diff| "
        f"{res['max_abs_score_diff']:.1e})"
    )
    print(f"  metrics (same for both):             {res['metrics_s']:.2f} s")
    print(f"  ratio sweep/naive: scoring {res['ratio_scoring']:.3f}, whole sweep {res['ratio_sweep']:.3f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
