"""`mice retrieve bm25`: a first-stage TREC run."""

from __future__ import annotations

from pathlib import Path

import typer

retrieve_app = typer.Typer(help="First-stage retrieval (writes TREC runs).", no_args_is_help=True)


@retrieve_app.command("bm25")
def bm25(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec"),
    split: str = typer.Option("test", help="Split whose queries are run"),
    k: int = typer.Option(100, help="Documents per query"),
    out: Path = typer.Option(..., "--out", "-o", help="TREC run file to write (atomically)"),
    k1: float = typer.Option(1.5, help="BM25 k1"),
    b: float = typer.Option(0.75, help="BM25 b"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cached index"),
) -> None:
    """BM25 (bm25s) over the dataset's corpus; the index is cached per dataset."""
    from mice.rank.first_stage import BM25Config, bm25_run
    from mice.rank.runs import write_run
    from mice.cli.data import plain_warnings

    with plain_warnings():
        run = bm25_run(dataset, split, k, BM25Config(k1=k1, b=b), use_cache=not no_cache)
        write_run(run, out, tag="bm25")
    typer.echo(f"wrote {out}: {run['query_id'].nunique()} queries, {len(run)} lines")


def register(app: typer.Typer) -> None:
    app.add_typer(retrieve_app, name="retrieve")
