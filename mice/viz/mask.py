"""Mask: the per-layer allow-table of an `InteractionMask` (or a derived configuration holding one). Clicking a
cell toggles it; the view then shows the edited mask as `mice-mask/2` JSON (rules built exactly as
`InteractionMask.from_tables` builds them) with a download button, and says when the edit is invalid (a segment
left with nothing to attend to). Cells marked structural cannot affect the score and are drawn hatched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mice.errors import MaskError
from mice.masks import InteractionMask, parse_path
from mice.segments import REAL_SEGMENTS, SEG
from mice.viz.html import View

JS = r"""
miceViz.views.mask = function (root, d) {
  const V = miceViz, S = d.segments, n = S.length, L = d.num_layers;
  V.header(root, d);
  const tables = d.tables.map(t => t.map(r => r.slice()));
  const legend = V.el('div', {class: 'mv-legend'}, root);
  [['#3b75af', 'allowed'], ['#f0f0f0', 'blocked'], ['#ff9900', 'edited (outline)']].forEach(x => {
    const sp = V.el('span', {}, legend); V.el('span', {class: 'mv-chip', style: 'background:' + x[0] + ';border:1px solid #999'}, sp); sp.append(x[1]); });
  if (d.structural) { const sp = V.el('span', {}, legend); V.el('span', {class: 'mv-chip', style: 'background:repeating-linear-gradient(45deg,#999 0 2px,#fff 2px 4px)'}, sp);
    sp.append('structural: cannot affect the [CLS]-pooled score'); }
  V.el('div', {style: 'font-size:12px;color:#555'}, root, 'rows attend (from), columns are attended (to); click a cell to toggle it');
  const grid = V.el('div', {class: 'mv-row'}, root);
  const status = V.el('div', {class: 'mv-info mv-status'}, root);
  const ctr = V.el('div', {class: 'mv-controls'}, root);
  const dl = V.el('button', {class: 'mv-download'}, ctr, 'download mask JSON');
  const reset = V.el('button', {class: 'mv-reset'}, ctr, 'reset');
  const ta = V.el('textarea', {readonly: 'readonly', class: 'mv-json'}, root);
  const cs = 20, off = 44, rects = [];
  for (let l = 0; l < L; l++) {
    const box = V.el('div', {}, grid);
    const s = V.svg('svg', {width: off + n * cs + 4, height: off + n * cs + 4}, box);
    V.svg('defs', {}, s).innerHTML = '<pattern id="hatch-' + root.id + '" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="2" height="4" fill="#777"/></pattern>';
    V.svg('text', {x: off, y: 11, 'font-size': 11, 'font-weight': 600}, s, 'layer ' + l);
    S.forEach((b, j) => V.svg('text', {x: off + j * cs + cs / 2, y: off - 4, 'font-size': 9, 'text-anchor': 'middle'}, s, b));
    rects.push([]);
    S.forEach((a, i) => {
      V.svg('text', {x: off - 3, y: off + i * cs + cs * 0.68, 'font-size': 9, 'text-anchor': 'end'}, s, a);
      rects[l].push([]);
      S.forEach((b, j) => {
        const r = V.svg('rect', {x: off + j * cs, y: off + i * cs, width: cs - 1, height: cs - 1, class: 'mv-cell mv-maskcell',
          'data-layer': l, 'data-path': a + '->' + b}, s);
        V.svg('title', {}, r, 'layer ' + l + ': ' + a + '->' + b + ' (' + a + ' attends ' + b + ')' + (d.structural && d.structural[l][i][j] ? ' — structural' : ''));
        if (d.structural && d.structural[l][i][j])
          V.svg('rect', {x: off + j * cs, y: off + i * cs, width: cs - 1, height: cs - 1, fill: 'url(#hatch-' + root.id + ')', 'pointer-events': 'none', opacity: 0.6, class: 'mv-structural'}, s);
        r.addEventListener('click', () => { tables[l][i][j] = !tables[l][i][j]; paint(); });
        rects[l][i].push(r);
      });
    });
  }
  function layersJson(g) {
    if (g.length === L) return 'all';
    if (g.length === 1) return g[0];
    return {start: g[0], end: g[g.length - 1] + 1};
  }
  function rules() {  // exactly InteractionMask.from_tables: one block rule per path and contiguous layer group
    const out = [];
    S.forEach((a, i) => S.forEach((b, j) => {
      const groups = [];
      for (let l = 0; l < L; l++) if (!tables[l][i][j]) {
        if (groups.length && groups[groups.length - 1][groups[groups.length - 1].length - 1] === l - 1) groups[groups.length - 1].push(l);
        else groups.push([l]);
      }
      groups.forEach(g => out.push({block: [a + '->' + b], layers: layersJson(g)}));
    }));
    return out;
  }
  function paint() {
    const edited = [], problems = [];
    for (let l = 0; l < L; l++) for (let i = 0; i < n; i++) {
      let any = false;
      for (let j = 0; j < n; j++) {
        const r = rects[l][i][j], on = tables[l][i][j], changed = on !== d.tables[l][i][j];
        any = any || on;
        r.setAttribute('fill', on ? '#3b75af' : '#f0f0f0');
        r.setAttribute('stroke', changed ? '#ff9900' : 'none');
        r.setAttribute('stroke-width', changed ? 3 : 0);
        r.setAttribute('data-allowed', on ? '1' : '0');
        if (changed) edited.push('layer ' + l + ' ' + S[i] + '->' + S[j] + (on ? ' allowed' : ' blocked'));
      }
      if (!any) problems.push('segment ' + S[i] + ' has nothing to attend to in layer ' + l + ' (softmax over nothing is NaN)');
    }
    const obj = {format: 'mice-mask/2', name: edited.length ? d.name + '-edited' : d.name, num_layers: L, rules: rules(),
      provenance: edited.length ? Object.assign({}, d.provenance, {edited_from: d.name, edits: edited}) : d.provenance};
    ta.value = JSON.stringify(obj, null, 2);
    dl.disabled = problems.length > 0;
    status.className = 'mv-info mv-status ' + (problems.length ? 'mv-bad' : 'mv-ok');
    status.textContent = problems.length ? 'invalid: ' + problems.join('; ') :
      (edited.length ? edited.length + ' edit(s): ' + edited.join(', ') : 'unchanged') + ' — valid mask';
    root.miceMask = obj;
  }
  dl.addEventListener('click', () => {
    const blob = new Blob([ta.value + '\n'], {type: 'application/json'}), a = document.createElement('a');
    a.href = URL.createObjectURL(blob); a.download = (root.miceMask.name || 'mask') + '.json';
    document.body.appendChild(a); a.click(); a.remove();
  });
  reset.addEventListener('click', () => { d.tables.forEach((t, l) => t.forEach((r, i) => r.forEach((v, j) => { tables[l][i][j] = v; }))); paint(); });
  paint();
};
"""


def _as_mask(mask) -> InteractionMask:
    if isinstance(mask, InteractionMask):
        return mask
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise MaskError(f"{path}: cannot read a mask or configuration ({err})") from None
        return _as_mask_obj(obj, str(path))
    if isinstance(mask, dict):
        return _as_mask_obj(mask, "<dict>")
    raise MaskError(
        f"mask view: expected an InteractionMask, a mask/config dict or a JSON file, got {type(mask).__name__}"
    )


def _as_mask_obj(obj: dict, source: str) -> InteractionMask:
    """A `mice-mask/2` object, or a derived configuration that holds one under `mask`."""
    if isinstance(obj.get("mask"), dict):
        return InteractionMask.from_dict(obj["mask"], source + ":mask")
    return InteractionMask.from_dict(obj, source)


def _structural(structural, num_layers: int) -> np.ndarray | None:
    """Bool [layers, 5|6, 5|6] or a list of (layer, path) -> bool [layers, 5, 5]."""
    n = SEG["pad"]
    if structural is None:
        return None
    if isinstance(structural, np.ndarray) or (hasattr(structural, "shape") and hasattr(structural, "dtype")):
        a = np.asarray(structural, dtype=bool)
        if a.ndim != 3 or a.shape[0] != num_layers or a.shape[1] != a.shape[2] or a.shape[1] not in (n, n + 1):
            raise MaskError(
                f"structural: expected a bool array [{num_layers}, {n}, {n}] (or with pad), got {list(a.shape)}"
            )
        return a[:, :n, :n]
    out = np.zeros((num_layers, n, n), dtype=bool)
    for k, item in enumerate(structural):
        try:
            layer, path = item
        except (TypeError, ValueError):
            raise MaskError(f"structural item {k}: expected (layer, path), got {item!r}") from None
        if not 0 <= int(layer) < num_layers:
            raise MaskError(f"structural item {k}: layer {layer} outside 0..{num_layers - 1}")
        src, dst = parse_path(path, f"structural item {k}: ")
        for a in src:
            for b in dst:
                out[int(layer), a, b] = True
    return out


class MaskView(View):
    """An interactive allow-table; `toggled(cells)` is the same edit done in Python."""

    kind = "mask"
    js = JS

    def __init__(self, mask, structural=None, title: str | None = None):
        self.mask = _as_mask(mask)
        self.structural = _structural(structural, self.mask.num_layers)
        self.title = title or f"Interaction mask {self.mask.name!r}"

    def toggled(self, cells) -> InteractionMask:
        """The mask with each (layer, 'a->b') cell flipped, as the view's JSON would write it."""
        t = self.mask.tables.copy()
        for layer, path in cells:
            src, dst = parse_path(path)
            for a in src:
                for b in dst:
                    t[layer, a, b] = not t[layer, a, b]
        prov = dict(self.mask.provenance)
        return InteractionMask.from_tables(t, name=self.mask.name + "-edited", provenance=prov)

    def to_json(self) -> str:
        """The mask shown, as `mice-mask/2` JSON (the view's download starts from this)."""
        return json.dumps(self.mask.to_dict(), indent=2)

    def data(self) -> dict:
        n = SEG["pad"]
        canonical = InteractionMask.from_tables(
            self.mask.tables, name=self.mask.name, provenance=dict(self.mask.provenance)
        )
        return {
            "segments": list(REAL_SEGMENTS),
            "num_layers": self.mask.num_layers,
            "name": self.mask.name,
            "provenance": canonical.provenance,
            "tables": self.mask.tables[:, :n, :n].tolist(),
            "structural": None if self.structural is None else self.structural.tolist(),
        }


def mask_view(mask, structural=None, **kw) -> MaskView:
    return MaskView(mask, structural=structural, **kw)
