"""Every figure of a demo run, regenerated from its saved result tables alone (PNG and PDF)."""
from __future__ import annotations

import json
from pathlib import Path


def make_all(run_dir, out_dir) -> list[Path]:
    """Draw whatever the saved results in `run_dir` support into `out_dir`; returns the PNG paths."""
    from mice.files import read_table
    from mice.masks import InteractionMask

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def add(paths):
        made.extend(p for p in paths if p.suffix == ".png")

    probe = run_dir / "probe" / "probe.parquet"
    if probe.exists():
        from mice.results import load_examples

        from figures.attention import plot_example, plot_head_grid, plot_layer_heatmaps

        add(plot_layer_heatmaps(probe, out_dir / "attention_paths"))
        add(plot_head_grid(probe, out_dir / "attention_heads"))
        examples = sorted((run_dir / "probe").glob("*examples*"))
        if examples:
            add(plot_example(load_examples(examples[0]), out_dir / "attention_example"))
    attribution = run_dir / "attribute" / "attribution.parquet"
    if attribution.exists():
        from figures.knockouts import plot_head_sweep, plot_sweep

        table = read_table(attribution)
        add(plot_sweep(table, out_dir / "attribution_heatmap"))
        if (table["head"] >= 0).any():
            add(plot_head_sweep(table, out_dir / "attribution_heads"))
    check = run_dir / "sweep" / "attribution_check.csv"
    if check.exists():
        from figures.attribution import plot_attribution_check

        add(plot_attribution_check(check, out_dir / "attribution_vs_exact"))
        if "exact_delta_margin" in read_table(check).columns:
            add(plot_attribution_check(check, out_dir / "attribution_vs_exact_margin", measure="delta_margin"))
    sweep = run_dir / "sweep" / "sweep.parquet"
    if sweep.exists():
        from figures.knockouts import plot_mask_ablation, plot_sweep

        add(plot_sweep(sweep, out_dir / "knockout_heatmap"))
        presets = run_dir / "sweep" / "presets.csv"
        if presets.exists():
            add(plot_mask_ablation(presets, out_dir / "zero_shot_masks"))
    derive = run_dir / "derive"
    if (derive / "mask.json").exists():
        from figures.derivation import plot_derivation
        from figures.masks import plot_mask

        add(plot_mask(InteractionMask.load(derive / "mask.json"), out_dir / "derived_mask"))
        steps = derive / "mask.steps.csv"
        if steps.exists():
            tol = InteractionMask.load(derive / "mask.json").provenance.get("tolerance")
            add(plot_derivation(steps, out_dir / "derivation_steps", tolerance=tol))
    search = run_dir / "search" / "search.parquet"
    if search.exists():
        from figures.derivation import plot_search

        table = read_table(search)
        meta = json.loads((run_dir / "search" / "search.json").read_text())
        metric = meta["config"]["metric"]
        for stage in table["stage"].unique():
            add(plot_search(table, stage, out_dir / f"search_curve_{stage}", metric=metric,
                            reference=meta["reference"][metric]))
        derived = run_dir / "search" / "derived.json"
        mask = InteractionMask.load(derived) if json.loads(derived.read_text()).get("mask") else None
        if mask is not None:
            from figures.masks import plot_mask

            add(plot_mask(mask, out_dir / "search_derived_mask"))
    bench = run_dir / "bench" / "bench.csv"
    if bench.exists():
        from figures.efficiency import plot_latency

        plot_latency(bench, out_dir / "latency.png")
        made.append(out_dir / "latency.png")
        results = run_dir / "evaluate" / "results.csv"
        if results.exists():
            from figures.efficiency import plot_latency_vs_effectiveness

            add(plot_latency_vs_effectiveness(read_table(bench), read_table(results), out_dir / "latency_vs_ndcg"))
    (out_dir / "index.json").write_text(json.dumps(sorted(p.name for p in made), indent=2))
    return made
