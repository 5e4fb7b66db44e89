"""`mice data info|export`: look at a dataset (any spec) before spending compute on it."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import typer

data_app = typer.Typer(
    help="Inspect and export datasets (BEIR/MS MARCO folders, files:, irds:, embedded:).", no_args_is_help=True
)


@contextlib.contextmanager
def plain_warnings():
    """Show warnings as one `warning: ...` line on stderr (not Python's file:line dump)."""
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        typer.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        warnings.showwarning = old


def _short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@data_app.command("info")
def info(
    spec: str = typer.Argument(
        ..., help="Dataset spec: folder, files:..., irds:<id>, embedded:docs[-ood], embedded:meta"
    ),
    examples: int = typer.Option(3, help="Examples to show per split"),
    split: list[str] = typer.Option(None, help="Only these splits (repeatable)"),
) -> None:
    """Size per split, corpus size, and a few (query, relevant document) examples."""
    from rich.console import Console
    from rich.table import Table

    from mice.data import load_dataset

    console = Console()
    with plain_warnings():
        ds = load_dataset(spec)
        splits = split or list(ds.splits)
        for s in splits:
            ds.check_split(s)
        corpus = ds.corpus()
        table = Table(title=f"{ds.name}: {len(corpus)} documents")
        for col in ("split", "queries", "judgements", "relevant", "rel/query"):
            table.add_column(col, justify="right" if col != "split" else "left")
        for s in splits:
            q = ds.qrels(s)
            nq, nrel = len(ds.queries(s)), int((q["relevance"] > 0).sum())
            table.add_row(s, str(nq), str(len(q)), str(nrel), f"{nrel / max(nq, 1):.2f}")
        console.print(table)
        ds.validate()
        stats = getattr(ds, "build_stats", None)
        if stats and "distributions" in stats:  # embedded:meta, embedded:debian
            kind = "Debian packages" if "python_packages_left_out" in stats else "distributions"
            console.print(
                f"installed {kind}: {stats['distributions']} (other copies on the path: "
                f"{stats['other_copies']}); dropped: no summary {stats['no_summary']}, short summary "
                f"{stats['short_summary']}, no description {stats['no_description']}, short description "
                f"{stats['short_description']}, duplicate summary {stats['duplicate_queries']}, "
                f"duplicate description {stats['duplicate_docs']}"
            )
            if "python_packages_left_out" in stats:
                console.print(
                    f"left out as text embedded:meta is tested on: {stats['python_packages_left_out']} "
                    f"installed Python distributions' Debian packages, {stats['same_text_as_meta']} "
                    "with a summary or description of embedded:meta's"
                )
            if stats.get("sites"):
                console.print("from: " + ", ".join(stats["sites"]))
        elif stats:
            pk = Table(title="embedded build")
            for col in ("package", "version", "modules", "failed", "harvested", "kept"):
                pk.add_column(col)
            for name, inf in stats["packages"].items():
                if "error" in inf:
                    pk.add_row(name, "-", "-", inf["error"], "-", "0")
                else:
                    pk.add_row(
                        name,
                        str(inf["version"]),
                        str(inf["modules_imported"]),
                        str(inf["modules_failed"]),
                        str(inf["harvested"]),
                        str(inf["kept"]),
                    )
            console.print(pk)
            console.print(
                f"duplicates dropped: {stats['duplicate_queries']} by query, {stats['duplicate_docs']} by document"
            )
            failed = [f for inf in stats["packages"].values() for f in inf.get("failed_examples", [])]
            if failed:
                console.print("skipped submodules (first ones): " + ", ".join(failed[:10]))
        for s in splits:
            q = ds.qrels(s)
            rel = q[q["relevance"] > 0]
            queries = ds.queries(s)
            for qid, did in list(zip(rel["query_id"], rel["doc_id"]))[:examples]:
                console.print(f"[bold]{s}[/] [cyan]{qid}[/] Q: {_short(queries.get(qid, '?'))}")
                console.print(f"    D [green]{did}[/]: {_short(corpus.get(did, '(not in corpus)'), 160)}")


@data_app.command("export")
def export(
    spec: str = typer.Argument(..., help="Dataset spec"),
    out: Path = typer.Argument(..., help="Output folder (BEIR layout)"),
) -> None:
    """Write any dataset as a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    from mice.data import write_beir

    with plain_warnings():
        from mice.files import check_output

        check_output(out, folder=True)
        folder = write_beir(spec, out)
    typer.echo(f"wrote {folder}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
