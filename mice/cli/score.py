"""`mice score` — score `query<TAB>doc` lines with a cross-encoder (optionally under a mask)."""
from __future__ import annotations

import sys
from typing import Optional

import typer


def score(model: str = typer.Option(..., "--model", "-m", help="HF folder, hub name, MICE folder or packaged:minilm"),
          input: Optional[str] = typer.Argument(None, help="File of query<TAB>doc lines (default: stdin)"),
          mask: Optional[str] = typer.Option(None, "--mask", help="Preset spec (mask3:k=2) or mask .json"),
          mode: str = typer.Option("renorm", "--mode", help="Knockout mode: renorm or zero"),
          batch_size: int = typer.Option(32, "--batch-size")) -> None:
    """Print one score per input line (raw logits), in input order."""
    from ..errors import DataError
    from ..models import load_scorer

    stream = open(input, encoding="utf-8") if input else sys.stdin
    source = input or "<stdin>"
    pairs = []
    with stream:
        for n, line in enumerate(stream, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise DataError(f"{source}:{n}: expected 'query<TAB>document', got {len(parts)} field(s)")
            pairs.append((parts[0], parts[1]))
    scorer = load_scorer(model, mask=mask, mode=mode)
    for s in scorer.predict(pairs, batch_size=batch_size):
        typer.echo(f"{s:.6f}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
