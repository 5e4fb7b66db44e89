"""`mice rerank`: re-rank a first-stage run with a cross-encoder (optionally masked), resumably."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import typer


def load_scorer(model: str, mask: Optional[Path] = None, device: Optional[str] = None,
                max_length: Optional[int] = None):
    """Model spec -> scorer through `mice.models.load_scorer` (HF cross-encoders, masked models, MICE folders,
    `biencoder:packaged`). The one place to extend when a new kind of scorer needs CLI options."""
    from ..errors import ModelError
    from ..models import load_scorer as _load

    if model.startswith("biencoder") and mask is not None:
        raise ModelError("a bi-encoder takes no interaction mask")
    return _load(model, mask=str(mask) if mask is not None else None, device=device, max_length=max_length)


def job_id(model: str, mask: Optional[Path], max_length: Optional[int]) -> str:
    """Identifies the scorer in the resumable sidecar: model spec, mask content, max length."""
    digest = hashlib.sha1(mask.read_bytes()).hexdigest()[:16] if mask is not None and mask.exists() else "-"
    return f"{model}|mask={digest}|max_length={max_length}"


def rerank_cmd(model: str = typer.Option(..., "--model", "-m", help="Model folder, hub name, packaged:minilm, "
                                         "or biencoder:packaged"),
               dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec"),
               run: Path = typer.Option(..., "--run", "-r", help="First-stage TREC run"),
               out: Path = typer.Option(..., "--out", "-o", help="Re-ranked TREC run to write"),
               mask: Optional[Path] = typer.Option(None, "--mask", help="Interaction mask JSON (mice-mask/1)"),
               split: str = typer.Option("test", help="Split whose queries are re-ranked"),
               k: int = typer.Option(100, help="Re-rank the top k of the first stage"),
               batch_size: int = typer.Option(32, "--batch-size", help="Pairs per forward pass"),
               max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate pairs to this"),
               device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: best available)"),
               index: Optional[Path] = typer.Option(None, "--index", help="MICE only: score documents from this "
                                                    "document-state index (`mice index build`), not their text"),
               ) -> None:
    """Score the top-k candidates of RUN with MODEL; resumes from <out>.partial if a previous run stopped."""
    from ..rerank import rerank
    from .data import plain_warnings

    with plain_warnings():
        job = job_id(model, mask, max_length)
        calls = {"batch_size": batch_size}
        if index is not None:  # MICE from its index (mice.fast_rerank); the index's checksum joins the job id
            from ..errors import ModelError
            from ..fast_rerank import index_scorer

            if mask is not None:
                raise ModelError("--mask does not apply with --index (a MICE model has its pattern built in)")
            scorer = index_scorer(model, index, device=device, batch_size=batch_size)
            job += f"|index={scorer.reranker.index.manifest['checksum'][:16]}"
            calls = scorer.runner_batching(k)  # whole queries per call; --batch-size = documents per forward
        else:
            scorer = load_scorer(model, mask, device, max_length)
        partial = out.with_name(out.name + ".partial")
        if partial.exists():
            typer.echo(f"resuming from {partial}", err=True)
        result = rerank(scorer, dataset, split, run, k=k, out=out, progress=True,
                        tag=Path(model).name or "rerank", job=job, **calls)
    typer.echo(f"wrote {out}: {result['query_id'].nunique()} queries, {len(result)} lines")


def register(app: typer.Typer) -> None:
    app.command("rerank")(rerank_cmd)
