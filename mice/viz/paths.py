"""Path mass: the layer x path (x head) table of `mice probe attention` as a heatmap with hover values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mice.errors import DataError
from mice.segments import REAL_SEGMENTS
from mice.viz.html import View, clean

JS = r"""
miceViz.views.paths = function (root, d) {
  const V = miceViz, P = d.paths, L = d.layers, heads = d.heads;
  V.header(root, d);
  const ctr = V.el('div', {class: 'mv-controls'}, root);
  const opts = [[-1, 'mean over heads']].concat(heads.map(h => [h, 'head ' + h]));
  if (heads.length) opts.push(['all', 'every head (rows: layer.head)']);
  let sel = '-1';
  V.select(ctr, 'show', opts, sel, v => { sel = v; draw(); });
  const info = V.el('div', {class: 'mv-info mv-hover'}, root, 'hover a cell');
  const area = V.el('div', {}, root);
  const col = V.sequential(1);
  function rowsFor() {
    if (sel === 'all') { const r = []; for (let l = 0; l < L; l++) heads.forEach(h => r.push([l, h])); return r; }
    return Array.from({length: L}, (_, l) => [l, +sel]);
  }
  function draw() {
    area.innerHTML = '';
    const rows = rowsFor();
    const values = rows.map(r => P.map(p => { const c = d.cells[r[0] + '|' + r[1] + '|' + p]; return c ? c[0] : null; }));
    V.heatmap(area, {rows: rows.map(r => sel === 'all' ? r[0] + '.' + r[1] : 'layer ' + r[0]), cols: P, values: values,
      color: col, cellW: 24, cellH: sel === 'all' ? 9 : 18, xlabel: 'path a->b (a attends b)', ylabel: sel === 'all' ? 'layer.head' : '',
      onhover: (i, j) => {
        const r = rows[i], c = d.cells[r[0] + '|' + r[1] + '|' + P[j]];
        info.textContent = 'layer ' + r[0] + ', ' + (r[1] < 0 ? 'mean over heads' : 'head ' + r[1]) + ', path ' + P[j] +
          ' (' + P[j].replace('->', ' attends ') + '): mass ' + (c ? V.fmt(c[0], 4) + (c[1] !== null ? ' ± ' + V.fmt(c[1], 4) + ' (std over pairs)' : '') +
          (c[2] !== null ? ', ' + c[2] + ' pairs' : '') : 'n/a');
      }});
    V.colorbar(area, col, 0, 1, d.value);
  }
  draw();
};
"""


class PathMassView(View):
    """Attention mass per (layer, head, path); head -1 is the mean over heads."""

    kind = "paths"
    js = JS

    def __init__(self, table: pd.DataFrame, value: str = "mass", title: str | None = None):
        missing = [c for c in ("layer", "head", "from", "to", value) if c not in table.columns]
        if missing:
            raise DataError(f"path mass view: table lacks column(s) {missing} (expected `mice probe attention` output)")
        self.table = table
        self.value = value
        self.title = title or "Attention mass by path, layer and head"

    @classmethod
    def from_file(cls, path, **kw) -> "PathMassView":
        from mice.results import load_probe

        return cls(load_probe(Path(path)), **kw)

    def data(self) -> dict:
        t = self.table
        present = [s for s in REAL_SEGMENTS if s in set(t["from"]) | set(t["to"])]
        paths = [f"{a}->{b}" for a in present for b in present]
        cells = {}
        std = "std" if "std" in t.columns else None
        npairs = "n_pairs" if "n_pairs" in t.columns else None
        if not (t["head"] == -1).any():  # only per-head rows: the mean over heads is their mean
            mean = t.groupby(["layer", "from", "to"], as_index=False)[self.value].mean().assign(head=-1)
            t = pd.concat([t, mean], ignore_index=True)
        for r in t.to_dict("records"):
            cells[f"{int(r['layer'])}|{int(r['head'])}|{r['from']}->{r['to']}"] = [
                clean(r[self.value]),
                clean(r[std]) if std else None,
                clean(r[npairs]) if npairs else None,
            ]
        heads = sorted(int(h) for h in t["head"].unique() if h >= 0)
        return {
            "paths": paths,
            "layers": int(t["layer"].max()) + 1,
            "heads": heads,
            "value": self.value,
            "cells": cells,
        }


def path_mass(table_or_path, **kw) -> PathMassView:
    if isinstance(table_or_path, pd.DataFrame):
        return PathMassView(table_or_path, **kw)
    return PathMassView.from_file(table_or_path, **kw)
