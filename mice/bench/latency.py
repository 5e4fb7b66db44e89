"""Latency benchmark: re-ranking N candidates for one query, every method in one process on one backbone.

Methods (all on the same backbone weights, the same hardware, threads and batch size, `torch.inference_mode`,
attention through PyTorch's `scaled_dot_product_attention` ("sdpa") wherever the method allows it):
- `cross-encoder`: the HF `…ForSequenceClassification` model on `[CLS] q [SEP] d [SEP]` (attn "sdpa");
- `masked`: the same cross-encoder under an interaction mask (default mask2) through `HookedCrossEncoder`
  (nothing hooked, so sdpa with the mask folded into the additive mask: a mask saves no compute without a
  structured kernel, and costs the mask's construction);
- `mice`: MICE-ℓa+b with the documents' contextual layers computed on the fly;
- `mice-index`: MICE from a document-state index on disk (float16, memory-mapped, fp32 compute);
- `mice-kv`: MICE from an index that also caches the live interaction layers' cross-attention keys/values;
- `maxsim`: ColBERT-style MaxSim over precomputed 128-d token vectors (float16, memory-mapped) of the same
  backbone's last layer; only the query is encoded at query time. With `late_interaction` (a folder trained by
  `mice train --mode late-interaction`) it is that trained model; otherwise a random projection of the backbone
  (the timing does not depend on the weights).
Inputs are token ids (random word pieces, fixed lengths), so tokenisation is excluded from every method.
A pair that exceeds the model's positions (query + 512-token document) is truncated for the cross-encoder
(the MICE document keeps all its tokens: the comparison favours the cross-encoder). Timings: median and
10th/90th percentiles over `repeats` after `warmup` runs, the methods' runs interleaved (so a change of machine
load hits all of them alike); `peak_mem_mb` is the largest peak of additional resident memory over a method's
runs (CPU; sampled every 2 ms) or of additional allocated memory (CUDA).
"""

from __future__ import annotations

import gc
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

METHODS = ("cross-encoder", "masked", "mice", "mice-index", "mice-kv", "maxsim")
COLUMNS = [
    "method",
    "doc_len",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "docs_per_s",
    "peak_mem_mb",
    "bytes_per_doc_token",
    "ratio_vs_ce",
    "speedup_vs_ce",
    "mem_ratio_vs_ce",
    "docs",
    "query_len",
    "ce_pair_len",
    "batch_size",
    "repeats",
    "device",
    "compute_dtype",
    "threads",
    "attention",
    "model",
    "mice",
    "mask",
    "index_dtype",
    "torch",
    "cpu",
    "load_avg",
    "date",
]


@dataclass
class LatencyConfig:
    docs: int = 100
    query_len: int = 32
    doc_lens: tuple[int, ...] = (128, 512)
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    model: str = "packaged:minilm"  # backbone: a cross-encoder or encoder folder/hub name
    random_weights: bool = False  # same architecture, random weights (timing does not depend on them)
    layers: tuple[int, int] = (3, 3)
    mask: str = "mask2"
    batch_size: int = 32
    threads: int | None = None
    index_dtype: str = "float16"
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    workdir: str | None = None  # where indexes are written (default: a temporary folder)
    late_interaction: str | None = None  # a trained late-interaction folder for `maxsim` (default: random proj.)
    compute_dtype: str = "fp32"  # bf16/fp16: every method's forward under torch.autocast (weights stay fp32)


class _PeakMemory:
    """Peak additional memory while the block runs: RSS sampled by a thread (CPU) or CUDA's allocator peak."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _trim_malloc()
        import psutil

        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, self._proc.memory_info().rss)
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_mb = (self._peak - self._base) / 2**20
        return False


def _trim_malloc() -> None:
    """Give freed heap back to the OS so one method's garbage does not hide the next one's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class _Inputs:
    query: "object"  # [1, Lq] ids
    docs: "object"  # [N, Ld] ids
    pairs: "object"  # [N, T] ids
    pair_types: "object"
    ce_pair_len: int


def make_inputs(tokenizer, docs: int, query_len: int, doc_len: int, max_positions: int, seed: int) -> _Inputs:
    """Random word pieces with exact lengths: `[CLS] q [SEP]`, `[CLS] d [SEP]`, and the pair for the CE."""
    import torch

    g = torch.Generator().manual_seed(seed + doc_len)
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    lo = min(1000, len(tokenizer) // 2)
    hi = len(tokenizer)

    def seqs(n, length):
        body = torch.randint(lo, hi, (n, length - 2), generator=g)
        return torch.cat([torch.full((n, 1), cls_id), body, torch.full((n, 1), sep_id)], dim=1)

    q = seqs(1, query_len)
    d = seqs(docs, doc_len)
    d_body = d[:, 1:-1]
    room = max_positions - query_len - 1  # [CLS] q [SEP] + d + [SEP]
    d_body = d_body[:, : max(1, room)]
    pairs = torch.cat([q.expand(docs, -1), d_body, torch.full((docs, 1), sep_id)], dim=1)
    types = torch.zeros_like(pairs)
    types[:, query_len:] = 1
    return _Inputs(q, d, pairs, types, int(pairs.shape[1]))


def _percentiles(times_s: list[float]) -> tuple[float, float, float]:
    a = np.asarray(times_s) * 1000.0
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


def bench_backbone(
    model: str,
    random_weights: bool,
    seed: int,
    device,
    threads: int | None = None,
    workdir=None,
    prefix: str = "mice-bench-",
):
    """The cross-encoder every benchmarked method is built from, saved once to `<work>/backbone` so that all
    methods load exactly these weights: (ce on `device`, tokenizer, backbone folder). A bare encoder gets a
    one-label head; `random_weights` draws the model from its config under `seed`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from mice.models.backbone import resolve_model_path
    from mice.errors import ModelError
    from mice.models.mice_model import _quiet_transformers
    from mice.models.st_format import load_classifier, local_folder

    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda but CUDA is not available")
    path = local_folder(resolve_model_path(model))
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if random_weights:
            hf_config = AutoConfig.from_pretrained(path)
            hf_config.num_labels = 1
            ce = AutoModelForSequenceClassification.from_config(hf_config, attn_implementation="sdpa")
        else:  # a sentence-transformers modular folder keeps its own head (mice.models.st_format)
            ce = load_classifier(path, 1, attn_implementation="sdpa")
    ce = ce.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    folder = work / "backbone"
    with _quiet_transformers():
        ce.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ce, tokenizer, folder


@dataclass
class _Bench:
    """What every method's set-up shares: the config, the device and precision, the backbone and its MICE model."""

    config: LatencyConfig
    device: object
    precision: str
    ce: object
    tokenizer: object
    ce_folder: Path
    mice: object
    fast: object

    @property
    def bs(self) -> int:
        return self.config.batch_size


def _open_bench(config: LatencyConfig) -> tuple[_Bench, int]:
    """The shared set-up, and the model's position limit."""
    import torch

    from mice.errors import ModelError
    from mice.index.fast_rerank import FastMICE
    from mice.models.mice_model import MICEModel
    from mice.models.precision import check_precision

    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise ModelError(f"unknown benchmark methods {sorted(unknown)} (choose from {', '.join(METHODS)})")
    device = torch.device(config.device)
    precision = check_precision(config.compute_dtype, device)
    ce, tokenizer, ce_folder = bench_backbone(
        config.model, config.random_weights, config.seed, device, config.threads, config.workdir
    )
    a, b = config.layers
    mice = (
        MICEModel.from_cross_encoder(
            ce_folder, contextual_layers=a, interaction_layers=b, max_doc_length=max(config.doc_lens)
        )
        .to(device)
        .eval()
    )
    mice.set_compute_dtype(precision)
    return _Bench(config, device, precision, ce, tokenizer, ce_folder, mice, FastMICE(mice)), MICEModel._position_limit(
        ce.config
    )


def _meta(bench: _Bench) -> dict:
    import torch

    config, (a, b) = bench.config, bench.config.layers
    return {
        "docs": config.docs,
        "query_len": config.query_len,
        "batch_size": bench.bs,
        "repeats": config.repeats,
        "device": str(bench.device),
        "compute_dtype": bench.precision,
        "threads": torch.get_num_threads(),
        "attention": "sdpa",
        "model": str(config.model) + (" (random weights)" if config.random_weights else ""),
        "mice": f"{a}+{b}",
        "mask": config.mask,
        "index_dtype": config.index_dtype,
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _setup_ce(bench: _Bench, inp, doc_len: int) -> dict:
    """The cross-encoder and the masked cross-encoder: (run, bytes per document token) by method."""
    import torch

    config, bs, device = bench.config, bench.bs, bench.device
    pairs, types = inp.pairs.to(device), inp.pair_types.to(device)
    setups = {}
    if "cross-encoder" in config.methods:

        def run_ce():
            for i in range(0, config.docs, bs):
                bench.ce(
                    input_ids=pairs[i : i + bs],
                    token_type_ids=types[i : i + bs],
                    attention_mask=torch.ones_like(pairs[i : i + bs]),
                ).logits

        setups["cross-encoder"] = (run_ce, 0.0)
    if "masked" in config.methods:
        from mice.models.hooked import HookedCrossEncoder
        from mice.models.mice_model import _quiet_transformers
        from mice.segments import PairBatch, segment_ids

        with _quiet_transformers():
            hooked = HookedCrossEncoder.from_pretrained(bench.ce_folder, device=device)
        mask = hooked.resolve_mask(config.mask)
        m_batches = []
        for i in range(0, config.docs, bs):
            ids = pairs[i : i + bs]
            am = torch.ones_like(ids)
            m_batches.append(
                PairBatch(
                    {
                        "input_ids": ids,
                        "attention_mask": am,
                        "token_type_ids": types[i : i + bs],
                        "segment_ids": segment_ids(ids.cpu(), am.cpu(), bench.tokenizer).to(device),
                    }
                )
            )

        def run_masked():
            for batch in m_batches:
                hooked.forward(batch, mask=mask)

        setups["masked"] = (run_masked, 0.0)
    return setups


def _query_batch(bench: _Bench, inp) -> dict:
    import torch

    q = inp.query.to(bench.device)
    return {"input_ids": q, "attention_mask": torch.ones_like(q), "token_type_ids": torch.zeros_like(q)}


def _setup_mice(bench: _Bench, inp, doc_len: int) -> dict:
    """MICE on the fly, and from an index of states or of K/V: (run, bytes per document token) by method."""
    import torch

    from mice.index.fast_rerank import FastReranker
    from mice.index.store import IndexConfig, build_index_from_token_ids

    config, bs, mice = bench.config, bench.bs, bench.mice
    q_batch = _query_batch(bench, inp)
    setups = {}
    if "mice" in config.methods:
        d_ids = inp.docs.to(bench.device)
        d_batches = [
            {
                "input_ids": d_ids[i : i + bs],
                "attention_mask": torch.ones_like(d_ids[i : i + bs]),
                "token_type_ids": torch.full_like(d_ids[i : i + bs], mice.mice_config.doc_token_type),
            }
            for i in range(0, config.docs, bs)
        ]

        def run_mice():
            prep = bench.fast.prepare(q_batch)
            for batch in d_batches:
                bench.fast.score_states(prep, mice.encode_doc_batch(batch))

        setups["mice"] = (run_mice, 0.0)
    doc_tokens = {f"d{i}": inp.docs[i].tolist() for i in range(config.docs)}
    for method, kv in (("mice-index", False), ("mice-kv", True)):
        if method not in config.methods:
            continue
        idx_dir = bench.ce_folder.parent / f"index-{doc_len}-{'kv' if kv else 'states'}"
        index = build_index_from_token_ids(
            mice, doc_tokens, idx_dir, IndexConfig(dtype=config.index_dtype, kv=kv), overwrite=True
        )
        rr = FastReranker(mice, index, use_kv=kv, batch_size=bs)
        positions = index.positions(list(doc_tokens))

        def run_index(rr=rr, positions=positions):
            rr.score_positions(rr.fast.prepare(q_batch), positions)

        setups[method] = (run_index, index.bytes_per_token())
    return setups


def _setup_maxsim(bench: _Bench, inp, doc_len: int) -> dict:
    """Late interaction over memory-mapped float16 token vectors: (run, bytes per document token)."""
    import torch
    from transformers import AutoModel

    from mice.models.late_interaction import MaxSimScorer, TokenVectors
    from mice.models.mice_model import _quiet_transformers

    config, bs = bench.config, bench.bs
    if "maxsim" not in config.methods:
        return {}
    if config.late_interaction:
        ms = MaxSimScorer.from_pretrained(config.late_interaction, attn_implementation="sdpa").to(bench.device)
    else:
        with _quiet_transformers():
            enc = AutoModel.from_pretrained(bench.ce_folder, attn_implementation="sdpa")
        ms = MaxSimScorer(enc, dim=128, seed=config.seed).to(bench.device)
    ms.set_compute_dtype(bench.precision)
    d_ids = inp.docs.to(bench.device)
    vecs = ms.encode_documents(d_ids, torch.ones_like(d_ids), batch_size=bs, dtype=torch.float16)
    vec_file = bench.ce_folder.parent / f"maxsim-{doc_len}.f16"
    arr = np.memmap(vec_file, dtype=np.float16, mode="w+", shape=tuple(vecs.vectors.shape))
    arr[:] = vecs.vectors.numpy()
    arr.flush()
    del arr
    stored = np.memmap(vec_file, dtype=np.float16, mode="c", shape=tuple(vecs.vectors.shape))
    mask_cpu = vecs.mask

    def run_maxsim():
        docs = TokenVectors(torch.from_numpy(stored), mask_cpu)  # read from the memory-mapped store
        ms.score(inp.query, docs, batch_size=bs)

    return {"maxsim": (run_maxsim, float(vecs.bytes_per_token))}


def _time_methods(bench: _Bench, setups: dict) -> tuple[list[str], dict, dict]:
    """Warm up every method, then interleave the timed runs (repeat r of every method, then r+1, ...) so that a
    change in machine load during the benchmark hits all methods alike: (methods, seconds by method, peak MB)."""
    import torch

    from mice.models.precision import autocast

    def sync():
        if bench.device.type == "cuda":
            torch.cuda.synchronize()

    order = [m for m in METHODS if m in setups]
    times: dict[str, list[float]] = {m: [] for m in order}
    peaks: dict[str, float] = {m: 0.0 for m in order}
    with torch.inference_mode(), autocast(bench.precision, bench.device):  # fp32: no autocast at all
        for method in order:
            for _ in range(bench.config.warmup):
                setups[method][0]()
                sync()
        for _ in range(bench.config.repeats):
            for method in order:
                with _PeakMemory(str(bench.device)) as mem:
                    t0 = time.perf_counter()
                    setups[method][0]()
                    sync()
                    times[method].append(time.perf_counter() - t0)
                peaks[method] = max(peaks[method], mem.peak_mb)
    return order, times, peaks


def run_latency(config: LatencyConfig, log: Callable[[str], None] = print):
    """Run the benchmark; returns a DataFrame with `COLUMNS`. Without `config.workdir` the backbone, indexes and
    token vectors go to a temporary folder that is removed afterwards, however the run ends."""
    if config.workdir is None:
        with tempfile.TemporaryDirectory(prefix="mice-bench-") as work:
            return run_latency(replace(config, workdir=work), log)
    import pandas as pd

    from mice.errors import ModelError

    bench, max_pos = _open_bench(config)
    meta = _meta(bench)
    rows = []
    for doc_len in config.doc_lens:
        if doc_len > max_pos:
            raise ModelError(f"--doc-len {doc_len} exceeds the model's {max_pos} positions")
        inp = make_inputs(bench.tokenizer, config.docs, config.query_len, doc_len, max_pos, config.seed)
        setups = {
            **_setup_ce(bench, inp, doc_len),
            **_setup_mice(bench, inp, doc_len),
            **_setup_maxsim(bench, inp, doc_len),
        }
        order, times, peaks = _time_methods(bench, setups)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        for method in order:
            med, p10, p90 = _percentiles(times[method])
            rows.append(
                {
                    "method": method,
                    "doc_len": doc_len,
                    "median_ms": med,
                    "p10_ms": p10,
                    "p90_ms": p90,
                    "docs_per_s": config.docs / (med / 1000.0),
                    "peak_mem_mb": peaks[method],
                    "bytes_per_doc_token": setups[method][1],
                    "ce_pair_len": inp.ce_pair_len,
                    "load_avg": load,
                    **meta,
                }
            )
            log(
                f"  {method:14s} doc_len={doc_len:4d}  median {med:9.1f} ms  ({p10:.1f}–{p90:.1f})  "
                f"{config.docs / (med / 1000.0):8.1f} docs/s  peak +{peaks[method]:.0f} MB"
            )
        setups.clear()
        gc.collect()
    df = pd.DataFrame(rows)
    return add_ratios(df)[COLUMNS]


def add_ratios(df):
    """ratio_vs_ce = method / cross-encoder (median time; < 1 is faster), speedup_vs_ce = its inverse,
    mem_ratio_vs_ce = peak memory / the cross-encoder's, per document length (and device)."""
    df = df.copy()
    df["ratio_vs_ce"] = np.nan
    df["speedup_vs_ce"] = np.nan
    df["mem_ratio_vs_ce"] = np.nan
    keys = ["device", "doc_len"] if "device" in df.columns else ["doc_len"]
    for _, g in df.groupby(keys):
        ce = g[g["method"] == "cross-encoder"]
        if ce.empty:
            continue
        ce_ms, ce_mem = float(ce["median_ms"].iloc[0]), float(ce["peak_mem_mb"].iloc[0])
        idx = g.index
        df.loc[idx, "ratio_vs_ce"] = df.loc[idx, "median_ms"] / ce_ms
        df.loc[idx, "speedup_vs_ce"] = ce_ms / df.loc[idx, "median_ms"]
        if ce_mem > 0:
            df.loc[idx, "mem_ratio_vs_ce"] = df.loc[idx, "peak_mem_mb"] / ce_mem
    return df


def targets(df, doc_len: int = 512) -> list[tuple[str, float, bool]]:
    """MICE's speed and storage targets at `doc_len` (printed, never asserted): (description, value, met)."""
    out = []
    g = df[df["doc_len"] == doc_len].set_index("method")
    if "mice-index" in g.index and "cross-encoder" in g.index:
        s = float(g.loc["mice-index", "speedup_vs_ce"])
        out.append((f"mice-index >= 4x faster than the cross-encoder at {doc_len} tokens", s, s >= 4))
        out.append((f"mice-index >= 8x faster than the cross-encoder at {doc_len} tokens (aim)", s, s >= 8))
    if "mice-index" in g.index and "maxsim" in g.index:
        r = float(g.loc["mice-index", "median_ms"] / g.loc["maxsim", "median_ms"])
        out.append((f"mice-index within 2x of MaxSim at {doc_len} tokens (time ratio)", r, r <= 2))
    if "mice-kv" in g.index and "maxsim" in g.index:
        r = float(g.loc["mice-kv", "median_ms"] / g.loc["maxsim", "median_ms"])
        out.append((f"mice-kv within 2x of MaxSim at {doc_len} tokens (time ratio)", r, r <= 2))
    return out
