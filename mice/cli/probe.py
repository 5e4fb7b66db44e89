"""`mice probe attention` — attention mass along each segment path (a->b: a attends b), per layer and head."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

probe_app = typer.Typer(
    help="Record what a cross-encoder attends to (a->b: tokens of a attend to tokens of b).", no_args_is_help=True
)


@probe_app.command("attention")
def attention(
    model: str = typer.Option(..., "--model", "-m", help="Cross-encoder folder, hub name or packaged:minilm"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec (BEIR folder, embedded:docs, ...)"),
    split: str = typer.Option("test", "--split", help="Split whose queries are probed"),
    run: str = typer.Option(..., "--run", "-r", help="First-stage run file (TREC/parquet/CSV) or 'bm25'"),
    k: int = typer.Option(20, "--k", help="Top-k candidates per query"),
    out: Path = typer.Option(..., "--out", "-o", help="Table to write (.parquet or .csv)"),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Probe the first N queries"),
    examples: int = typer.Option(0, "--examples", help="Also save the raw patterns of N example pairs"),
    mask: Optional[str] = typer.Option(None, "--mask", help="Probe under a mask (preset spec or .json)"),
    mode: str = typer.Option("renorm", "--mode", help="Mask mode: renorm or zero"),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate pairs to this length"),
    figures: Optional[Path] = typer.Option(
        None, "--figures", help="Draw the figures (from the saved files) into this folder"
    ),
) -> None:
    """Mean attention mass per (layer, head, from, to) over the top-k candidates of RUN."""
    from probes.attention import hooked_model, probe_attention, sidecar

    from mice.cli.data import plain_warnings

    with plain_warnings():
        scorer = hooked_model(model, max_length=max_length)
        table = probe_attention(
            scorer,
            dataset,
            out,
            split=split,
            run=run,
            k=k,
            max_queries=max_queries,
            examples=examples,
            batch_size=batch_size,
            mask=mask,
            mode=mode,
            show_progress_bar=True,
        )
    meta = table.attrs.get("meta", {})
    typer.echo(
        f"wrote {out}: {len(table)} rows ({meta.get('n_pairs')} pairs, {meta.get('n_queries')} queries)"
        + (f"; examples in {sidecar(out, '.examples.npz')}" if examples else "")
    )
    if figures is not None:
        from figures.attention import plot_example, plot_head_grid, plot_layer_heatmaps

        figures.mkdir(parents=True, exist_ok=True)
        made = plot_layer_heatmaps(out, figures / "attention_layers") + plot_head_grid(out, figures / "attention_heads")
        if examples:
            made += plot_example(sidecar(out, ".examples.npz"), figures / "attention_example")
        typer.echo("figures: " + ", ".join(str(p) for p in made if p.suffix == ".png"))


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
