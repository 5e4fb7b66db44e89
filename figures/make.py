"""Every figure of a demo run, regenerated from its saved result tables alone (PNG and PDF)."""

from __future__ import annotations

import json
from pathlib import Path

from mice.files import read_table
from mice.masks import InteractionMask


def make_all(run_dir, out_dir) -> list[Path]:
    """Draw whatever the saved results in `run_dir` support into `out_dir`; returns the PNG paths."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for draw in (
        _probe_figures,
        _attribution_figures,
        _sweep_figures,
        _derivation_figures,
        _search_figures,
        _bench_figures,
        _frontier_figures,
    ):
        made.extend(p for p in draw(run_dir, out_dir) if p.suffix == ".png")
    (out_dir / "index.json").write_text(json.dumps(sorted(p.name for p in made), indent=2))
    return made


def _probe_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    probe = run_dir / "probe" / "probe.parquet"
    if not probe.exists():
        return []
    from mice.results import load_examples

    from figures.attention import plot_example, plot_head_grid, plot_layer_heatmaps

    made = plot_layer_heatmaps(probe, out_dir / "attention_paths") + plot_head_grid(probe, out_dir / "attention_heads")
    examples = sorted((run_dir / "probe").glob("*examples*"))
    if examples:
        made += plot_example(load_examples(examples[0]), out_dir / "attention_example")
    return made


def _attribution_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    made = []
    attribution = run_dir / "attribute" / "attribution.parquet"
    if attribution.exists():
        from figures.knockouts import plot_head_sweep, plot_sweep

        table = read_table(attribution)
        made += plot_sweep(table, out_dir / "attribution_heatmap")
        if (table["head"] >= 0).any():
            made += plot_head_sweep(table, out_dir / "attribution_heads")
    check = run_dir / "sweep" / "attribution_check.csv"
    if check.exists():
        from figures.attribution import plot_attribution_check

        made += plot_attribution_check(check, out_dir / "attribution_vs_exact")
        if "exact_delta_margin" in read_table(check).columns:
            made += plot_attribution_check(check, out_dir / "attribution_vs_exact_margin", measure="delta_margin")
    return made


def _sweep_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    sweep = run_dir / "sweep" / "sweep.parquet"
    if not sweep.exists():
        return []
    from figures.knockouts import plot_mask_ablation, plot_sweep

    made = plot_sweep(sweep, out_dir / "knockout_heatmap")
    presets = run_dir / "sweep" / "presets.csv"
    if presets.exists():
        made += plot_mask_ablation(presets, out_dir / "zero_shot_masks")
    return made


def _derivation_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    derive = run_dir / "derive"
    if not (derive / "mask.json").exists():
        return []
    from figures.derivation import plot_derivation
    from figures.masks import plot_mask

    mask = InteractionMask.load(derive / "mask.json")
    made = plot_mask(mask, out_dir / "derived_mask")
    steps = derive / "mask.steps.csv"
    if steps.exists():
        made += plot_derivation(steps, out_dir / "derivation_steps", tolerance=mask.provenance.get("tolerance"))
    return made


def _search_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    folder = run_dir / "search"
    if (folder / "joint.parquet").exists():
        from figures.joint import plot_joint

        tolerance = json.loads((folder / "joint.json").read_text())["config"]["tolerance"]
        made = plot_joint(folder / "joint.parquet", out_dir / "search_joint", tolerance=tolerance)
    elif (folder / "search.parquet").exists():
        from figures.derivation import plot_search

        table = read_table(folder / "search.parquet")
        meta = json.loads((folder / "search.json").read_text())
        metric = meta["config"]["metric"]
        made = []
        for stage in table["stage"].unique():
            made += plot_search(
                table, stage, out_dir / f"search_curve_{stage}", metric=metric, reference=meta["reference"][metric]
            )
    else:
        return []
    derived = folder / "derived.json"
    if derived.exists() and json.loads(derived.read_text()).get("mask"):  # either search's derived mask
        from figures.masks import plot_mask

        made += plot_mask(InteractionMask.load(derived), out_dir / "search_derived_mask")
    return made


def _bench_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    bench = run_dir / "bench" / "bench.csv"
    if not bench.exists():
        return []
    from figures.efficiency import plot_latency, plot_latency_vs_effectiveness

    made = [plot_latency(bench, out_dir / "latency.png")]
    results = run_dir / "evaluate" / "results.csv"
    if results.exists():
        made += plot_latency_vs_effectiveness(read_table(bench), read_table(results), out_dir / "latency_vs_ndcg")
    return made


def _frontier_figures(run_dir: Path, out_dir: Path) -> list[Path]:
    table = run_dir / "frontier" / "frontier.parquet"
    if not table.exists():
        return []
    from figures.frontier import plot_frontier

    return plot_frontier(read_table(table), out_dir / "frontier")
