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
                layers: str = typer.Option("3+3", "--layers", help="MICE a+b"),
                mask: str = typer.Option("mask2", "--mask", help="Mask for the `masked` method"),
                batch_size: int = typer.Option(32, "--batch-size", help="Documents per forward pass (all methods)"),
                threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
                dtype: str = typer.Option("float16", "--dtype", help="Index storage: float16, float32, int8"),
                methods: str = typer.Option(",".join(__import__("mice.bench", fromlist=["METHODS"]).METHODS),
                                            "--methods", help="Comma-separated subset of the methods"),
                figure: Optional[Path] = typer.Option(None, "--figure", help="PNG path (default: OUT with .png)"),
                ) -> None:
    """Re-rank DOCS candidates of one query with each method; write CSV + PNG and print the targets."""
    from rich.console import Console
    from rich.table import Table

    from ..bench import LatencyConfig, plot_latency, run_latency, targets
    from ..errors import MiceError
    from ..files import write_table

    try:
        a, b = (int(x) for x in layers.split("+"))
    except ValueError:
        raise MiceError(f"--layers {layers!r}: expected a+b, e.g. 3+3") from None
    config = LatencyConfig(docs=docs, query_len=query_len, doc_lens=_ints(doc_len, "--doc-len"), repeats=repeats,
                           warmup=warmup, device=device, model=model, random_weights=random_weights, layers=(a, b),
                           mask=mask, batch_size=batch_size, threads=threads, index_dtype=dtype,
                           methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
    console = Console(width=150)
    df = run_latency(config, log=lambda s: console.print(s, highlight=False))
    write_table(df, out)
    png = plot_latency(out, figure or out.with_suffix(".png"))
    table = Table(title=f"re-ranking {docs} docs, {query_len}-token query, {df['device'].iloc[0]}, "
                        f"{df['threads'].iloc[0]} threads, batch {batch_size}")
    for col in ("method", "doc_len", "median_ms", "p10_ms", "p90_ms", "docs_per_s", "peak_mem_mb",
                "bytes_per_doc_token", "speedup_vs_ce"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in df.itertuples(index=False):
        table.add_row(r.method, str(r.doc_len), f"{r.median_ms:.1f}", f"{r.p10_ms:.1f}", f"{r.p90_ms:.1f}",
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
