"""Scale figures (`mice bench scale`): what one process does per second, what an index costs per token, and what
that means for a full collection.

Measured in one run, on one backbone (the same saved weights for every method, `mice.bench.latency.bench_backbone`):
- index build: `mice.index.store.build_index` (the code path of `mice index build`: tokenisation, MICE's `a`
  contextual layers, quantisation, sha256 and fsync of the shards) over N documents of the dataset, for each
  storage dtype, states only and (with `kv`) states + the live interaction layers' cross-attention keys/values;
  documents/s and document tokens/s, median of `repeats` timed builds after one untimed warm-up build, the
  builds interleaved (repeat r of every configuration, then r+1) so a change of machine load hits all alike;
- storage: bytes per document token of each built index, from its manifest (`DocIndex.bytes_per_token`), with
  the stored vectors per token (1 for the states, + 2·(b-1) with K/V) that explain them:
  float16 = 2·H bytes per vector, int8 = H bytes + a 4-byte float32 scale per vector, pq = H/8 bytes (one
  8-bit code per 8 values; 48 B at H = 384), residual = 2 + H/8 bytes (a centroid id + 1 bit per value); the
  compressed storages store states only (no K/V), and their build time includes training the codebooks;
- re-ranking: query-document pairs/s of `mice.rank.rerank.rerank` (the code path of `mice rerank`: length sorting,
  tokenisation, batching, scoring) for the cross-encoder, MICE on the fly (`--arch a+b`) and MICE from each
  built index (`--index`), with the same queries × candidates; candidates are a seeded sample of the indexed
  documents, so their lengths follow the corpus. Median of `repeats` after `warmup`, interleaved.
Everything is per process (`processes` = 1, `threads` torch threads). Each row also has the process's CPU
seconds per run (`cpu_s`) and `cpu_share` = cpu_s / (wall s × threads): near 1 on an idle machine, lower when
other jobs take the cores, in which case the wall-clock throughputs understate what the process does alone.

`project` turns the measured bytes/token and build tokens/s into index sizes and build times for full
collections (`CORPORA`) at hidden size 384 and N processes, assuming linear scaling; each row carries its
arithmetic. Build time is projected from tokens/s, not documents/s: documents/s holds only for documents of the
measured mean length, tokens/s transfers to a corpus of another mean length (the encoder's cost per token is
nearly constant at these lengths: its linear layers dominate attention below a few hundred tokens).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

PROJECT_HIDDEN = 384  # the paper's MiniLM-L12-H384 (the packaged MiniLM-L6 is H384 too)
PROCESSES = (1, 8, 64)


@dataclass(frozen=True)
class Corpus:
    """A collection to project to: its size and an assumed mean document length in MiniLM word pieces."""

    name: str
    passages: int
    tokens_per_passage: float
    assumption: str


CORPORA = (
    Corpus(
        "MS MARCO passage",
        8_841_823,
        70,
        "~70 MiniLM word pieces per passage incl. [CLS]/[SEP] (assumed, not measured here: ~56 words on average "
        "per BEIR's Table 1, × ~1.2 word pieces per word, + 2 specials)",
    ),
    Corpus(
        "BEIR NQ",
        2_681_468,
        100,
        "~100 MiniLM word pieces per passage incl. [CLS]/[SEP] (assumed, not measured here: ~79 words on "
        "average per BEIR's Table 1, × ~1.25 word pieces per word, + 2 specials)",
    ),
)

COLUMNS = [
    "section",
    "method",
    "dtype",
    "kv",
    "documents",
    "tokens",
    "mean_doc_tokens",
    "pairs",
    "queries",
    "candidates",
    "median_s",
    "p10_s",
    "p90_s",
    "cpu_s",
    "cpu_share",
    "docs_per_s",
    "tokens_per_s",
    "pairs_per_s",
    "tokens_per_cpu_s",
    "pairs_per_cpu_s",
    "codec_s",
    "codec_states",
    "tokens_per_s_encode",
    "bytes_per_token",
    "bytes_per_token_states",
    "bytes_per_token_kv",
    "stored_vectors_per_token",
    "bytes_vs_fp16",
    "build_speed_vs_fp16",
    "speedup_vs_ce",
    "hidden",
    "model",
    "arch",
    "dataset",
    "batch_size",
    "repeats",
    "processes",
    "threads",
    "device",
    "cpu",
    "torch",
    "load_avg",
    "date",
]
PROJECTION_COLUMNS = [
    "corpus",
    "passages",
    "tokens_per_passage",
    "tokens",
    "dtype",
    "stored",
    "hidden",
    "bytes_per_token",
    "bytes",
    "gib",
    "processes",
    "tokens_per_s_per_process",
    "build_hours",
    "core_hours",
    "size_arithmetic",
    "time_arithmetic",
    "assumption",
]


@dataclass
class ScaleConfig:
    model: str = "packaged:minilm"  # backbone: a cross-encoder or encoder folder/hub name
    random_weights: bool = False  # same architecture, random weights (throughput does not depend on them)
    layers: tuple[int, int] = (3, 3)  # MICE-ℓa+b
    dataset: str = "embedded:docs"
    split: str = "test"  # queries come from this split
    docs: int = 300  # documents indexed (a seeded sample of the corpus)
    queries: int = 4
    candidates: int = 25  # per query, a seeded sample of the indexed documents
    dtypes: tuple[str, ...] = ("float16", "int8")
    kv: bool = True  # also build each dtype with cached K/V (and re-rank from it)
    batch_size: int = 32
    max_length: int | None = None  # tokens per document (MICE) and per pair (cross-encoder); default: the model's
    threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0
    workdir: str | None = None  # where the backbone and indexes go (default: a temporary folder, removed after)


def _summary(times: list[float]) -> tuple[float, float, float]:
    from mice.bench.latency import _percentiles

    med, p10, p90 = _percentiles(times)  # milliseconds
    return med / 1000.0, p10 / 1000.0, p90 / 1000.0


def _cpu(cpu_times: list[float], median_wall: float) -> dict:
    """Median CPU seconds of the process (all threads) per timed run, and the share of its threads' wall time
    they fill: ~1 on an idle machine, lower when other jobs take the cores (then wall throughput understates)."""
    import torch

    cpu_s = _median(cpu_times)
    return {"cpu_s": cpu_s, "cpu_share": cpu_s / (median_wall * torch.get_num_threads())}


def _median(values: list[float]) -> float:
    return float(np.median(values))


def stored_vector_bytes(dtype: str, hidden: int) -> int:
    """Bytes one stored vector of `hidden` values takes: float16 2·H, float32 4·H, int8 H + a float32 scale,
    pq H/8 (the benchmark's setting: one byte per 8 values), residual 2 + H/8 (1 bit per value)."""
    from mice.index.store import normalise_dtype

    d = normalise_dtype(dtype)
    return {
        "float16": 2 * hidden,
        "float32": 4 * hidden,
        "int8": hidden + 4,
        "pq": hidden // 8,
        "residual": 2 + hidden // 8,
    }[d]


def codec_settings(dtype: str, hidden: int) -> dict:
    """IndexConfig keywords of a compressed storage at the benchmark's setting (pq: one byte per 8 values)."""
    return {"pq_m": max(1, hidden // 8)} if dtype == "pq" else {}


def _sample(items: Sequence[str], n: int, seed: int) -> list[str]:
    items = sorted(items)
    return items if n >= len(items) else sorted(random.Random(seed).sample(items, n))


def _scale_inputs(config: ScaleConfig, log: Callable[[str], None]):
    """(dataset, sampled documents {id: text}, sampled query ids, the synthetic first-stage run, candidates per
    query), after checking the settings."""
    from mice.data import load_dataset
    from mice.distributed import world
    from mice.errors import DataError, MiceError
    from mice.rank.runs import make_run
    from mice.validate import check_settings

    check_settings(
        {
            "docs": config.docs,
            "queries": config.queries,
            "candidates": config.candidates,
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "threads": config.threads,
            "repeats": config.repeats,
            "warmup": config.warmup,
            "contextual_layers": config.layers[0],
            "interaction_layers": config.layers[1],
        }
    )
    if world().distributed:
        raise MiceError("mice bench scale measures one process; run it without --nproc (the projection scales it)")
    ds = load_dataset(config.dataset)
    corpus = ds.corpus()
    if config.split not in ds.splits:
        raise DataError(f"{ds.name} has no split {config.split!r} (splits: {', '.join(ds.splits)})")
    all_queries = ds.queries(config.split)
    if not corpus or not all_queries:
        raise DataError(f"{ds.name}: no documents or no {config.split} queries to benchmark with")
    doc_ids = _sample(list(corpus), config.docs, config.seed)
    if len(doc_ids) < config.docs:
        log(f"  {ds.name} has {len(doc_ids)} documents: indexing all of them (--docs {config.docs})")
    qids = _sample(list(all_queries), config.queries, config.seed)
    n_cand = min(config.candidates, len(doc_ids))
    run_rows = []
    for q in qids:
        cands = random.Random(f"{config.seed}:{q}").sample(doc_ids, n_cand)
        run_rows += [(q, d, float(n_cand - j)) for j, d in enumerate(cands)]
    return ds, {d: corpus[d] for d in doc_ids}, qids, make_run(run_rows), n_cand


def _scale_builds(
    config: ScaleConfig, mice, sub: dict, dtypes: tuple, work: Path, meta: dict, log: Callable[[str], None]
) -> tuple[list[dict], dict]:
    """Index builds: one untimed warm-up build, then `repeats` rounds over every configuration; (rows, the
    indexes by (dtype, kv))."""
    from mice.index.store import CODECS, IndexConfig, build_index

    hidden = int(mice.hidden_size)
    builds = [(d, kv) for d in dtypes for kv in ((False, True) if config.kv and d not in CODECS else (False,))]
    build_index(
        mice,
        dict(list(sub.items())[: min(32, len(sub))]),
        work / "index-warmup",
        IndexConfig(dtype="float16", kv=config.kv, batch_size=config.batch_size),
        overwrite=True,
    )
    times: dict[tuple[str, bool], list[float]] = {c: [] for c in builds}
    cpu: dict[tuple[str, bool], list[float]] = {c: [] for c in builds}
    fit: dict[tuple[str, bool], list[float]] = {c: [] for c in builds}  # codebook fits (pq, residual)
    indexes = {}
    for _ in range(config.repeats):
        for dtype, kv in builds:
            t0, c0 = time.perf_counter(), time.process_time()
            indexes[(dtype, kv)] = build_index(
                mice,
                sub,
                work / f"index-{dtype}{'-kv' if kv else ''}",
                IndexConfig(dtype=dtype, kv=kv, batch_size=config.batch_size, **codec_settings(dtype, hidden)),
                overwrite=True,
            )
            times[(dtype, kv)].append(time.perf_counter() - t0)
            cpu[(dtype, kv)].append(time.process_time() - c0)
            fit[(dtype, kv)].append(indexes[(dtype, kv)].codec_s)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for dtype, kv in builds:
        index = indexes[(dtype, kv)]
        med, p10, p90 = _summary(times[(dtype, kv)])
        n_tok = index.n_tokens
        codec_s = _median(fit[(dtype, kv)])
        rows.append(
            {
                "section": "build",
                "method": "index-build",
                "dtype": dtype,
                "kv": kv,
                "documents": len(index),
                "tokens": n_tok,
                "mean_doc_tokens": n_tok / max(1, len(index)),
                "median_s": med,
                "p10_s": p10,
                "p90_s": p90,
                **_cpu(cpu[(dtype, kv)], med),
                "docs_per_s": len(index) / med,
                "tokens_per_s": n_tok / med,
                "bytes_per_token": index.bytes_per_token(),
                "tokens_per_cpu_s": n_tok / max(_median(cpu[(dtype, kv)]), 1e-9),
                "codec_s": codec_s,
                "codec_states": int(index.manifest["codec"].get("train_states", 0)) if index.codec is not None else 0,
                "tokens_per_s_encode": n_tok / max(med - codec_s, 1e-9),
                "bytes_per_token_states": index.bytes_per_token("states"),
                "bytes_per_token_kv": index.bytes_per_token("kv") if kv else 0.0,
                "stored_vectors_per_token": 1 + index.kv_slots,
                "load_avg": load_avg,
                **meta,
            }
        )
        log(
            f"  build {dtype:8s}{' +K/V' if kv else '      '}  {len(index)} docs, {n_tok} tokens: median "
            f"{med:.2f} s  {len(index) / med:8.1f} docs/s  {n_tok / med:9.0f} tokens/s  "
            f"{index.bytes_per_token():7.1f} B/token  CPU share {rows[-1]['cpu_share']:.2f}"
        )
    return rows, indexes


def _scale_scorers(config: ScaleConfig, mice, folder: Path, indexes: dict, n_cand: int, device) -> dict:
    """Method name -> (scorer, its `rerank` batching, its row's storage columns)."""
    from mice.index.fast_rerank import FastReranker, IndexScorer
    from mice.models.loader import load

    scorers: dict[str, tuple[object, dict, dict]] = {}
    ce_scorer = load(str(folder), device=device, max_length=config.max_length)
    scorers["cross-encoder"] = (ce_scorer, {"batch_size": config.batch_size}, {})
    scorers["mice (on the fly)"] = (mice, {"batch_size": config.batch_size}, {})
    for (dtype, kv), index in indexes.items():
        scorer = IndexScorer(FastReranker(mice, index, use_kv=kv, batch_size=config.batch_size))
        name = f"mice-{'kv' if kv else 'index'} ({dtype}{' K/V' if kv else ' states'})"
        scorers[name] = (
            scorer,
            scorer.runner_batching(n_cand),
            {
                "dtype": dtype,
                "kv": kv,
                "bytes_per_token": index.bytes_per_token(),
                "bytes_per_token_states": index.bytes_per_token("states"),
                "bytes_per_token_kv": index.bytes_per_token("kv") if kv else 0.0,
                "stored_vectors_per_token": 1 + index.kv_slots,
            },
        )
    return scorers


def _scale_reranks(
    config: ScaleConfig, scorers: dict, ds, qids: list[str], run_df, n_cand: int, meta: dict, log: Callable[[str], None]
) -> list[dict]:
    """Re-ranking: the same queries x candidates through `mice.rank.rerank.rerank` for every method, as `mice
    rerank` runs them (each scorer's own no_grad / inference_mode); warm-ups first, then interleaved rounds."""
    from mice.errors import DataError
    from mice.rank.rerank import rerank

    pairs = len(run_df)

    def run_once(scorer, calls):
        return rerank(scorer, ds, config.split, run_df, k=n_cand, query_ids=qids, **calls)

    rtimes: dict[str, list[float]] = {m: [] for m in scorers}
    rcpu: dict[str, list[float]] = {m: [] for m in scorers}
    for name, (scorer, calls, _) in scorers.items():
        for _ in range(config.warmup):
            run_once(scorer, calls)
    for _ in range(config.repeats):
        for name, (scorer, calls, _) in scorers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = run_once(scorer, calls)
            rtimes[name].append(time.perf_counter() - t0)
            rcpu[name].append(time.process_time() - c0)
            if len(out) != pairs:
                raise DataError(f"{name}: scored {len(out)} of {pairs} pairs")
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for name, (_, _, extra) in scorers.items():
        med, p10, p90 = _summary(rtimes[name])
        rows.append(
            {
                "section": "rerank",
                "method": name,
                "pairs": pairs,
                "queries": len(qids),
                "candidates": n_cand,
                "median_s": med,
                "p10_s": p10,
                "p90_s": p90,
                **_cpu(rcpu[name], med),
                "pairs_per_s": pairs / med,
                "pairs_per_cpu_s": pairs / max(_median(rcpu[name]), 1e-9),
                "load_avg": load_avg,
                **extra,
                **meta,
            }
        )
        log(
            f"  rerank {name:28s} {pairs} pairs: median {med:.2f} s  {pairs / med:8.1f} pairs/s  "
            f"CPU share {rows[-1]['cpu_share']:.2f}"
        )
    return rows


def run_scale(config: ScaleConfig, log: Callable[[str], None] = print):
    """Run the benchmark; returns a DataFrame with `COLUMNS` (one row per index build, one per re-ranking method)."""
    import pandas as pd
    import torch

    from mice.bench.latency import _cpu_name, bench_backbone
    from mice.errors import DataError
    from mice.index.store import normalise_dtype
    from mice.models.loader import load

    ds, sub, qids, run_df, n_cand = _scale_inputs(config, log)
    dtypes = tuple(dict.fromkeys(normalise_dtype(d) for d in config.dtypes))
    if not dtypes:
        raise DataError("no index dtype to build")
    own_work = config.workdir is None
    work = Path(tempfile.mkdtemp(prefix="mice-scale-")) if own_work else Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        device = torch.device(config.device)
        ce, _tok, folder = bench_backbone(
            config.model, config.random_weights, config.seed, device, config.threads, work, prefix="mice-scale-"
        )
        del ce
        arch = f"{config.layers[0]}+{config.layers[1]}"
        mice = load(str(folder), arch=arch, kind="mice", device=device, max_length=config.max_length)
        meta = {
            "hidden": int(mice.hidden_size),
            "arch": arch,
            "dataset": ds.name,
            "batch_size": config.batch_size,
            "repeats": config.repeats,
            "processes": 1,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "cpu": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "model": str(config.model) + (" (random weights)" if config.random_weights else ""),
        }
        rows, indexes = _scale_builds(config, mice, sub, dtypes, work, meta, log)
        scorers = _scale_scorers(config, mice, folder, indexes, n_cand, device)
        rows += _scale_reranks(config, scorers, ds, qids, run_df, n_cand, meta, log)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return add_scale_ratios(pd.DataFrame(rows))[COLUMNS]


def add_scale_ratios(df):
    """bytes_vs_fp16 / build_speed_vs_fp16: a build's bytes/token and docs/s over the float16 build that stores
    the same vectors (same `kv`); speedup_vs_ce: a re-ranking method's pairs/s over the cross-encoder's."""
    import pandas as pd

    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df["kv"] = df["kv"].astype("object")
    builds = df["section"] == "build"
    for kv in (False, True):
        ref = df[builds & (df["kv"] == kv) & (df["dtype"] == "float16")]
        if ref.empty:
            continue
        sel = builds & (df["kv"] == kv)
        df.loc[sel, "bytes_vs_fp16"] = df.loc[sel, "bytes_per_token"] / float(ref["bytes_per_token"].iloc[0])
        df.loc[sel, "build_speed_vs_fp16"] = df.loc[sel, "docs_per_s"] / float(ref["docs_per_s"].iloc[0])
    ce = df[(df["section"] == "rerank") & (df["method"] == "cross-encoder")]
    if not ce.empty:
        sel = df["section"] == "rerank"
        df.loc[sel, "speedup_vs_ce"] = df.loc[sel, "pairs_per_s"] / float(ce["pairs_per_s"].iloc[0])
    return pd.DataFrame(df)


# ------------------------------------------------------------------------------------------------ projection
def _build_rates(rec: dict, tokens: int) -> tuple[float, float, float]:
    """(codebook fit seconds at full scale, encoding tokens/s, tokens per CPU second) of one measured build.

    A pq/residual build fits its codebooks once, on a sample of `IndexConfig.train_tokens` states (the whole
    corpus when smaller), before encoding: that fit is a fixed cost, not a per-token one. It is projected linearly
    in the sample size from the measured fit (`codec_s` on `codec_states` states; Lloyd iterations are linear in
    the points) and done by one process; the per-token rate is the build's without the fit
    (`tokens_per_s_encode`), and its CPU rate is scaled by the same wall-clock fraction."""
    from mice.index.store import IndexConfig

    tps, per_cpu = float(rec["tokens_per_s"]), rec.get("tokens_per_cpu_s")
    per_cpu = float(per_cpu) if per_cpu is not None else float("nan")
    fit_s, states = float(rec.get("codec_s") or 0.0), int(rec.get("codec_states") or 0)
    if fit_s <= 0 or states <= 0:
        return 0.0, tps, per_cpu
    enc = float(rec["tokens_per_s_encode"])
    return fit_s * min(IndexConfig().train_tokens, tokens) / states, enc, per_cpu * enc / tps


def project(
    builds, corpora: Sequence[Corpus] = CORPORA, processes: Sequence[int] = PROCESSES, hidden: int = PROJECT_HIDDEN
):
    """Index size and build time of each corpus, from measured builds.

    `builds`: rows (a DataFrame or dicts) with dtype, kv, bytes_per_token, stored_vectors_per_token, hidden and
    tokens_per_s, as `run_scale` writes for its builds. Per corpus, dtype, stored vectors and N in `processes`:
    tokens = passages × tokens_per_passage; bytes = tokens × bytes_per_token, where bytes_per_token is the
    measured one when the measured model has `hidden` values per vector, else stored vectors per token ×
    `stored_vector_bytes(dtype, hidden)` (the storage format's exact size); build hours = tokens ÷ (measured
    tokens/s × N) ÷ 3600, assuming linear scaling over N processes each as fast as the measured one (not
    measured). core_hours = tokens ÷ measured tokens per CPU second ÷ 3600 (with `tokens_per_cpu_s`): the CPU
    time the build costs in all, whatever N, and the figure least changed by other jobs on the measuring machine.
    Returns a DataFrame with `PROJECTION_COLUMNS`; sizes are data files only (the shard records' ids and offsets
    add some bytes per document)."""
    import pandas as pd

    from mice.validate import positive

    rows = []
    records = builds.to_dict("records") if hasattr(builds, "to_dict") else list(builds)
    for n in processes:
        positive("processes", int(n))
    for c in corpora:
        tokens = int(round(c.passages * c.tokens_per_passage))
        for rec in records:
            dtype, kv = str(rec["dtype"]), bool(rec["kv"])
            vectors = int(rec["stored_vectors_per_token"])
            if int(rec["hidden"]) == hidden:
                bpt = float(rec["bytes_per_token"])
                how = "measured"
            else:
                bpt = float(vectors * stored_vector_bytes(dtype, hidden))
                how = (
                    f"{vectors} vector{'s' if vectors > 1 else ''} × {stored_vector_bytes(dtype, hidden)} B "
                    f"at H={hidden}"
                )
            size = tokens * bpt
            stored = "states + K/V" if kv else "states"
            size_text = (
                f"{c.passages:,} passages × {c.tokens_per_passage:g} tokens = {tokens:,} tokens × "
                f"{bpt:g} B/token ({how}) = {size:,.0f} B = {size / 2**30:,.1f} GiB"
            )
            fit_s, tps, per_cpu = _build_rates(rec, tokens)
            core_hours = (fit_s + tokens / per_cpu) / 3600 if per_cpu == per_cpu else np.nan
            for n in processes:
                seconds = fit_s + tokens / (tps * n)
                rows.append(
                    {
                        "corpus": c.name,
                        "passages": c.passages,
                        "tokens_per_passage": c.tokens_per_passage,
                        "tokens": tokens,
                        "dtype": dtype,
                        "stored": stored,
                        "hidden": hidden,
                        "bytes_per_token": bpt,
                        "bytes": size,
                        "gib": size / 2**30,
                        "processes": int(n),
                        "tokens_per_s_per_process": tps,
                        "build_hours": seconds / 3600,
                        "core_hours": core_hours,
                        "size_arithmetic": size_text,
                        "time_arithmetic": (f"{fit_s:,.0f} s codebook fit + " if fit_s else "")
                        + f"{tokens:,} tokens ÷ ({tps:,.0f} tokens/s × {n}) = {seconds:,.0f} s "
                        f"= {seconds / 3600:,.2f} h",
                        "assumption": c.assumption,
                    }
                )
    return pd.DataFrame(rows, columns=PROJECTION_COLUMNS)
