"""The MICE paper's latency protocol (`mice bench latency --protocol paper`), to set beside ours (`mice.bench.latency`).

What the authors measure (xpmir/mice `scripts/compare_latency_footprint.py` + `profiling_utils.py`), and so what
this does: one batch of `batch` (query, document) pairs, the *same* query in every pair and documents of
`doc_len` tokens; MICE's and the late-interaction model's precomputed document representations are random
tensors of the right shape (layer-`a` states [batch, doc_len, H]; 128-d token vectors); fp32; each timed call
includes tokenising the batch and, for MICE and late interaction, running the query's lower layers once *per
pair* (no sharing between the pairs of a query, no absorbed or cached keys/values: MICE's reference forward);
the cross-encoder tokenises and runs the pairs truncated to 512 tokens. Reported: mean ± standard deviation of
`runs` timed calls after `warmup` untimed ones.

Ours (`mice.bench.latency`) differs on purpose (100 documents in batches of 32, random token ids so no tokenisation,
shared query work, absorbed or cached keys/values, median of 5): the two answer different questions, so their
speed-ups must not be compared across protocols, only within one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

QUERY = "what is artificial intelligence?"
DOC_SENTENCE = (
    "Artificial intelligence studies intelligent agents that perceive their environment and take "
    "actions that maximise their chance of achieving their goals, drawing on search, logic, "
    "probability and learning from data. "
)
PAPER_METHODS = ("cross-encoder", "mice", "late-interaction")
PAPER_COLUMNS = [
    "protocol",
    "method",
    "device",
    "mean_ms",
    "std_ms",
    "docs_per_s",
    "speedup_vs_ce",
    "batch",
    "doc_len",
    "runs",
    "warmup",
    "dtype",
    "model",
    "mice",
    "threads",
    "torch",
    "load_avg",
    "date",
]


@dataclass
class PaperLatencyConfig:
    batch: int = 128
    doc_len: int = 512
    warmup: int = 5
    runs: int = 10
    device: str = "cpu"
    model: str = "packaged:minilm"
    random_weights: bool = False
    layers: tuple[int, int] = (3, 3)
    late_interaction: str | None = None  # a trained late-interaction folder (default: random projection)
    methods: tuple[str, ...] = PAPER_METHODS
    threads: int | None = None
    seed: int = 0
    compute_dtype: str = "fp32"  # the protocol's own is fp32; bf16/fp16 run every method under torch.autocast


def _paper_setups(config: PaperLatencyConfig, device, precision: str) -> tuple[dict, Path]:
    """The methods' timed calls (one batch of `config.batch` pairs each) and the work folder to remove after."""
    import torch

    from mice.bench.latency import bench_backbone
    from mice.models.late_interaction import MaxSimScorer, TokenVectors
    from mice.models.mice_model import DocStates, MICEModel

    ce, tokenizer, folder = bench_backbone(
        config.model, config.random_weights, config.seed, device, config.threads, prefix="mice-bench-paper-"
    )
    ce = ce.float()
    work = folder.parent
    n, L = int(config.batch), int(config.doc_len)
    doc_text = DOC_SENTENCE * (L // 8 + 8)  # far more than `doc_len` tokens: truncation fixes the length
    queries = [QUERY] * n
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    setups: dict[str, Callable[[], object]] = {}
    if "cross-encoder" in config.methods:

        def run_ce():
            batch = tokenizer(
                queries,
                [doc_text] * n,
                truncation="only_second",
                max_length=min(L, 512),
                padding=True,
                return_tensors="pt",
            ).to(device)
            return ce(**batch).logits

        setups["cross-encoder"] = run_ce
    a, b = config.layers
    if "mice" in config.methods:
        mice = (
            MICEModel.from_cross_encoder(
                work / "backbone", contextual_layers=a, interaction_layers=b, max_query_length=512, max_doc_length=L
            )
            .to(device)
            .eval()
        )
        mice.set_compute_dtype(precision)
        states = DocStates(
            torch.randn(n, L, mice.hidden_size, generator=gen).to(device),
            torch.ones(n, L, dtype=torch.bool, device=device),
        )

        def run_mice():
            batch = mice.tokenize_queries(queries)  # one copy of the query per pair, as the authors' batch
            return mice(batch, doc_states=states)

        setups["mice"] = run_mice
    if "late-interaction" in config.methods:
        li = (
            (
                MaxSimScorer.from_pretrained(config.late_interaction)
                if config.late_interaction
                else MaxSimScorer.from_pretrained(work / "backbone", seed=config.seed)
            )
            .to(device)
            .eval()
        )
        li.li_config.max_query_length = 512
        li.set_compute_dtype(precision)
        vecs = torch.nn.functional.normalize(torch.randn(n, L, li.dim, generator=gen), dim=-1).to(device)
        doc_vecs = TokenVectors(vecs, torch.ones(n, L, dtype=torch.bool, device=device))

        def run_li():
            return li.maxsim_pairs(li.encode_texts(queries, "query"), doc_vecs)

        setups["late-interaction"] = run_li
    return setups, work


def run_paper_latency(config: PaperLatencyConfig, log: Callable[[str], None] = print):
    """One row per method: mean/std over `runs` timed calls (ms), documents per second, speed-up vs the CE."""
    import os
    import shutil

    import pandas as pd
    import torch

    from mice.errors import ModelError
    from mice.models.precision import autocast, check_precision

    unknown = set(config.methods) - set(PAPER_METHODS)
    if unknown:
        raise ModelError(f"unknown methods {sorted(unknown)} for --protocol paper ({', '.join(PAPER_METHODS)})")
    device = torch.device(config.device)
    precision = check_precision(config.compute_dtype, device)
    setups, work = _paper_setups(config, device, precision)
    n = int(config.batch)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {m: [] for m in setups}
    with torch.inference_mode(), autocast(precision, device):  # fp32: no autocast at all
        for method, fn in setups.items():  # the authors time one model after the other
            for _ in range(config.warmup):
                fn()
                sync()
            for _ in range(config.runs):
                t0 = time.perf_counter()
                fn()
                sync()
                times[method].append(time.perf_counter() - t0)
            log(
                f"  [paper] {method:16s} {device}  {1000 * np.mean(times[method]):9.1f} ± "
                f"{1000 * np.std(times[method]):.1f} ms per batch of {n}"
            )
    a, b = config.layers
    meta = {
        "protocol": "paper",
        "device": str(device),
        "batch": n,
        "doc_len": int(config.doc_len),
        "runs": config.runs,
        "warmup": config.warmup,
        "dtype": {"fp32": "float32"}.get(precision, f"{precision} autocast"),
        "model": str(config.model) + (" (random weights)" if config.random_weights else ""),
        "mice": f"{a}+{b}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    rows = []
    for method, t in times.items():
        mean, std = 1000 * float(np.mean(t)), 1000 * float(np.std(t))
        rows.append({"method": method, "mean_ms": mean, "std_ms": std, "docs_per_s": n / (mean / 1000), **meta})
    df = pd.DataFrame(rows)
    ce_ms = df.loc[df["method"] == "cross-encoder", "mean_ms"]
    df["speedup_vs_ce"] = float(ce_ms.iloc[0]) / df["mean_ms"] if len(ce_ms) else np.nan
    shutil.rmtree(work, ignore_errors=True)
    return df[PAPER_COLUMNS]
