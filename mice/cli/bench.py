"""`mice bench latency|plot`: time re-ranking with every method in one process, and draw the figure."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(help="Benchmarks: re-ranking latency of the cross-encoder, masked, MICE (on the fly, "
                             "from the index, cached K/V) and MaxSim.", no_args_is_help=True)


def _ints(text: str, what: str) -> tuple[int, ...]:
    from ..errors import MiceError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MiceError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise MiceError(f"{what}: no values")
    return values


@bench_app.command("latency")
def latency_cmd(out: Path = typer.Option(..., "--out", "-o", help="CSV to write (the PNG goes next to it)"),
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
                methods: str = typer.Option(",".join(__import__("mice.bench", fromlist=["METHODS"]).METHODS),
                                            "--methods", help="Comma-separated subset of the methods"),
                figure: Optional[Path] = typer.Option(None, "--figure", help="PNG path (default: OUT with .png)"),
                protocol: str = typer.Option("ours", "--protocol",
                                             help="ours | paper | ours,paper (both, one run). paper = the authors' "
                                                  "measurement (mice.bench_paper): one batch of 128 pairs, same "
                                                  "query, 512-token documents, random precomputed states, fp32, "
                                                  "tokenisation and per-pair query layers timed, mean ± std of 10 "
                                                  "after 5 warm-ups"),
                paper_batch: int = typer.Option(128, "--paper-batch", help="paper protocol: pairs per batch"),
                paper_runs: int = typer.Option(10, "--paper-runs", help="paper protocol: timed calls"),
                paper_warmup: int = typer.Option(5, "--paper-warmup", help="paper protocol: untimed calls first"),
                late_interaction: Optional[str] = typer.Option(
                    None, "--late-interaction", help="Trained late-interaction folder timed as maxsim / "
                                                     "late-interaction (default: a random projection)"),
                ) -> None:
    """Re-rank DOCS candidates of one query with each method; write CSV + PNG and print the targets.
    `--device auto` runs on the CPU and, where one is present, on CUDA."""
    from rich.console import Console
    from rich.table import Table

    from ..bench import LatencyConfig, plot_latency, run_latency, targets
    from ..errors import MiceError
    from ..files import write_table

    try:
        a, b = (int(x) for x in arch.split("+"))
    except ValueError:
        raise MiceError(f"--arch {arch!r}: expected a+b, e.g. 3+3") from None
    protocols = [p.strip() for p in protocol.split(",") if p.strip()]
    if not protocols or set(protocols) - {"ours", "paper"}:
        raise MiceError(f"--protocol {protocol!r}: expected ours, paper or ours,paper")
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if devices == ["auto"]:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    console = Console(width=150)
    if "paper" in protocols:
        import pandas as pd

        from ..bench_paper import PAPER_METHODS, PaperLatencyConfig, run_paper_latency

        paper = pd.concat([run_paper_latency(PaperLatencyConfig(
            batch=paper_batch, doc_len=max(_ints(doc_len, "--doc-len")), warmup=paper_warmup, runs=paper_runs,
            device=d, model=model, random_weights=random_weights, layers=(a, b), late_interaction=late_interaction,
            threads=threads, methods=PAPER_METHODS), log=lambda s: console.print(s, highlight=False))
            for d in devices], ignore_index=True)
        paper_out = out if protocols == ["paper"] else out.with_name(f"{out.stem}-paper{out.suffix}")
        write_table(paper, paper_out)
        t = Table(title=f"--protocol paper: one batch of {paper_batch} pairs (same query), "
                        f"{max(_ints(doc_len, '--doc-len'))}-token documents, fp32, mean ± std of {paper_runs} "
                        f"after {paper_warmup} warm-ups")
        for col in ("method", "device", "mean ± std (ms)", "docs/s", "speed-up vs CE"):
            t.add_column(col, justify="left" if col in ("method", "device") else "right")
        for r in paper.itertuples(index=False):
            t.add_row(r.method, r.device, f"{r.mean_ms:.1f} ± {r.std_ms:.1f}", f"{r.docs_per_s:.1f}",
                      f"{r.speedup_vs_ce:.2f}x")
        console.print(t)
        console.print(f"wrote {paper_out}", highlight=False)
        if protocols == ["paper"]:
            return
    import pandas as pd

    config = LatencyConfig(docs=docs, query_len=query_len, doc_lens=_ints(doc_len, "--doc-len"), repeats=repeats,
                           warmup=warmup, device=devices[0], model=model, random_weights=random_weights,
                           layers=(a, b), mask=mask, batch_size=batch_size, threads=threads, index_dtype=dtype,
                           methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                           late_interaction=late_interaction)
    from dataclasses import replace

    df = pd.concat([run_latency(replace(config, device=d), log=lambda s: console.print(s, highlight=False))
                    for d in devices], ignore_index=True)
    write_table(df, out)
    png = plot_latency(out, figure or out.with_suffix(".png"))
    table = Table(title=f"--protocol ours: re-ranking {docs} docs, {query_len}-token query, "
                        f"{', '.join(devices)}, {df['threads'].iloc[0]} threads, batch {batch_size}")
    for col in ("method", "device", "doc_len", "median_ms", "p10_ms", "p90_ms", "docs_per_s", "peak_mem_mb",
                "bytes_per_doc_token", "speedup_vs_ce"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in df.itertuples(index=False):
        table.add_row(r.method, r.device, str(r.doc_len), f"{r.median_ms:.1f}", f"{r.p10_ms:.1f}", f"{r.p90_ms:.1f}",
                      f"{r.docs_per_s:.1f}", f"{r.peak_mem_mb:.0f}", f"{r.bytes_per_doc_token:.0f}",
                      f"{r.speedup_vs_ce:.2f}x")
    console.print(table)
    for text, value, met in targets(df, max(config.doc_lens)):  # the targets are set at 512 tokens
        console.print(f"target: {text}: {value:.2f} -> {'met' if met else 'NOT met'}", highlight=False)
    console.print(f"wrote {out} and {png}", highlight=False)


@bench_app.command("plot")
def plot_cmd(csv: Path = typer.Argument(..., help="CSV written by `mice bench latency`"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG (default: CSV with .png)")) -> None:
    """Redraw the latency figure from a saved CSV."""
    from ..bench import plot_latency

    typer.echo(f"wrote {plot_latency(csv, out or csv.with_suffix('.png'))}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
