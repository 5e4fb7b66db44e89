"""`mice evaluate`: measures, per-query values and paired significance against the first run.

A run argument is a TREC run file, or `NAME=RUN[,RUN…]`: one system trained under several seeds (each run is
evaluated on its own; `--paper-test BASELINE` compares the systems' seed-averaged per-query values with the
baseline system's by Welch's t-test, as the MICE paper does)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_cmd(
    runs: list[str] = typer.Argument(
        ..., help="TREC run files (or NAME=RUN,RUN,… for one system's seeds); the first run is the baseline"
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset spec (for qrels)"),
    split: str = typer.Option("test", help="Split whose qrels are used"),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Qrels file instead of a dataset"),
    metrics: str = typer.Option("nDCG@10,RR@10,R@100", help="Comma-separated ir-measures names"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Per-query values (.parquet/.csv/.tsv)"),
    results: Optional[Path] = typer.Option(None, "--results", help="Aggregates and p-values (.parquet/.csv/.tsv)"),
    alpha: float = typer.Option(0.05, help="Significance level for the markers"),
    resamples: int = typer.Option(10_000, help="Randomisation-test resamples"),
    seed: int = typer.Option(0, help="Randomisation-test seed"),
    paper_test: Optional[str] = typer.Option(
        None,
        "--paper-test",
        help="Also the paper's test against system BASELINE: Welch's t-test on "
        "per-query values averaged over seeds (p < --alpha, ↑/↓)",
    ),
    paper_out: Optional[Path] = typer.Option(
        None, "--paper-results", help="The paper test's table (.parquet/.csv/.tsv)"
    ),
) -> None:
    """Aggregate table (rich), per-query values, paired t-test and randomisation test (Holm) vs the first run."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from mice.errors import DataError
    from mice.rank.evaluation import evaluate, summary_table
    from mice.files import write_table
    from mice.rank.runs import read_qrels
    from mice.cli.data import plain_warnings

    with plain_warnings():
        if (dataset is None) == (qrels is None):
            raise DataError("give exactly one of --dataset or --qrels")
        if qrels is not None:
            judged = read_qrels(qrels)
        else:
            from mice.data import load_dataset

            judged = load_dataset(dataset).qrels(split)
        names, groups = _read_runs(runs)
        tables: dict = {}
        res = evaluate(judged, names, metrics=metrics, n_resamples=resamples, seed=seed, per_query_out=tables)
    wide = summary_table(res, alpha)
    table = Table(title=f"{len(judged['query_id'].unique())} judged queries; baseline = {next(iter(names))}")
    table.add_column("run")
    for m in wide.columns:
        table.add_column(m, justify="right")
    for run_name, row in wide.iterrows():
        table.add_row(run_name, *row.tolist())
    console = Console()
    console.print(table)
    if len(names) > 1:
        console.print(f"† paired t-test, ‡ randomisation test: p < {alpha} after Holm correction (per measure)")
    if paper_test is not None:
        _paper_test(console, tables, groups, paper_test, alpha, paper_out)
    if out is not None:
        per_q = pd.concat([t.assign(run=n) for n, t in tables.items()], ignore_index=True)
        write_table(per_q[["run", "query_id", "measure", "value"]], out)
        console.print(f"per-query values: {out}")
    if results is not None:
        write_table(res, results)
        console.print(f"aggregates: {results}")


def _read_runs(runs: list[str]) -> tuple[dict, dict]:
    """{run name: run} and {system: its run names}; `NAME=RUN,RUN` is one system's seeds."""
    from mice.errors import DataError
    from mice.rank.runs import read_run

    names: dict = {}
    groups: dict[str, list[str]] = {}
    for arg in runs:
        system, sep, files = arg.partition("=")
        paths = [Path(f) for f in files.split(",") if f.strip()] if sep else [Path(arg)]
        if sep and (not system.strip() or not paths):
            raise DataError(f"run argument {arg!r}: expected NAME=RUN[,RUN…]")
        if sep and system in groups:
            raise DataError(f"run argument {arg!r}: system {system!r} given twice")
        members = []
        for k, path in enumerate(paths):
            base = f"{system}#{k}" if sep else path.name
            name, i = base, 2
            while name in names:
                name, i = f"{base}#{i}", i + 1
            names[name] = read_run(path)
            members.append(name)
        groups[system if sep else members[0]] = members
    return names, groups


def _paper_test(console, tables: dict, groups: dict, baseline: str, alpha: float, out: Optional[Path]) -> None:
    """The paper's test (Welch's t-test on per-query values averaged over seeds) against `baseline`, printed."""
    from rich.table import Table

    from mice.files import write_table
    from mice.rank.evaluation import paper_test

    pt = paper_test(tables, groups, baseline, alpha)
    t2 = Table(title=f"paper test: Welch's t-test on per-query values averaged over seeds, vs {baseline}")
    t2.add_column("system")
    t2.add_column("seeds", justify="right")
    measures = list(dict.fromkeys(pt["measure"]))
    for m in measures:
        t2.add_column(m, justify="right")
    for system in groups:
        cells = []
        for m in measures:
            r = pt[(pt["system"] == system) & (pt["measure"] == m)].iloc[0]
            cells.append(f"{r['value']:.4f}{r['arrow']}")
        t2.add_row(system, str(len(groups[system])), *cells)
    console.print(t2)
    console.print(
        f"↑/↓: Welch's t-test p < {alpha} against {baseline} (no multiple-testing correction, as in the paper)"
    )
    if out is not None:
        write_table(pt, out)
        console.print(f"paper test: {out}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
