"""Pair attention: the token-level pattern of one (query, document) pair, by layer and head (or their mean),
filtered by path, with hover showing what a token attends to and what attends to it."""

from __future__ import annotations

import numpy as np

from mice.errors import DataError
from mice.segments import REAL_SEGMENTS, SEGMENTS
from mice.viz.html import SEG_COLORS, View, b64_uint16

JS = r"""
miceViz.views.pair = function (root, d) {
  const V = miceViz, L = d.layers, H = d.heads, T = d.tokens.length;
  const raw = V.b64u16(d.pattern_b64), SC = 1 / d.scale;
  V.header(root, d);
  const legend = V.el('div', {class: 'mv-legend'}, root);
  d.present.forEach(s => { const sp = V.el('span', {}, legend); V.el('span', {class: 'mv-chip', style: 'background:' + d.colors[s]}, sp); sp.append(s); });
  const ctr = V.el('div', {class: 'mv-controls'}, root);
  let layer = d.layer, head = -1, path = 'all', M = new Float32Array(T * T), focus = -1;
  V.select(ctr, 'layer', Array.from({length: L}, (_, l) => [l, String(d.layer_ids[l])]), layer, v => { layer = +v; update(); });
  V.select(ctr, 'head', [[-1, 'mean over heads']].concat(Array.from({length: H}, (_, h) => [h, String(h)])), head, v => { head = +v; update(); });
  const paths = [['all', 'all paths']];
  d.present.forEach(a => d.present.forEach(b => paths.push([a + '->' + b, a + '->' + b + '  (' + a + ' attends ' + b + ')'])));
  V.select(ctr, 'path', paths, path, v => { path = v; update(); });
  const status = V.el('div', {class: 'mv-info mv-status'}, root);
  const row = V.el('div', {class: 'mv-row'}, root);
  const box = V.el('div', {}, row);
  const px = Math.max(3, Math.min(14, Math.floor(512 / T)));
  const cv = V.el('canvas', {width: T, height: T, class: 'mv-matrix',
    style: 'width:' + (T * px) + 'px;height:' + (T * px) + 'px;image-rendering:pixelated;border:1px solid #ccc;cursor:crosshair'}, box);
  box.style.position = 'relative';
  const over = V.svg('svg', {width: T * px, height: T * px, style: 'position:absolute;left:1px;top:1px;pointer-events:none'}, box);
  for (let i = 1; i < T; i++) if (d.segments[i] !== d.segments[i - 1]) {  // segment boundaries
    V.svg('line', {x1: i * px, x2: i * px, y1: 0, y2: T * px, stroke: '#d62728', 'stroke-width': 0.8, opacity: 0.7}, over);
    V.svg('line', {y1: i * px, y2: i * px, x1: 0, x2: T * px, stroke: '#d62728', 'stroke-width': 0.8, opacity: 0.7}, over);
  }
  V.el('div', {style: 'font-size:11px;color:#555'}, box, 'rows: attending token (from) · columns: attended token (to) · red lines: segment boundaries');
  const side = V.el('div', {style: 'flex:1;min-width:280px'}, row);
  const toks = V.el('div', {class: 'mv-tokens'}, side);
  const spans = d.tokens.map((t, i) => {
    const s = V.el('span', {class: 'mv-tok', 'data-i': i, style: 'color:' + d.colors[d.segments[i]]}, toks, t);
    s.title = '#' + i + ' ' + d.segments[i];
    s.addEventListener('mouseenter', () => { focus = i; showToken(); });
    return s;
  });
  const info = V.el('div', {class: 'mv-info mv-hover'}, side, 'hover a token (or a cell of the matrix)');
  function inPath(i, j) {
    if (path === 'all') return true;
    const p = path.split('->');
    return d.segments[i] === p[0] && d.segments[j] === p[1];
  }
  function update() {
    const n = T * T;
    if (head >= 0) { const o = (layer * H + head) * n; for (let k = 0; k < n; k++) M[k] = raw[o + k] * SC; }
    else {
      M.fill(0);
      for (let h = 0; h < H; h++) { const o = (layer * H + h) * n; for (let k = 0; k < n; k++) M[k] += raw[o + k]; }
      for (let k = 0; k < n; k++) M[k] *= SC / H;
    }
    let vmax = 0;
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) if (inPath(i, j) && M[i * T + j] > vmax) vmax = M[i * T + j];
    const ctx = cv.getContext('2d'), img = ctx.createImageData(T, T), col = V.sequential(vmax || 1, V.BLUES);
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
      const k = i * T + j, c = inPath(i, j) ? col(M[k]).match(/\d+/g) : [225, 225, 225];
      img.data[4 * k] = +c[0]; img.data[4 * k + 1] = +c[1]; img.data[4 * k + 2] = +c[2]; img.data[4 * k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const who = head < 0 ? 'mean over ' + H + ' heads' : 'head ' + head;
    if (path === 'all') status.textContent = 'layer ' + d.layer_ids[layer] + ', ' + who + ': all paths (max weight ' + V.fmt(vmax, 3) + ')';
    else {
      const p = path.split('->'); let tot = 0, na = 0;
      for (let i = 0; i < T; i++) if (d.segments[i] === p[0]) { na++; for (let j = 0; j < T; j++) if (d.segments[j] === p[1]) tot += M[i * T + j]; }
      status.textContent = 'layer ' + d.layer_ids[layer] + ', ' + who + ': path ' + path + ' mass = ' + V.fmt(na ? tot / na : NaN, 4) +
        ' (weight a ' + p[0] + ' token puts on all ' + p[1] + ' tokens, mean over ' + na + ' ' + p[0] + ' tokens)';
      status.setAttribute('data-mass', na ? (tot / na).toFixed(6) : '');
    }
    if (focus >= 0) showToken();
  }
  function top(list) { return list.sort((x, y) => y[1] - x[1]).slice(0, 8).map(x => '  ' + V.fmt(x[1], 3) + '  #' + x[0] + ' ' + d.tokens[x[0]] + ' (' + d.segments[x[0]] + ')').join('\n'); }
  function showToken() {
    const i = focus, out = [], inn = [];
    let maxw = 0;
    for (let j = 0; j < T; j++) { if (inPath(i, j)) out.push([j, M[i * T + j]]); if (inPath(j, i)) inn.push([j, M[j * T + i]]); }
    spans.forEach((s, j) => { const w = inPath(i, j) ? M[i * T + j] : 0; if (w > maxw) maxw = w; });
    spans.forEach((s, j) => {
      const w = inPath(i, j) ? M[i * T + j] : 0, a = maxw > 0 ? w / maxw : 0;
      s.style.background = 'rgba(255,140,0,' + a.toFixed(3) + ')';
      s.classList.toggle('mv-focus', j === i);
    });
    info.textContent = '#' + i + ' ' + d.tokens[i] + ' (' + d.segments[i] + ') attends to' + (path === 'all' ? '' : ' [' + path + ']') + ':\n' +
      (out.length ? top(out) : '  (nothing on this path)') + '\nattended by:\n' + (inn.length ? top(inn) : '  (nothing on this path)');
  }
  cv.addEventListener('mousemove', e => {
    const r = cv.getBoundingClientRect(), i = Math.floor((e.clientY - r.top) / r.height * T), j = Math.floor((e.clientX - r.left) / r.width * T);
    if (i < 0 || j < 0 || i >= T || j >= T) return;
    info.textContent = 'from #' + i + ' ' + d.tokens[i] + ' (' + d.segments[i] + ')  ->  to #' + j + ' ' + d.tokens[j] + ' (' +
      d.segments[j] + '): ' + V.fmt(M[i * T + j], 4) + (inPath(i, j) ? '' : '   [outside path ' + path + ']');
  });
  update();
};
"""


class PairAttentionView(View):
    """One pair's attention pattern `[layers, heads, T, T]` with its tokens and segment names."""

    kind = "pair"
    js = JS

    MAX_BYTES = 64 << 20  # embedded pattern (uint16); beyond this a notebook output gets sluggish

    def __init__(self, pattern, tokens, segments, layer: int = -1, layers=None, title: str | None = None):
        """`layers`: keep only these layers (ids as in the model); `layer`: the one shown first (default last)."""
        p = np.asarray(pattern.detach().cpu() if hasattr(pattern, "detach") else pattern, dtype=np.float64)
        if p.ndim != 4 or p.shape[2] != p.shape[3]:
            raise DataError(f"pair attention: pattern must be [layers, heads, T, T], got shape {list(p.shape)}")
        tokens, segments = list(tokens), list(segments)
        if not (len(tokens) == len(segments) == p.shape[2]):
            raise DataError(
                f"pair attention: {len(tokens)} tokens and {len(segments)} segments for a pattern over "
                f"{p.shape[2]} positions"
            )
        bad = sorted({s for s in segments if s not in SEGMENTS})
        if bad:
            raise DataError(f"pair attention: unknown segment(s) {bad} (segments: {', '.join(SEGMENTS)})")
        keep = np.array([s != "pad" for s in segments])
        self.pattern = p[:, :, keep][:, :, :, keep]
        self.tokens = [t for t, k in zip(tokens, keep) if k]
        self.segments = [s for s, k in zip(segments, keep) if k]
        if not np.isfinite(self.pattern).all() or self.pattern.min() < -1e-6 or self.pattern.max() > 1 + 1e-6:
            raise DataError("pair attention: pattern values must be attention weights in [0, 1]")
        n_layers = self.pattern.shape[0]
        self.layer_ids = list(range(n_layers)) if layers is None else [int(l) for l in layers]
        bad = [l for l in self.layer_ids if not 0 <= l < n_layers]
        if bad or not self.layer_ids:
            raise DataError(f"pair attention: layers {bad or '[]'} outside the pattern's {n_layers} layers")
        self.pattern = self.pattern[self.layer_ids]
        size = 2 * self.pattern.size
        if size > self.MAX_BYTES:
            raise DataError(
                f"pair attention: {size / 2**20:.0f} MiB of attention to embed (over "
                f"{self.MAX_BYTES >> 20} MiB); show fewer layers (layers=[...]) or a shorter pair"
            )
        self.layer = (
            self.layer_ids.index(layer % n_layers) if layer % n_layers in self.layer_ids else len(self.layer_ids) - 1
        )
        self.title = title or "Pair attention"

    @classmethod
    def from_example(cls, example: dict, **kw) -> "PairAttentionView":
        """A saved probe example (`probes.load_examples`): query_id, doc_id, tokens, segments, pattern."""
        kw.setdefault(
            "title", f"Pair attention: query {example.get('query_id', '?')} / document {example.get('doc_id', '?')}"
        )
        return cls(example["pattern"], example["tokens"], example["segments"], **kw)

    @classmethod
    def from_model(cls, model, query: str, document: str, mask=None, **kw) -> "PairAttentionView":
        """Run a HookedCrossEncoder on one pair and show its pattern (under `mask` if given)."""
        import torch

        batch = model.tokenize([(query, document)])
        with torch.no_grad(), model.using_mask(model.resolve_mask(mask), "renorm"):
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.n_layers)]
        pattern = torch.stack([cache[n][0] for n in names]).float()
        ids = batch["input_ids"][0].tolist()
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        segments = [SEGMENTS[s] for s in batch["segment_ids"][0].tolist()]
        kw.setdefault("title", f"Pair attention: {query!r}")
        return cls(pattern, tokens, segments, **kw)

    def path_mass(self, path: str, layer: int, head: int = -1) -> float:
        """Mean over tokens of `a` of the weight they put on tokens of `b` (what the view's status line shows)."""
        a, b = path.split("->")
        i = self.layer_ids.index(layer)
        m = self.pattern[i].mean(0) if head < 0 else self.pattern[i, head]
        rows = np.array([s == a for s in self.segments])
        cols = np.array([s == b for s in self.segments])
        return float(m[rows][:, cols].sum(1).mean()) if rows.any() else float("nan")

    def data(self) -> dict:
        present = [s for s in REAL_SEGMENTS if s in self.segments]
        return {
            "layers": int(self.pattern.shape[0]),
            "heads": int(self.pattern.shape[1]),
            "layer": self.layer,
            "layer_ids": self.layer_ids,
            "tokens": self.tokens,
            "segments": self.segments,
            "present": present,
            "colors": SEG_COLORS,
            "scale": 65535,
            "pattern_b64": b64_uint16(self.pattern),
        }


def pair_attention(pattern_or_example, tokens=None, segments=None, **kw) -> PairAttentionView:
    """`pair_attention(example)` for a saved probe example, or `pair_attention(pattern, tokens, segments)`."""
    if isinstance(pattern_or_example, dict):
        return PairAttentionView.from_example(pattern_or_example, **kw)
    return PairAttentionView(pattern_or_example, tokens, segments, **kw)
