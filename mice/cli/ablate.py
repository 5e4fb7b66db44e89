"""`mice ablate …` — knockout sweeps, zero-shot mask ablations, mask derivation, merge-layer and layer-drop
searches. Path convention: a->b = tokens of a attend to tokens of b."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mice.errors import MiceError
from mice.logs import run_log

ablate_app = typer.Typer(
    help="Knock attention paths out, measure the ranking, derive masks (a->b: tokens of a attend to tokens of b).",
    no_args_is_help=True,
)

_MODEL = typer.Option(..., "--model", "-m", help="Cross-encoder folder, hub name or packaged:minilm")
_DATASET = typer.Option(..., "--dataset", "-d", help="Dataset spec (BEIR folder, embedded:docs, ...)")
_RUN = typer.Option(..., "--run", "-r", help="First-stage run file (TREC/parquet/CSV) or 'bm25'")


def _top(table, metric: str, n: int = 10) -> str:
    t = table[table["status"] != "skipped"] if "status" in table else table
    col = f"delta_{metric}"
    if col not in t:
        return ""
    cols = [c for c in ("layer", "head", "path", "mask", col, "p_value", "mean_abs_dscore", "kendall_tau") if c in t]
    return t.sort_values(col).head(n)[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}")


def _say_resuming(what: str):
    """The line a resumed job prints: called by the job only after the lock and the identity checks."""
    return lambda partial, n: typer.echo(f"resuming from {partial} ({n} {what} done)", err=True)


_LAYERS = typer.Option(None, "--layers", help="Layers: 0:6 (half-open range), 1,3 or all (default)")


@ablate_app.command("sweep")
def sweep_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    split: str = typer.Option("test", "--split"),
    run: str = _RUN,
    k: int = typer.Option(20, "--k", help="Top-k candidates per query"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Table (.parquet or .csv); per-query values and metadata are written beside it"
    ),
    paths: Optional[str] = typer.Option(None, "--paths", help="e.g. q->d,d->q (default: all 25 paths)"),
    layers: Optional[str] = _LAYERS,
    heads: bool = typer.Option(False, "--heads", help="Also knock out each head separately"),
    head_list: Optional[str] = typer.Option(None, "--head-list", help="Only these heads (e.g. 0,3)"),
    mode: str = typer.Option("renorm", "--mode", help="renorm (-inf before softmax) or zero (after)"),
    base: Optional[str] = typer.Option(None, "--base", help="Knock out on top of this mask (e.g. mask2)"),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Sweep N queries (see --sample)"),
    sample: str = typer.Option("first", "--sample", help="Which N queries: first (by id) or random"),
    metrics: str = typer.Option("nDCG@10,RR@10", "--metrics"),
    batch_size: int = typer.Option(16, "--batch-size"),
    strategy: str = typer.Option("auto", "--strategy", help="auto, fast, replicate or naive"),
    restart: bool = typer.Option(False, "--restart", help="Ignore partial results of an earlier run"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
) -> None:
    """Knock out each path in each layer (and head); one row per knockout. Resumes an interrupted sweep."""
    from ablations.sweep import sweep
    from probes.attention import hooked_model
    from probes.candidates import as_candidates

    from mice.cli.data import plain_warnings
    from mice.errors import DataError
    from mice.files import check_output

    check_output(out)
    try:
        hl = [int(h) for h in head_list.split(",")] if head_list else None
    except ValueError:
        raise DataError(f"--head-list {head_list!r}: expected head numbers separated by commas, e.g. 0,3") from None
    from mice.distributed import rank_lock, world

    with plain_warnings(), rank_lock(out):
        scorer = hooked_model(model, max_length=max_length)
        data = as_candidates(dataset, split, run, k, max_queries, sample)
        result = sweep(
            scorer,
            data,
            split,
            run,
            k,
            paths=paths,
            layers=layers,
            heads=hl or heads,
            mode=mode,
            base=base,
            max_queries=max_queries,
            metrics=metrics,
            batch_size=batch_size,
            strategy=strategy,
            out=out,
            restart=restart,
            show_progress_bar=True,
            meta={"model_spec": model, "max_length": max_length},
            on_resume=_say_resuming("knockouts"),
        )
    if not world().main:  # one report per job
        return
    t = result.table
    skipped = int((t["status"] == "skipped").sum())
    typer.echo(
        f"wrote {out}: {len(t)} knockouts ({skipped} skipped) in {result.meta['elapsed_s']:.1f}s; clean "
        + ", ".join(f"{m} {v:.4f}" for m, v in result.meta["clean"].items())
    )
    typer.echo(_top(t, result.meta["metrics"][0]))


@ablate_app.command("attribute")
def attribute_cmd(
    model: str = _MODEL,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Table (.csv or .parquet); per-query values and metadata are written beside it"
    ),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="query<TAB>doc lines (instead of --dataset/--run; each pair is its own query)"
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset spec"),
    split: str = typer.Option("dev", "--split"),
    run: Optional[str] = typer.Option(None, "--run", "-r", help="First-stage run file or 'bm25'"),
    k: int = typer.Option(20, "--k", min=1, help="Top-k candidates per query"),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1),
    sample: str = typer.Option("first", "--sample", help="Which N queries: first (by id) or random"),
    paths: Optional[str] = typer.Option(None, "--paths", help="e.g. q->d,d->q (default: all 25)"),
    layers: Optional[str] = _LAYERS,
    heads: bool = typer.Option(True, "--heads/--no-heads", help="Also every head separately"),
    modes: str = typer.Option("renorm,zero", "--modes", help="renorm, zero or both"),
    base: Optional[str] = typer.Option(None, "--base", help="Knock out on top of this mask"),
    ig_steps: int = typer.Option(
        0,
        "--ig-steps",
        min=0,
        help="Integrated-gradient steps per (layer, path); 0 = one forward + one backward per batch",
    ),
    measure: Optional[str] = typer.Option(
        None,
        "--measure",
        help="Column that ranks the knockouts (default delta_margin with judgements, else abs_dscore)",
    ),
    check: int = typer.Option(
        0,
        "--check",
        min=0,
        help="Re-check the top N knockouts exactly and "
        "print Spearman rho of estimate vs exact over the layer x path cells",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8),
    log: Optional[Path] = typer.Option(None, "--log", help="Also log progress to this file"),
) -> None:
    """Estimate every (layer, head, path) knockout at once by attribution patching (a->b: a attends b)."""
    from ablations.attribution import attribute
    from probes.attention import hooked_model

    from mice.errors import DataError
    from mice.cli.data import plain_warnings

    with run_log(log, "mice.ablations"):
        if pairs is None and (dataset is None or run is None):
            raise DataError("give --pairs FILE, or --dataset with --run (and --split, --k)")
        if pairs is not None and dataset is not None:
            raise DataError("give either --pairs or --dataset/--run, not both")
        from mice.distributed import rank_lock, world

        with plain_warnings(), rank_lock(out):
            scorer = hooked_model(model, max_length=max_length)
            cands = _attribution_candidates(pairs, dataset, split, run, k, max_queries, sample)
            res = attribute(
                scorer,
                cands,
                heads=heads,
                paths=paths,
                layers=layers,
                modes=[m.strip() for m in modes.split(",") if m.strip()],
                base=base,
                steps=ig_steps,
                measure=measure,
                batch_size=batch_size,
                show_progress_bar=True,
                out=out,
                meta={"model_spec": model, "max_length": max_length},
                on_resume=_say_resuming("units of work"),
            )
            if not world().main:  # one report (and one exact check) per job
                return
            _report_attribution(res, out)
            if check:
                _check_attribution(scorer, cands, res, out, check)


def _attribution_candidates(pairs, dataset, split, run, k, max_queries, sample):
    """The candidates attributed: each pair of `--pairs` its own query, else the top k of `--run`."""
    from probes.candidates import as_candidates

    from mice.rank.pairs import read_pairs

    return (
        as_candidates(read_pairs(pairs))
        if pairs is not None
        else as_candidates(dataset, split, run, k, max_queries, sample)
    )


def _report_attribution(res, out: Path) -> None:
    """What `ablate attribute` prints: the counts, then the ten top-ranked knockouts."""
    t = res.table
    typer.echo(
        f"wrote {out}: {len(t)} rows ({int((t['status'] == 'structural').sum())} structural, "
        f"{int((t['status'] == 'skipped').sum())} skipped) over {res.meta['n_pairs']} pairs in "
        f"{res.meta['elapsed_s']:.1f}s; ranked by {res.meta['measure']}"
    )
    cols = [
        c
        for c in (
            "layer",
            "head",
            "path",
            "mode",
            "estimate",
            res.meta["measure"],
            f"{res.meta['measure']}_ci_low",
            f"{res.meta['measure']}_ci_high",
        )
        if c in t
    ]
    typer.echo(t.sort_values("rank").head(10)[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


def _check_attribution(scorer, cands, res, out: Path, check: int) -> None:
    """`--check N`: re-check the layer x path cells and the top N knockouts exactly, write and summarise both."""
    from ablations.attribution import check_exact, spearman
    from probes.attention import sidecar

    mode = res.meta["modes"][0]
    chk = check_exact(scorer, cands, res, mode)
    top = check_exact(scorer, cands, res, mode, top=check, layer_level=False)
    chk = chk.assign(kind="layer x path")
    from mice.files import write_table

    write_table(pd_concat([chk, top.assign(kind=f"top {check}")]), sidecar(out, f".check{out.suffix}"))
    margin = f", delta_margin {spearman(chk, 'delta_margin'):.3f}" if "exact_delta_margin" in chk else ""
    typer.echo(
        f"exact check ({mode}): Spearman rho over {len(chk)} layer x path cells: mean score change "
        f"{spearman(chk):.3f}, mean |score change| {spearman(chk, 'abs'):.3f}{margin}"
        f"; top {check} re-checked in {sidecar(out, '.check' + out.suffix)}"
    )


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


@ablate_app.command("presets")
def presets_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    split: str = typer.Option("test", "--split"),
    run: str = _RUN,
    k: int = typer.Option(20, "--k"),
    out: Path = typer.Option(..., "--out", "-o", help="Table (.parquet or .csv)"),
    presets: str = typer.Option(
        "mask0,mask1,mask2,mask3,prettr,sparse_ce",
        "--presets",
        help="Mask specs (mask3:k=2, prettr(1), file.json), comma-separated",
    ),
    mode: str = typer.Option("renorm", "--mode"),
    max_queries: Optional[int] = typer.Option(None, "--max-queries"),
    metrics: str = typer.Option("nDCG@10,RR@10", "--metrics"),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
) -> None:
    """Apply whole masks zero-shot (cumulative ablations) and compare each with the clean model."""
    from ablations.sweep import ablate_masks
    from probes.attention import hooked_model

    from mice.cli.data import plain_warnings

    from mice.distributed import rank_lock, world

    with plain_warnings(), rank_lock(out):
        scorer = hooked_model(model, max_length=max_length)
        result = ablate_masks(
            scorer,
            dataset,
            split,
            run,
            k,
            masks=presets,
            mode=mode,
            max_queries=max_queries,
            metrics=metrics,
            batch_size=batch_size,
            out=out,
            show_progress_bar=True,
        )
    if not world().main:
        return
    typer.echo(
        f"wrote {out}: {len(result.table)} masks; clean "
        + ", ".join(f"{m} {v:.4f}" for m, v in result.meta["clean"].items())
    )
    typer.echo(_top(result.table, result.meta["metrics"][0], n=len(result.table)))


@ablate_app.command("derive")
def derive_cmd(
    sweep: Path = typer.Option(
        ...,
        "--sweep",
        "-s",
        help="Evidence: a sweep table (`mice ablate sweep`) or an attribution table (`mice ablate attribute`)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Mask JSON to write (mice-mask/1)"),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Largest relative loss of the metric"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Default: the sweep's first metric"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: from the sweep metadata"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    split: Optional[str] = typer.Option(None, "--split"),
    run: Optional[str] = typer.Option(None, "--run", "-r"),
    k: Optional[int] = typer.Option(None, "--k"),
    check_split: Optional[str] = typer.Option(
        None, "--check-split", help="Held-out queries from this split (default: the sweep's, minus the swept queries)"
    ),
    check_run: Optional[str] = typer.Option(None, "--check-run", help="Run for --check-split"),
    check_queries: int = typer.Option(100, "--check-queries", min=1, help="At most N held-out queries"),
    patience: int = typer.Option(0, "--patience", help="Go on past N consecutive rejected paths"),
    max_rechecks: int = typer.Option(24, "--max-rechecks", min=0, help="At most N exact re-checks"),
    measure: Optional[str] = typer.Option(
        None, "--measure", help="Rank candidates by this column (default: the evidence's rank_by, else delta_margin)"
    ),
    mode: Optional[str] = typer.Option(None, "--mode", help="Knockout mode (default renorm if present)"),
    structural: bool = typer.Option(
        True, "--structural/--no-structural", help="Remove cells that cannot change the score without re-checks"
    ),
    name: str = typer.Option("derived", "--name", help="Mask name"),
    batch_size: int = typer.Option(16, "--batch-size"),
    report: bool = typer.Option(True, "--report/--no-report", help="Write <stem>.report.md + figure"),
    log: Optional[Path] = typer.Option(
        None, "--log", help="Also log re-check progress (done/total, time left) to this file"
    ),
) -> None:
    """Greedily remove the cheapest paths, re-checking the cumulative mask on held-out queries."""
    from ablations.derive import derive_mask

    from mice.cli.data import plain_warnings

    from ablations.derive import _evidence_of

    with run_log(log, "mice.ablations"):
        _, meta, _ = _evidence_of(sweep)
        loaded = sweep
        model = model or meta.get("model_spec")
        with plain_warnings():
            d = derive_mask(
                loaded,
                model=model,
                data=dataset,
                split=split,
                run=run,
                k=k,
                tolerance=tolerance,
                metric=metric,
                check_split=check_split,
                check_run=check_run,
                check_queries=check_queries,
                patience=patience,
                max_steps=max_rechecks,
                batch_size=batch_size,
                name=name,
                show_progress_bar=True,
                measure=measure,
                mode=mode,
                structural=structural,
            )
        d.meta["derived_from"] = str(sweep)
        d.mask.provenance["derived_from"] = str(sweep)
        d.save(out, report=report, figure=_derivation_figure(d, out) if report else None)
        _report_derivation(d, out, tolerance, report)


def _report_derivation(d, out: Path, tolerance: float, report: bool) -> None:
    """What `ablate derive` prints: what was removed, the held-out metric before and after, the mask."""
    from probes.attention import sidecar

    m = d.meta
    typer.echo(
        f"wrote {out}: removed {len(m['removed'])} (layer, path) cells after {m['re_checks']} exact "
        f"re-checks, {len(m['structural'])} structural ones without; held-out {m['metric']} "
        f"{m['reference']:.4f} -> {m['final']:.4f} (tolerance {tolerance}); steps in "
        f"{sidecar(out, '.steps.csv')}" + (f", report {sidecar(out, '.report.md')}" if report else "")
    )
    typer.echo(d.mask.render())


def _derivation_figure(d, out: Path) -> Path:
    """The steps figure beside the mask (`<stem>.steps.png` and `.pdf`), for the derivation's report."""
    from figures.derivation import plot_derivation
    from mice.results import sidecar

    m = d.meta
    paths = plot_derivation(
        d.steps,
        sidecar(out, ".steps.png"),
        metric=m.get("metric", "metric"),
        tolerance=m.get("tolerance"),
        reference=m.get("reference"),
    )
    return paths[0]


@ablate_app.command("merge-layer")
def merge_layer_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    split: str = typer.Option("test", "--split"),
    run: str = _RUN,
    k: int = typer.Option(20, "--k"),
    out: Path = typer.Option(..., "--out", "-o", help="Table k vs metric (.csv or .parquet)"),
    base: str = typer.Option("mask2", "--base", help="Mask to add q->d blocking to"),
    tolerance: float = typer.Option(0.01, "--tolerance"),
    metric: str = typer.Option("nDCG@10", "--metric"),
    reference: str = typer.Option("base", "--reference", help="base (k=0) or full (no mask)"),
    mode: str = typer.Option("renorm", "--mode"),
    max_queries: Optional[int] = typer.Option(None, "--max-queries"),
    mask_out: Optional[Path] = typer.Option(None, "--mask-out", help="Save the chosen mask here"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Draw metric vs k (PNG stem)"),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
) -> None:
    """Find the largest k such that blocking q->d in layers [0, k) on top of BASE stays within tolerance."""
    from ablations.derive import merge_layer_search
    from mice.files import write_table
    from probes.attention import hooked_model

    from mice.cli.data import plain_warnings

    with plain_warnings():
        scorer = hooked_model(model, max_length=max_length)
        res = merge_layer_search(
            scorer,
            dataset,
            split,
            run,
            k,
            base=base,
            tolerance=tolerance,
            metric=metric,
            reference=reference,
            mode=mode,
            max_queries=max_queries,
            batch_size=batch_size,
        )
    write_table(res.table, out)
    if mask_out is not None:
        res.mask.save(mask_out)
    if figure is not None:
        from figures.derivation import plot_merge_layer

        plot_merge_layer(out, figure, metric=metric.lower())
    m = metric.lower()
    typer.echo(
        res.table[["k", "mask", m, "rel_loss", "within_tolerance"]].to_string(
            index=False, float_format=lambda x: f"{x:.4f}"
        )
    )
    typer.echo(f"chosen k = {res.chosen_k} ({res.mask.name}); wrote {out}" + (f", {mask_out}" if mask_out else ""))


@ablate_app.command("layer-drop")
def layer_drop_cmd(
    results: Path = typer.Option(
        ..., "--results", help="Table: interaction_layers, contextual_layers, metric, value [, reference]"
    ),
    metric: str = typer.Option(..., "--metric"),
    tolerance: float = typer.Option(0.01, "--tolerance"),
    reference: Optional[float] = typer.Option(
        None, "--reference", help="Default: per-a best value (or the table's reference column)"
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure stem (PNG + PDF)"),
    table_out: Optional[Path] = typer.Option(None, "--table-out", help="Write the choice table"),
) -> None:
    """Smallest number of MICE interaction layers within tolerance, from evaluation results of trained variants."""
    from ablations.layer_drop import choose_interaction_layers, load_layer_drop
    from mice.files import write_table

    table = load_layer_drop(results)
    choice = choose_interaction_layers(table, metric, tolerance, reference)
    if table_out is not None:
        write_table(choice, table_out)
    if out is not None:
        from figures.derivation import plot_layer_drop

        plot_layer_drop(table, out, metric=metric)
    typer.echo(choice.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def _ints(text: Optional[str], flag: str) -> Optional[tuple]:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        from mice.errors import MiceError

        raise MiceError(f"{flag} {text!r}: expected integers separated by commas") from None


def _count_or_all(text: str, flag: str) -> Optional[int]:
    if text.strip() == "all":
        return None
    if not text.strip().isdigit():
        from mice.errors import MiceError

        raise MiceError(f"{flag} {text!r}: expected a number of queries or all")
    return int(text)


_SEARCH_SAMPLE = typer.Option(
    "first", "--sample", help="first: the first N by id; random: N at random (ids often sort by topic)"
)
_SEARCH_PRESET = typer.Option(
    "quick",
    "--preset",
    help="Training preset of every candidate (masked / mice recipe: Margin-MSE from the cross-encoder)",
)
_SEARCH_MAX_RUNGS = typer.Option(
    None, "--max-rungs", help="Stop halving after this many rungs (whoever is left is a finalist)"
)
_SEARCH_SEEDED_FROM = typer.Option(
    None, "--seeded-from", help="Promote on every seed from this rung on (default: the finalists only)"
)
_SEARCH_TOLERANCE = typer.Option(
    0.02, "--tolerance", help="Largest relative dev loss against the best finalist or the cross-encoder"
)
_SEARCH_PROMOTE = typer.Option(
    "efficient",
    "--promote",
    help="Who goes on to the next rung: "
    "efficient (the best, then those within tolerance of it, most "
    "efficient first) or best (by effectiveness only)",
)
_SEARCH_CUT = typer.Option(
    "halving",
    "--cut",
    help="Who is cut at a rung: halving (whoever is not "
    "promoted) or significant (only those a paired test tells apart from the "
    "rung's best; the others go on too)",
)
_SEARCH_STAGES = typer.Option(
    "mask,layers", "--stages", help="mask (mask0..mask3(k)), layers (MICE-ℓa+b for each b), or both"
)
_SEARCH_MERGE_LAYERS = typer.Option(None, "--merge-layers", help="k of mask3(k) (default 1..L-1), e.g. 1,2,3")
_SEARCH_EXTRA_MASKS = typer.Option(
    None, "--extra-mask", help="Another candidate mask (.json; e.g. `ablate derive`'s); repeatable"
)
_SEARCH_CONTEXTUAL_LAYERS = typer.Option(None, "--contextual-layers", "-a", help="a, when only the layer stage runs")
_SEARCH_CLS_CROSS = typer.Option(
    "none",
    "--cls-cross",
    help="MICE's [CLS] cross-attention modes the layer stage tries for each b: none, uniform or none,uniform",
)
_SEARCH_EQUAL_FINALS = typer.Option(
    True,
    "--equal-finals/--own-finals",
    help="Both stages' "
    "finalists train the same steps (the longest final rung either "
    "stage reaches), or each stage's own last rung",
)
_SEARCH_SET = typer.Option(None, "--set", help="Training setting of every candidate: key=value (repeatable)")


@ablate_app.command("search")
def search_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    out: Path = typer.Option(..., "--out", "-o", help="Folder: candidates/, search.parquet, derived.json"),
    split: str = typer.Option("dev", "--split", help="Split the candidates are scored on"),
    run: str = typer.Option("bm25", "--run", "-r", help="First-stage run of that split, or 'bm25'"),
    k: int = typer.Option(10, "--k", help="Candidates per dev query"),
    queries: int = typer.Option(50, "--queries", help="N dev queries (see --sample)"),
    sample: str = _SEARCH_SAMPLE,
    preset: str = _SEARCH_PRESET,
    steps: int = typer.Option(10, "--steps", help="First rung's steps; rung r trains steps x eta^r"),
    eta: int = typer.Option(2, "--eta", help="Keep the best 1/eta of each rung"),
    finalists: int = typer.Option(2, "--finalists", help="Halve until this many remain"),
    max_rungs: Optional[int] = _SEARCH_MAX_RUNGS,
    seeds: str = typer.Option("0,1", "--seeds", help="Seeds of the finalists (the first: every rung)"),
    seeded_from: Optional[int] = _SEARCH_SEEDED_FROM,
    tolerance: float = _SEARCH_TOLERANCE,
    metric: str = typer.Option("ndcg@10", "--metric", help="ndcg@10 or rr@10"),
    promote: str = _SEARCH_PROMOTE,
    cut: str = _SEARCH_CUT,
    cut_alpha: float = typer.Option(0.05, "--cut-alpha", help="Level of --cut significant's test"),
    stages: str = _SEARCH_STAGES,
    merge_layers: Optional[str] = _SEARCH_MERGE_LAYERS,
    extra_masks: Optional[List[Path]] = _SEARCH_EXTRA_MASKS,
    contextual_layers: Optional[int] = _SEARCH_CONTEXTUAL_LAYERS,
    max_interaction_layers: Optional[int] = typer.Option(None, "--max-interaction-layers"),
    cls_cross: str = _SEARCH_CLS_CROSS,
    equal_finals: bool = _SEARCH_EQUAL_FINALS,
    set_: Optional[List[str]] = _SEARCH_SET,
    batch_size: int = typer.Option(32, "--batch-size", help="Scoring batch size"),
) -> None:
    """Trained search for the MICE configuration: short distillation fine-tunes under each candidate, successive
    halving in steps, >= 2 seeds for the finalists; writes derived.json (mice-config/1) for `mice train --config`.
    Cached per candidate by content: rerun, resume or widen it in the same --out."""
    from ablations.search import SearchConfig, search

    from mice.cli.data import plain_warnings
    from mice.cli.train import key_values

    train = key_values(set_)
    cfg = SearchConfig(
        model=model,
        dataset=dataset,
        split=split,
        run=run,
        k=k,
        queries=queries,
        sample=sample,
        train_preset=preset,
        train=train,
        steps=steps,
        eta=eta,
        finalists=finalists,
        max_rungs=max_rungs,
        seeds=_ints(seeds, "--seeds"),
        seeded_from=seeded_from,
        tolerance=tolerance,
        metric=metric.lower(),
        promote=promote,
        cut=cut,
        cut_alpha=cut_alpha,
        stages=tuple(x.strip() for x in stages.split(",") if x.strip()),
        merge_layers=_ints(merge_layers, "--merge-layers"),
        extra_masks=tuple(str(p) for p in extra_masks or ()),
        contextual_layers=contextual_layers,
        max_interaction_layers=max_interaction_layers,
        cls_cross=tuple(x.strip() for x in cls_cross.split(",") if x.strip()),
        equal_finals=equal_finals,
        batch_size=batch_size,
    )
    with plain_warnings():
        res = search(cfg, out, log=typer.echo)
    _report_search(res, cfg, out)


def _report_search(res, cfg, out: Path) -> None:
    """What `ablate search` prints: every trained candidate's row, the decision and the steps it took."""
    m = cfg.metric
    from ablations.search import shown_columns

    cols = shown_columns(m)
    t = res.table
    typer.echo(t[t["trained"]][[c for c in cols if c in t]].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    typer.echo(f"decision: {res.config.decision}; {res.meta['why']}")
    typer.echo(
        f"{res.meta['steps_total']} training steps in all ({res.meta['steps_trained_this_run']} this run, "
        f"{res.meta['elapsed_s']:.0f} s); wrote {out / 'derived.json'}, {out / 'search.parquet'}"
    )


def _pairs(text: str, flag: str) -> tuple:
    """`name=spec,name=spec` as ((name, spec), ...)."""
    out = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, spec = part.partition("=")
        if not sep or not name or not spec:
            raise MiceError(f"{flag}: expected name=dataset[,name=dataset...], got {part!r}")
        out.append((name, spec))
    return tuple(out)


@ablate_app.command("frontier")
def frontier_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    out: Path = typer.Option(..., "--out", "-o", help="Folder: frontier.parquet, frontier.json"),
    tests: str = typer.Option(
        "in=embedded:docs,ood=embedded:docs-ood,meta=embedded:meta",
        "--tests",
        help="Test sets, domain=dataset (every query of its test split)",
    ),
    test_k: int = typer.Option(20, "--test-k", help="Candidates re-ranked per test query"),
    fidelity: str = typer.Option(
        "embedded:docs-ood@train",
        "--fidelity",
        help="Unlabelled query sets (dataset@split, comma-separated) beside the dev split",
    ),
    fidelity_queries: int = typer.Option(1000, "--fidelity-queries"),
    steps: int = typer.Option(300, "--steps", help="Training steps of every configuration"),
    seeds: str = typer.Option("0,1,2", "--seeds"),
    preset: str = typer.Option("quick", "--preset", help="Training preset of every configuration"),
    late: bool = typer.Option(True, "--late-interaction/--no-late-interaction"),
    max_runs: Optional[int] = typer.Option(
        None, "--max-runs", help="Stop after this many new (configuration, seed) runs; rerun to go on"
    ),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Training setting: key=value"),
    batch_size: int = typer.Option(64, "--batch-size", help="Scoring batch size"),
) -> None:
    """The MICE frontier: every MICE-ℓa+b, Baseline ft and late interaction trained at one budget under every
    seed, on every test query; the ground truth a search is scored against. Cached and resumable; start the
    same command in more processes (or machines sharing --out) to train runs in parallel."""
    from ablations.frontier import COLUMNS, FrontierConfig, frontier
    from ablations.regret import validity_text

    from mice.cli.train import key_values

    cfg = FrontierConfig(
        model=model,
        dataset=dataset,
        tests=_pairs(tests, "--tests"),
        test_k=test_k,
        fidelity=tuple(x.strip() for x in fidelity.split(",") if x.strip()),
        fidelity_queries=fidelity_queries,
        steps=steps,
        seeds=_ints(seeds, "--seeds"),
        train_preset=preset,
        train=key_values(set_),
        late_interaction=late,
        batch_size=batch_size,
    )
    table, meta = frontier(cfg, out, log=typer.echo, max_runs=max_runs)
    if len(table):
        cols = [c for c in COLUMNS if c in table]
        typer.echo(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for v in meta["fidelity_validity"]:
        typer.echo(
            f"fidelity vs test nDCG@10, {v['domain']}, {v['configurations']} configurations (n={v['n']}): "
            f"Spearman {validity_text(v)}"
        )
    typer.echo(
        f"{meta['runs_finished']} of {meta['runs_total']} (configuration, seed) runs finished; "
        f"wrote {out / 'frontier.parquet'}"
    )


_CONFIRM_EXTRA = typer.Option(
    "",
    "--confirm-extra",
    help="Further labelled query sets (dataset@split, comma-separated) that confirm beside the held-out dev "
    "queries; no candidate trains on them, and the screening pool's queries are left out",
)
_CONFIRM_EXTRA_QUERIES = typer.Option(
    None, "--confirm-extra-queries", help="Queries taken from --confirm-extra (default: every one)"
)


def _specs(text: str) -> tuple[str, ...]:
    """A comma-separated list of dataset@split specs."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@ablate_app.command("joint")
def joint_cmd(
    model: str = _MODEL,
    dataset: str = _DATASET,
    out: Path = typer.Option(..., "--out", "-o", help="Folder: joint.parquet, joint.json, derived.json"),
    fidelity: str = typer.Option(
        "",
        "--fidelity",
        help="Unlabelled query sets (dataset@split, comma-separated) for the screening pool beside the dev split",
    ),
    fidelity_queries: int = typer.Option(1000, "--fidelity-queries", help="Screening pool size"),
    confirm_queries: str = typer.Option(
        "150", "--confirm-queries", help="Held-out labelled dev queries that confirm the choice (a number or all)"
    ),
    confirm_extra: str = _CONFIRM_EXTRA,
    confirm_extra_queries: Optional[int] = _CONFIRM_EXTRA_QUERIES,
    rung_queries: Optional[int] = typer.Option(
        None, "--rung-queries", help="Screening queries of the rungs before the last (default: the whole pool)"
    ),
    confirm_metric: str = typer.Option("ndcg@10", "--confirm-metric", help="ndcg@10, rr@10 or fidelity"),
    preset: str = typer.Option("quick", "--preset"),
    steps: int = typer.Option(20, "--steps", help="First rung's steps; rung r trains steps x eta^r"),
    eta: int = typer.Option(3, "--eta"),
    finalists: int = typer.Option(2, "--finalists"),
    max_rungs: Optional[int] = _SEARCH_MAX_RUNGS,
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds of the finalists and the control"),
    tolerance: float = typer.Option(
        0.05, "--tolerance", help="Largest relative fidelity loss (one-sided 95% upper bound) against Baseline ft"
    ),
    draw: int = typer.Option(0, "--draw", help="Which draw of held-out queries, screening sample and seeds"),
    validate: Optional[Path] = typer.Option(
        None, "--validate", help="A frontier folder: run --replicates draws and score every pick against it"
    ),
    replicates: int = typer.Option(5, "--replicates"),
    keep_checkpoints: bool = typer.Option(
        False, "--keep-checkpoints", help="Keep every run's optimizer state and best/ (default: weights only)"
    ),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Training setting: key=value"),
) -> None:
    """Joint search over MICE-ℓa+b: successive halving on label-free fidelity, non-inferiority against Baseline
    ft, confirmation on held-out dev queries; writes derived.json. --validate scores it against a frontier."""
    from ablations.joint import JointConfig, joint_search, validate_search

    from mice.cli.train import key_values

    cfg = JointConfig(
        model=model,
        dataset=dataset,
        fidelity=_specs(fidelity),
        fidelity_queries=fidelity_queries,
        confirm_queries=_count_or_all(confirm_queries, "--confirm-queries"),
        confirm_extra=_specs(confirm_extra),
        confirm_extra_queries=confirm_extra_queries,
        rung_queries=rung_queries,
        confirm_metric=confirm_metric,
        train_preset=preset,
        train=key_values(set_),
        steps=steps,
        eta=eta,
        finalists=finalists,
        max_rungs=max_rungs,
        seeds=_ints(seeds, "--seeds"),
        tolerance=tolerance,
        draw=draw,
        keep_checkpoints=keep_checkpoints,
    )
    if validate is not None:
        picks, summary = validate_search(cfg, validate, out, replicates=replicates, log=typer.echo)
        typer.echo(picks.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        typer.echo(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        return
    table, meta, derived = joint_search(cfg, out, log=typer.echo)
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    typer.echo(f"decision: {derived.decision}; {derived.provenance['why']}")
    typer.echo(
        f"{meta['steps_total']} training steps; CI width of the relative loss {meta['ci_width']:.3f} "
        f"against tolerance {tolerance}; wrote {out / 'derived.json'}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
