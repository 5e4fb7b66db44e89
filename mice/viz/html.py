"""Shared plumbing for the interactive views: one self-contained HTML fragment per view (inline SVG/canvas and
vanilla JS, no CDN, no network, no kernel extension), shown by Jupyter through `_repr_html_` and written as a
standalone page by `.save()`.

Data travel inside the fragment as JSON (large arrays as base64 of little-endian integers). The saved page
carries a Content-Security-Policy that forbids every network fetch, so "works offline" is enforced by the
browser, not only promised.
"""

from __future__ import annotations

import base64
import html
import json
import uuid
from pathlib import Path

import numpy as np

CONVENTION = (
    "Path convention: a->b means tokens of group a (row, attending) attend to tokens of group b "
    "(column, attended); information flows from b into a."
)
SEG_COLORS = {"cls": "#4d4d4d", "q": "#1f77b4", "sep1": "#8c8c00", "d": "#d95f02", "sep2": "#17a2b8", "pad": "#bbbbbb"}
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:"

CSS = """
.mice-viz{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:8px 0;max-width:100%}
.mice-viz .mv-title{font-weight:600;font-size:14px;margin-bottom:2px}
.mice-viz .mv-conv{color:#555;font-size:12px;margin-bottom:6px}
.mice-viz .mv-controls{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:4px 0 8px}
.mice-viz .mv-controls label{font-size:12px;color:#333}
.mice-viz select,.mice-viz button{font:inherit;font-size:12px;padding:1px 4px}
.mice-viz .mv-info{min-height:1.4em;font-size:12px;background:#f6f6f6;border:1px solid #e2e2e2;padding:4px 6px;
  margin:6px 0;white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.mice-viz .mv-row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.mice-viz svg text{font-family:system-ui,sans-serif}
.mice-viz .mv-cell{cursor:pointer}
.mice-viz .mv-cell:hover{stroke:#000;stroke-width:1.5}
.mice-viz .mv-legend span{display:inline-block;margin-right:10px;font-size:12px}
.mice-viz .mv-chip{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:middle}
.mice-viz .mv-tokens{line-height:1.9;max-width:820px}
.mice-viz .mv-tok{display:inline-block;padding:1px 2px;margin:0 1px;border-radius:2px;cursor:default;font-family:ui-monospace,Menlo,monospace;
  font-size:12px;border-bottom:2px solid transparent}
.mice-viz .mv-tok.mv-focus{outline:2px solid #000}
.mice-viz textarea{width:100%;max-width:820px;height:9em;font:11px ui-monospace,Menlo,monospace}
.mice-viz .mv-bad{color:#b00020}
.mice-viz .mv-ok{color:#1a7f37}
"""

# Helpers every view uses, defined once per page (a report embeds several views).
LIB_JS = r"""
window.miceViz = (window.miceViz && window.miceViz.version === '@VERSION@') ? window.miceViz : (function () {
  const NS = 'http://www.w3.org/2000/svg';
  function el(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function svg(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function lerp(stops, t) {
    t = Math.max(0, Math.min(1, t));
    const x = t * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    const a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map(k => Math.round(a[k] + f * (b[k] - a[k])));
  }
  const VIRIDIS = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
  const BLUES = [[247,251,255],[198,219,239],[107,174,214],[33,113,181],[8,48,107]];
  const DIVERGING = [[33,102,172],[146,197,222],[247,247,247],[244,165,130],[178,24,43]];
  function rgb(c) { return 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')'; }
  function sequential(vmax, stops) {
    return v => (v === null || !isFinite(v)) ? '#e6e6e6' : rgb(lerp(stops || VIRIDIS, vmax > 0 ? v / vmax : 0));
  }
  function diverging(vabs) {
    return v => (v === null || !isFinite(v)) ? '#e6e6e6' : rgb(lerp(DIVERGING, vabs > 0 ? 0.5 + 0.5 * v / vabs : 0.5));
  }
  function fmt(v, d) { return (v === null || v === undefined || !isFinite(v)) ? 'n/a' : Number(v).toFixed(d === undefined ? 4 : d); }
  function b64u16(s) {
    const bin = atob(s), n = bin.length, bytes = new Uint8Array(n);
    for (let i = 0; i < n; i++) bytes[i] = bin.charCodeAt(i);
    return new Uint16Array(bytes.buffer);
  }
  function select(parent, label, options, value, onchange) {
    const l = el('label', {}, parent, label + ' ');
    const s = el('select', {}, l);
    options.forEach(o => { const opt = el('option', {value: String(o[0])}, s, o[1]); });
    s.value = String(value);
    s.addEventListener('change', () => onchange(s.value));
    return s;
  }
  // A heatmap as SVG: rows x cols of values; hover/click report (row, col). Returns {svg, cells}.
  function heatmap(parent, o) {
    const cw = o.cellW || 22, ch = o.cellH || 16, left = o.left || 70, top = o.top || 56;
    const W = Math.max(left + o.cols.length * cw + 10, left + 7 * (o.xlabel || '').length), H = top + o.rows.length * ch + 24;
    const s = svg('svg', {width: W, height: H, class: 'mv-heatmap'}, parent);
    o.cols.forEach((c, j) => svg('text', {x: left + j * cw + cw / 2, y: top - 4, 'font-size': 10,
      transform: 'rotate(-60 ' + (left + j * cw + cw / 2) + ' ' + (top - 4) + ')'}, s, c));
    o.rows.forEach((r, i) => svg('text', {x: left - 4, y: top + i * ch + ch * 0.72, 'font-size': 10,
      'text-anchor': 'end'}, s, r));
    if (o.xlabel) svg('text', {x: left, y: H - 6, 'font-size': 11, fill: '#444'}, s, o.xlabel);
    if (o.ylabel) svg('text', {x: 2, y: 12, 'font-size': 11, fill: '#444'}, s, o.ylabel);
    const cells = [];
    for (let i = 0; i < o.rows.length; i++) {
      cells.push([]);
      for (let j = 0; j < o.cols.length; j++) {
        const v = o.values[i][j];
        const r = svg('rect', {x: left + j * cw, y: top + i * ch, width: cw - 1, height: ch - 1,
          fill: o.color(v), class: 'mv-cell', 'data-row': i, 'data-col': j}, s);
        if (o.onhover) r.addEventListener('mouseenter', () => o.onhover(i, j));
        if (o.onclick) r.addEventListener('click', () => o.onclick(i, j, r));
        cells[i].push(r);
      }
    }
    return {svg: s, cells: cells};
  }
  function colorbar(parent, color, lo, hi, label) {
    const s = svg('svg', {width: 212 + 8 * String(label || '').length, height: 30}, parent);
    for (let k = 0; k < 50; k++) svg('rect', {x: 5 + 4 * k, y: 2, width: 4, height: 10, fill: color(lo + (hi - lo) * k / 49)}, s);
    svg('text', {x: 5, y: 26, 'font-size': 10}, s, fmt(lo, 3));
    svg('text', {x: 205, y: 26, 'font-size': 10, 'text-anchor': 'end'}, s, fmt(hi, 3));
    svg('text', {x: 212, y: 11, 'font-size': 10}, s, label || '');
    return s;
  }
  function header(root, d) {
    if (d.title) el('div', {class: 'mv-title'}, root, d.title);
    el('div', {class: 'mv-conv'}, root, d.convention);
  }
  return {version: '@VERSION@', el, svg, sequential, diverging, fmt, b64u16, select, heatmap, colorbar, header, BLUES,
          VIRIDIS, views: {}};
})();
"""
# a page that already holds an older helper library (a long-lived notebook) gets this one instead
LIB_JS = LIB_JS.replace("@VERSION@", __import__("hashlib").sha1(LIB_JS.encode()).hexdigest()[:12])


def json_for_script(obj) -> str:
    """JSON that is safe inside <script> (no `</script>` break-out, ASCII only)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def b64_uint16(values: np.ndarray, scale: float = 65535.0) -> str:
    """Values in [0, 1] quantised to uint16 (resolution 1.5e-5), little-endian, base64."""
    q = np.clip(np.rint(np.asarray(values, dtype=np.float64) * scale), 0, 65535).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def clean(v):
    """A JSON-safe scalar: NaN/inf become None, numpy scalars become Python ones."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


class View:
    """An interactive view: `_repr_html_` for notebooks, `.html()` for a fragment, `.save()` for a page.

    Subclasses set `kind` (the JS renderer's name), `js` (its code, registering `miceViz.views[kind]`) and
    implement `data()` (what the renderer draws, JSON-able).
    """

    kind = "view"
    js = ""
    title = ""

    def data(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def html(self) -> str:
        uid = f"mice-{self.kind}-{uuid.uuid4().hex[:10]}"
        payload = {"title": self.title, "convention": CONVENTION, **self.data()}
        return (
            f'<div class="mice-viz mice-{self.kind}" id="{uid}" data-kind="{self.kind}"></div>\n'
            f"<style>{CSS}</style>\n"
            f"<script>\n{LIB_JS}\n{self.js}\n"
            f"(function(){{var t0=performance.now();var root=document.getElementById({json.dumps(uid)});"
            f"miceViz.views[{json.dumps(self.kind)}](root,{json_for_script(payload)});"
            f"root.setAttribute('data-render-ms',(performance.now()-t0).toFixed(1));}})();\n</script>"
        )

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path) -> Path:
        """A standalone page (opens offline; the CSP blocks any network request)."""
        from mice.files import write_text_atomic

        return write_text_atomic(Path(path), page(self.title or self.kind, self.html()))


def page(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>{head}</head>\n<body>\n{body}\n</body></html>\n"
    )
