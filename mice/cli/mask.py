"""`mice mask show PRESET|FILE` — print a mask's per-layer allow-table (or a derived configuration and its mask)."""

from __future__ import annotations

from typing import Optional

import typer

mask_app = typer.Typer(help="Interaction masks: show presets and mask files (a->b: a attends b).", no_args_is_help=True)


@mask_app.command("show")
def show(
    spec: str = typer.Argument(
        ...,
        help="Preset (none, mask0..mask3, prettr, sparse_ce), a mask .json or a derived configuration (mice-config/1)",
    ),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="Number of layers (presets; default 6)"),
    k: Optional[int] = typer.Option(None, "--k", help="k for mask3(k) / prettr(k)"),
    tidy: bool = typer.Option(False, "--tidy", help="Print the tidy (layer, from, to, allowed) table"),
) -> None:
    """Print the per-layer allow-table of a preset or a mask file."""
    from pathlib import Path

    from mice.masks import InteractionMask

    from mice.derived import DerivedConfig, is_config_file

    if is_config_file(spec):  # a derived configuration: a, b, decision and budget, then its mask
        cfg = DerivedConfig.load(spec)
        mask = cfg.interaction_mask()
        typer.echo(cfg.render() if not tidy or mask is None else mask.to_frame().to_string(index=False))
        return
    if spec.endswith(".json") or Path(spec).is_file():
        mask = InteractionMask.load(spec)
        if num_layers is not None and num_layers != mask.num_layers:
            from mice.errors import MaskError

            raise MaskError(f"{spec}: mask is for {mask.num_layers} layers, not {num_layers}")
    else:
        params = {"k": k} if k is not None else {}
        mask = InteractionMask.from_preset(spec, num_layers=num_layers or 6, **params)
    typer.echo(mask.to_frame().to_string(index=False) if tidy else mask.render())


def register(app: typer.Typer) -> None:
    app.add_typer(mask_app, name="mask")
