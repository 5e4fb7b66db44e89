"""`mice bench latency|plot|scale|train`: time re-ranking with every method in one process, draw the figure,
measure the scale figures (index build, storage, re-ranking throughput; projection to full collections), and
what a training step of each mode costs against the cross-encoder's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(
    help="Benchmarks: re-ranking latency of the cross-encoder, masked, MICE (on the fly, "
    "from the index, cached K/V) and MaxSim; scale figures (index build, storage, "
    "throughput per process, projection); training step cost of each mode against the cross-encoder's.",
    no_args_is_help=True,
)


def _ints(text: str, what: str) -> tuple[int, ...]:
    from mice.errors import MiceError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MiceError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise MiceError(f"{what}: no values")
    return values


_LATENCY_METHODS = typer.Option(
    ",".join(__import__("mice.bench.latency", fromlist=["METHODS"]).METHODS),
    "--methods",
    help="Comma-separated subset of the methods",
)
_LATENCY_PROTOCOL = typer.Option(
    "ours",
    "--protocol",
    help="ours | paper | ours,paper (both, one run). paper = the authors' "
    "measurement (mice.bench.paper): one batch of 128 pairs, same "
    "query, 512-token documents, random precomputed states, fp32, "
    "tokenisation and per-pair query layers timed, mean ± std of 10 "
    "after 5 warm-ups",
)
_LATENCY_LATE_INTERACTION = typer.Option(
    None,
    "--late-interaction",
    help="Trained late-interaction folder timed as maxsim / late-interaction (default: a random projection)",
)


@bench_app.command("latency")
def latency_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write (the PNG goes next to it)"),
    docs: int = typer.Option(100, "--docs", help="Candidates re-ranked per query"),
    query_len: int = typer.Option(32, "--query-len", help="Query tokens (incl. [CLS]/[SEP])"),
    doc_len: str = typer.Option("128,512", "--doc-len", help="Document lengths in tokens, comma-separated"),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per method (after warm-up)"),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs first"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    model: str = typer.Option("packaged:minilm", "--model", "-m", help="Backbone (cross-encoder or encoder)"),
    random_weights: bool = typer.Option(False, "--random-weights", help="Same architecture, random weights"),
    arch: str = typer.Option("3+3", "--arch", help="MICE architecture a+b (ℓa+b)"),
    mask: str = typer.Option("mask2", "--mask", help="Mask for the `masked` method"),
    batch_size: int = typer.Option(32, "--batch-size", help="Documents per forward pass (all methods)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
    dtype: str = typer.Option("float16", "--dtype", help="Index storage: float16, float32, int8"),
    methods: str = _LATENCY_METHODS,
    figure: Optional[Path] = typer.Option(None, "--figure", help="PNG path (default: OUT with .png)"),
    protocol: str = _LATENCY_PROTOCOL,
    paper_batch: int = typer.Option(128, "--paper-batch", help="paper protocol: pairs per batch"),
    paper_runs: int = typer.Option(10, "--paper-runs", help="paper protocol: timed calls"),
    paper_warmup: int = typer.Option(5, "--paper-warmup", help="paper protocol: untimed calls first"),
    late_interaction: Optional[str] = _LATENCY_LATE_INTERACTION,
) -> None:
    """Re-rank DOCS candidates of one query with each method; write CSV + PNG and print the targets.
    `--device auto` runs on the CPU and, where one is present, on CUDA."""
    from rich.console import Console

    from mice.bench.latency import LatencyConfig
    from mice.errors import MiceError

    a, b = _arch(arch)
    protocols = [p.strip() for p in protocol.split(",") if p.strip()]
    if not protocols or set(protocols) - {"ours", "paper"}:
        raise MiceError(f"--protocol {protocol!r}: expected ours, paper or ours,paper")
    devices = _devices(device)
    console = Console(width=150)
    if "paper" in protocols:
        from mice.bench.paper import PAPER_METHODS, PaperLatencyConfig

        configs = [
            PaperLatencyConfig(
                batch=paper_batch,
                doc_len=max(_ints(doc_len, "--doc-len")),
                warmup=paper_warmup,
                runs=paper_runs,
                device=d,
                model=model,
                random_weights=random_weights,
                layers=(a, b),
                late_interaction=late_interaction,
                threads=threads,
                methods=PAPER_METHODS,
            )
            for d in devices
        ]
        _paper_protocol(
            console, configs, out if protocols == ["paper"] else out.with_name(f"{out.stem}-paper{out.suffix}")
        )
        if protocols == ["paper"]:
            return
    config = LatencyConfig(
        docs=docs,
        query_len=query_len,
        doc_lens=_ints(doc_len, "--doc-len"),
        repeats=repeats,
        warmup=warmup,
        device=devices[0],
        model=model,
        random_weights=random_weights,
        layers=(a, b),
        mask=mask,
        batch_size=batch_size,
        threads=threads,
        index_dtype=dtype,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        late_interaction=late_interaction,
    )
    _our_protocol(console, config, devices, out, figure or out.with_suffix(".png"))


def _devices(device: str) -> list[str]:
    """`--device`: the devices named, comma-separated; auto: the CPU and, where one is present, CUDA."""
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if devices == ["auto"]:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return devices


def _arch(text: str) -> tuple[int, int]:
    """`--arch a+b` as (a, b)."""
    from mice.errors import MiceError

    try:
        a, b = (int(x) for x in text.split("+"))
    except ValueError:
        raise MiceError(f"--arch {text!r}: expected a+b, e.g. 3+3") from None
    return a, b


def _paper_protocol(console, configs, out: Path) -> None:
    """The authors' measurement on each device: one table, printed and written to `out`."""
    import pandas as pd
    from rich.table import Table

    from mice.bench.paper import run_paper_latency
    from mice.files import write_table

    paper = pd.concat(
        [run_paper_latency(c, log=lambda s: console.print(s, highlight=False)) for c in configs], ignore_index=True
    )
    write_table(paper, out)
    c = configs[0]
    t = Table(
        title=f"--protocol paper: one batch of {c.batch} pairs (same query), {c.doc_len}-token documents, "
        f"fp32, mean ± std of {c.runs} after {c.warmup} warm-ups"
    )
    for col in ("method", "device", "mean ± std (ms)", "docs/s", "speed-up vs CE"):
        t.add_column(col, justify="left" if col in ("method", "device") else "right")
    for r in paper.itertuples(index=False):
        t.add_row(
            r.method, r.device, f"{r.mean_ms:.1f} ± {r.std_ms:.1f}", f"{r.docs_per_s:.1f}", f"{r.speedup_vs_ce:.2f}x"
        )
    console.print(t)
    console.print(f"wrote {out}", highlight=False)


def _our_protocol(console, config, devices, out: Path, figure: Path) -> None:
    """Our measurement on each device: the table and figure written, the targets printed."""
    from dataclasses import replace

    import pandas as pd
    from rich.table import Table

    from figures.efficiency import plot_latency
    from mice.bench.latency import run_latency, targets
    from mice.files import write_table

    df = pd.concat(
        [run_latency(replace(config, device=d), log=lambda s: console.print(s, highlight=False)) for d in devices],
        ignore_index=True,
    )
    write_table(df, out)
    png = plot_latency(out, figure)
    docs, query_len, batch_size = config.docs, config.query_len, config.batch_size
    table = Table(
        title=f"--protocol ours: re-ranking {docs} docs, {query_len}-token query, "
        f"{', '.join(devices)}, {df['threads'].iloc[0]} threads, batch {batch_size}"
    )
    for col in (
        "method",
        "device",
        "doc_len",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "docs_per_s",
        "peak_mem_mb",
        "bytes_per_doc_token",
        "speedup_vs_ce",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in df.itertuples(index=False):
        table.add_row(
            r.method,
            r.device,
            str(r.doc_len),
            f"{r.median_ms:.1f}",
            f"{r.p10_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.docs_per_s:.1f}",
            f"{r.peak_mem_mb:.0f}",
            f"{r.bytes_per_doc_token:.0f}",
            f"{r.speedup_vs_ce:.2f}x",
        )
    console.print(table)
    for text, value, met in targets(df, max(config.doc_lens)):  # the targets are set at 512 tokens
        console.print(f"target: {text}: {value:.2f} -> {'met' if met else 'NOT met'}", highlight=False)
    console.print(f"wrote {out} and {png}", highlight=False)


@bench_app.command("plot")
def plot_cmd(
    csv: Path = typer.Argument(..., help="CSV written by `mice bench latency`"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG (default: CSV with .png)"),
) -> None:
    """Redraw the latency figure from a saved CSV."""
    from figures.efficiency import plot_latency

    typer.echo(f"wrote {plot_latency(csv, out or csv.with_suffix('.png'))}")


_SCALE_OUT = typer.Option(
    None, "--out", "-o", help="CSV to write (with --project, the projection goes to OUT-projection.csv)"
)
_SCALE_MODEL = typer.Option(
    "packaged:minilm", "--model", "-m", help="Backbone (cross-encoder or encoder); MICE-ℓa+b is built from it"
)
_SCALE_DATASET = typer.Option(
    "embedded:docs",
    "--dataset",
    "-d",
    help="Dataset spec: documents are indexed from its corpus, queries drawn from --split",
)
_SCALE_CANDIDATES = typer.Option(
    25, "--candidates", help="Candidates per query (a seeded sample of the indexed documents)"
)
_SCALE_DTYPES = typer.Option(
    "float16,int8",
    "--dtypes",
    help="Index storage dtypes to build, comma-separated (float16, float32, int8, pq, residual)",
)
_SCALE_KV = typer.Option(
    True, "--kv/--no-kv", help="Also build (and re-rank from) each dtype with cached cross-attention keys/values"
)
_SCALE_MAX_LENGTH = typer.Option(
    None, "--max-length", help="Tokens per document (MICE) and per pair (cross-encoder); default: the model's"
)
_SCALE_PROJECT = typer.Option(
    False,
    "--project",
    help="Also project index size and build time to MS MARCO passage and BEIR NQ at hidden size 384",
)
_SCALE_PROCESSES = typer.Option(
    "1,8,64", "--processes", help="--project: process counts, comma-separated (linear scaling assumed)"
)


@bench_app.command("scale")
def scale_cmd(
    out: Optional[Path] = _SCALE_OUT,
    model: str = _SCALE_MODEL,
    random_weights: bool = typer.Option(False, "--random-weights", help="Same architecture, random weights"),
    arch: str = typer.Option("3+3", "--arch", help="MICE architecture a+b (ℓa+b)"),
    dataset: str = _SCALE_DATASET,
    split: str = typer.Option("test", "--split", help="Split the queries come from"),
    docs: int = typer.Option(300, "--docs", help="Documents indexed (a seeded sample of the corpus)"),
    queries: int = typer.Option(4, "--queries", help="Queries re-ranked (a seeded sample of the split)"),
    candidates: int = _SCALE_CANDIDATES,
    dtypes: str = _SCALE_DTYPES,
    kv: bool = _SCALE_KV,
    batch_size: int = typer.Option(32, "--batch-size", help="Documents (pairs) per forward pass"),
    max_length: Optional[int] = _SCALE_MAX_LENGTH,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
    repeats: int = typer.Option(3, "--repeats", help="Timed builds / re-rankings per configuration"),
    warmup: int = typer.Option(1, "--warmup", help="Untimed re-rankings first (one untimed build always)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of the samples (and of a fresh head)"),
    project: bool = _SCALE_PROJECT,
    processes: str = _SCALE_PROCESSES,
) -> None:
    """Index-build throughput, bytes per document token and re-ranking throughput (pairs/s) of the
    cross-encoder, MICE on the fly and MICE from the index, measured in one process, one run."""
    from rich.console import Console

    from mice.bench.scale import ScaleConfig, run_scale
    from mice.errors import MiceError
    from mice.files import write_table
    from mice.validate import check_setting
    from mice.cli.data import plain_warnings

    a, b = _arch(arch)
    check_setting("contextual_layers", a, "--arch (a)")
    check_setting("interaction_layers", b, "--arch (b)")
    procs = _ints(processes, "--processes")
    for n in procs:
        check_setting("nproc", n, "--processes")
    kinds = tuple(d.strip() for d in dtypes.split(",") if d.strip())
    if not kinds:
        raise MiceError("--dtypes: no dtype given")
    from mice.index.store import normalise_dtype

    for d in kinds:
        normalise_dtype(d)
    if out is not None and out.suffix not in (".csv", ".tsv", ".parquet"):
        raise MiceError(f"--out {out}: expected a .csv, .tsv or .parquet file")
    console = Console(width=160)
    config = ScaleConfig(
        model=model,
        random_weights=random_weights,
        layers=(a, b),
        dataset=dataset,
        split=split,
        docs=docs,
        queries=queries,
        candidates=candidates,
        dtypes=kinds,
        kv=kv,
        batch_size=batch_size,
        max_length=max_length,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        device=device,
        seed=seed,
    )
    with plain_warnings():
        df = run_scale(config, log=lambda s: console.print(s, highlight=False))
    builds = _print_scale(console, df, repeats)
    if out is not None:
        write_table(df, out)
        console.print(f"wrote {out}", highlight=False)
    if project:
        _print_projection(console, builds, procs, out)


def _print_scale(console, df, repeats: int):
    """The build and storage table, then the re-ranking throughput table; returns the build rows."""
    from rich.table import Table

    first = df.iloc[0]
    head = (
        f"{first['model']} · MICE-ℓ{first['arch']} · H={first['hidden']} · {first['dataset']} · "
        f"{first['processes']} process, {first['threads']} threads · {first['device']} ({first['cpu']}) · "
        f"torch {first['torch']} · {first['date']} · load {first['load_avg']:.1f}"
    )
    builds = df[df["section"] == "build"]
    t = Table(
        title=f"index build and storage: {int(builds['documents'].iloc[0])} documents, "
        f"{int(builds['tokens'].iloc[0])} tokens (mean {builds['mean_doc_tokens'].iloc[0]:.1f}), "
        f"median of {repeats} builds"
    )
    for col in (
        "dtype",
        "stored",
        "median s",
        "CPU share",
        "docs/s",
        "tokens/s",
        "tokens/CPU s",
        "B/token",
        "B/token states",
        "B/token K/V",
        "vectors/token",
        "B vs fp16",
        "docs/s vs fp16",
    ):
        t.add_column(col, justify="left" if col in ("dtype", "stored") else "right")
    for r in builds.itertuples(index=False):
        t.add_row(
            r.dtype,
            "states + K/V" if r.kv else "states",
            f"{r.median_s:.2f}",
            f"{r.cpu_share:.2f}",
            f"{r.docs_per_s:.1f}",
            f"{r.tokens_per_s:.0f}",
            f"{r.tokens_per_cpu_s:.0f}",
            f"{r.bytes_per_token:.0f}",
            f"{r.bytes_per_token_states:.0f}",
            f"{r.bytes_per_token_kv:.0f}",
            str(int(r.stored_vectors_per_token)),
            f"{r.bytes_vs_fp16:.3f}",
            f"{r.build_speed_vs_fp16:.2f}x",
        )
    console.print(head, highlight=False)
    console.print(t)
    rr = df[df["section"] == "rerank"]
    t = Table(
        title=f"re-ranking throughput per process: {int(rr['queries'].iloc[0])} queries × "
        f"{int(rr['candidates'].iloc[0])} candidates = {int(rr['pairs'].iloc[0])} pairs "
        f"(mice.rank.rerank.rerank, median of {repeats})"
    )
    for col in ("method", "median s", "p10–p90 s", "CPU share", "pairs/s", "pairs/CPU s", "speed-up vs CE"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rr.itertuples(index=False):
        t.add_row(
            r.method,
            f"{r.median_s:.2f}",
            f"{r.p10_s:.2f}–{r.p90_s:.2f}",
            f"{r.cpu_share:.2f}",
            f"{r.pairs_per_s:.1f}",
            f"{r.pairs_per_cpu_s:.1f}",
            f"{r.speedup_vs_ce:.2f}x",
        )
    console.print(t)
    return builds


def _print_projection(console, builds, procs, out: Path | None) -> None:
    """Index size and build time projected to full collections, with every assumption printed beside them."""
    from rich.table import Table

    from mice.bench import scale as bench_scale
    from mice.bench.scale import CORPORA, PROJECT_HIDDEN
    from mice.files import write_table

    pr = bench_scale.project(builds, processes=procs)
    t = Table(
        title=f"projection at hidden size {PROJECT_HIDDEN}: index size (data files) and build time, "
        f"N processes, linear scaling assumed (not measured)"
    )
    for col in ("corpus", "dtype", "stored", "size", "arithmetic", *[f"build h, N={n}" for n in procs], "CPU core h"):
        t.add_column(col, justify="left" if col in ("corpus", "dtype", "stored", "arithmetic") else "right")
    for (corpus, dtype, stored), g in pr.groupby(["corpus", "dtype", "stored"], sort=False):
        r0 = g.iloc[0]
        t.add_row(
            corpus,
            dtype,
            stored,
            f"{r0['gib']:,.1f} GiB",
            r0["size_arithmetic"],
            *[f"{h:,.2f}" for h in g["build_hours"]],
            f"{r0['core_hours']:,.1f}",
        )
    console.print(t)
    for (corpus, dtype, stored), g in pr.groupby(["corpus", "dtype", "stored"], sort=False):
        for r in g.itertuples(index=False):
            console.print(f"  {corpus}, {dtype} {stored}, N={r.processes}: {r.time_arithmetic}", highlight=False)
    measured_h = int(builds["hidden"].iloc[0])
    if measured_h != PROJECT_HIDDEN:
        console.print(
            f"note: measured at H={measured_h}: sizes are the storage format's at H={PROJECT_HIDDEN}, "
            f"but the build times are this H={measured_h} model's",
            highlight=False,
        )
    for c in CORPORA:
        console.print(f"assumption, {c.name}: {c.assumption}", highlight=False)
    console.print(
        "assumption: build time scales linearly with N processes, each as fast as the one measured "
        "(same encoder, same a, same threads per process); time from tokens/s, which transfers "
        "across mean document lengths where documents/s does not; CPU core h = tokens ÷ tokens per "
        "CPU second, the build's total CPU time whatever N",
        highlight=False,
    )
    if out is not None:
        proj_out = out.with_name(f"{out.stem}-projection{out.suffix}")
        write_table(pr, proj_out)
        console.print(f"wrote {proj_out}", highlight=False)


@bench_app.command("codec")
def codec_cmd(
    model: str = typer.Option(..., "--model", "-m", help="MICE folder (or a cross-encoder with --arch)"),
    dataset: list[str] = typer.Option(
        ..., "--dataset", "-d", help="Dataset spec; repeat for several (every query of --split of each)"
    ),
    storage: list[str] = typer.Option(
        ["pq", "pq:m=32"],
        "--storage",
        help="Compressed storage to compare "
        "with float16, repeatable: pq, pq:m=32, pq:m=48:rotation=1, pq:m=32:refine=12:anchors=1, "
        "residual:bits=1:centroids=4096",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV to write"),
    arch: Optional[str] = typer.Option(None, "--arch", help="a+b, to build MICE from a cross-encoder"),
    split: str = typer.Option("test", "--split", help="Queries re-ranked: every query of this split"),
    depth: int = typer.Option(100, "--depth", help="BM25 candidates per query"),
    repeats: int = typer.Option(3, "--repeats", help="Timed re-ranking passes per index (interleaved)"),
    batch_size: int = typer.Option(64, "--batch-size", help="Documents per scoring batch"),
    train_tokens: int = typer.Option(65536, "--train-tokens", help="Token states the codebooks learn from"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
) -> None:
    """nDCG@10 of re-ranking from compressed indexes against a float16 index (ratio, paired bootstrap CI), bytes
    per token, score agreement and re-ranking throughput, in one run."""
    from rich.console import Console

    from mice.bench.codec import CodecBenchConfig, parse_storage, run_codec_bench
    from mice.cli.data import plain_warnings
    from mice.files import write_table
    from mice.validate import check_setting

    for s in storage:
        parse_storage(s)
    check_setting("repeats", repeats, "--repeats")
    console = Console(width=180)
    config = CodecBenchConfig(
        model=model,
        datasets=tuple(dataset),
        storages=tuple(storage),
        arch=arch,
        split=split,
        depth=depth,
        repeats=repeats,
        batch_size=batch_size,
        train_tokens=train_tokens,
        threads=threads,
        device=device,
    )
    with plain_warnings():
        df = run_codec_bench(config, log=lambda s: console.print(s, highlight=False))
    if out is not None:
        write_table(df, out)
        console.print(f"wrote {out}", highlight=False)


@bench_app.command("data")
def data_cmd(
    lines: int = typer.Option(40_000_000, "--lines", help="Lines of the synthetic teacher file"),
    passages: int = typer.Option(1_000_000, "--passages", help="Passages of the synthetic corpus"),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Keep the files here (default: a temporary folder, removed after)"
    ),
) -> None:
    """Load time and peak memory of a synthetic MS MARCO-size teacher file and corpus (each in its own process)."""
    from mice.bench.data import run_data_bench
    from mice.validate import positive

    positive("lines", lines)
    positive("passages", passages)
    run_data_bench(lines, passages, str(workdir) if workdir else None, log=typer.echo)


@bench_app.command("gpu")
def gpu_cmd(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Folder for gpu.csv and gpu.md (rewritten after "
        "every unit, so a run stopped early keeps what it measured)",
    ),
    device: str = typer.Option("cuda", "--device", help="cuda (or cpu, with --smoke, to check the script)"),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny sizes: every code path in well under a minute"),
    budget_s: float = typer.Option(
        420.0, "--budget-s", help="No new unit starts after this many seconds (a unit is one section at one precision)"
    ),
    dtypes: str = typer.Option("fp32,bf16", "--dtypes", help="Compute precisions, comma-separated"),
    sections: str = typer.Option(
        "latency-paper,latency-ours,train,index-build", "--sections", help="Sections to run, in this order"
    ),
    storages: str = typer.Option("float16,int8,pq", "--storages", help="index-build: index storages"),
    arch: str = typer.Option("4+3", "--arch", help="MICE architecture a+b on the 12-layer backbone"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and inputs"),
) -> None:
    """Latency (paper's and our protocol), training steps/s at 512 tokens and index-build tokens/s of the
    cross-encoder, MICE and late interaction on random MiniLM-L12-H384-shaped models, fp32 and bf16, within a
    time budget: `mice bench gpu --device cuda --out OUT/gpu`."""
    from rich.console import Console

    from mice.bench.gpu import GPUBenchConfig, run_gpu_bench
    from mice.cli.data import plain_warnings
    from mice.errors import MiceError

    try:
        a, b = (int(x) for x in arch.split("+"))
    except ValueError:
        raise MiceError(f"--arch {arch!r}: expected a+b, e.g. 4+3") from None
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    console = Console(width=160)
    config = GPUBenchConfig(
        device=device,
        smoke=smoke,
        layers=(a, b),
        dtypes=split(dtypes),
        sections=split(sections),
        storages=split(storages),
        budget_s=budget_s,
        seed=seed,
    )
    with plain_warnings():
        run_gpu_bench(config, out, log=lambda s: console.print(s, highlight=False))
    console.print((out / "gpu.md").read_text(), highlight=False)


@bench_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write (one row per mode and phase)"),
    model: str = typer.Option("packaged:minilm", "--model", "-m", help="Backbone every mode starts from"),
    dataset: str = typer.Option("embedded:docs", "--dataset", "-d", help="Dataset the groups are drawn from"),
    split: str = typer.Option("train", "--split", help="Split the groups are drawn from"),
    preset: str = typer.Option("quick", "--preset", help="Train preset giving every mode's settings"),
    modes: str = typer.Option(
        ",".join(__import__("mice.bench.train", fromlist=["MODES"]).MODES),
        "--modes",
        help="Comma-separated modes (the cross-encoder is the reference)",
    ),
    mask: Optional[str] = typer.Option(None, "--mask", help="Mask of the masked mode (default: the preset's)"),
    arch: Optional[str] = typer.Option(None, "--arch", help="MICE architecture a+b (default: the preset's)"),
    steps: int = typer.Option(8, "--steps", help="Timed steps per mode (interleaved across the modes)"),
    warmup: int = typer.Option(1, "--warmup", help="Untimed steps per mode first"),
    eval_pairs: int = typer.Option(64, "--eval-pairs", help="Pairs each evaluation re-ranks (reported per 600)"),
    eval_every: int = typer.Option(2, "--eval-every", help="Evaluate every this many timed steps"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
) -> None:
    """What a training step of each mode costs, phase by phase (data, teacher, forward, backward, optimizer;
    evaluation per 600 pairs), as a ratio to the cross-encoder's step: steps interleaved in one process."""
    from rich.console import Console

    from mice.bench.train import TrainBenchConfig, run_train_bench, table
    from mice.cli.data import plain_warnings
    from mice.files import write_table

    console = Console(width=150)
    config = TrainBenchConfig(
        model=model,
        dataset=dataset,
        split=split,
        preset=preset,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
        mask=mask,
        layers=_arch(arch) if arch else None,
        steps=steps,
        warmup=warmup,
        eval_pairs=eval_pairs,
        eval_every=eval_every,
        threads=threads,
        device=device,
    )
    with plain_warnings():
        df = run_train_bench(config, log=lambda s: console.print(s, highlight=False))
    write_table(df, out)
    console.print("time per phase / the cross-encoder's student step (data + forward + backward + optimizer)")
    console.print(table(df), highlight=False)
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
