"""`mice score` — score `query<TAB>doc` lines with a cross-encoder (optionally under a mask)."""

from __future__ import annotations

from typing import Optional

import typer

from mice.models.precision import HELP as DTYPE_HELP


def score(
    model: str = typer.Option(..., "--model", "-m", help="HF folder, hub name, MICE folder or packaged:minilm"),
    input: Optional[str] = typer.Argument(None, help="File of query<TAB>doc lines (default: stdin)"),
    mask: Optional[str] = typer.Option(None, "--mask", help="Preset spec (mask3:k=2) or mask .json"),
    mode: str = typer.Option("renorm", "--mode", help="Knockout mode: renorm or zero"),
    batch_size: int = typer.Option(32, "--batch-size"),
    compute_dtype: str = typer.Option("fp32", "--dtype", "--compute-dtype", help=DTYPE_HELP),
) -> None:
    """Print one score per input line (raw logits), in input order."""
    from mice.models.loader import load
    from mice.rank.pairs import read_pairs

    pairs = read_pairs(input)
    scorer = load(model, mask=mask, mode=mode, dtype=compute_dtype)
    for s in scorer.predict(pairs, batch_size=batch_size):
        typer.echo(f"{s:.6f}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
