"""Knockouts: a sweep or attribution table as a layer x path heatmap; clicking a cell shows the per-query
effects and the confidence interval behind it.

Accepts any table with `layer`, `path`, a value column, optional `head` (-1 = all heads), optional `ci_low` /
`ci_high`, and optionally a per-query table (`query_id`, `layer`, `path`, [`head`], value). Without CI columns
but with per-query values, the view shows a 95% t-interval of the mean over queries, computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mice.errors import DataError
from mice.segments import REAL_SEGMENTS
from mice.viz.html import View, clean

JS = r"""
miceViz.views.knockouts = function (root, d) {
  const V = miceViz;
  V.header(root, d);
  const ctr = V.el('div', {class: 'mv-controls'}, root);
  let head = d.heads.includes(-1) ? -1 : d.heads[0];
  if (d.heads.length > 1) V.select(ctr, 'head', d.heads.map(h => [h, h < 0 ? 'all heads' : 'head ' + h]), head, v => { head = +v; draw(); });
  V.el('span', {style: 'font-size:12px;color:#555'}, ctr, 'value: ' + d.value + ' — click a cell for its per-query effects');
  const info = V.el('div', {class: 'mv-info mv-hover'}, root, 'hover a cell');
  const row = V.el('div', {class: 'mv-row'}, root);
  const area = V.el('div', {}, row);
  const detail = V.el('div', {class: 'mv-detail', style: 'min-width:300px;flex:1'}, row);
  V.el('div', {class: 'mv-info'}, detail, 'no cell selected');
  let vabs = 0;
  Object.values(d.cells).forEach(c => { if (c.value !== null && Math.abs(c.value) > vabs) vabs = Math.abs(c.value); });
  const col = V.diverging(vabs || 1);
  function cellText(c, l, p) {
    if (!c) return 'layer ' + l + ', ' + p + ': not in the table';
    let s = 'layer ' + l + ', ' + (head < 0 ? 'all heads' : 'head ' + head) + ', knock out ' + p + ' (' + p.replace('->', ' attends ') + '): ' +
      d.value + ' = ' + V.fmt(c.value, 4);
    if (c.ci_low !== null && c.ci_high !== null) s += '  [' + V.fmt(c.ci_low, 4) + ', ' + V.fmt(c.ci_high, 4) + '] ' + d.ci_label;
    if (c.note) s += '  (' + c.note + ')';
    const ex = Object.keys(c.extra || {});
    if (ex.length) s += '\n' + ex.map(k => k + ' ' + (typeof c.extra[k] === 'number' ? V.fmt(c.extra[k], 4) : c.extra[k])).join(' · ');
    return s;
  }
  function showDetail(l, p) {
    detail.innerHTML = '';
    const c = d.cells[l + '|' + head + '|' + p];
    V.el('div', {class: 'mv-info mv-selected'}, detail, cellText(c, l, p));
    const q = d.per_query[l + '|' + head + '|' + p];
    if (!q) { V.el('div', {class: 'mv-info'}, detail, 'no per-query values for this cell'); return; }
    const sorted = q.slice().sort((a, b) => a[1] - b[1]);
    let m = 0; sorted.forEach(x => { if (Math.abs(x[1]) > m) m = Math.abs(x[1]); });
    const neg = sorted.filter(x => x[1] < 0).length, pos = sorted.filter(x => x[1] > 0).length;
    V.el('div', {class: 'mv-info mv-pq-summary'}, detail, sorted.length + ' queries: ' + neg + ' below 0, ' + pos + ' above 0, ' +
      (sorted.length - neg - pos) + ' at 0 (' + d.pq_value + ' per query)');
    const bh = Math.max(4, Math.min(14, Math.floor(420 / sorted.length))), W = 300, mid = 150 + 80;
    const s = V.svg('svg', {width: W + 160, height: sorted.length * bh + 20, class: 'mv-pq'}, detail);
    V.svg('line', {x1: mid, x2: mid, y1: 0, y2: sorted.length * bh, stroke: '#888'}, s);
    sorted.forEach((x, k) => {
      const w = m > 0 ? Math.abs(x[1]) / m * 140 : 0;
      const r = V.svg('rect', {x: x[1] < 0 ? mid - w : mid, y: k * bh, width: Math.max(w, 0.5), height: bh - 1, fill: col(x[1]), class: 'mv-bar', 'data-query': x[0]}, s);
      V.svg('title', {}, r, x[0] + ': ' + V.fmt(x[1], 4));
      if (bh >= 9) V.svg('text', {x: 2, y: k * bh + bh - 2, 'font-size': Math.min(10, bh - 1)}, s, String(x[0]).slice(0, 14));
    });
  }
  function draw() {
    area.innerHTML = '';
    const values = d.layers.map(l => d.paths.map(p => { const c = d.cells[l + '|' + head + '|' + p]; return c ? c.value : null; }));
    V.heatmap(area, {rows: d.layers.map(l => 'layer ' + l), cols: d.paths, values: values, color: col, cellW: 24, cellH: 20,
      xlabel: 'knocked-out path a->b (a attends b)',
      onhover: (i, j) => { info.textContent = cellText(d.cells[d.layers[i] + '|' + head + '|' + d.paths[j]], d.layers[i], d.paths[j]); },
      onclick: (i, j) => showDetail(d.layers[i], d.paths[j])});
    V.colorbar(area, col, -(vabs || 1), vabs || 1, d.value);
  }
  draw();
};
"""


EXTRA = ("p_value", "delta_ndcg@10", "delta_rr@10", "mean_abs_dscore", "kendall_tau", "estimate", "mode", "n_queries")


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    v = values[np.isfinite(values)]
    if len(v) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


class KnockoutView(View):
    """Layer x path heatmap of one value column (a delta, an attribution estimate, ...)."""

    kind = "knockouts"
    js = JS

    def __init__(
        self,
        table: pd.DataFrame,
        value: str | None = None,
        per_query: pd.DataFrame | None = None,
        per_query_value: str | None = None,
        mode: str | None = None,
        title: str | None = None,
    ):
        for c in ("layer", "path"):
            if c not in table.columns:
                raise DataError(f"knockout view: table lacks column {c!r} (columns: {list(table.columns)})")
        if value is None:
            for guess in ("delta_ndcg@10", "estimate", "delta_rr@10", "mean_abs_dscore"):
                if guess in table.columns:
                    value = guess
                    break
            else:
                raise DataError(f"knockout view: say which column to show (value=...); columns: {list(table.columns)}")
        if value not in table.columns:
            raise DataError(f"knockout view: no column {value!r} (columns: {list(table.columns)})")
        modes = sorted(set(table["mode"].dropna())) if "mode" in table.columns else []
        if mode is not None:
            if mode not in modes:
                raise DataError(f"knockout view: mode {mode!r} not in the table (modes: {modes})")
            table = table[table["mode"] == mode]
            if per_query is not None and "mode" in per_query.columns:
                per_query = per_query[per_query["mode"] == mode]
        elif len(modes) > 1:
            raise DataError(f"knockout view: the table holds several knockout modes {modes}; pick one (mode=...)")
        table = table[table["layer"] >= 0]
        keys = ["layer", "head", "path"] if "head" in table.columns else ["layer", "path"]
        dup = table[table.duplicated(keys, keep=False)]
        if len(dup):
            first = dup.iloc[0]
            raise DataError(
                f"knockout view: several rows for {dict((k, first[k]) for k in keys)}; "
                f"one row per ({', '.join(keys)}) is needed"
            )
        self.table = table
        self.value = value
        self.per_query = per_query if per_query is not None and len(per_query) else None
        if self.per_query is not None:
            per_query_value = per_query_value or value
            need = [c for c in ("query_id", "layer", "path", per_query_value) if c not in self.per_query.columns]
            if need:
                raise DataError(
                    f"knockout view: per-query table lacks column(s) {need} (columns: {list(self.per_query.columns)})"
                )
        self.per_query_value = per_query_value
        self.title = title or f"Knockouts: {value} per layer and path"

    @classmethod
    def from_sweep(cls, path, value: str | None = None, **kw) -> "KnockoutView":
        """A saved sweep (`mice ablate sweep`), with its per-query sidecar when present."""
        from mice.results import load_sweep

        res = load_sweep(Path(path))
        return cls(res.table, value=value, per_query=res.per_query, **kw)

    def data(self) -> dict:
        t = self.table
        heads = t["head"].astype(int) if "head" in t.columns else pd.Series(-1, index=t.index)
        has_ci = "ci_low" in t.columns and "ci_high" in t.columns
        pq_groups = {}
        if self.per_query is not None:
            pq = self.per_query[self.per_query["layer"] >= 0]
            pq_heads = pq["head"].astype(int) if "head" in pq.columns else pd.Series(-1, index=pq.index)
            for (l, h, p), g in pq.assign(_h=pq_heads).groupby(["layer", "_h", "path"]):
                pq_groups[f"{int(l)}|{int(h)}|{p}"] = [
                    [str(q), clean(v)]
                    for q, v in zip(g["query_id"], g[self.per_query_value].astype(float))
                    if np.isfinite(v)
                ]
        cells = {}
        for (idx, r), h in zip(t.iterrows(), heads):
            key = f"{int(r['layer'])}|{int(h)}|{r['path']}"
            lo = hi = None
            if has_ci:
                lo, hi = clean(r["ci_low"]), clean(r["ci_high"])
            elif key in pq_groups:
                lo, hi = (clean(x) for x in _t_interval(np.array([v for _, v in pq_groups[key]], dtype=float)))
            note = ""
            if "status" in t.columns and r["status"] != "ok":
                note = f"{r['status']}: {r.get('reason', '')}"
            extra = {c: clean(r[c]) for c in EXTRA if c in t.columns and c != self.value and pd.notna(r[c])}
            cells[key] = {
                "value": clean(float(r[self.value])) if pd.notna(r[self.value]) else None,
                "ci_low": lo,
                "ci_high": hi,
                "note": note,
                "extra": extra,
            }
        present = [s for s in REAL_SEGMENTS if any(p.startswith(s + "->") or p.endswith("->" + s) for p in t["path"])]
        paths = [f"{a}->{b}" for a in present for b in present]
        paths += sorted(set(t["path"]) - set(paths))  # composite paths (`q->*`) after the single ones
        return {
            "value": self.value,
            "pq_value": self.per_query_value or "",
            "ci_label": "(95% CI from the table)" if has_ci else "(95% t-interval over queries)",
            "layers": sorted(int(l) for l in t["layer"].unique()),
            "paths": paths,
            "heads": sorted(set(int(h) for h in heads)),
            "cells": cells,
            "per_query": pq_groups,
        }


def knockouts(table_or_path, **kw) -> KnockoutView:
    if isinstance(table_or_path, pd.DataFrame):
        return KnockoutView(table_or_path, **kw)
    return KnockoutView.from_sweep(table_or_path, **kw)
