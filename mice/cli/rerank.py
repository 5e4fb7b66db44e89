"""`mice rerank`: re-rank a first-stage run with a cross-encoder (optionally masked), MICE or a bi-encoder,
resumably. The resume identity is the job's content (see `mice.rank.rerank.job_identity`), never the spec strings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mice.models.precision import HELP as DTYPE_HELP


def rerank_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model folder, hub name, packaged:minilm, or biencoder:packaged"
    ),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec"),
    run: Path = typer.Option(..., "--run", "-r", help="First-stage TREC run"),
    out: Path = typer.Option(..., "--out", "-o", help="Re-ranked TREC run to write"),
    mask: Optional[str] = typer.Option(
        None, "--mask", help="Interaction mask: a preset (mask2, mask3:k=2, ...) or a mice-mask/2 JSON file"
    ),
    mode: str = typer.Option("renorm", "--mode", help="Knockout mode of --mask: renorm or zero"),
    split: str = typer.Option("test", help="Split whose queries are re-ranked"),
    k: int = typer.Option(100, help="Re-rank the top k of the first stage"),
    batch_size: int = typer.Option(32, "--batch-size", help="Pairs per forward pass"),
    max_length: Optional[int] = typer.Option(
        None, "--max-length", help="Tokens per pair (MICE: per document); default: the length the model was trained at"
    ),
    max_query_length: Optional[int] = typer.Option(
        None, "--max-query-length", help="MICE / late interaction: tokens per query"
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: best available)"),
    index: Optional[Path] = typer.Option(
        None,
        "--index",
        help="MICE only: score documents from this document-state index (`mice index build`), not their text",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard partial results of a different job at OUT and start afresh"
    ),
    compute_dtype: str = typer.Option(
        "fp32", "--dtype", "--compute-dtype", help=DTYPE_HELP + "; part of the resume identity"
    ),
) -> None:
    """Score the top-k candidates of RUN with MODEL; resumes from <out>.partial if the same job stopped."""
    from mice.files import check_output
    from mice.models.loader import load
    from mice.rank.rerank import rerank
    from mice.cli.data import plain_warnings

    check_output(out)  # before the model loads and anything is scored
    with plain_warnings():
        scorer = load(
            model,
            mask=mask,
            mode=mode,
            device=device,
            max_length=max_length,
            max_query_length=max_query_length,
            index=index,
            batch_size=batch_size,
            dtype=compute_dtype,
        )
        calls = {"batch_size": batch_size}
        if index is not None:  # whole queries per call; --batch-size = documents per forward
            calls = scorer.runner_batching(k)
        result = rerank(
            scorer,
            dataset,
            split,
            run,
            k=k,
            out=out,
            show_progress_bar=True,
            tag=Path(model).name or "rerank",
            overwrite=overwrite,
            on_resume=lambda p, n: typer.echo(f"resuming from {p} ({n} queries done)", err=True),
            **calls,
        )
    from mice.distributed import world

    if world().main:
        typer.echo(f"wrote {out}: {result['query_id'].nunique()} queries, {len(result)} lines")


def register(app: typer.Typer) -> None:
    app.command("rerank")(rerank_cmd)
