"""`mice bench gpu`: the first measurements to take on a GPU, in one command and a bounded time.

    mice bench gpu --device cuda --out OUT/gpu --budget-s 420

What it measures, on random-weight models of MiniLM-L12-H384's shape (12 layers, H=384, 12 heads, 1536 FFN,
the packaged MiniLM's vocabulary and tokenizer; no download, and the timings do not depend on the weights), MICE
as ℓ4+3 (`--arch`), in each compute precision of `--dtypes` (fp32, and bf16 under `torch.autocast`):
- `latency-paper`: `mice.bench.paper` (the authors' protocol: one batch of 128 pairs of one query and 512-token
  documents, tokenisation included, mean ± std of 10 after 5 warm-ups) for the cross-encoder, MICE and late
  interaction;
- `latency-ours`: `mice.bench.latency` (100 candidates of 512 tokens for one 32-token query, batches of 32,
  median of 5) for the cross-encoder, MICE on the fly, MICE from a float16 index, from cached K/V, and MaxSim;
- `train`: optimizer steps per second of `mice.train.student`'s three students (cross-encoder, MICE, late
  interaction) with Margin-MSE, AdamW and gradient clipping as `mice train` runs them, 1 positive + 1 negative
  per query at 512 tokens (pairs for the cross-encoder, documents for MICE and late interaction);
- `index-build`: document tokens per second of `mice.index.store.build_index_from_token_ids` (MICE's `a`
  layers, quantisation, sha256, fsync) for each storage of `--storages`.

Sections run in that order; a section is skipped (a row says so) once `budget_s` has passed, so the command ends
near the budget whatever the card. The CSV and the markdown table are rewritten atomically after every unit, so
a run killed at its time limit keeps what it measured. `--smoke` shrinks every size (a tiny 8-layer model, short
documents, a couple of runs) so that `--device cpu --smoke` checks the whole script in well under a minute.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

SECTIONS = ("latency-paper", "latency-ours", "train", "index-build")
COLUMNS = [
    "section",
    "method",
    "compute_dtype",
    "value",
    "unit",
    "std",
    "speedup_vs_ce",
    "batch",
    "doc_len",
    "query_len",
    "runs",
    "peak_mem_mb",
    "device",
    "device_name",
    "model",
    "arch",
    "torch",
    "cuda",
    "date",
    "note",
]
TRAIN_METHODS = ("cross-encoder", "mice", "late-interaction")


@dataclass
class GPUBenchConfig:
    device: str = "cuda"
    smoke: bool = False
    layers: tuple[int, int] = (4, 3)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    sections: tuple[str, ...] = SECTIONS
    storages: tuple[str, ...] = ("float16", "int8", "pq")
    budget_s: float = 420.0  # no new unit starts after this many seconds
    doc_len: int = 512
    query_len: int = 32
    paper_batch: int = 128
    paper_runs: int = 10
    paper_warmup: int = 5
    docs: int = 100  # latency-ours: candidates of the query
    repeats: int = 5
    train_groups: int = 16  # queries per step, each with 1 positive + 1 negative
    train_steps: int = 10
    train_warmup: int = 3
    index_docs: int = 2048
    index_doc_len: int = 128
    seed: int = 0
    shape: dict = field(
        default_factory=lambda: {
            "num_hidden_layers": 12,
            "hidden_size": 384,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
        }
    )

    def shrunk(self) -> "GPUBenchConfig":
        """The smoke sizes: every code path, a tiny model, a few seconds each."""
        return replace(
            self,
            doc_len=48,
            query_len=12,
            paper_batch=4,
            paper_runs=2,
            paper_warmup=1,
            docs=6,
            repeats=1,
            train_groups=2,
            train_steps=1,
            train_warmup=1,
            index_docs=32,
            index_doc_len=32,
            shape={
                "num_hidden_layers": sum(self.layers),
                "hidden_size": 32,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
        )


def make_backbone(folder: Path, shape: dict, seed: int = 0) -> Path:
    """A random-weight BERT cross-encoder (1 logit) of `shape` with the packaged MiniLM's tokenizer, saved to
    `folder` (MiniLM-L12-H384 by default: what the paper starts from, without its weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from mice.models.backbone import packaged_model_path
    from mice.models.mice_model import _quiet_transformers

    src = packaged_model_path()
    cfg = BertConfig.from_pretrained(src)
    for k, v in shape.items():
        setattr(cfg, k, v)
    cfg.num_labels = 1
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg).eval()
        model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def _device_name(device) -> str:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    from mice.bench.latency import _cpu_name

    return _cpu_name()


class _Results:
    """Rows so far, rewritten (CSV + markdown) after every unit."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows = out, meta, []

    def add(self, rows: list[dict]) -> None:
        self.rows += [{**self.meta, **r} for r in rows]
        self.write()

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = np.nan
        return df[COLUMNS]

    def write(self) -> None:
        from mice.files import write_table, write_text_atomic

        df = self.frame()
        write_table(df, self.out / "gpu.csv")
        write_text_atomic(self.out / "gpu.md", markdown(df))


def markdown(df) -> str:
    """The results as one markdown table (value ± std, unit, speed-up vs the cross-encoder)."""
    if df.empty:
        return "(no results)\n"
    first = df.iloc[0]
    lines = [
        f"`mice bench gpu` on {first['device_name']} ({first['device']}), torch {first['torch']}"
        f"{', CUDA ' + str(first['cuda']) if isinstance(first['cuda'], str) and first['cuda'] else ''}, "
        f"{first['model']}, MICE-ℓ{first['arch']}, {first['date']}",
        "",
        "| section | method | dtype | value | unit | vs CE | batch | doc len | note |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in df.itertuples(index=False):
        value = "" if r.value != r.value else (f"{r.value:,.1f}" if r.value >= 10 else f"{r.value:.3g}")
        if r.std == r.std and r.value == r.value:
            value += f" ± {r.std:,.1f}" if r.std >= 10 else f" ± {r.std:.2g}"
        vs = "" if r.speedup_vs_ce != r.speedup_vs_ce else f"{r.speedup_vs_ce:.2f}×"
        batch = "" if r.batch != r.batch else str(int(r.batch))
        dl = "" if r.doc_len != r.doc_len else str(int(r.doc_len))
        note = "" if not isinstance(r.note, str) else r.note
        lines.append(
            f"| {r.section} | {r.method} | {r.compute_dtype} | {value} | {r.unit} | {vs} | {batch} | {dl} | {note} |"
        )
    return "\n".join(lines) + "\n"


def run_gpu_bench(config: GPUBenchConfig, out, log: Callable[[str], None] = print):
    """Run every section within the budget; writes `out`/gpu.csv and `out`/gpu.md; returns the DataFrame."""
    import torch

    from mice.errors import MiceError
    from mice.models.precision import check_precision

    if config.smoke:
        config = config.shrunk()
    unknown = set(config.sections) - set(SECTIONS)
    if unknown:
        raise MiceError(f"--sections: unknown {sorted(unknown)} (choose from {', '.join(SECTIONS)})")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MiceError("--device cuda but torch sees no CUDA device")
    dtypes = tuple(check_precision(d, device, "--dtypes") for d in config.dtypes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mice-bench-gpu-"))
    try:
        folder = make_backbone(work / "backbone", config.shape, config.seed)
        a, b = config.layers
        shape = config.shape
        meta = {
            "device": str(device),
            "device_name": _device_name(device),
            "arch": f"{a}+{b}",
            "model": (
                f"random BERT L{shape['num_hidden_layers']}-H{shape['hidden_size']}"
                + (" (smoke)" if config.smoke else " (MiniLM-L12-H384 shape)")
            ),
            "torch": torch.__version__,
            "cuda": torch.version.cuda or "",
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        res = _Results(out, meta)
        units = [(s, d) for s in config.sections for d in dtypes]
        runners = {"latency-paper": _paper, "latency-ours": _ours, "train": _train, "index-build": _index_build}
        for section, dtype in units:
            spent = time.perf_counter() - t0
            if spent > config.budget_s:
                log(f"  {section} {dtype}: skipped ({spent:.0f} s spent, budget {config.budget_s:.0f} s)")
                res.add(
                    [
                        {
                            "section": section,
                            "method": "(skipped)",
                            "compute_dtype": dtype,
                            "note": f"budget: {spent:.0f} s of {config.budget_s:.0f} s spent",
                        }
                    ]
                )
                continue
            u0 = time.perf_counter()
            res.add(runners[section](config, folder, device, dtype, work, log))
            log(f"  {section} {dtype}: {time.perf_counter() - u0:.1f} s")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log(f"total {time.perf_counter() - t0:.1f} s; wrote {out / 'gpu.csv'} and {out / 'gpu.md'}")
        return res.frame()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _vs_ce(rows: list[dict], higher_is_faster: bool) -> list[dict]:
    ce = [r["value"] for r in rows if r["method"] == "cross-encoder"]
    for r in rows:
        if ce:
            r["speedup_vs_ce"] = r["value"] / ce[0] if higher_is_faster else ce[0] / r["value"]
    return rows


def _paper(config: GPUBenchConfig, folder: Path, device, dtype: str, work: Path, log) -> list[dict]:
    from mice.bench.paper import PaperLatencyConfig, run_paper_latency

    df = run_paper_latency(
        PaperLatencyConfig(
            batch=config.paper_batch,
            doc_len=config.doc_len,
            warmup=config.paper_warmup,
            runs=config.paper_runs,
            device=str(device),
            model=str(folder),
            layers=config.layers,
            seed=config.seed,
            compute_dtype=dtype,
        ),
        log=log,
    )
    rows = [
        {
            "section": "latency-paper",
            "method": r.method,
            "compute_dtype": dtype,
            "value": r.mean_ms,
            "std": r.std_ms,
            "unit": "ms per batch",
            "batch": r.batch,
            "doc_len": r.doc_len,
            "runs": r.runs,
            "note": f"{r.docs_per_s:,.0f} docs/s",
        }
        for r in df.itertuples(index=False)
    ]
    return _vs_ce(rows, higher_is_faster=False)


def _ours(config: GPUBenchConfig, folder: Path, device, dtype: str, work: Path, log) -> list[dict]:
    from mice.bench.latency import LatencyConfig, run_latency

    df = run_latency(
        LatencyConfig(
            docs=config.docs,
            query_len=config.query_len,
            doc_lens=(config.doc_len,),
            repeats=config.repeats,
            warmup=1,
            device=str(device),
            model=str(folder),
            layers=config.layers,
            batch_size=32,
            methods=("cross-encoder", "mice", "mice-index", "mice-kv", "maxsim"),
            workdir=str(work / f"latency-{dtype}"),
            compute_dtype=dtype,
        ),
        log=log,
    )
    rows = [
        {
            "section": "latency-ours",
            "method": r.method,
            "compute_dtype": dtype,
            "value": r.median_ms,
            "std": np.nan,
            "unit": "ms per query (median)",
            "batch": 32,
            "doc_len": r.doc_len,
            "query_len": r.query_len,
            "runs": r.repeats,
            "peak_mem_mb": r.peak_mem_mb,
            "note": f"{r.docs} docs, p10–p90 {r.p10_ms:,.1f}–{r.p90_ms:,.1f} ms",
        }
        for r in df.itertuples(index=False)
    ]
    return _vs_ce(rows, higher_is_faster=False)


def _texts(n: int, words: int, seed: int) -> list[str]:
    """`n` distinct texts of `words` words (longer than any truncation length: every text fills it)."""
    from mice.bench.paper import DOC_SENTENCE

    vocab = DOC_SENTENCE.lower().replace(",", "").replace(".", "").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, words)) for _ in range(n)]


def _train(config: GPUBenchConfig, folder: Path, device, dtype: str, work: Path, log) -> list[dict]:
    """Optimizer steps/s of each student at `doc_len` tokens, Margin-MSE on 1 positive + 1 negative."""
    import torch

    from mice.models.precision import autocast
    from mice.train.config import TrainConfig
    from mice.train.losses import margin_mse
    from mice.train.student import adamw, build_student, param_groups

    g = config.train_groups
    queries = _texts(g, config.query_len, config.seed)
    docs = _texts(2 * g, config.doc_len * 2, config.seed + 1)
    teacher = torch.randn(g, 2, generator=torch.Generator().manual_seed(config.seed)).to(device)
    rows = []
    for mode in TRAIN_METHODS:
        cfg = TrainConfig(
            mode=mode,
            model=str(folder),
            max_length=config.doc_len,
            max_query_length=config.query_len,
            negatives=1,
            batch_size=g,
            contextual_layers=config.layers[0],
            interaction_layers=config.layers[1],
            seed=config.seed,
            lr=7e-6,
            weight_decay=0.0,
        )
        student = build_student(cfg, device=device).train()
        opt = adamw(param_groups(student, cfg.lr, None, 0.0), cfg.lr)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(config.train_warmup + config.train_steps):
            _sync(device)
            s0 = time.perf_counter()
            with autocast(dtype, device):
                scores = student(queries, docs)
            loss = margin_mse(scores.float(), teacher)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if step >= config.train_warmup:
                times.append(time.perf_counter() - s0)
        mean = float(np.mean(times))
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else np.nan
        rows.append(
            {
                "section": "train",
                "method": mode,
                "compute_dtype": dtype,
                "value": 1.0 / mean,
                "std": float(np.std([1.0 / t for t in times])),
                "unit": "steps/s",
                "batch": g,
                "doc_len": config.doc_len,
                "query_len": config.query_len,
                "runs": config.train_steps,
                "peak_mem_mb": peak,
                "note": f"{g} queries × (1 pos + 1 neg) per step = {2 * g / mean:,.1f} pairs/s",
            }
        )
        log(f"  [train] {mode:16s} {dtype}  {1.0 / mean:7.2f} steps/s  ({2 * g / mean:,.1f} pairs/s)")
        del student, opt
    return _vs_ce(rows, higher_is_faster=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _index_build(config: GPUBenchConfig, folder: Path, device, dtype: str, work: Path, log) -> list[dict]:
    """Document tokens/s of a whole index build (the `mice index build` code path from token ids)."""
    import torch

    from mice.index.store import IndexConfig, build_index_from_token_ids
    from mice.models.mice_model import MICEModel

    a, b = config.layers
    mice = (
        MICEModel.from_cross_encoder(
            folder, contextual_layers=a, interaction_layers=b, max_doc_length=config.index_doc_len
        )
        .to(device)
        .eval()
    )
    mice.set_compute_dtype(dtype)
    g = torch.Generator().manual_seed(config.seed)
    L = config.index_doc_len
    lens = torch.randint(max(4, L // 4), L + 1, (config.index_docs,), generator=g).tolist()
    cls_id, sep_id = mice.tokenizer.cls_token_id, mice.tokenizer.sep_token_id
    docs = {
        f"d{i}": [cls_id] + torch.randint(1000, 30000, (n - 2,), generator=g).tolist() + [sep_id]
        for i, n in enumerate(lens)
    }
    tokens = sum(lens)
    warm = dict(list(docs.items())[:64])
    rows = []
    for storage in config.storages:
        cfg = IndexConfig(dtype=storage, batch_size=64, shard_size=1024, **_codec_kwargs(storage, config))
        build_index_from_token_ids(mice, warm, work / f"warm-{storage}", cfg, overwrite=True)
        _sync(device)
        t0 = time.perf_counter()
        index = build_index_from_token_ids(mice, docs, work / f"index-{storage}-{dtype}", cfg, overwrite=True)
        _sync(device)
        s = time.perf_counter() - t0
        rows.append(
            {
                "section": "index-build",
                "method": f"index {storage}",
                "compute_dtype": dtype,
                "value": tokens / s,
                "unit": "doc tokens/s",
                "batch": 64,
                "doc_len": L,
                "runs": 1,
                "note": f"{len(docs)} docs, {tokens} tokens in {s:.2f} s, {index.bytes_per_token():.1f} B/token",
            }
        )
        log(f"  [index] {storage:8s} {dtype}  {tokens / s:,.0f} tokens/s  {index.bytes_per_token():.1f} B/token")
        shutil.rmtree(work / f"index-{storage}-{dtype}", ignore_errors=True)
    return rows


def _codec_kwargs(storage: str, config: GPUBenchConfig) -> dict:
    """Codec settings of a compressed storage (pq: one byte per 8 values, 48 B at H=384), small training samples
    under --smoke."""
    from mice.bench.scale import codec_settings
    from mice.index.store import CODECS, normalise_dtype

    if normalise_dtype(storage) not in CODECS:
        return {}
    return {
        "train_tokens": 1024 if config.smoke else 65536,
        **codec_settings(normalise_dtype(storage), config.shape["hidden_size"]),
    }
