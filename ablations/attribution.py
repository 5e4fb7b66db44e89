"""Attribution patching for attention paths: every (layer, head, path) knockout estimated from one clean forward
and one backward per batch.

For a knockout of cells B of layer l's pattern P (rows of group a, columns of group b, in one head or all), the
first-order estimate of a pair's score change is <dscore/dP, P_knocked - P>:
- `zero`: P_knocked = P * (1 - B), so the estimate is -sum_B G*P (G = dscore/dP);
- `renorm`: a blocked row i keeps its other weights renormalised by 1 / (1 - m_i), m_i = sum_{j in B} P_ij, so
  the row contributes m_i / (1 - m_i) * sum_{j not in B} G_ij P_ij - sum_{j in B} G_ij P_ij.
Both reduce to per-row sums of G*P and P over each destination group, computed once per layer; every path and
head is then a few additions. An all-heads knockout is estimated as the sum of its heads' estimates (exact to
first order). The estimated knocked scores `clean + estimate` go through the same effect measures as exact
knockouts (`ablations.metrics.RankEffects`), so an attribution table and a sweep table read alike.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from mice.errors import DataError, MaskError
from mice.masks import InteractionMask, parse_path
from mice.segments import SEG

from mice.results import sidecar
from probes.attention import hooked_model
from probes.candidates import Candidates, as_candidates

from ablations.knockouts import ALL_HEADS, Knockout, check_knockout, knockout_set
from ablations.metrics import DEFAULT_MEASURE, RankEffects
from ablations.structural import occupancy, structural_cells

ATTRIBUTION_FORMAT = "mice-attribution/1"
MODES = ("renorm", "zero")
N_SEG = len(SEG)


@dataclass
class AttributionResult:
    """`table`: one row per (layer, head, path, mode); `per_query`: tidy per-query values; `knockouts`:
    {mode: estimated knockouts}; `estimates`: {mode: [K, N] estimated score changes per knockout and pair, in
    `knockouts[mode]` order}; `clean`: clean scores [N]; `meta`."""

    table: pd.DataFrame
    per_query: pd.DataFrame
    knockouts: list
    estimates: dict
    clean: np.ndarray
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        return save_attribution(self, out)


def _pattern_grads(model, batch, base, mode: str) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Clean scores [B] and, per layer, the pattern P and dscore/dP ([B, H, T, T]) from one forward + backward.

    A zero leaf tensor is added to each layer's `hook_pattern`: the gradient with respect to it is the gradient
    with respect to the pattern, and the graph through every later layer stays intact.
    """
    L = model.n_layers
    leaves, patterns = [None] * L, [None] * L

    def keep(l):
        def hook(pattern, hook=None):
            leaf = torch.zeros_like(pattern, requires_grad=True)
            leaves[l] = leaf
            patterns[l] = pattern.detach()
            return pattern + leaf

        return hook

    hooks = [(f"blocks.{l}.attn.hook_pattern", keep(l)) for l in range(L)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        scores = model(batch, mask=base, mode=mode)
        grads = torch.autograd.grad(scores.sum(), leaves)
    return scores.detach(), patterns, list(grads)


class PathAttribution:
    """Estimates [K, B] of score changes for a list of knockouts, batch by batch (`estimate`)."""

    def __init__(self, model, kos: list[Knockout], mode: str = "renorm", base: InteractionMask | None = None):
        if mode not in MODES:
            raise MaskError(f"unknown knockout mode {mode!r} (modes: {', '.join(MODES)})")
        self.model, self.kos, self.mode = model, kos, mode
        self.base = model.resolve_mask(base)
        model.model.eval()
        self.H = model.n_heads
        # distinct destination sets and (layer, head, source set) per knockout, as index arrays
        self._dst = {}
        for ko in kos:
            src, dst = parse_path(ko.path)
            self._dst.setdefault(tuple(dst), len(self._dst))
        self._plan = [
            (ko.layer, ko.head, parse_path(ko.path)[0], self._dst[tuple(parse_path(ko.path)[1])]) for ko in kos
        ]

    def estimate(self, batch, steps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean scores [B], estimated score changes [K, B]). `steps` > 0 integrates the gradient along the
        straight line from the clean to the knocked pattern instead (see `_integrated`)."""
        if steps:
            return self._integrated(batch, steps)
        clean, patterns, grads = _pattern_grads(self.model, batch, self.base, self.mode)
        seg = batch["segment_ids"]
        onehot = torch.nn.functional.one_hot(seg, N_SEG).to(clean.dtype)  # [B, T, S]
        B = clean.shape[0]
        out = torch.zeros(len(self.kos), B, dtype=clean.dtype, device=clean.device)
        layers = sorted({ko.layer for ko in self.kos})
        for l in layers:
            P, G = patterns[l].to(clean.dtype), grads[l].to(clean.dtype)
            gp = torch.einsum("bhij,bjs->bhis", G * P, onehot)  # [B, H, T, S]: sum of G*P per destination group
            mass = torch.einsum("bhij,bjs->bhis", P, onehot)  # [B, H, T, S]: attention mass per destination group
            total = gp.sum(-1)
            per_dst = {}
            for dst, d in self._dst.items():
                gb = gp[..., list(dst)].sum(-1)  # [B, H, T]
                if self.mode == "zero":
                    row = -gb
                else:
                    m = mass[..., list(dst)].sum(-1)
                    keep = (1 - m).clamp_min(1e-12)
                    row = torch.where(m < 1, m / keep * (total - gb) - gb, torch.zeros_like(gb))  # m = 1: nothing left
                per_dst[d] = torch.einsum("bht,bts->bhs", row, onehot)  # [B, H, S]: summed over rows per source
            for i, (layer, head, src, d) in enumerate(self._plan):
                if layer != l:
                    continue
                v = per_dst[d][..., src].sum(-1)  # [B, H]
                out[i] = v.sum(-1) if head == ALL_HEADS else v[:, head]
        return clean, out

    def _blocked(self, seg: torch.Tensor, path: str) -> torch.Tensor:
        src, dst = parse_path(path)
        S = torch.zeros(N_SEG, dtype=torch.bool, device=seg.device)
        D = torch.zeros_like(S)
        S[src], D[dst] = True, True
        return S[seg].unsqueeze(2) & D[seg].unsqueeze(1)  # [B, T, T]

    def _knocked(self, P: torch.Tensor, blk: torch.Tensor) -> torch.Tensor:
        """The knocked pattern (all heads) for blocked cells `blk` [B, 1, T, T]."""
        pk = P.masked_fill(blk, 0.0)
        if self.mode == "renorm":
            pk = pk / pk.sum(-1, keepdim=True).clamp_min(1e-30)
        return pk

    def _integrated(self, batch, steps: int, token_budget: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients per (layer, path): the all-heads knockout is applied at strength alpha (midpoints
        of `steps` intervals) to replicas of the batch, from the clean stream entering its layer on, and
        <dscore/dP(alpha), P_knocked - P> is averaged over alpha. For the all-heads cell this converges to the
        exact effect as `steps` grows; a head's estimate is that head's share of the same integral (its own
        knockout would move the other heads less). Costs `steps` forward + backward passes per (layer, path)."""
        model, L = self.model, self.model.n_layers
        with torch.no_grad():
            x = model.embed(batch)
            resid, patterns = [x], [None] * L

            def grab(l):
                def hook(p, hook=None):
                    patterns[l] = p.detach()

                return hook

            with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", grab(l)) for l in range(L)]):
                for l in range(L):
                    x = model.run_layers(x, batch, l, l + 1, mask=self.base, mode=self.mode)
                    resid.append(x)
            clean = model.score_head(x, batch)
        B, T = batch["input_ids"].shape
        out = torch.zeros(len(self.kos), B, dtype=clean.dtype, device=clean.device)
        cells: dict[tuple[int, str], list[int]] = {}
        for i, ko in enumerate(self.kos):
            cells.setdefault((ko.layer, ko.path), []).append(i)
        alphas = [(s + 0.5) / steps for s in range(steps)]
        seg, amask = batch["segment_ids"], batch["attention_mask"]
        for (layer, path), members in cells.items():
            P = patterns[layer]
            dP = self._knocked(P, self._blocked(seg, path).unsqueeze(1)) - P  # [B, H, T, T]
            R = len(alphas)
            chunk = max(1, min(R, token_budget // (B * T)))
            total = torch.zeros(B, self.H, dtype=clean.dtype, device=clean.device)
            for s0 in range(0, R, chunk):
                a = torch.tensor(alphas[s0 : s0 + chunk], dtype=P.dtype, device=P.device)
                r = a.numel()
                start = (P.unsqueeze(0) + a[:, None, None, None, None] * dP.unsqueeze(0)).reshape(r * B, *P.shape[1:])
                leaf = torch.zeros_like(start, requires_grad=True)

                def setp(p, hook=None, start=start, leaf=leaf):
                    return start + leaf

                rep = {"attention_mask": amask.repeat(r, 1), "segment_ids": seg.repeat(r, 1)}
                with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", setp)]):
                    h = model.run_layers(resid[layer].repeat(r, 1, 1), rep, layer, None, mask=self.base, mode=self.mode)
                    (g,) = torch.autograd.grad(model.score_head(h, rep).sum(), leaf)
                total += (g.view(r, B, *P.shape[1:]) * dP.unsqueeze(0)).sum((0, 3, 4))
            total /= R
            for i in members:
                head = self.kos[i].head
                out[i] = total.sum(-1) if head == ALL_HEADS else total[:, head]
        return clean, out


def attribute(
    model,
    data,
    split: str | None = None,
    run=None,
    k: int = 20,
    *,
    paths=None,
    layers=None,
    heads=True,
    modes=("renorm", "zero"),
    base=None,
    max_queries: int | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    measure: str | None = None,
    steps: int = 0,
    show_progress_bar: bool = False,
    out=None,
    meta: dict | None = None,
    on_resume: Callable[[Path, int], None] | None = None,
) -> AttributionResult:
    """Estimate every (layer, [head,] path) knockout in each mode; see the module docstring.

    `data` as for `ablations.sweep.sweep` (a dataset with split and run, `Candidates`, or plain (query, doc)
    pairs, each its own query). `heads`: True for every head (plus the all-heads rows, head = -1), False for
    all-heads rows only, or a list. Structural cells (`ablations.structural`) and knockouts the base mask makes
    impossible are listed with their status and get no estimate. `measure`: the column that ranks the
    knockouts (`rank` column; default `delta_margin` with judgements, `abs_dscore` without). `steps` > 0:
    integrated gradients over that many interpolation steps per (layer, path) (slower, more accurate where
    attention or the head saturate); 0: plain attribution patching (one forward + one backward per batch).
    `on_resume(partial, n_done)` is called when finished units of `out` are taken over, only once the journal's
    identity has been checked (and, from the CLI, the output lock taken).
    """
    from mice.distributed import require_output, world

    require_output(out, "attribution")
    w = world()
    started = time.perf_counter()
    model = hooked_model(model)
    cands = as_candidates(data, split, run, k, max_queries)
    modes = _checked_modes(modes)
    base_mask = model.resolve_mask(base) or InteractionMask.full(model.n_layers)
    kos = knockout_set(model.n_layers, model.n_heads, paths, layers, heads)
    pairs = cands.pairs
    batches = _length_batches(model, pairs, batch_size)
    sts, lives = _cell_status(kos, base_mask, occupancy([b["segment_ids"] for _, b in batches]), modes)
    effects = RankEffects(cands.frame, cands.qrels)
    measure = measure or (DEFAULT_MEASURE if effects.judged else "abs_dscore")
    if measure not in effects.names:
        raise DataError(f"unknown effect measure {measure!r} (measures: {', '.join(effects.names)})")
    # work units: (mode, batch); under N processes unit u is rank u % N's. With `out` each finished unit is
    # journalled (`<out>.partial`), so an interrupted run resumes and the ranks' shares meet there.
    units = [(mode, b) for mode in modes for b in range(len(batches))]
    partial = _attribution_journal(model, cands, modes, base_mask, kos, batch_size, steps, out, on_resume)
    engines = {
        mode: PathAttribution(model, lives[mode], mode, None if base_mask.is_full() else base_mask) for mode in modes
    }
    done = _estimate_units(units, batches, engines, steps, partial, w, show_progress_bar)
    clean, estimates = _gather(units, batches, done, lives, len(pairs))
    tables, per_query = zip(
        *(
            _tables(kos, lives[mode], sts[mode], mode, clean, estimates[mode], effects, n_boot, measure)
            for mode in modes
        )
    )
    table = pd.concat(tables, ignore_index=True)
    meta = _attribution_meta(
        meta, model, cands, len(pairs), modes, base_mask, measure, effects, batch_size, n_boot, steps, started
    )
    meta["processes"] = w.size
    res = AttributionResult(table, pd.concat(per_query, ignore_index=True), lives, estimates, clean, meta)
    if out is not None and w.main:
        save_attribution(res, out)
        partial.unlink()
    w.barrier()
    return res


def _checked_modes(modes) -> list:
    """`modes` (one or several) as a list, each a known knockout mode."""
    modes = [modes] if isinstance(modes, str) else list(modes)
    for m in modes:
        if m not in MODES:
            raise MaskError(f"unknown knockout mode {m!r} (modes: {', '.join(MODES)})")
    return modes


def _length_batches(model, pairs, batch_size) -> list:
    """(indices, tokenized batch) of `pairs`, longest first, `batch_size` a batch."""
    order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
    batches = [
        (order[s : s + batch_size], model.tokenize([pairs[i] for i in order[s : s + batch_size]]))
        for s in range(0, len(pairs), batch_size)
    ]
    return batches


def _attribution_journal(model, cands, modes, base_mask, kos, batch_size, steps, out, on_resume):
    """The journal of finished units beside `out` (`<out>.partial`; None without `out`), its identity checked."""
    if out is None:
        return None
    from mice.identity import job_identity, mask_identity

    from ablations.sweep import _Partial

    key = job_identity(
        **model.identity(),
        pairs=cands.fingerprint(),
        modes=modes,
        base=mask_identity(base_mask),
        knockouts=hashlib.sha256(json.dumps([ko.key for ko in kos]).encode()).hexdigest(),
        batch_size=batch_size,
        steps=steps,
        format=ATTRIBUTION_FORMAT,
    )
    partial_path = Path(out).with_name(Path(out).name + ".partial")
    partial = _Partial(
        partial_path,
        key,
        mismatch=f"partial results of a different attribution; delete "
        f"{partial_path.name} to start afresh, or choose another --out",
    )
    if partial.units and on_resume is not None:
        on_resume(partial.path, len(partial.units))
    return partial


def _attribution_meta(
    meta, model, cands, n_pairs, modes, base_mask, measure, effects, batch_size, n_boot, steps, started
) -> dict:
    """The attribution's metadata (without `processes`), `meta` first."""
    return {
        **(meta or {}),
        "format": ATTRIBUTION_FORMAT,
        "model": str(getattr(model.model, "name_or_path", "")),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "max_length": model.max_length,
        "source": cands.source,
        "query_ids": cands.query_ids,
        "n_pairs": n_pairs,
        "modes": modes,
        "base": base_mask.to_dict(),
        "measure": measure,
        "measures": effects.names,
        "batch_size": batch_size,
        "n_boot": n_boot,
        "steps": steps,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "estimate": "first order: <dscore/dpattern, pattern_knocked - pattern> (attribution patching)",
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }


def _cell_status(kos, base_mask, occupied, modes) -> tuple[dict, dict]:
    """Per mode: {knockout key: (status, reason)}, and the live knockouts (status ok) that get an estimate."""
    status = {}
    for ko in kos:
        why = check_knockout(ko, base_mask)
        status[ko.key] = ("skipped", why) if why else ("ok", "")
    sts, lives = {}, {}
    for mode in modes:
        structural = structural_cells([ko for ko in kos if status[ko.key][0] == "ok"], base_mask, occupied, mode)
        sts[mode] = {key: ("structural", structural[key]) if key in structural else v for key, v in status.items()}
        lives[mode] = [ko for ko in kos if sts[mode][ko.key][0] == "ok"]
    return sts, lives


def _estimate_units(units, batches, engines, steps, partial, w, show_progress_bar) -> dict:
    """Estimate this rank's unfinished units, journalling each; after a barrier, every rank's finished units."""
    done = dict(partial.units) if partial else {}
    todo = [u for u in range(len(units)) if u not in done and w.owns(u)]
    prog = _progress(show_progress_bar and w.main, len(todo), "attribution")
    try:
        for u in todo:
            mode, b = units[u]
            c, e = engines[mode].estimate(batches[b][1], steps)
            rows = [c.double().cpu().tolist(), e.double().cpu().tolist()]  # exact float64 round trip (JSON)
            done[u] = {"unit": u, "rows": rows}
            if partial:
                partial.add(u, rows, [])
            prog.advance()
    finally:
        prog.stop()
        if partial:
            partial.close()
    if w.distributed:
        w.barrier()  # every rank's units are journalled; every rank assembles the same result from them
        done = partial.merged()
        w.barrier()  # (rank 0 deletes the journals below only once every rank has read them)
    return done


def _gather(units, batches, done, lives, n_pairs) -> tuple[np.ndarray, dict]:
    """The clean scores and, per mode, the [live knockouts, pairs] estimates, back in the pairs' order."""
    clean = np.empty(n_pairs)
    estimates = {}
    for mode in lives:
        est = np.zeros((len(lives[mode]), n_pairs))
        for u, (m, b) in enumerate(units):
            if m == mode:
                idx = batches[b][0]
                c, e = done[u]["rows"]
                clean[idx] = c
                est[:, idx] = np.asarray(e, dtype=np.float64).reshape(len(lives[mode]), len(idx))
        estimates[mode] = est
    return clean, estimates


def _tables(kos, live, status, mode, clean, est, effects: RankEffects, n_boot, measure):
    keys = pd.DataFrame([{"layer": ko.layer, "head": ko.head, "path": ko.path, "mode": mode} for ko in live])
    pq = effects.per_query(clean, clean[None, :] + est)
    summ = effects.summarize(pq, n_boot=n_boot)
    live_rows = pd.concat([keys, summ], axis=1)
    live_rows.insert(4, "estimate", est.mean(1) if len(live) else [])
    live_rows.insert(5, "estimate_abs", np.abs(est).mean(1) if len(live) else [])
    live_rows.insert(4, "status", "ok")
    live_rows.insert(5, "reason", "")
    rows = [
        {
            "layer": ko.layer,
            "head": ko.head,
            "path": ko.path,
            "mode": mode,
            "status": status[ko.key][0],
            "reason": status[ko.key][1],
        }
        for ko in kos
        if status[ko.key][0] != "ok"
    ]
    other = pd.DataFrame(rows, columns=["layer", "head", "path", "mode", "status", "reason"])
    if len(other):
        struct = other["status"] == "structural"
        for c in live_rows.columns:
            if c not in other.columns:
                other[c] = np.where(struct, 0.0, np.nan) if not c.startswith(("p_", "kendall")) else np.nan
        other.loc[struct, "kendall_tau"] = 1.0
        other.loc[struct, [c for c in other.columns if c.startswith("p_")]] = 1.0
    table = pd.concat([live_rows, other], ignore_index=True) if len(other) else live_rows
    table["rank_by"] = measure
    signed = measure in ("dscore", "delta_margin", "delta_rr@10", "delta_ndcg@10", "kendall_tau")
    table["rank"] = (table[measure] if signed else -table[measure]).rank(method="first", na_option="bottom")
    table["layer"] = table["layer"].astype("int64")
    table["head"] = table["head"].astype("int64")
    per_query = effects.long(pq, keys) if len(live) else pd.DataFrame()
    return table.sort_values(["layer", "head", "path"], kind="stable").reset_index(drop=True), per_query


def _progress(on: bool, total: int, label: str):
    """A bar and `mice.ablations` log lines (done/total, time left) when `on`; nothing otherwise."""
    from mice.logs import progress

    return progress(total, label, enabled=on, logger="mice.ablations")


def save_attribution(res: AttributionResult, out) -> Path:
    """`OUT` (.csv/.parquet) table, `<stem>.per_query.<ext>` and `<stem>.meta.json`; the table last."""
    from mice.files import write_json_atomic, write_table

    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise DataError(f"{out}: use a .parquet or .csv output")
    per_query = sidecar(out, f".per_query{out.suffix}")
    write_json_atomic(sidecar(out, ".meta.json"), {**res.meta, "per_query": per_query.name})
    if len(res.per_query):
        write_table(res.per_query, sidecar(out, f".per_query{out.suffix}"))
    write_table(res.table, out)
    return out


def load_attribution(path) -> tuple[pd.DataFrame, dict]:
    from mice.results import read_result

    return read_result(path, "attribution table", ("layer", "head", "path", "mode", "estimate"), "an attribution table")


# ---------------------------------------------------------------------- check against exact knockouts
def check_exact(
    model,
    data,
    attribution: AttributionResult,
    mode: str = "renorm",
    top: int = 10,
    batch_size: int = 16,
    layer_level: bool = True,
) -> pd.DataFrame:
    """Exact knockouts (the fast sweep engine) for the estimated layer-level cells of `mode` (or the `top`
    cells by rank when `layer_level` is False); returns estimate and exact effect side by side, per cell."""
    from ablations.engine import SweepEngine
    from ablations.sweep import ScoredBatches

    model = hooked_model(model)
    cands = as_candidates(data) if not isinstance(data, Candidates) else data
    t = attribution.table
    ok = t[(t["mode"] == mode) & (t["status"] == "ok")]
    cells = ok[ok["head"] == ALL_HEADS] if layer_level else ok.nsmallest(top, "rank")
    idx = {ko.key: i for i, ko in enumerate(attribution.knockouts[mode])}
    kos = [Knockout(int(r.layer), r.path, int(r.head)) for r in cells.itertuples(index=False)]
    base = InteractionMask.from_dict(attribution.meta["base"])
    engine = SweepEngine(model, mode, None if base.is_full() else base)
    batches = ScoredBatches(engine, cands.pairs, batch_size)
    clean = batches.clean()
    exact = batches.knockouts(kos) - clean[None, :]
    est = attribution.estimates[mode][[idx[ko.key] for ko in kos]]
    effects = RankEffects(cands.frame, cands.qrels)
    ex = effects.summarize(effects.per_query(clean, clean[None, :] + exact), n_boot=0)
    es = effects.summarize(effects.per_query(clean, clean[None, :] + est), n_boot=0)
    out = pd.DataFrame(
        {
            "layer": [ko.layer for ko in kos],
            "head": [ko.head for ko in kos],
            "path": [ko.path for ko in kos],
            "mode": mode,
            "estimate": est.mean(1),
            "exact": exact.mean(1),
            "estimate_abs": np.abs(est).mean(1),
            "exact_abs": np.abs(exact).mean(1),
        }
    )
    for m in effects.names:
        out[f"estimate_{m}"] = es[m].to_numpy()
        out[f"exact_{m}"] = ex[m].to_numpy()
    out["pair_corr"] = [
        float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan for a, b in zip(est, exact)
    ]
    return out


def compare_tables(
    attribution: pd.DataFrame,
    sweep: pd.DataFrame,
    mode: str = "renorm",
    per_query: pd.DataFrame | None = None,
    query_ids=None,
) -> pd.DataFrame:
    """The `check_exact` table from saved tables alone: an attribution table and an exact sweep, joined on the
    layer-level cells both measured (non-structural), estimate beside exact. When the sweep saw only some of
    the attribution's queries, pass the attribution's per-query table and the sweep's `query_ids`: the
    estimates are then averaged over those queries only, so both sides describe the same pairs."""
    a = attribution[
        (attribution["mode"] == mode) & (attribution["head"] == ALL_HEADS) & (attribution["status"] == "ok")
    ]
    if per_query is not None and query_ids is not None:
        pq = per_query[
            (per_query["mode"] == mode)
            & (per_query["head"] == ALL_HEADS)
            & per_query["query_id"].astype(str).isin({str(q) for q in query_ids})
        ]
        means = pq.groupby(["layer", "path"], sort=False).mean(numeric_only=True).drop(columns=["head"]).reset_index()
        a = a[["layer", "head", "path", "mode", "status"]].merge(means, on=["layer", "path"])
    e = sweep[(sweep["mode"] == mode) & (sweep["head"] == ALL_HEADS) & (sweep["status"] == "ok")]
    j = a.merge(e, on=["layer", "path"], suffixes=("_a", "_e"))
    out = pd.DataFrame(
        {
            "layer": j["layer"],
            "head": ALL_HEADS,
            "path": j["path"],
            "mode": mode,
            "estimate": j["dscore_a"],
            "exact": j["dscore_e"],
            "estimate_abs": j["abs_dscore_a"],
            "exact_abs": j["abs_dscore_e"],
        }
    )
    for m in ("dscore", "abs_dscore", "flip_rate", "kendall_tau", "delta_margin", "delta_rr@10", "delta_ndcg@10"):
        if f"{m}_a" in j and f"{m}_e" in j:
            out[f"estimate_{m}"] = j[f"{m}_a"].to_numpy()
            out[f"exact_{m}"] = j[f"{m}_e"].to_numpy()
    out["kind"] = "layer x path"
    return out.reset_index(drop=True)


def spearman(check: pd.DataFrame, measure: str = "") -> float:
    """Spearman rho between estimated and exact effects over the cells of a `check_exact` table
    (`measure` "" = mean signed score change, else e.g. "abs" or "delta_margin")."""
    from scipy import stats

    a = check["estimate" + (f"_{measure}" if measure else "")]
    b = check["exact" + (f"_{measure}" if measure else "")]
    return float(stats.spearmanr(a, b).statistic)
