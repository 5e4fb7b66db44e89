"""`mice evaluate`: measures, per-query values and paired significance against the first run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_cmd(runs: list[Path] = typer.Argument(..., help="TREC run files; the first is the baseline"),
                 dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset spec (for qrels)"),
                 split: str = typer.Option("test", help="Split whose qrels are used"),
                 qrels: Optional[Path] = typer.Option(None, "--qrels", help="Qrels file instead of a dataset"),
                 metrics: str = typer.Option("nDCG@10,RR@10,R@100", help="Comma-separated ir-measures names"),
                 out: Optional[Path] = typer.Option(None, "--out", "-o",
                                                    help="Per-query values (.parquet/.csv/.tsv)"),
                 results: Optional[Path] = typer.Option(None, "--results",
                                                        help="Aggregates and p-values (.parquet/.csv/.tsv)"),
                 alpha: float = typer.Option(0.05, help="Significance level for the markers"),
                 resamples: int = typer.Option(10_000, help="Randomisation-test resamples"),
                 seed: int = typer.Option(0, help="Randomisation-test seed")) -> None:
    """Aggregate table (rich), per-query values, paired t-test and randomisation test (Holm) vs the first run."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from ..errors import DataError
    from ..evaluation import evaluate, summary_table
    from ..files import write_table
    from ..runs import read_qrels, read_run
    from .data import plain_warnings

    with plain_warnings():
        if (dataset is None) == (qrels is None):
            raise DataError("give exactly one of --dataset or --qrels")
        if qrels is not None:
            judged = read_qrels(qrels)
        else:
            from ..data import load_dataset

            judged = load_dataset(dataset).qrels(split)
        names: dict[str, pd.DataFrame] = {}
        for path in runs:
            name = path.name
            i = 2
            while name in names:
                name, i = f"{path.name}#{i}", i + 1
            names[name] = read_run(path)
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
    if out is not None:
        per_q = pd.concat([t.assign(run=n) for n, t in tables.items()], ignore_index=True)
        write_table(per_q[["run", "query_id", "measure", "value"]], out)
        console.print(f"per-query values: {out}")
    if results is not None:
        write_table(res, results)
        console.print(f"aggregates: {results}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
