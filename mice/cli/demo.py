"""`mice demo` (the main job) and `mice figures` (regenerate every figure from saved results)."""

from __future__ import annotations

from typing import Optional

import typer


def demo(
    preset: str = typer.Option(
        "quick",
        "--preset",
        help="quick (about 15 minutes on 2 CPU cores), full (hours), or tiny (about a minute, random weights)",
    ),
    out: str = typer.Option("runs/demo", "--out", help="Output folder (stages already there are reused)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads"),
    backbone: Optional[str] = typer.Option(
        None,
        "--backbone",
        help="The encoder the cross-encoder is trained "
        "from (default: the preset's): packaged:minilm, a model folder, "
        "tiny (random BERT) or tiny-modernbert (random ModernBERT)",
    ),
    dev_sample: Optional[str] = typer.Option(
        None,
        "--dev-sample",
        help="Which dev queries the training, "
        "knockout and search stages use: first (N by id) or random "
        "(default: the preset's)",
    ),
    search_method: Optional[str] = typer.Option(
        None,
        "--search",
        help="Which search decides a and b: staged (mask steps, merge layer, then b) or joint (every MICE split, "
        "non-inferior to Baseline ft by its CI; about an hour of one CPU thread on quick) (default: the preset's)",
    ),
    external: Optional[str] = typer.Option(
        None,
        "--external",
        help="An external out-of-domain collection "
        "with a test split (a BEIR folder, or any dataset spec), evaluated "
        "beside the built-in ones; the cross-encoder and MICE re-rank "
        "every test query",
    ),
    frontier: Optional[str] = typer.Option(
        None,
        "--frontier",
        help="A frontier folder of this demo's cross-encoder (`mice ablate frontier`): its figure goes in the report",
    ),
    validate_search: int = typer.Option(
        0,
        "--validate-search",
        help="With --frontier: run the search this many times (other dev queries and seeds) and score each pick "
        "against the frontier (regret, stability, compute)",
    ),
) -> None:
    """The whole method on the offline default, ending in OUT/report.md and OUT/report.html."""
    import time

    from rich.console import Console

    from mice.app.demo import run_demo

    if threads:
        import torch

        torch.set_num_threads(threads)
    console = Console()
    start = time.perf_counter()
    from mice.train.devset import SAMPLES

    if dev_sample is not None and dev_sample not in SAMPLES:
        from mice.errors import MiceError

        raise MiceError(f"--dev-sample {dev_sample!r}: expected first or random")
    report = run_demo(
        out,
        preset,
        console=console,
        frontier=frontier,
        validate=validate_search,
        backbone=backbone,
        dev_sample=dev_sample,
        search_method=search_method,
        dataset_external=external,
    )
    took = time.perf_counter() - start
    console.print(f"[bold green]report:[/] {report} and {report.with_suffix('.html')}  [dim]({took:.1f}s)[/]")


def figures(
    source: str = typer.Option("runs/demo", "--from", help="A demo output folder"),
    out: str = typer.Option("figures/out", "--out", help="Where to write PNG and PDF files"),
) -> None:
    """Regenerate every figure, and OUT/report.html, from the saved result tables of a demo run (no model is run)."""
    from pathlib import Path

    from figures.make import make_all

    from mice.errors import MiceError

    if not Path(source).is_dir():
        raise MiceError(f"{source}: no such demo folder (run `mice demo` first)")
    from mice.app.report import write_report_html

    made = make_all(source, out)
    for p in made:
        typer.echo(str(p))
    typer.echo(f"{len(made)} figures (PNG + PDF) in {out}")
    typer.echo(f"report: {write_report_html(source, figures_dir=out, out=Path(out) / 'report.html')}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("figures")(figures)
