"""From knockout evidence to an interaction mask.

Two forms, both zero-shot (the model is not retrained while searching):

- `derive_mask`: greedy. Paths are tried from the cheapest knockout (by the sensitive measure of an attribution
  table or a sweep) to the dearest; structural cells (which cannot change the score) go without a re-check;
  every other removal is made on top of those already made and the *cumulative* mask is re-checked exactly
  on held-out queries (bounded: at most `check_queries` queries and `max_steps` re-checks); the search stops
  when the next removal would lose more than `tolerance` (relative to the clean model on those queries).
  Removals that would leave a segment with nothing to attend to are skipped.
- `merge_layer_search`: constraint-driven, as in the paper. Given `mask2` (no `d->q`, so document states are
  query-independent), block `q->d` in layers [0, k) (`mask3(k)`) and keep the largest k within tolerance:
  the layer where query and document start to interact.

Both export a `mice-mask/1` JSON whose provenance records model, data, metric, tolerance and the search table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mice.errors import DataError, MaskError
from mice.masks import InteractionMask
from mice.results import sidecar

from probes.attention import hooked_model
from probes.candidates import Candidates, from_run

from ablations.engine import SweepEngine
from ablations.knockouts import ALL_HEADS
from ablations.metrics import Evaluator, relative_loss
from ablations.sweep import ScoredBatches, SweepResult, load_sweep

STEP_COLUMNS = [
    "step",
    "layer",
    "path",
    "sweep_delta",
    "sweep_mean_abs_dscore",
    "decision",
    "value",
    "rel_loss",
    "n_removed",
    "current",
]


@dataclass
class Derivation:
    """The derived mask, the per-step table and what it was derived from."""

    mask: InteractionMask
    steps: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def save(self, out, report: bool = True, figure=None) -> Path:
        """`out` (mask JSON), `<stem>.steps.csv` and, with `report`, `<stem>.report.md`, which shows `figure`
        (a drawn steps figure, e.g. `figures.derivation.plot_derivation`'s) when given."""
        from mice.files import write_table

        out = Path(out)
        self.mask.save(out)
        write_table(self.steps, sidecar(out, ".steps.csv"))
        if report:
            write_report(self, sidecar(out, ".report.md"), figure=figure)
        return out


def _resolve_sources(meta: dict, model, data, split, run, k):
    source = meta.get("source", {})
    model = model if model is not None else meta.get("model")
    data = data if data is not None else source.get("dataset")
    split = split or source.get("split")
    run = run if run is not None else source.get("run")
    k = k or source.get("k")
    missing = [
        n
        for n, v in (("model", model), ("dataset", data), ("split", split), ("run", run), ("k", k))
        if v is None or (isinstance(v, str) and v in ("", "<DataFrame>"))
    ]
    if missing:
        raise DataError(
            f"the sweep's metadata does not say which {', '.join(missing)} to use; pass them "
            f"explicitly (--model/--dataset/--split/--run/--k)"
        )
    return model, data, split, run, int(k)


def held_out(
    meta: dict,
    data,
    split: str,
    run,
    k: int,
    check_split: str | None = None,
    check_run=None,
    check_queries: int | None = None,
) -> Candidates:
    """Queries for re-checking: those of `check_split` (default: the sweep's split) the sweep did not use."""
    split2 = check_split or split
    exclude = meta.get("query_ids", []) if split2 == split else []
    source = meta.get("source", {})  # a random sample's held-out queries come from the same random order
    try:
        return from_run(
            data,
            split2,
            check_run if check_run is not None else run,
            k=k,
            max_queries=check_queries,
            exclude=exclude,
            sample=source.get("sample", "first"),
            seed=source.get("seed", 0),
        )
    except DataError as err:
        raise DataError(
            f"no held-out queries to re-check masks on ({err}); the sweep used every query of "
            f"{split!r}: sweep fewer (--max-queries) or pass another split (--check-split)"
        ) from None


def _evidence_of(evidence) -> tuple[pd.DataFrame, dict, str]:
    """(table, meta, name) of a sweep or an attribution table (object or path)."""
    if isinstance(evidence, SweepResult):
        return evidence.table, evidence.meta, "<in memory>"
    if hasattr(evidence, "estimates"):  # AttributionResult
        return evidence.table, evidence.meta, "<in memory>"
    path = Path(evidence)
    from mice.files import read_table

    if path.exists() and "estimate" in read_table(path).columns:
        from ablations.attribution import load_attribution

        table, meta = load_attribution(path)
        return table, meta, str(path)
    res = load_sweep(path)
    return res.table, res.meta, str(path)


#: what the derivation ranks by when the evidence does not say: the sensitive measure, then the coarse one
RANK_FALLBACK = ("delta_margin", "abs_dscore", "mean_abs_dscore")


def derive_mask(
    sweep,
    model=None,
    data=None,
    split: str | None = None,
    run=None,
    k: int | None = None,
    *,
    tolerance: float = 0.01,
    metric: str | None = None,
    measure: str | None = None,
    mode: str | None = None,
    check_split: str | None = None,
    check_run=None,
    check_queries: int | None = 100,
    patience: int = 0,
    max_steps: int | None = 24,
    structural: bool = True,
    batch_size: int = 16,
    name: str = "derived",
    n_boot: int = 1000,
    show_progress_bar: bool = False,
) -> Derivation:
    """Greedy mask derivation from knockout evidence: a layer-level sweep or an attribution table.

    Candidates (layer, path) are tried from the least to the most harmful by `measure` (default: the measure
    that ranked the evidence, `rank_by`, else `delta_margin`, else the sweep's metric); each is removed on top
    of those already removed and the cumulative mask re-checked exactly on held-out queries (at most
    `check_queries`, at most `max_steps` re-checks: both bounded by default; progress on a bar and in the
    `mice.ablations` log). Before each re-check, cells that have become *structural* (`ablations.structural`:
    they provably cannot change the score under the current mask) are removed without one. A re-check records
    the metric, its relative loss against the clean model (the decision: within `tolerance`), and the
    change of the metric and of the relevant-vs-non-relevant score margin with bootstrap CIs over the held-out
    queries. Model, data, split, run and k default to the evidence's metadata.
    """
    from ablations.attribution import _progress

    table, meta, sweep_name = _evidence_of(sweep)
    model_spec, data, split, run, k = _resolve_sources(meta, model, data, split, run, k)
    model = hooked_model(model_spec, max_length=meta.get("max_length"))
    if mode is None:
        mode = "renorm" if "renorm" in set(table["mode"]) else str(table["mode"].iloc[0]) if len(table) else "renorm"
    metric = (metric or (meta.get("metrics") or ["ndcg@10"])[0]).lower()
    base = InteractionMask.from_dict(meta["base"]) if meta.get("base") else InteractionMask.full(model.n_layers)
    if base.num_layers != model.n_layers:
        raise MaskError(f"{sweep_name}: swept on {base.num_layers} layers, the model has {model.n_layers}")
    rows, measure, tie = _ranked_cells(table, sweep_name, mode, metric, measure)
    check = held_out(meta, data, split, run, k, check_split, check_run, check_queries)
    greedy = _Greedy(model, check, mode, metric, base, batch_size, n_boot, name, structural)
    greedy.all_cells = [(l, p) for l in range(model.n_layers) for p in rows["path"].drop_duplicates()]
    budget = len(rows) if max_steps is None else min(max_steps, len(rows))
    prog = _progress(show_progress_bar, budget, "deriving (exact re-checks)")
    started = time.perf_counter()
    try:
        greedy.run(rows, tie, budget, tolerance, patience, prog)
    finally:
        prog.stop()
    steps_df = greedy.steps_frame()
    provenance = _provenance(
        table,
        sweep_name,
        model_spec,
        data,
        check,
        k,
        mode,
        metric,
        measure,
        tolerance,
        max_steps,
        base,
        greedy,
        steps_df,
    )
    mask = InteractionMask.from_tables(greedy.current.tables, name=name, provenance=provenance)
    meta_out = {
        "elapsed_s": round(time.perf_counter() - started, 3),
        **{k_: v for k_, v in provenance.items() if k_ != "steps"},
    }
    return Derivation(mask, steps_df, meta_out)


def _provenance(
    table, sweep_name, model_spec, data, check, k, mode, metric, measure, tolerance, max_steps, base, greedy, steps_df
) -> dict:
    """The derived mask's provenance: how it was derived, from what, and each step."""
    return {
        "method": "greedy knockout removal ordered by "
        + ("attribution" if "estimate" in table.columns else "exact knockouts")
        + f" on {measure}; structural cells removed without re-checks; cumulative exact "
        "re-checks on held-out queries",
        "derived_from": sweep_name,
        "model": str(model_spec),
        "dataset": str(data) if isinstance(data, str) else getattr(data, "name", "<dataset>"),
        "split": check.source.get("split"),
        "run": check.source.get("run"),
        "k": k,
        "mode": mode,
        "metric": metric,
        "ranked_by": measure,
        "tolerance": tolerance,
        "reference": greedy.reference,
        "final": greedy.current_value,
        "held_out_queries": len(check.query_ids),
        "re_checks": greedy.n_checks,
        "max_steps": max_steps,
        "base": base.name,
        "removed": [f"{p}@{l}" for l, p in greedy.removed],
        "structural": [f"{p}@{l}" for l, p in greedy.struct_removed],
        "steps": _plain_steps(steps_df),
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }


def _ranked_cells(table: pd.DataFrame, sweep_name: str, mode: str, metric: str, measure: str | None):
    """The layer-level knockouts of `mode`, least harmful first by `measure`; also the measure and tie-breaker."""
    rows = table[(table["status"] == "ok") & (table["head"] == ALL_HEADS) & (table["mode"] == mode)].copy()
    if rows.empty:
        raise DataError(f"{sweep_name}: no layer-level knockouts in mode {mode!r} to derive a mask from")
    if measure is None:
        ranked = [str(table["rank_by"].iloc[0])] if "rank_by" in table.columns and len(table) else []
        measure = next((m for m in ranked + list(RANK_FALLBACK) + [f"delta_{metric}"] if m in rows.columns), None)
    if measure not in rows.columns:
        raise DataError(f"{sweep_name}: no column {measure!r} to rank the knockouts by")
    signed = measure.startswith("delta_") or measure in ("dscore", "estimate")
    rows["cost"] = -rows[measure] if signed else rows[measure]  # harm: larger = worse
    tie = next((c for c in ("abs_dscore", "mean_abs_dscore", "estimate_abs") if c in rows.columns), "cost")
    return rows.sort_values(["cost", tie, "layer", "path"], kind="stable"), measure, tie


class _Greedy:
    """The state of one greedy derivation: the cumulative mask, its held-out value and every step taken."""

    def __init__(
        self,
        model,
        check,
        mode: str,
        metric: str,
        base: InteractionMask,
        batch_size: int,
        n_boot: int,
        name: str,
        structural: bool,
    ):
        from ablations.metrics import RankEffects

        self.mode, self.metric, self.base, self.n_boot, self.name = mode, metric, base, n_boot, name
        self.structural = structural
        self.evaluator = Evaluator(check, [metric])
        self.effects = RankEffects(check.frame, check.qrels)
        self.batches = ScoredBatches(SweepEngine(model, mode, None), check.pairs, batch_size)
        self.clean_scores = self.batches.clean()
        self.clean_pq = self.evaluator.per_query(self.clean_scores)[metric].to_numpy()
        self.reference = float(self.clean_pq.mean())
        self.batches.rebase(base)
        self.current = base
        base_scores = self.batches.clean()
        self.current_value = self.evaluator.summary(self.evaluator.per_query(base_scores))[metric]
        self.steps = [
            {
                "step": 0,
                "layer": -1,
                "path": "",
                "sweep_delta": np.nan,
                "sweep_mean_abs_dscore": np.nan,
                "decision": "start",
                **self.measured(base_scores),
                "n_removed": 0,
                "current": self.current_value,
            }
        ]
        self.removed, self.struct_removed, self.n_checks = [], [], 0
        self.all_cells: list[tuple[int, str]] = []

    def measured(self, scores) -> dict:
        """The held-out metric of `scores`, its relative loss, and its and the margin's changes with CIs."""
        metric = self.metric
        pq = self.evaluator.per_query(scores)[metric].to_numpy()
        fx = self.effects.per_query(self.clean_scores, scores[None, :])
        delta = {f"delta_{metric}": (pq - self.clean_pq)[None, :], "delta_margin": fx["delta_margin"]}
        summ = self.effects.summarize(delta, n_boot=self.n_boot).iloc[0]
        value = float(pq.mean())
        out = {"value": value, "rel_loss": relative_loss(self.reference, value)}
        for m in delta:
            out.update(
                {
                    m: float(summ[m]),
                    f"{m}_ci_low": float(summ[f"{m}_ci_low"]),
                    f"{m}_ci_high": float(summ[f"{m}_ci_high"]),
                }
            )
        return out

    @property
    def n_removed(self) -> int:
        return len(self.removed) + len(self.struct_removed)

    def drop_structural(self) -> None:
        """Remove, without a re-check, every cell the current mask has made unable to reach the score."""
        from ablations.structural import structural_reason

        if not self.structural:
            return
        for l, p in self.all_cells:
            ko = _Cell(l, p)
            if not self.current.allowed(l, p) or structural_reason(ko, self.current, mode=self.mode) is None:
                continue
            try:
                self.current = self.current.with_blocked([p], [l], name=self.name)
            except MaskError:
                continue
            self.struct_removed.append((l, p))
            self.steps.append(
                {
                    "step": len(self.steps),
                    "layer": l,
                    "path": p,
                    "sweep_delta": np.nan,
                    "sweep_mean_abs_dscore": np.nan,
                    "decision": "structural",
                    "value": np.nan,
                    "rel_loss": np.nan,
                    "n_removed": self.n_removed,
                    "current": self.current_value,
                    "reason": structural_reason(ko, self.base, mode=self.mode)
                    or "structural: no longer reaches [CLS] under the derived mask",
                }
            )

    def try_cell(self, r, tie: str, tolerance: float) -> str | None:
        """Re-check the mask with cell `r` removed too; keep the removal within `tolerance`. The decision."""
        step = {
            "step": len(self.steps),
            "layer": int(r.layer),
            "path": r.path,
            "sweep_delta": -float(r.cost),
            "sweep_mean_abs_dscore": float(getattr(r, tie)) if tie != "cost" else np.nan,
        }
        try:
            trial = self.current.with_blocked([r.path], [int(r.layer)], name=self.name)
        except MaskError as err:
            self.steps.append(
                {
                    **step,
                    "decision": "invalid",
                    "value": np.nan,
                    "rel_loss": np.nan,
                    "n_removed": self.n_removed,
                    "current": self.current_value,
                    "reason": str(err),
                }
            )
            return None
        self.n_checks += 1
        got = self.measured(self.batches.mask(trial))
        decision = "removed" if got["rel_loss"] <= tolerance else "kept"
        if decision == "removed":
            self.current, self.current_value = trial, got["value"]
            self.removed.append((int(r.layer), r.path))
            self.batches.rebase(self.current)
        self.steps.append(
            {**step, "decision": decision, **got, "n_removed": self.n_removed, "current": self.current_value}
        )
        return decision

    def run(self, rows: pd.DataFrame, tie: str, budget: int, tolerance: float, patience: int, prog) -> None:
        """Cells cheapest first, until `budget` re-checks or more than `patience` kept cells in a row."""
        rejected = 0
        self.drop_structural()
        for r in rows.itertuples(index=False):
            if self.n_checks >= budget:
                break
            if not self.current.allowed(int(r.layer), r.path):
                continue  # removed as structural meanwhile
            decision = self.try_cell(r, tie, tolerance)
            if decision is None:
                continue
            prog.advance()
            if decision == "kept":
                rejected += 1
                if rejected > patience:
                    break
            else:
                rejected = 0
                self.drop_structural()

    def steps_frame(self) -> pd.DataFrame:
        steps = pd.DataFrame(self.steps)
        for c in STEP_COLUMNS:
            if c not in steps.columns:
                steps[c] = np.nan
        return steps[STEP_COLUMNS + [c for c in steps.columns if c not in STEP_COLUMNS]]


class _Cell:
    """A (layer, path) cell in the shape `structural_reason` reads."""

    def __init__(self, layer: int, path: str):
        self.layer, self.path = layer, path


def _plain_steps(steps: pd.DataFrame) -> list[dict]:
    cols = [
        c
        for c in (
            "step",
            "layer",
            "path",
            "sweep_delta",
            "decision",
            "value",
            "rel_loss",
            "delta_margin_ci_low",
            "delta_margin_ci_high",
        )
        if c in steps.columns
    ]
    return json.loads(steps[cols].to_json(orient="records"))


def write_report(derivation: Derivation, path, figure=None) -> Path:
    """Markdown report: one line per step (path removed or kept, its cost, the cumulative metric), and the steps
    figure when one was drawn (figures are drawn by the caller: ablations never import figures)."""
    from mice.files import write_text_atomic

    path = Path(path)
    m = derivation.meta
    fig_line = f"![derivation steps]({Path(figure).name})\n" if figure is not None else ""
    lines = [
        f"# Mask derivation: {derivation.mask.name}",
        "",
        "Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.",
        "",
        f"- model: `{m.get('model')}`; data: `{m.get('dataset')}` split `{m.get('split')}`, "
        f"top {m.get('k')} of `{m.get('run')}`; knockout mode `{m.get('mode')}`",
        f"- metric `{m.get('metric')}` on {m.get('held_out_queries')} held-out queries: clean "
        f"{m.get('reference', float('nan')):.4f}, final {m.get('final', float('nan')):.4f}; tolerance "
        f"{m.get('tolerance')} (relative)",
        f"- removed {len(m.get('removed', []))} (layer, path) cells on top of `{m.get('base')}`",
        "",
        fig_line,
        f"- ranked by `{m.get('ranked_by', 'delta_' + str(m.get('metric')))}`; {m.get('re_checks', '?')} exact "
        f"re-checks (at most {m.get('max_steps')}); {len(m.get('structural', []))} structural cells removed "
        "without one (they cannot change a [CLS]-pooled score)",
        "",
        f"| step | path @ layer | evidence (harm) | decision | held-out {m.get('metric')} "
        "| rel. loss | Δmargin [95% CI] | cumulative |",
        "|---:|---|---:|---|---:|---:|---|---:|",
    ]
    for r in derivation.steps.itertuples(index=False):
        if r.decision == "start":
            lines.append(
                f"| 0 | (base: {m.get('base')}) | | start | {r.value:.4f} | {r.rel_loss:+.4f} | | {r.current:.4f} |"
            )
            continue
        value = "" if pd.isna(r.value) else f"{r.value:.4f}"
        loss = "" if pd.isna(r.rel_loss) else f"{r.rel_loss:+.4f}"
        ev = "" if pd.isna(r.sweep_delta) else f"{r.sweep_delta:+.4g}"
        lo, hi = getattr(r, "delta_margin_ci_low", np.nan), getattr(r, "delta_margin_ci_high", np.nan)
        ci = "" if pd.isna(getattr(r, "delta_margin", np.nan)) else f"{r.delta_margin:+.3g} [{lo:+.3g}, {hi:+.3g}]"
        lines.append(
            f"| {r.step} | `{r.path}` @ {r.layer} | {ev} | {r.decision} | {value} | {loss} | {ci} | {r.current:.4f} |"
        )
    lines += ["", "## Derived mask", "", "```", derivation.mask.render(), "```", ""]
    return write_text_atomic(path, "\n".join(lines))


# ---------------------------------------------------------------------- merge-layer search
@dataclass
class MergeLayerResult:
    table: pd.DataFrame
    chosen_k: int
    mask: InteractionMask
    meta: dict = field(default_factory=dict)


def merge_layer_search(
    model,
    data,
    split: str,
    run,
    k: int = 20,
    *,
    base="mask2",
    tolerance: float = 0.01,
    metric: str = "nDCG@10",
    metrics=("nDCG@10", "RR@10"),
    reference: str = "base",
    mode: str = "renorm",
    max_queries: int | None = None,
    batch_size: int = 16,
    n_resamples: int = 2000,
) -> MergeLayerResult:
    """Score `base` + `q->d` blocked in layers [0, k) for k = 0..L; choose the largest k within tolerance.

    `reference`: "base" (k = 0, e.g. mask2 itself) or "full" (the unmasked model). The table has one row for
    the full model (k = -1) and one per k, with metric values, deltas and paired tests against the full model,
    the relative loss against the reference and whether it is within tolerance.
    """
    if reference not in ("base", "full"):
        raise DataError(f"reference must be 'base' or 'full', got {reference!r}")
    model = hooked_model(model)
    cands = from_run(data, split, run, k=k, max_queries=max_queries)
    names = [str(x).lower() for x in metrics]
    metric = metric.lower()
    if metric not in names:
        metrics = list(metrics) + [metric]
    evaluator = Evaluator(cands, metrics, n_resamples=n_resamples)
    base_mask = model.resolve_mask(base) or InteractionMask.full(model.n_layers)
    engine = SweepEngine(model, mode, None)
    batches = ScoredBatches(engine, cands.pairs, batch_size)
    clean = batches.clean()
    clean_pq = evaluator.per_query(clean)
    rows = [{"k": -1, "mask": "none", **evaluator.compare(clean, clean_pq, clean)[0]}]
    masks = {}
    for kk in range(model.n_layers + 1):
        m = base_mask if kk == 0 else base_mask.with_blocked(["q->d"], range(0, kk))
        m = InteractionMask(m.num_layers, m.rules, name=_merge_name(base_mask, kk), provenance=dict(m.provenance))
        masks[kk] = m
        rows.append({"k": kk, "mask": m.name, **evaluator.compare(clean, clean_pq, batches.mask(m))[0]})
    table = pd.DataFrame(rows)
    ref_value = float(table.loc[table["k"] == (0 if reference == "base" else -1), metric].iloc[0])
    table["rel_loss"] = [relative_loss(ref_value, v) for v in table[metric]]
    table["within_tolerance"] = table["rel_loss"] <= tolerance + 1e-12
    ok = table[(table["k"] >= 0) & table["within_tolerance"]]
    chosen = int(ok["k"].max()) if len(ok) else 0
    table["chosen"] = table["k"] == chosen
    provenance = {
        "method": "merge-layer search: q->d blocked in layers [0, k) on top of the base mask",
        "model": str(getattr(model.model, "name_or_path", "")),
        "dataset": cands.source.get("dataset"),
        "split": split,
        "run": cands.source.get("run"),
        "k_candidates": k,
        "mode": mode,
        "metric": metric,
        "tolerance": tolerance,
        "reference": reference,
        "reference_value": ref_value,
        "base": base_mask.name,
        "chosen_k": chosen,
        "queries": len(cands.query_ids),
        "table": json.loads(table[["k", "mask", metric, "rel_loss", "within_tolerance"]].to_json(orient="records")),
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }
    chosen_mask = masks[chosen]
    mask = InteractionMask(chosen_mask.num_layers, chosen_mask.rules, name=chosen_mask.name, provenance=provenance)
    return MergeLayerResult(table, chosen, mask, {k_: v for k_, v in provenance.items() if k_ != "table"})


def _merge_name(base: InteractionMask, k: int) -> str:
    if base.provenance.get("preset") == "mask2" and len(base.rules) == 4:
        return f"mask3(k={k})" if k else "mask2"
    return f"{base.name}+q->d[0,{k})" if k else base.name
