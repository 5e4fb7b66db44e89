"""`report.md` for a demo run, written only from the artefacts the stages saved (tables, masks, figures), and
`report.html` beside it: the same text, tables and figures as one self-contained page with the interactive
views (`mice.viz`) embedded."""
from __future__ import annotations

import json
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


def results_table(results: pd.DataFrame, domain: str, alpha: float = 0.05, queries: str | None = None
                  ) -> pd.DataFrame:
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
        note += (" A blank `attempts` is a stage recorded before stages counted their attempts: its seconds are "
                 "those of its last attempt only.")
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
    page = render_report_html(text, base=root, views=demo_views(root))
    return write_text_atomic(Path(out) if out else root / "report.html", page)


def report_markdown(root, env: dict | None = None, timings: pd.DataFrame | None = None, figures_dir=None) -> str:
    """The report's Markdown text; figure links are relative to `root` (absolute when `figures_dir` is elsewhere)."""
    import os

    root = Path(root)
    fig_dir = Path(figures_dir) if figures_dir else root / "figures"

    def _figure(lines: list[str], root: Path, rel: str, caption: str) -> None:
        path = fig_dir / Path(rel).name
        if path.exists():
            try:
                link = Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
            except ValueError:  # another drive (Windows)
                link = path.resolve().as_posix()
            if link.startswith(".."):
                link = path.resolve().as_posix()
            lines += [f"![{caption}]({link})", f"*{caption}*", ""]

    lines = ["# MICE demo report", ""]
    preset = json.loads((root / "preset.json").read_text()) if (root / "preset.json").exists() else {}
    env = env or (json.loads((root / "environment.json").read_text()) if (root / "environment.json").exists() else {})
    lines += [f"Preset `{preset.get('name', '?')}`, run on {env.get('date', '?')} ({env.get('cpus', '?')} CPUs, "
              f"{env.get('machine', '')}, torch {env.get('torch', '?')}). Re-ranking BM25's top "
              f"{preset.get('first_stage_k', '?')}: the cross-encoder and MICE for every test query of "
              f"{', '.join(list(preset.get('every_query_domains') or ('in', 'ood', 'meta')) + (['ext'] if preset.get('dataset_external') else []))}, every model for "
              f"{'the first ' + str(preset['test_queries']) if preset.get('test_queries') else 'all'} test queries "
              "per domain.", "", CONVENTION, ""]

    sizes = root / "data" / "sizes.csv"
    if sizes.exists():
        df = read_table(sizes).pivot(index="domain", columns="split", values="queries").reset_index()
        lines += ["## Data", "", "Queries per split and corpus size (documents):", "", _md(df, ".0f"), ""]

    res_path = root / "evaluate" / "results.csv"
    if res_path.exists():
        results = read_table(res_path)
        lines += ["## Effectiveness", "",
                  "Significance against BM25, Holm-corrected over the runs: † paired t-test, ‡ randomisation test "
                  "(p < 0.05).", ""]
        titles = {"in": f"In-domain (`{preset.get('dataset', 'embedded:docs')}`)",
                  "ood": f"Out-of-domain: other packages' docstrings (`{preset.get('dataset_ood', '')}`)",
                  "meta": f"Out-of-domain: distribution metadata, summary → description "
                          f"(`{preset.get('dataset_meta', '')}`)",
                  "ext": f"Out-of-domain: an external collection (`{preset.get('dataset_external', '')}`)"}
        sets = list(dict.fromkeys(results["queries"])) if "queries" in results else [None]
        for domain, title in titles.items():
            for qset in sets:
                r = results[results["domain"] == domain]
                if qset is not None:
                    r = r[r["queries"] == qset]
                if r.empty:
                    continue
                n = int(r["n_queries"].iloc[0]) if "n_queries" in r else "?"
                lines += [f"### {title}, {'all' if qset == 'all' else 'the first' if preset.get('test_queries') else 'all'} "
                          f"{n} test queries", "", _md(results_table(results, domain, queries=qset)), ""]
        if not preset.get("dataset_external"):
            lines += ["No external out-of-domain collection was given (`mice demo --external FOLDER`: a BEIR folder "
                      "such as SciFact's, or any dataset spec with a test split); the offline default has none.", ""]
        share = root / "evaluate" / "mice_vs_ce.csv"
        if share.exists() and len(read_table(share)):
            sh = read_table(share)
            sh = sh.sort_values("n_queries").groupby("domain", sort=False).tail(1)
            lines += ["**MICE against the cross-encoder** (nDCG@10 share on every test query of each domain; 95% "
                      "paired bootstrap CI over queries; paired t-test of the difference):", "",
                      _md(sh[["domain", "n_queries", "bm25", "cross_encoder", "mice", "share", "share_ci_low",
                              "share_ci_high", "p_ttest"]]), ""]
        li = results[(results.run == "late-interaction") & (results.measure == "nDCG@10")]
        mi = results[(results.run == "mice") & (results.measure == "nDCG@10")]
        if "queries" in results:
            li, mi = li[li["queries"] == sets[0]], mi[mi["queries"] == sets[0]]
        li, mi = li.set_index("domain")["value"], mi.set_index("domain")["value"]
        if len(li) and len(mi):
            side = ", ".join(f"{d}: {li[d]:.4f} vs MICE {mi[d]:.4f}" for d in li.index if d in mi.index)
            lines += [f"The late-interaction baseline (ColBERT-style MaxSim, 128-d, distilled from the same "
                      f"cross-encoder; `late_interaction/`) reaches nDCG@10 {side} (same queries).", ""]
        _figure(lines, root, "figures/latency_vs_ndcg.png", "Latency vs nDCG@10")

    probe = root / "probe"
    if probe.exists():
        lines += ["## Attention paths (probe)", ""]
        _figure(lines, root, "figures/attention_paths.png", "Attention mass per path and layer (mean over heads)")
        _figure(lines, root, "figures/attention_heads.png", "Attention mass per head")
        _figure(lines, root, "figures/attention_example.png", "One example's token-level pattern")

    sweep = root / "sweep" / "sweep.parquet"
    attribution = root / "attribute" / "attribution.parquet"
    if sweep.exists() or attribution.exists():
        lines += ["## Knockouts", ""]
    if attribution.exists():
        at = read_table(attribution)
        n_struct = int((at["status"] == "structural").sum())
        meta_p = root / "attribute" / "attribution.meta.json"
        am = json.loads(meta_p.read_text()) if meta_p.exists() else {}
        lines += [f"**Screen (attribution patching).** {len(at)} knockouts (layer × head × path, head −1 = all heads; "
                  f"mode {', '.join(am.get('modes', ['renorm']))}) estimated from one forward and one backward pass "
                  f"per batch over {am.get('n_pairs', '?')} pairs of {len(am.get('query_ids', [])) or '?'} dev "
                  f"queries in {am.get('elapsed_s', float('nan')):.1f} s; {n_struct} are *structural* (they cannot "
                  f"change a `[CLS]`-pooled score and need no evidence). Ranked by `{am.get('measure', '?')}`.", ""]
    check = root / "sweep" / "attribution_check.json"
    if check.exists():
        c = json.loads(check.read_text())
        lines += [f"**Attribution vs exact knockouts** over {c['cells']} non-structural layer × path cells (on the "
                  f"exact sweep's queries): Spearman ρ = {c['rho_mean_dscore']:.3f} on the mean score change, "
                  f"{c['rho_mean_abs_dscore']:.3f} on the mean |score change|"
                  + (f", {c['rho_delta_margin']:.3f} on the relevant-vs-non-relevant margin change"
                     if "rho_delta_margin" in c else "") + ".", ""]
        _figure(lines, root, "figures/attribution_vs_exact.png", "Attribution estimate vs exact knockout (mean score change)")
        _figure(lines, root, "figures/attribution_vs_exact_margin.png", "Attribution estimate vs exact knockout (margin change)")
    if sweep.exists():
        df = read_table(sweep)
        sidecar_meta = root / "sweep" / "sweep.meta.json"
        ok = df[df["status"] == "ok"]
        measure = str(df["rank_by"].iloc[0]) if "rank_by" in df.columns and len(df) else "delta_ndcg@10"
        lo, hi = f"{measure}_ci_low", f"{measure}_ci_high"
        if measure in ok.columns and hi in ok.columns:
            harmful = ok[ok[hi] < 0].sort_values(measure)
            cols = [c for c in ("layer", "path", measure, lo, hi, "flip_rate", "kendall_tau", "delta_ndcg@10",
                                "p_value") if c in ok.columns]
            lines += [f"**Exact sweep.** {len(df)} single-path knockouts (layer × path) on the first "
                      f"{len(json.loads(sidecar_meta.read_text()).get('query_ids', [])) if sidecar_meta.exists() else '?'}"
                      " of those dev queries, "
                      f"{int((df['status'] == 'structural').sum())} structural. Effects are measured per query and "
                      f"averaged with 95% bootstrap CIs over queries; `{measure}` is the change of the mean score "
                      "margin of relevant over non-relevant candidates, `flip_rate` the share of candidate pairs "
                      "whose order flips. A knockout is called **harmful** only when the CI of "
                      f"`{measure}` lies below zero: {len(harmful)} are. The ten most harmful:", "",
                      _md(harmful.head(10)[cols]), ""]
        else:
            cols = [c for c in ("layer", "path", "mode", "ndcg@10", "delta_ndcg@10", "p_value", "mean_abs_dscore",
                                "kendall_tau") if c in df.columns]
            key = "delta_ndcg@10" if "delta_ndcg@10" in df.columns else cols[-1]
            lines += [f"{len(df)} single-path knockouts (layer × path). The ten most harmful:", "",
                      _md(df.sort_values(key).head(10)[cols]), ""]
        _figure(lines, root, "figures/knockout_heatmap.png", f"Exact knockouts: {measure} per path and layer "
                "(* CI excludes 0, s structural)")
    if attribution.exists():
        _figure(lines, root, "figures/attribution_heatmap.png", "Attribution screen, layer × path")
        _figure(lines, root, "figures/attribution_heads.png", "Attribution screen per head, one map per path")

    derive = root / "derive"
    if (derive / "mask.json").exists():
        from mice.masks import InteractionMask

        mask = InteractionMask.load(derive / "mask.json")
        lines += ["## Derived interaction mask", "", f"Tolerance {mask.provenance.get('tolerance', '?')} (relative "
                  f"nDCG@10 on held-out queries). Per-layer allow-table (`#` allowed, `.` blocked):", "", "```",
                  mask.render(), "```", ""]
        steps = derive / "mask.steps.csv"
        if steps.exists():
            st = read_table(steps)
            prov = mask.provenance
            cols = [c for c in ("step", "layer", "path", "decision", "value", "rel_loss", "delta_margin",
                                "delta_margin_ci_low", "delta_margin_ci_high", "current") if c in st.columns]
            lines += [f"Greedy derivation steps, ordered by `{prov.get('ranked_by', '?')}` "
                      f"({prov.get('method', '')}): {prov.get('re_checks', '?')} exact re-checks on "
                      f"{prov.get('held_out_queries', '?')} held-out queries, {len(prov.get('structural', []))} "
                      "structural cells removed without one:", "", _md(st[cols]), ""]
        _figure(lines, root, "figures/derivation_steps.png", "Derivation steps (structural cells: no re-check)")
        _figure(lines, root, "figures/derived_mask.png", "The derived mask")
        lines += ["The screen's mask is one more candidate of the trained search below; the search decides.", ""]

    search = root / "search" / "search.parquet"
    if search.exists():
        lines += _search_section(root, _figure)

    mice_info = root / "mice" / "stage.json"
    if mice_info.exists():
        out = json.loads(mice_info.read_text())["outputs"]
        if "skipped" in out:
            lines += ["## MICE", "", f"No MICE model: {out['skipped']} (see the trained search above).", ""]
        else:
            source = ("a and b come from the trained search (`search/derived.json`)" if out.get("chosen", True)
                      else f"**not the search's choice**: {out.get('why', '')}")
            lines += ["## MICE", "", f"MICE-ℓ{out.get('a')}+{out.get('b')}: {out.get('a')} contextual layer(s) "
                      f"(documents alone, precomputable), {out.get('b')} query-side interaction layers, distilled "
                      f"from the demo cross-encoder; {source}.", ""]
    index_check = root / "index" / "index_check.json"
    if index_check.exists():
        c = json.loads(index_check.read_text())
        lines += [f"From a float16 document-state index ({c['documents']} documents): mean Kendall τ "
                  f"{c['kendall_tau_mean']:.4f} (min {c['kendall_tau_min']:.4f}) against the on-the-fly model, "
                  f"max |Δscore| {c['max_abs_score_diff']:.2e}, nDCG@10 {c['ndcg10_from_index']:.4f} vs "
                  f"{c['ndcg10_on_the_fly']:.4f}.", ""]
    bench = root / "bench" / "bench.csv"
    if bench.exists():
        df = read_table(bench)
        cols = [c for c in ("method", "doc_len", "median_ms", "p10_ms", "p90_ms", "docs_per_s", "peak_mem_mb",
                            "bytes_per_doc_token", "ratio_vs_ce", "speedup_vs_ce") if c in df.columns]
        lines += ["## Efficiency", "", f"Re-ranking {int(df['docs'].iloc[0])} candidates for a "
                  f"{int(df['query_len'].iloc[0])}-token query, same backbone, one process "
                  f"({df['device'].iloc[0]}, {int(df['threads'].iloc[0])} threads):", "", _md(df[cols], ".2f"), ""]
        _figure(lines, root, "figures/latency.png", "Latency per method")

    if timings is not None and len(timings):
        if "attempts" in timings:  # read back from CSV, a blank is NaN: keep it blank, the others integers
            timings = timings.astype({"attempts": "Int64"})
        lines += ["## Timings per stage", "", _md(timings, ".1f"),
                  "", f"Total: {timings['seconds'].sum():.1f} s." + _attempts_note(timings), ""]
    return "\n".join(lines) + "\n"


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
    return (f"**No MICE configuration at this budget.** The best {what}, {r['candidate']} "
            f"(a = {int(r['a'])}), reached {m} {r[m]:.4f} [{r[m + '_ci_low']:.4f}, {r[m + '_ci_high']:.4f}] after "
            f"{int(r['steps'])} steps, {1 - r[m] / best:.1%} below the best candidate of that rung ({best:.4f}); "
            f"against the cross-encoder {r['delta_' + m]:+.4f} (p {r['p_delta_' + m]:.3g}). More steps per "
            "candidate, dev queries and seeds (the `full` preset) are what would tell whether it "
            + ("comes within tolerance." if len(layers) else "loses less than the masks that keep `d->q`."))


def _search_section(root: Path, figure) -> list[str]:
    """The trained search: budget, curves at equal steps beside zero-shot, finalists with CIs, the decision."""
    from mice.derived import DerivedConfig

    t = read_table(root / "search" / "search.parquet")
    meta = json.loads((root / "search" / "search.json").read_text())
    derived = DerivedConfig.load(root / "search" / "derived.json")
    m, c = meta["config"]["metric"], meta["config"]
    lines = ["## Trained search", "",
             f"Each candidate is a short fine-tune from the cross-encoder, distilled from it (Margin-MSE), scored on "
             f"{meta['queries']} dev queries ({'drawn at random' if c.get('sample') == 'random' else 'the first by id'}, "
             f"BM25 top {c['k']}) against the cross-encoder (dev {m} "
             f"{meta['reference'][m]:.4f}). Successive halving: every candidate gets {c['steps']} steps, the best "
             f"1/{c.get('eta', 2)} continues with {c.get('eta', 2)}x as many, until {c['finalists']} finalists (or "
             f"{c.get('max_rungs') or 'unlimited'} rungs) train under seeds "
             f"{', '.join(map(str, c['seeds']))}"
             + (f"; a candidate is cut only when a paired test over the dev queries tells it apart from its rung's "
                f"best (p < {c.get('cut_alpha', 0.05)}), the others go on too" if c.get("cut") == "significant" else "")
             + (f"; the finalists of both stages train {derived.budget['final_steps']} steps, since the layer stage "
                "is judged against the mask stage's finalists" if derived.budget.get("final_steps") else "")
             + f". Budget: {meta['steps_total']} training steps in all. Candidates "
             "that score every document of a query alike (they do not re-rank; e.g. b = 1, whose `[CLS]` never "
             "reads the document) are flagged `collapsed` and never chosen.", ""]
    for stage in t["stage"].unique():
        figure(lines, root, f"figures/search_curve_{stage}.png", f"Trained search, {stage} stage: every candidate at "
               "equal steps (95% CI) beside zero-shot")
    cols = ["stage", "candidate", "rung", "steps", "seeds", m, f"{m}_ci_low", f"{m}_ci_high", f"delta_{m}",
            f"p_delta_{m}", "kendall_tau", "collapsed", "rel_loss", "within_tolerance", "chosen"]
    fin = t[t["trained"] & t["finalist"].astype(bool)]
    lines += [f"Finalists (seed-averaged; `delta_{m}` and its p-value are paired against the cross-encoder; "
              f"`rel_loss` against the best trained finalist, every finalist having had the same fine-tune"
              f"{'' if 'mask' in c['stages'] else ', or the cross-encoder'}; tolerance {c['tolerance']}):", "",
              _md(fin[[x for x in cols if x in fin.columns]]), ""]
    zero = t[~t["trained"]][["stage", "candidate", m, f"delta_{m}", "kendall_tau"]].rename(
        columns={f"delta_{m}": f"delta_{m} zero-shot", "kendall_tau": "kendall_tau zero-shot"})
    first = t[t["trained"] & (t["rung"] == 0)].copy()
    if "p_vs_best" in first.columns:  # who this rung cut, and the test behind it
        first["cut"] = ~(first["promoted"].astype(bool) | first["finalist"].astype(bool))
    first = first[[x for x in ("stage", "candidate", "steps", m, f"{m}_ci_low", f"{m}_ci_high", "p_vs_best", "cut")
                   if x in first.columns]]
    both = zero.merge(first, on=["stage", "candidate"], suffixes=(" zero-shot", " trained"))
    lines += ["Zero-shot (the cross-encoder under the mask, or MICE built from it, untrained) beside the same "
              "candidate after the first rung's steps"
              + (" (`p_vs_best`: paired t-test against that rung's best, over the dev queries)"
                 if "p_vs_best" in first.columns else "") + ":", "", _md(both), ""]
    mode = f" (`[CLS]` cross-attention {derived.cls_cross_attention})" if derived.cls_cross_attention else ""
    verdict = {"mice": f"**MICE-ℓ{derived.contextual_layers}+{derived.interaction_layers}**{mode}",
               "masked": "a masked cross-encoder only (no MICE split)",
               "cross-encoder": "**nothing: the demo keeps the cross-encoder**"}[derived.decision]
    lines += [f"Derived configuration (`search/derived.json`, mice-config/1): {verdict}. Why: {meta['why']}.", ""]
    if derived.decision != "mice":
        lines += [_no_mice(t, m), ""]
    lines += ["```", derived.render(), "```", ""]
    figure(lines, root, "figures/search_derived_mask.png", "The derived configuration's mask")
    return lines
