"""`mice index build|info`: encode a corpus once into MICE document states (resumable, memory-mapped)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

index_app = typer.Typer(
    help="Build and inspect MICE document-state indexes (`mice index build`, `mice index info`). "
    "`mice index --model M --dataset D --out DIR` is short for `mice index build ...`.",
    invoke_without_command=True,
)


def load_mice(model: str, arch: Optional[str] = None, device: Optional[str] = None, compute_dtype: str = "fp32"):
    """A MICE folder, or (with `--arch a+b`) a cross-encoder turned into MICE-ℓa+b on the spot (`mice.load`)."""
    from mice.models.loader import load

    return load(model, arch=arch, device=device, kind="mice", dtype=compute_dtype)


def _build(
    model: str,
    dataset: str,
    out: Path,
    storage_dtype: str,
    kv: bool,
    shard_size: int,
    batch_size: int,
    overwrite: bool,
    arch: Optional[str],
    device: Optional[str],
    compute_dtype: str,
    codec: Optional[dict] = None,
) -> None:
    from mice.data import load_dataset
    from mice.index.store import IndexConfig, build_index
    from mice.cli.data import plain_warnings

    from mice.files import check_output

    check_output(out, folder=True)  # before the model loads and anything is encoded
    with plain_warnings():
        mice = load_mice(model, arch, device, compute_dtype)
        corpus = load_dataset(dataset).corpus()
        config = IndexConfig(dtype=storage_dtype, kv=kv, shard_size=shard_size, batch_size=batch_size, **(codec or {}))
        if (out / "build.json").exists() and not (out / "manifest.json").exists():
            typer.echo(f"resuming the build in {out}", err=True)
        index = build_index(mice, corpus, out, config, overwrite=overwrite, show_progress_bar=True)
    from mice.distributed import world

    if world().main:  # one report per job, not one per process
        _print_info(index.info())


def _print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MICE index {info['path']}", show_header=False)
    for key in (
        "model",
        "source",
        "fingerprint",
        "dtype",
        "compute_dtype",
        "kv",
        "kv_layers",
        "documents",
        "tokens",
        "mean_doc_tokens",
        "shards",
        "bytes",
        "bytes_per_token",
        "bytes_per_token_states",
        "bytes_per_token_kv",
        "codec",
        "codec_bytes",
        "codec_train_states",
        "created",
    ):
        if key in info:
            value = info[key]
            if key == "bytes":
                value = f"{value} ({value / 2**20:.1f} MiB)"
            table.add_row(key.replace("_", " "), str(value))
    Console().print(table)


_MODEL = typer.Option(None, "--model", "-m", help="MICE folder (or a cross-encoder with --arch a+b)")
_DATASET = typer.Option(None, "--dataset", "-d", help="Dataset spec whose corpus is indexed")
_OUT = typer.Option(
    None,
    "--out",
    "-o",
    help="Index folder to write (resumed if a build was interrupted; kept "
    "shards are verified against their sha256; progress also goes to build.log there)",
)
_STORAGE = typer.Option(
    "float16",
    "--storage-dtype",
    "--storage",
    help="Storage of the states: float16, float32, "
    "int8 (per-token scale), pq (--pq-m bytes per token) or residual (2 + H·--bits/8 bytes per "
    "token), the last two through codebooks trained on a sample of the corpus; the precision "
    "they are computed at is --dtype",
)
_PQ_M = typer.Option(48, "--pq-m", help="pq: sub-vectors per state, one byte each (48 = 48 B per token)")
_ROTATION = typer.Option(False, "--rotation/--no-rotation", help="pq: learn an orthogonal rotation first (OPQ)")
_PQ_REFINE = typer.Option(
    0, "--pq-refine", help="pq: a second stage of this many sub-vectors on what the first leaves (bytes per token)"
)
_ANCHORS = typer.Option(
    False,
    "--anchors/--no-anchors",
    help="pq: code what each state adds to its token's and position's mean state (2 B more: the token id)",
)
_CENTROIDS = typer.Option(1024, "--centroids", help="residual: k-means centroids (id stored in 2 bytes)")
_BITS = typer.Option(1, "--bits", help="residual: bits per dimension of the residual (1, 2, 4 or 8)")
_TRAIN = typer.Option(
    65536,
    "--train-tokens",
    help="pq/residual: token states the codebooks are trained on (a seeded sample of the corpus)",
)
# `--dtype` is the compute precision, as in score, rerank and train (one name, one meaning)
_COMPUTE_DTYPE = typer.Option(
    "fp32",
    "--dtype",
    "--compute-dtype",
    help="Precision the documents are encoded at: "
    "fp32 (default), bf16 or fp16 (torch.autocast); not the storage (--storage-dtype)",
)
_KV = typer.Option(
    False,
    "--kv/--no-kv",
    help="Also store each live interaction layer's cross-attention keys/values (more storage, faster re-ranking)",
)
_SHARD = typer.Option(4096, "--shard-size", help="Documents per shard (the unit of resumption)")
_BATCH = typer.Option(32, "--batch-size", help="Documents per forward pass")
_OVERWRITE = typer.Option(
    False,
    "--overwrite",
    help="Start afresh, whatever the folder holds (an index built "
    "with other settings, a corrupted or a half-written one)",
)
_ARCH = typer.Option(None, "--arch", help="a+b, to build MICE-ℓa+b from a plain cross-encoder")
_DEVICE = typer.Option(None, "--device", help="cpu, cuda, ...")


@index_app.callback()
def index_main(
    ctx: typer.Context,
    model: Optional[str] = _MODEL,
    dataset: Optional[str] = _DATASET,
    out: Optional[Path] = _OUT,
    storage_dtype: str = _STORAGE,
    kv: bool = _KV,
    shard_size: int = _SHARD,
    batch_size: int = _BATCH,
    overwrite: bool = _OVERWRITE,
    arch: Optional[str] = _ARCH,
    device: Optional[str] = _DEVICE,
    compute_dtype: str = _COMPUTE_DTYPE,
    pq_m: int = _PQ_M,
    pq_refine: int = _PQ_REFINE,
    rotation: bool = _ROTATION,
    anchors: bool = _ANCHORS,
    centroids: int = _CENTROIDS,
    bits: int = _BITS,
    train_tokens: int = _TRAIN,
) -> None:
    """Build and inspect MICE document-state indexes."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None and dataset is None and out is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if model is None or dataset is None or out is None:
        from mice.errors import MiceError

        raise MiceError("mice index: building needs --model, --dataset and --out (or see `mice index --help`)")
    _build(
        model,
        dataset,
        out,
        storage_dtype,
        kv,
        shard_size,
        batch_size,
        overwrite,
        arch,
        device,
        compute_dtype,
        _codec(pq_m, pq_refine, rotation, anchors, centroids, bits, train_tokens),
    )


def _codec(
    pq_m: int, pq_refine: int, rotation: bool, anchors: bool, centroids: int, bits: int, train_tokens: int
) -> dict:
    return {
        "pq_m": pq_m,
        "pq_refine": pq_refine,
        "rotation": rotation,
        "anchors": anchors,
        "centroids": centroids,
        "bits": bits,
        "train_tokens": train_tokens,
    }


@index_app.command("build")
def build_cmd(
    model: str = typer.Option(..., "--model", "-m", help="MICE folder (or a cross-encoder with --arch a+b)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec whose corpus is indexed"),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder (resumed if interrupted)"),
    storage_dtype: str = _STORAGE,
    kv: bool = _KV,
    shard_size: int = _SHARD,
    batch_size: int = _BATCH,
    overwrite: bool = _OVERWRITE,
    arch: Optional[str] = _ARCH,
    device: Optional[str] = _DEVICE,
    compute_dtype: str = _COMPUTE_DTYPE,
    pq_m: int = _PQ_M,
    pq_refine: int = _PQ_REFINE,
    rotation: bool = _ROTATION,
    anchors: bool = _ANCHORS,
    centroids: int = _CENTROIDS,
    bits: int = _BITS,
    train_tokens: int = _TRAIN,
) -> None:
    """Encode every document of DATASET once to its layer-a states; resumable shard by shard."""
    _build(
        model,
        dataset,
        out,
        storage_dtype,
        kv,
        shard_size,
        batch_size,
        overwrite,
        arch,
        device,
        compute_dtype,
        _codec(pq_m, pq_refine, rotation, anchors, centroids, bits, train_tokens),
    )


@index_app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="Index folder"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every shard's sha256"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also check the index matches this MICE model"),
) -> None:
    """Documents, tokens, bytes per token, model and storage of an index (checks checksums)."""
    from mice.index.store import DocIndex

    mice = load_mice(model) if model else None
    _print_info(DocIndex.open(path, model=mice, verify=verify).info())
    if mice is not None:
        typer.echo(f"index matches {mice.name} ({model})")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
