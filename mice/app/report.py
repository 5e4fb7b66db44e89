"""`report.md` for a demo run, written only from the artefacts the stages saved (tables, masks, figures), and
`report.html` beside it: the same text, tables and figures as one self-contained page with the interactive
views (`mice.viz`) embedded."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from mice.files import read_table, write_text_atomic

CONVENTION = "Path convention: `a->b` means tokens of group a attend to tokens of group b (information flows b → a)."


_MD_ACTIVE = re.compile(r"([\\`*_\[\]!|<&~])")


def md_cell(value) -> str:
    """A table cell's text, inert in Markdown and HTML: every character that could open a link, an image, code,
    emphasis, a tag or an entity, or end the cell, is backslash-escaped; line breaks become spaces. A table read
    from disk (a copied or edited one included) can then only ever show its text."""
    return _MD_ACTIVE.sub(r"\\\1", " ".join(str(value).splitlines()))


def _md(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A small markdown table without optional dependencies; every string cell escaped (`md_cell`)."""
    cols = list(df.columns)

    def fmt(v):
        if v is pd.NA or v is None:
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return md_cell(v)

    lines = ["| " + " | ".join(map(md_cell, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def results_table(results: pd.DataFrame, domain: str, alpha: float = 0.05, queries: str | None = None) -> pd.DataFrame:
    """Runs x measures with significance markers against BM25 (Holm-corrected: † t-test, ‡ randomisation)."""
    r = results[results["domain"] == domain]
    if queries is not None and "queries" in r:
        r = r[r["queries"] == queries]

    def cell(row) -> str:
        mark = ""
        if pd.notna(row.p_ttest_holm) and row.p_ttest_holm < alpha:
            mark += "†"
        if pd.notna(row.p_randomization_holm) and row.p_randomization_holm < alpha:
            mark += "‡"
        return f"{row.value:.4f}{mark}"

    wide = r.assign(cell=[cell(x) for x in r.itertuples()]).pivot(index="run", columns="measure", values="cell")
    order = list(dict.fromkeys(r["run"]))
    return wide.loc[order].reset_index()


def _attempts_note(timings: pd.DataFrame) -> str:
    """Say which stages took more than one run (their seconds add up every attempt's). `attempts`: Int64."""
    if "attempts" not in timings:
        return ""
    attempts = timings["attempts"]
    note = ""
    several = timings[attempts.fillna(1) > 1]
    if len(several):
        names = ", ".join(f"{r.stage} ({int(r.attempts)})" for r in several.itertuples())
        note += f" Stages resumed after an interruption count the time of every attempt: {names}."
    if attempts.isna().any():
        note += (
            " A blank `attempts` is a stage recorded before stages counted their attempts: its seconds are "
            "those of its last attempt only."
        )
    return note


def write_report(root, env: dict | None = None, timings: pd.DataFrame | None = None) -> Path:
    """`root/report.md` and `root/report.html`; returns the path of report.md."""
    root = Path(root)
    text = report_markdown(root, env, timings)
    path = write_text_atomic(root / "report.md", text)
    write_report_html(root, text)
    return path


def write_report_html(root, text: str | None = None, figures_dir=None, out=None) -> Path:
    """`report.html` from the report's Markdown (built here from `root` when not given; figures read from
    `figures_dir`, default `root/figures`), with the interactive views of what `root` holds."""
    from mice.viz.report import demo_views, render_report_html

    root = Path(root)
    if text is None:
        timings = read_table(root / "timings.csv") if (root / "timings.csv").exists() else None
        text = report_markdown(root, timings=timings, figures_dir=figures_dir)
    page = render_report_html(text, base=root, views=demo_views(root), figures_dir=figures_dir)
    return write_text_atomic(Path(out) if out else root / "report.html", page)


class _Report:
    """What every section builder reads: the run folder, where its figures are, its preset and environment."""

    def __init__(self, root: Path, env: dict | None, figures_dir=None):
        self.root = root
        self.fig_dir = Path(figures_dir) if figures_dir else root / "figures"
        self.preset = _json(root / "preset.json")
        self.env = env or _json(root / "environment.json")

    def figure(self, rel: str, caption: str) -> list[str]:
        """The figure's Markdown lines, or none when it was not drawn. Linked relative to the run folder, or by
        absolute path when the figures live outside it (another drive, or above it)."""
        path = self.fig_dir / Path(rel).name
        if not path.exists():
            return []
        try:
            link = Path(os.path.relpath(path.resolve(), self.root.resolve())).as_posix()
        except ValueError:  # another drive (Windows)
            link = path.resolve().as_posix()
        if link.startswith(".."):
            link = path.resolve().as_posix()
        return [f"![{caption}]({link})", f"*{caption}*", ""]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def report_markdown(root, env: dict | None = None, timings: pd.DataFrame | None = None, figures_dir=None) -> str:
    """The report's Markdown text; figure links are relative to `root` (absolute when `figures_dir` is elsewhere).

    Each section is written by its own builder, from the files its stage saved; a stage that did not run leaves
    its section out."""
    r = _Report(Path(root), env, figures_dir)
    lines = _header(r)
    for section in (
        _data_section,
        _effectiveness_section,
        _probe_section,
        _knockouts_section,
        _mask_section,
        _search_section,
        _frontier_section,
        _validation_section,
        _mice_section,
        _index_section,
        _efficiency_section,
    ):
        lines += section(r)
    lines += _timings_section(timings)
    return "\n".join(lines) + "\n"


def _header(r: _Report) -> list[str]:
    preset, env = r.preset, r.env
    domains = list(preset.get("every_query_domains") or ("in", "ood", "meta"))
    domains += ["ext"] if preset.get("dataset_external") else []
    n = preset.get("test_queries")
    return [
        "# MICE demo report",
        "",
        f"Preset `{preset.get('name', '?')}`, run on {env.get('date', '?')} ({env.get('cpus', '?')} CPUs, "
        f"{env.get('machine', '')}, torch {env.get('torch', '?')}). Re-ranking BM25's top "
        f"{preset.get('first_stage_k', '?')}: the cross-encoder and MICE for every test query of "
        f"{', '.join(domains)}, every model for "
        f"{'the first ' + str(n) if n else 'all'} test queries "
        "per domain.",
        "",
        CONVENTION,
        "",
    ]


def _data_section(r: _Report) -> list[str]:
    sizes = r.root / "data" / "sizes.csv"
    if not sizes.exists():
        return []
    df = read_table(sizes).pivot(index="domain", columns="split", values="queries").reset_index()
    return ["## Data", "", "Queries per split and corpus size (documents):", "", _md(df, ".0f"), ""]


def _effectiveness_section(r: _Report) -> list[str]:
    """Every domain's table of runs × measures, then MICE against the cross-encoder and the late-interaction
    baseline beside MICE."""
    res_path = r.root / "evaluate" / "results.csv"
    if not res_path.exists():
        return []
    preset = r.preset
    results = read_table(res_path)
    lines = [
        "## Effectiveness",
        "",
        "Significance against BM25, Holm-corrected over the runs: † paired t-test, ‡ randomisation test (p < 0.05).",
        "",
    ]
    titles = {
        "in": f"In-domain (`{preset.get('dataset', 'embedded:docs')}`)",
        "ood": f"Out-of-domain: other packages' docstrings (`{preset.get('dataset_ood', '')}`)",
        "meta": f"Out-of-domain: distribution metadata, summary → description (`{preset.get('dataset_meta', '')}`)",
        "ext": f"Out-of-domain: an external collection (`{preset.get('dataset_external', '')}`)",
    }
    sets = list(dict.fromkeys(results["queries"])) if "queries" in results else [None]
    for domain, title in titles.items():
        for qset in sets:
            rows = results[results["domain"] == domain]
            if qset is not None:
                rows = rows[rows["queries"] == qset]
            if rows.empty:
                continue
            n = int(rows["n_queries"].iloc[0]) if "n_queries" in rows else "?"
            which = "all" if qset == "all" else "the first" if preset.get("test_queries") else "all"
            lines += [
                f"### {title}, {which} {n} test queries",
                "",
                _md(results_table(results, domain, queries=qset)),
                "",
            ]
    if not preset.get("dataset_external"):
        lines += [
            "No external out-of-domain collection was given (`mice demo --external FOLDER`: a BEIR folder "
            "such as SciFact's, or any dataset spec with a test split); the offline default has none.",
            "",
        ]
    lines += _mice_vs_ce(r.root / "evaluate" / "mice_vs_ce.csv")
    lines += _late_interaction(results, sets[0])
    return lines + r.figure("figures/latency_vs_ndcg.png", "Latency vs nDCG@10")


def _mice_vs_ce(share: Path) -> list[str]:
    if not share.exists() or not len(read_table(share)):
        return []
    sh = read_table(share)
    sh = sh.sort_values("n_queries").groupby("domain", sort=False).tail(1)
    return [
        "**MICE against the cross-encoder** (nDCG@10 share on every test query of each domain; 95% "
        "paired bootstrap CI over queries; paired t-test of the difference):",
        "",
        _md(
            sh[
                [
                    "domain",
                    "n_queries",
                    "bm25",
                    "cross_encoder",
                    "mice",
                    "share",
                    "share_ci_low",
                    "share_ci_high",
                    "p_ttest",
                ]
            ]
        ),
        "",
    ]


def _late_interaction(results: pd.DataFrame, qset) -> list[str]:
    li = results[(results.run == "late-interaction") & (results.measure == "nDCG@10")]
    mi = results[(results.run == "mice") & (results.measure == "nDCG@10")]
    if "queries" in results:
        li, mi = li[li["queries"] == qset], mi[mi["queries"] == qset]
    li, mi = li.set_index("domain")["value"], mi.set_index("domain")["value"]
    if not (len(li) and len(mi)):
        return []
    side = ", ".join(f"{d}: {li[d]:.4f} vs MICE {mi[d]:.4f}" for d in li.index if d in mi.index)
    return [
        f"The late-interaction baseline (ColBERT-style MaxSim, 128-d, distilled from the same "
        f"cross-encoder; `late_interaction/`) reaches nDCG@10 {side} (same queries).",
        "",
    ]


def _probe_section(r: _Report) -> list[str]:
    if not (r.root / "probe").exists():
        return []
    return (
        ["## Attention paths (probe)", ""]
        + r.figure("figures/attention_paths.png", "Attention mass per path and layer (mean over heads)")
        + r.figure("figures/attention_heads.png", "Attention mass per head")
        + r.figure("figures/attention_example.png", "One example's token-level pattern")
    )


def _knockouts_section(r: _Report) -> list[str]:
    """The attribution screen, how well it agrees with exact knockouts, and the exact sweep."""
    sweep = r.root / "sweep" / "sweep.parquet"
    attribution = r.root / "attribute" / "attribution.parquet"
    lines = ["## Knockouts", ""] if sweep.exists() or attribution.exists() else []
    if attribution.exists():
        lines += _attribution_screen(r.root, attribution)
    lines += _attribution_check(r)
    if sweep.exists():
        lines += _exact_sweep(r, sweep)
    if attribution.exists():
        lines += r.figure("figures/attribution_heatmap.png", "Attribution screen, layer × path")
        lines += r.figure("figures/attribution_heads.png", "Attribution screen per head, one map per path")
    return lines


def _attribution_screen(root: Path, attribution: Path) -> list[str]:
    at = read_table(attribution)
    n_struct = int((at["status"] == "structural").sum())
    am = _json(root / "attribute" / "attribution.meta.json")
    return [
        f"**Screen (attribution patching).** {len(at)} knockouts (layer × head × path, head −1 = all heads; "
        f"mode {', '.join(am.get('modes', ['renorm']))}) estimated from one forward and one backward pass "
        f"per batch over {am.get('n_pairs', '?')} pairs of {len(am.get('query_ids', [])) or '?'} dev "
        f"queries in {am.get('elapsed_s', float('nan')):.1f} s; {n_struct} are *structural* (they cannot "
        f"change a `[CLS]`-pooled score and need no evidence). Ranked by `{am.get('measure', '?')}`.",
        "",
    ]


def _attribution_check(r: _Report) -> list[str]:
    check = r.root / "sweep" / "attribution_check.json"
    if not check.exists():
        return []
    c = json.loads(check.read_text())
    margin = (
        f", {c['rho_delta_margin']:.3f} on the relevant-vs-non-relevant margin change"
        if "rho_delta_margin" in c
        else ""
    )
    return (
        [
            f"**Attribution vs exact knockouts** over {c['cells']} non-structural layer × path cells (on the "
            f"exact sweep's queries): Spearman ρ = {c['rho_mean_dscore']:.3f} on the mean score change, "
            f"{c['rho_mean_abs_dscore']:.3f} on the mean |score change|" + margin + ".",
            "",
        ]
        + r.figure("figures/attribution_vs_exact.png", "Attribution estimate vs exact knockout (mean score change)")
        + r.figure("figures/attribution_vs_exact_margin.png", "Attribution estimate vs exact knockout (margin change)")
    )


def _exact_sweep(r: _Report, sweep: Path) -> list[str]:
    """The harmful knockouts by the CI of the ranked measure, or (an older sweep without CIs) the ten largest
    nDCG@10 drops."""
    df = read_table(sweep)
    ok = df[df["status"] == "ok"]
    measure = str(df["rank_by"].iloc[0]) if "rank_by" in df.columns and len(df) else "delta_ndcg@10"
    lo, hi = f"{measure}_ci_low", f"{measure}_ci_high"
    if measure in ok.columns and hi in ok.columns:
        harmful = ok[ok[hi] < 0].sort_values(measure)
        cols = [
            c
            for c in ("layer", "path", measure, lo, hi, "flip_rate", "kendall_tau", "delta_ndcg@10", "p_value")
            if c in ok.columns
        ]
        meta = r.root / "sweep" / "sweep.meta.json"
        n_queries = len(_json(meta).get("query_ids", [])) if meta.exists() else "?"
        lines = [
            f"**Exact sweep.** {len(df)} single-path knockouts (layer × path) on the first {n_queries} "
            "of those dev queries, "
            f"{int((df['status'] == 'structural').sum())} structural. Effects are measured per query and "
            f"averaged with 95% bootstrap CIs over queries; `{measure}` is the change of the mean score "
            "margin of relevant over non-relevant candidates, `flip_rate` the share of candidate pairs "
            "whose order flips. A knockout is called **harmful** only when the CI of "
            f"`{measure}` lies below zero: {len(harmful)} are. The ten most harmful:",
            "",
            _md(harmful.head(10)[cols]),
            "",
        ]
    else:
        cols = [
            c
            for c in ("layer", "path", "mode", "ndcg@10", "delta_ndcg@10", "p_value", "mean_abs_dscore", "kendall_tau")
            if c in df.columns
        ]
        key = "delta_ndcg@10" if "delta_ndcg@10" in df.columns else cols[-1]
        lines = [
            f"{len(df)} single-path knockouts (layer × path). The ten most harmful:",
            "",
            _md(df.sort_values(key).head(10)[cols]),
            "",
        ]
    return lines + r.figure(
        "figures/knockout_heatmap.png", f"Exact knockouts: {measure} per path and layer (* CI excludes 0, s structural)"
    )


def _mask_section(r: _Report) -> list[str]:
    """The screen's mask (`derive/`) as an allow-table, with its greedy derivation steps."""
    derive = r.root / "derive"
    if not (derive / "mask.json").exists():
        return []
    from mice.masks import InteractionMask

    mask = InteractionMask.load(derive / "mask.json")
    lines = [
        "## Derived interaction mask",
        "",
        f"Tolerance {mask.provenance.get('tolerance', '?')} (relative "
        f"nDCG@10 on held-out queries). Per-layer allow-table (`#` allowed, `.` blocked):",
        "",
        "```",
        mask.render(),
        "```",
        "",
    ]
    steps = derive / "mask.steps.csv"
    if steps.exists():
        st = read_table(steps)
        prov = mask.provenance
        cols = [
            c
            for c in (
                "step",
                "layer",
                "path",
                "decision",
                "value",
                "rel_loss",
                "delta_margin",
                "delta_margin_ci_low",
                "delta_margin_ci_high",
                "current",
            )
            if c in st.columns
        ]
        lines += [
            f"Greedy derivation steps, ordered by `{prov.get('ranked_by', '?')}` "
            f"({prov.get('method', '')}): {prov.get('re_checks', '?')} exact re-checks on "
            f"{prov.get('held_out_queries', '?')} held-out queries, {len(prov.get('structural', []))} "
            "structural cells removed without one:",
            "",
            _md(st[cols]),
            "",
        ]
    lines += r.figure("figures/derivation_steps.png", "Derivation steps (structural cells: no re-check)")
    lines += r.figure("figures/derived_mask.png", "The derived mask")
    return lines + ["The screen's mask is one more candidate of the trained search below; the search decides.", ""]


def _mice_section(r: _Report) -> list[str]:
    """The MICE model the demo built, saying so when its a and b are not the search's choice."""
    mice_info = r.root / "mice" / "stage.json"
    if not mice_info.exists():
        return []
    out = json.loads(mice_info.read_text())["outputs"]
    if "skipped" in out:
        return ["## MICE", "", f"No MICE model: {out['skipped']} (see the trained search above).", ""]
    source = (
        "a and b come from the trained search (`search/derived.json`)"
        if out.get("chosen", True)
        else f"**not the search's choice**: {out.get('why', '')}"
    )
    return [
        "## MICE",
        "",
        f"MICE-ℓ{out.get('a')}+{out.get('b')}: {out.get('a')} contextual layer(s) "
        f"(documents alone, precomputable), {out.get('b')} query-side interaction layers, distilled "
        f"from the demo cross-encoder; {source}.",
        "",
    ]


def _frontier_section(r: _Report) -> list[str]:
    """The frontier of this cross-encoder (`mice demo --frontier`), when one was given: ground truth for the
    search's choice. Without one, the search's own measured points above are all the report has."""
    table = r.root / "frontier" / "frontier.parquet"
    if not table.exists():
        return []
    meta = _json(r.root / "frontier" / "frontier.json")
    t = read_table(table)
    t = t[t["domain"] == "in"]
    from ablations.frontier import COLUMNS

    cols = [c for c in COLUMNS if c in t and c != "domain"]
    return [
        "## The frontier",
        "",
        f"Every MICE-ℓa+b, Baseline ft and late interaction trained "
        f"{meta.get('config', {}).get('steps', '?')} steps per seed ({meta.get('runs_finished', '?')} of "
        f"{meta.get('runs_total', '?')} runs finished), tested on every in-domain test query; `loss_high` is the "
        "upper bound of the one-sided 95% CI of relative nDCG@10 loss against Baseline ft:",
        "",
        _md(t[cols]),
        "",
        *r.figure("figures/frontier.png", "Cost against effectiveness, merge-layer and layer-drop views"),
    ]


def _validation_section(r: _Report) -> list[str]:
    """The search scored against the frontier (`mice demo --frontier F --validate-search N`), when it was."""
    folder = r.root / "search-validation"
    if not (folder / "validation_summary.csv").exists():
        return []
    summary = read_table(folder / "validation_summary.csv")
    picks = read_table(folder / "validation.csv")
    cols = ["procedure", "draw", "pick", "truth", "regret", "extra_cost", "miss", "steps", "compute_share"]
    return [
        "## The search scored against the frontier",
        "",
        "Each draw samples other dev queries and trains other seeds (draw 0 is this demo's search). Regret: the "
        "frontier's in-domain test nDCG@10 of its best qualifying configuration at equal or lower cost, minus the "
        "pick's; extra cost: query-time layers beyond the ground truth's b; a miss: no MICE while one qualifies; "
        "compute: training steps as a share of the frontier's.",
        "",
        _md(summary),
        "",
        _md(picks[[c for c in cols if c in picks]]),
        "",
    ]


def _index_section(r: _Report) -> list[str]:
    index_check = r.root / "index" / "index_check.json"
    if not index_check.exists():
        return []
    c = json.loads(index_check.read_text())
    return [
        f"From a float16 document-state index ({c['documents']} documents): mean Kendall τ "
        f"{c['kendall_tau_mean']:.4f} (min {c['kendall_tau_min']:.4f}) against the on-the-fly model, "
        f"max |Δscore| {c['max_abs_score_diff']:.2e}, nDCG@10 {c['ndcg10_from_index']:.4f} vs "
        f"{c['ndcg10_on_the_fly']:.4f}.",
        "",
    ]


def _efficiency_section(r: _Report) -> list[str]:
    bench = r.root / "bench" / "bench.csv"
    if not bench.exists():
        return []
    df = read_table(bench)
    cols = [
        c
        for c in (
            "method",
            "doc_len",
            "median_ms",
            "p10_ms",
            "p90_ms",
            "docs_per_s",
            "peak_mem_mb",
            "bytes_per_doc_token",
            "ratio_vs_ce",
            "speedup_vs_ce",
        )
        if c in df.columns
    ]
    return [
        "## Efficiency",
        "",
        f"Re-ranking {int(df['docs'].iloc[0])} candidates for a "
        f"{int(df['query_len'].iloc[0])}-token query, same backbone, one process "
        f"({df['device'].iloc[0]}, {int(df['threads'].iloc[0])} threads):",
        "",
        _md(df[cols], ".2f"),
        "",
    ] + r.figure("figures/latency.png", "Latency per method")


def _timings_section(timings: pd.DataFrame | None) -> list[str]:
    if timings is None or not len(timings):
        return []
    if "attempts" in timings:  # read back from CSV, a blank is NaN: keep it blank, the others integers
        timings = timings.astype({"attempts": "Int64"})
    return [
        "## Timings per stage",
        "",
        _md(timings, ".1f"),
        "",
        f"Total: {timings['seconds'].sum():.1f} s." + _attempts_note(timings),
        "",
    ]


def _no_mice(t, m: str) -> str:
    """Why no MICE configuration at this budget, with CIs: the best document-independent mask (a split exists)
    at the last rung it reached, against the best candidate of that rung."""
    trained = t[t["trained"] & ~t["collapsed"].astype(bool)]
    layers = trained[trained["stage"] == "layers"]
    mask = trained[trained["stage"] == "mask"]
    split = layers if len(layers) else mask[mask["a"].notna()]
    if split.empty:
        return "**No MICE configuration at this budget:** no document-independent mask was trained."
    r = split.sort_values(["rung", m], ascending=False).iloc[0]
    best = max(split[split["rung"] == r["rung"]][m].max(), mask[mask["rung"] == r["rung"]][m].max())
    what = "MICE candidate" if len(layers) else "document-independent mask"
    return (
        f"**No MICE configuration at this budget.** The best {what}, {r['candidate']} "
        f"(a = {int(r['a'])}), reached {m} {r[m]:.4f} [{r[m + '_ci_low']:.4f}, {r[m + '_ci_high']:.4f}] after "
        f"{int(r['steps'])} steps, {1 - r[m] / best:.1%} below the best candidate of that rung ({best:.4f}); "
        f"against the cross-encoder {r['delta_' + m]:+.4f} (p {r['p_delta_' + m]:.3g}). More steps per "
        "candidate, dev queries and seeds (the `full` preset) are what would tell whether it "
        + ("comes within tolerance." if len(layers) else "loses less than the masks that keep `d->q`.")
    )


def _confirm_pool(config: dict, pools: dict) -> str:
    """What the joint search confirmed on: its held-out dev queries, and the labelled sets beside them."""
    extra = config.get("confirm_extra") or []
    if not extra:
        return f"{pools['confirm']} held-out dev queries"
    return (
        f"{pools['confirm']:,} held-out labelled queries (the {config['split']} split's held-out part, then "
        f"{', '.join(f'`{x}`' for x in extra)}, less the screening queries; no candidate trained on any)"
    )


def _joint_section(r: _Report) -> list[str]:
    """The joint search (`mice demo --search joint`): budget, every rung, the finalists' decision with CIs and
    their labelled confirmation, the derived configuration."""
    from mice.derived import DerivedConfig

    meta = json.loads((r.root / "search" / "joint.json").read_text())
    derived = DerivedConfig.load(r.root / "search" / "derived.json")
    t = read_table(r.root / "search" / "joint.parquet").astype({"a": "Int64", "b": "Int64"})
    c, pools = meta["config"], meta["pools"]
    cols = ["candidate", "a", "b", "rung", "steps", "n_seeds", "pool", "queries", "fidelity", "loss", "loss_upper"]
    cols += ["collapsed", "qualifies", "promoted", "finalist"]
    decision = pd.DataFrame(meta["decision"])
    labelled = pd.DataFrame(
        [
            {"candidate": name, **{f"{m} {k}": v for m, ci in ms.items() for k, v in zip(("", "low", "high"), ci)}}
            for name, ms in meta["labelled"].items()
        ]
    ).rename(columns=lambda x: x.strip())
    verdict = (
        f"**MICE-ℓ{derived.contextual_layers}+{derived.interaction_layers}**"
        if derived.decision == "mice"
        else "**no MICE configuration qualifies**"
    )
    return [
        "## Joint search",
        "",
        f"Every MICE-ℓa+b and the control, Baseline ft (the cross-encoder fine-tuned the same steps, no mask), "
        f"fine-tuned from the cross-encoder: {c['steps']} steps each in the first rung, then successive halving "
        f"(×{c['eta']} steps) to {c['finalists']} finalists trained under seeds "
        f"{', '.join(map(str, derived.budget.get('seeds', c['seeds'])))} for {meta['final_steps']} steps. "
        f"Measure: fidelity to the cross-encoder's ranking on {pools['screen']} unlabelled screening queries "
        f"({pools.get('rung', pools['screen'])} in the first rung). Rule: a finalist qualifies when the one-sided "
        f"{1 - c['alpha']:.0%} upper bound of its relative fidelity loss against Baseline ft is within "
        f"{c['tolerance']:.0%} (mean CI width {meta['ci_width']:.3f}), then it is confirmed by {c['confirm_metric']} "
        f"on {_confirm_pool(c, pools)}; the cheapest (smallest b, then largest a) is chosen. "
        f"Budget: {meta['steps_total']} training steps.",
        "",
        _md(t[[x for x in cols if x in t]]),
        "",
        *r.figure("figures/search_joint.png", "Joint search: relative fidelity loss against cost, every rung"),
        "The finalists' decision (`loss`: relative fidelity loss against Baseline ft; `confirm_*`: relative "
        f"{c['confirm_metric']} loss on the held-out labelled queries, upper = one-sided bound):",
        "",
        _md(decision),
        "",
        "Labelled effectiveness on the held-out queries (seed means, 95% CI over queries):",
        "",
        _md(labelled),
        "",
        f"Derived configuration (`search/derived.json`, mice-config/1): {verdict}. Why: "
        f"{derived.provenance.get('why', '')}.",
        "",
        "```",
        derived.render(),
        "```",
        "",
    ]


def _search_section(r: _Report) -> list[str]:
    """The trained search: budget, curves at equal steps beside zero-shot, finalists with CIs, the decision."""
    if (r.root / "search" / "joint.json").exists():
        return _joint_section(r)
    if not (r.root / "search" / "search.parquet").exists():
        return []
    from mice.derived import DerivedConfig

    t = read_table(r.root / "search" / "search.parquet")
    meta = json.loads((r.root / "search" / "search.json").read_text())
    derived = DerivedConfig.load(r.root / "search" / "derived.json")
    m = meta["config"]["metric"]
    lines = ["## Trained search", "", _search_budget(meta, derived), ""]
    for stage in t["stage"].unique():
        lines += r.figure(
            f"figures/search_curve_{stage}.png",
            f"Trained search, {stage} stage: every candidate at equal steps (95% CI) beside zero-shot",
        )
    lines += _search_tables(t, m, meta["config"])
    mode = f" (`[CLS]` cross-attention {derived.cls_cross_attention})" if derived.cls_cross_attention else ""
    verdict = {
        "mice": f"**MICE-ℓ{derived.contextual_layers}+{derived.interaction_layers}**{mode}",
        "masked": "a masked cross-encoder only (no MICE split)",
        "cross-encoder": "**nothing: the demo keeps the cross-encoder**",
    }[derived.decision]
    lines += [f"Derived configuration (`search/derived.json`, mice-config/1): {verdict}. Why: {meta['why']}.", ""]
    if derived.decision != "mice":
        lines += [_no_mice(t, m), ""]
    lines += ["```", derived.render(), "```", ""]
    return lines + r.figure("figures/search_derived_mask.png", "The derived configuration's mask")


def _search_budget(meta: dict, derived) -> str:
    """How the search spent its steps: dev queries, successive halving, the cut rule, the finalists' steps."""
    c = meta["config"]
    m = c["metric"]
    sample = "drawn at random" if c.get("sample") == "random" else "the first by id"
    cut = (
        f"; a candidate is cut only when a paired test over the dev queries tells it apart from its rung's "
        f"best (p < {c.get('cut_alpha', 0.05)}), the others go on too"
        if c.get("cut") == "significant"
        else ""
    )
    final = (
        f"; the finalists of both stages train {derived.budget['final_steps']} steps, since the layer stage "
        "is judged against the mask stage's finalists"
        if derived.budget.get("final_steps")
        else ""
    )
    return (
        f"Each candidate is a short fine-tune from the cross-encoder, distilled from it (Margin-MSE), scored "
        f"on {meta['queries']} dev queries ({sample}, "
        f"BM25 top {c['k']}) against the cross-encoder (dev {m} "
        f"{meta['reference'][m]:.4f}). Successive halving: every candidate gets {c['steps']} steps, the best "
        f"1/{c.get('eta', 2)} continues with {c.get('eta', 2)}x as many, until {c['finalists']} finalists (or "
        f"{c.get('max_rungs') or 'unlimited'} rungs) train under seeds "
        f"{', '.join(map(str, c['seeds']))}"
        + cut
        + final
        + f". Budget: {meta['steps_total']} training steps in all. Candidates "
        "that score every document of a query alike (they do not re-rank; e.g. b = 1, whose `[CLS]` never "
        "reads the document) are flagged `collapsed` and never chosen."
    )


def _search_tables(t: pd.DataFrame, m: str, c: dict) -> list[str]:
    """The finalists with CIs, then every candidate zero-shot beside itself after the first rung."""
    from ablations.search import shown_columns

    cols = shown_columns(m)
    fin = t[t["trained"] & t["finalist"].astype(bool)]
    lines = [
        f"Finalists (seed-averaged; `delta_{m}` and its p-value are paired against the cross-encoder; "
        f"`rel_loss` against the best trained finalist, every finalist having had the same fine-tune"
        f"{'' if 'mask' in c['stages'] else ', or the cross-encoder'}; tolerance {c['tolerance']}):",
        "",
        _md(fin[[x for x in cols if x in fin.columns]]),
        "",
    ]
    zero = t[~t["trained"]][["stage", "candidate", m, f"delta_{m}", "kendall_tau"]].rename(
        columns={f"delta_{m}": f"delta_{m} zero-shot", "kendall_tau": "kendall_tau zero-shot"}
    )
    first = t[t["trained"] & (t["rung"] == 0)].copy()
    if "p_vs_best" in first.columns:  # who this rung cut, and the test behind it
        first["cut"] = ~(first["promoted"].astype(bool) | first["finalist"].astype(bool))
    first = first[
        [
            x
            for x in ("stage", "candidate", "steps", m, f"{m}_ci_low", f"{m}_ci_high", "p_vs_best", "cut")
            if x in first.columns
        ]
    ]
    both = zero.merge(first, on=["stage", "candidate"], suffixes=(" zero-shot", " trained"))
    return lines + [
        "Zero-shot (the cross-encoder under the mask, or MICE built from it, untrained) beside the "
        "same candidate after the first rung's steps"
        + (
            " (`p_vs_best`: paired t-test against that rung's best, over the dev queries)"
            if "p_vs_best" in first.columns
            else ""
        )
        + ":",
        "",
        _md(both),
        "",
    ]
