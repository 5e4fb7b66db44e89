"""`mice train` — fine-tune a cross-encoder, a masked cross-encoder, or a MICE model (Margin-MSE distillation).

Settings come, in increasing priority, from a preset (`--preset tiny|quick|paper-…`; `mice.train.presets`), a
config file (`--config run.toml|run.json`, flat keys named like `mice.train.TrainConfig` fields, or a derived
configuration from `mice ablate search`), the flags below, and `--set key=value` for any setting (teacher,
mask, contextual_layers, interaction_layers, loss, lr, batch_size, …; `--show-config` lists them all with their
values). Only the options used in nearly every run are flags, so one place, the config file, holds a run's
recipe. Progress lines also go to `output/train.log` (logger `mice.train`). Checkpoints hold only tensors and
plain values (loaded with `weights_only=True`), and the output folder is locked while a run writes it.
Data-parallel (DDP), same options: `accelerate launch --multi_gpu --num_processes N -m mice train ...`; on CPU
processes (gloo) also set `ACCELERATE_USE_CPU=1` (`accelerate launch --cpu` starts a single process unless MPI
is configured). `batch_size` is per process: N processes with batch B train like one with batch N·B.
"""

from __future__ import annotations

from typing import List, Optional

import typer


def key_values(items, flag: str = "--set") -> dict:
    """`--set key=value` items (repeatable) as a dict; a malformed item is a one-line error naming it."""
    from mice.errors import MiceError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise MiceError(f"{flag} {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def train(
    mode: Optional[str] = typer.Option(
        None, "--mode", help="cross-encoder | masked | mice | late-interaction (default: cross-encoder)"
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        help="tiny (seconds), quick (~5 min on 2 CPU cores), "
        "or one paper model: paper-minilm-ce, "
        "paper-minilm-mice-l4+3, … (the paper's GPU recipe; "
        "--show-config prints it)",
    ),
    config: Optional[str] = typer.Option(
        None,
        "--config",
        "-c",
        help="Settings file (.json or .toml), or a derived "
        "configuration (mice-config/1, from `mice ablate search`): a and b for "
        "--mode mice, the mask for --mode masked",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Backbone (cross-encoder mode) or source cross-encoder folder"
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset spec (default embedded:docs)"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder (best/, last/, logs)"),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Optimizer steps (the linear schedule decays to 0 there)"
    ),
    compute_dtype: Optional[str] = typer.Option(
        None,
        "--dtype",
        "--compute-dtype",
        help="fp32 | bf16 | fp16: mixed precision through accelerate "
        "(the setting mixed_precision: no | bf16 | fp16); fp16 needs a "
        "GPU",
    ),
    set_: Optional[List[str]] = typer.Option(
        None,
        "--set",
        help="Any setting: --set key=value (repeatable), e.g. "
        "teacher=source, contextual_layers=3, lr=1e-4; --show-config lists "
        "them",
    ),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Several runs, e.g. 0,1,2 (output/seed-N/ each)"),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from output/last/ if it exists; refused (one "
        "line naming what differs) unless settings, data, start and teacher weights and "
        "mask are those it was trained under",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what output/ holds (start afresh)"),
    show_config: bool = typer.Option(False, "--show-config", help="Print the resolved settings and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
) -> None:
    """Train a cross-encoder, a masked cross-encoder or a MICE model; prints its wall time and dev RR@10.

    Every setting the flags do not cover is read from --config and --set key=value."""
    import json

    flags = _flags(mode, model, dataset, output, max_steps, compute_dtype)
    cfg = resolve_config(preset, config, flags, key_values(set_))
    if resume:
        cfg = cfg.updated({"resume": True})
    if overwrite:
        cfg = cfg.updated({"overwrite": True})
    cfg.validate()
    seed_list = _seed_list(seeds)
    if show_config:
        shown = cfg.to_dict()
        if seed_list:
            shown["seeds"] = seed_list
        typer.echo(json.dumps(shown, indent=2))
        return
    _run(cfg, seed_list, quiet)


def _flags(mode, model, dataset, output, max_steps, compute_dtype) -> dict:
    """The settings `mice train`'s own flags give (those left out are not settings)."""
    from mice.models.precision import mixed_precision

    flags = {
        "mode": mode,
        "model": model,
        "dataset": dataset,
        "output": output,
        "max_steps": max_steps,
        "mixed_precision": mixed_precision(compute_dtype) if compute_dtype is not None else None,
    }
    return {k: v for k, v in flags.items() if v is not None}


def resolve_config(preset: str | None, config: str | None, flags: dict, extra: dict):
    """The run's `TrainConfig`: defaults, then the preset, the config file, the flags and `--set` (`extra`)."""
    from mice.derived import DerivedConfig, is_config_file
    from mice.errors import MiceError
    from mice.train.config import TrainConfig, read_config_file
    from mice.train.presets import preset_mode, preset_settings

    mode = flags.get("mode")
    if config and is_config_file(config):  # a derived configuration (`mice ablate search`): a, b or the mask
        derived = DerivedConfig.load(config)
        file_settings = derived.train_settings(mode or ("masked" if derived.decision == "masked" else "mice"), config)
    else:
        file_settings = read_config_file(config) if config else {}
    chosen_mode = mode or file_settings.get("mode") or (preset_mode(preset) if preset else None) or "cross-encoder"
    cfg = TrainConfig()
    if preset:
        cfg = cfg.updated(preset_settings(preset, chosen_mode), f"preset {preset}")
    if file_settings:
        cfg = cfg.updated(file_settings, str(config))
    cfg = cfg.updated({**flags, **extra}, "command line")
    if (
        cfg.mode != "cross-encoder"
        and cfg.model == "packaged:minilm"
        and not any("model" in given for given in (flags, file_settings, extra))
    ):
        raise MiceError(
            f"--mode {cfg.mode} starts from a trained cross-encoder: pass --model FOLDER "
            "(e.g. the best/ folder of a cross-encoder run)"
        )
    return cfg


def _seed_list(seeds: str | None) -> list[int] | None:
    from mice.errors import MiceError

    if not seeds:
        return None
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise MiceError(f"--seeds {seeds!r}: expected integers separated by commas") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise MiceError(f"--seeds {seeds!r}: expected distinct integers separated by commas")
    return seed_list


def _run(cfg, seed_list: list[int] | None, quiet: bool) -> None:
    """Train (one run, or one per seed) and print the outcome on the main process."""
    from accelerate import PartialState

    from mice.files import check_output
    from mice.train.loop import Trainer, train_seeds

    if cfg.output:
        check_output(cfg.output, folder=True, what="--output")  # before any data or weights load
    if seed_list:
        table = train_seeds(cfg, seed_list, quiet=quiet)
        if PartialState().is_main_process:
            _print_seed_table(table, cfg.output)
        return
    result = Trainer(cfg, quiet=quiet).train()
    if not PartialState().is_main_process:
        return
    best = result.best_dev
    typer.echo(
        f"wall time {result.wall_time_s:.1f} s, {result.steps} steps (stopped by {result.stopped_by}); "
        + (
            f"best dev RR@10 {best['RR@10']:.4f} nDCG@10 {best['nDCG@10']:.4f} at step {result.best_step}; "
            if best
            else ""
        )
        + f"model: {result.output / 'best'}"
    )


def _print_seed_table(table, output) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"mice train — {len(table)} seeds ({output}/seeds.csv)")
    for col in ("seed", "steps", "best_step", "dev_rr10", "dev_ndcg10", "wall_time_s"):
        t.add_column(col, justify="right")
    for row in table.to_dict("records"):
        t.add_row(
            *[
                f"{row[c]:.4f}" if isinstance(row[c], float) and c.startswith("dev") else str(row[c])
                for c in ("seed", "steps", "best_step", "dev_rr10", "dev_ndcg10", "wall_time_s")
            ]
        )
    for label, fn in (("mean", "mean"), ("std", "std")):
        vals = [
            getattr(table[c].astype(float), fn)() if len(table) > 1 or fn == "mean" else 0.0
            for c in ("dev_rr10", "dev_ndcg10", "wall_time_s")
        ]
        t.add_row(label, "", "", f"{vals[0]:.4f}", f"{vals[1]:.4f}", f"{vals[2]:.1f}")
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
