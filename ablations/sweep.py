"""Knockout sweeps over (layer x path) and (layer x head x path), and cumulative (whole-mask) ablations.

For every knockout the candidates are re-scored and the re-ranking compared with the clean one: nDCG@10 and
RR@10 (per query, with paired tests), mean |delta score|, Kendall tau of the candidate order. A sweep given
`out` is resumable: each finished unit of knockouts is appended to `<out>.partial` (JSON lines), an
interrupted sweep continues from there, and the tables appear atomically at the end:

- `OUT` (.parquet or .csv): one row per knockout, skipped ones included with their reason;
- `<stem>.per_query.<ext>`: per-query values of every knockout (plus the clean run, `path == "clean"`);
- `<stem>.meta.json`: what was swept (model, data, split, run, k, queries, mode, base mask, clean metrics),
  which `mice ablate derive` reads back.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from mice.logs import progress, track
from mice.masks import InteractionMask
from mice.results import SweepResult, load_sweep, save_sweep  # noqa: F401 (re-exported)

from probes.attention import hooked_model
from probes.candidates import Candidates, as_candidates

from ablations.engine import SweepEngine
from ablations.knockouts import ALL_HEADS, Knockout, check_knockout, knockout_set
from ablations.metrics import Evaluator, RankEffects
from ablations.structural import occupancy, structural_cells

SWEEP_FORMAT = "mice-sweep/1"
PARTIAL_FORMAT = "mice-sweep-partial/1"
KEY_COLUMNS = ["layer", "head", "path", "from", "to", "mode", "status", "reason"]


class ScoredBatches:
    """Candidates tokenised once into fixed, length-sorted batches, with their clean passes cached
    (within `cache_bytes`; beyond that a batch's clean pass is recomputed when needed)."""

    def __init__(
        self, engine: SweepEngine, pairs: Sequence[tuple[str, str]], batch_size: int = 16, cache_bytes: int = 1 << 30
    ):
        self.engine = engine
        self.n = len(pairs)
        order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
        self.batches = []
        for s in range(0, self.n, batch_size):
            idx = order[s : s + batch_size]
            self.batches.append((idx, engine.model.tokenize([pairs[i] for i in idx])))
        self.cache_bytes = cache_bytes
        self._states: dict[int, object] = {}
        self._used = 0

    def rebase(self, base) -> None:
        """Make `base` the reference mask (e.g. the cumulative mask of a derivation); drops cached passes."""
        self.engine = SweepEngine(
            self.engine.model, self.engine.mode, base, self.engine.strategy, self.engine.token_budget
        )
        self._states.clear()
        self._used = 0

    def state(self, i: int):
        if i in self._states:
            return self._states[i]
        st = self.engine.prepare(self.batches[i][1])
        size = st.nbytes()
        if self._used + size <= self.cache_bytes:
            self._states[i] = st
            self._used += size
        return st

    def clean(self) -> np.ndarray:
        out = np.empty(self.n, dtype=np.float64)
        for i, (idx, _) in enumerate(self.batches):
            out[idx] = self.state(i).clean.double().cpu().numpy()
        return out

    def knockouts(self, kos: list[Knockout]) -> np.ndarray:
        out = np.empty((len(kos), self.n), dtype=np.float64)
        for i, (idx, _) in enumerate(self.batches):
            out[:, idx] = self.engine.score(self.state(i), kos).double().cpu().numpy()
        return out

    def mask(self, mask: InteractionMask) -> np.ndarray:
        out = np.empty(self.n, dtype=np.float64)
        for i, (idx, _) in enumerate(self.batches):
            out[idx] = self.engine.score_mask(self.state(i), mask).double().cpu().numpy()
        return out


def _plain(obj):
    """JSON round trip: rows computed now and rows read back from a sidecar become the very same values."""
    return json.loads(json.dumps(obj))


class _Partial:
    """Append-only sidecar of finished units; a torn last line (killed mid-write) is discarded."""

    MISMATCH = (
        "partial results of a different sweep; pass restart=True (--restart) to start afresh, or choose another output"
    )

    def __init__(self, path: Path, key: str, restart: bool = False, mismatch: str | None = None):
        from mice.distributed import ShardedJournal

        self.path, self.key = path, key  # one journal per rank (`mice.distributed`), all read on resume
        self._journal = ShardedJournal(path, PARTIAL_FORMAT, key, mismatch or self.MISMATCH, restart=restart)
        self.units: dict[int, dict] = {int(obj["unit"]): obj for obj in self._journal.records}

    def add(self, unit: int, rows: list, per_query: list) -> None:
        obj = {"unit": unit, "rows": rows, "per_query": per_query}
        self._journal.append(obj)
        self.units[unit] = obj

    def close(self) -> None:
        self._journal.close()

    def merged(self) -> dict[int, dict]:
        """Every rank's finished units (after the barrier)."""
        return {int(o["unit"]): o for o in self._journal.all_records(PARTIAL_FORMAT, self.key, self.MISMATCH)}

    def unlink(self) -> None:
        self._journal.unlink_all()


def _units(kos: list[Knockout], unit_size: int) -> list[list[Knockout]]:
    by_layer: dict[int, list[Knockout]] = {}
    for ko in kos:
        by_layer.setdefault(ko.layer, []).append(ko)
    units = []
    for layer in sorted(by_layer):
        group = by_layer[layer]
        units += [group[s : s + unit_size] for s in range(0, len(group), unit_size)]
    return units


def _ko_row(ko: Knockout, mode: str, status: str = "ok", reason: str = "") -> dict:
    src, dst = ko.path.split("->")
    return {
        "layer": ko.layer,
        "head": ko.head,
        "path": ko.path,
        "from": src.strip(),
        "to": dst.strip(),
        "mode": mode,
        "status": status,
        "reason": reason,
    }


def sweep(
    model,
    data,
    split: str | None = None,
    run=None,
    k: int = 20,
    *,
    paths=None,
    layers=None,
    heads=False,
    mode: str = "renorm",
    base=None,
    max_queries: int | None = None,
    metrics=("nDCG@10", "RR@10"),
    batch_size: int = 16,
    strategy: str = "auto",
    out=None,
    restart: bool = False,
    unit_size: int = 25,
    cache_bytes: int = 1 << 30,
    n_resamples: int = 2000,
    show_progress_bar: bool = False,
    callback: Callable[[int, int], None] | None = None,
    meta: dict | None = None,
    n_boot: int = 1000,
    structural: bool = True,
    rank_by: str | None = None,
    on_resume: Callable[[Path, int], None] | None = None,
) -> SweepResult:
    """Knock out each path (in each layer; with `heads`, also in each head) and measure the re-ranking.

    `data`: a dataset spec/object with `split` and `run` (file, DataFrame or "bm25"; top `k` per query,
    first `max_queries` queries), or `Candidates`. `paths`: "q->d,d->q" or a list (default: all 25 single
    paths); `layers`: "0-5", a list, or all; `heads`: True or a list of heads for per-head knockouts;
    `base`: knock out on top of this mask (e.g. "mask2"); `strategy`: fast | replicate | naive (see
    `ablations.engine`). `out` makes the sweep resumable and saves its three files. `callback(done, total)`
    is called after each unit of knockouts. Next to nDCG/RR, each row has the sensitive measures of
    `ablations.metrics.RankEffects` with bootstrap CIs over queries (`n_boot` resamples), `rank_by` names the
    one that ranks knockouts (default `delta_margin`), and knockouts that provably cannot change the score
    (`ablations.structural`) are still measured but labelled `status == "structural"`. `on_resume(partial,
    n_done)`: called when finished knockouts are taken over, once the journal's identity has been checked.
    """
    from mice.distributed import require_output, world

    require_output(out, "a sweep")
    w = world()  # under N processes, unit i is rank i % N's; rank 0 merges and tests on all queries
    started = time.perf_counter()
    model, cands = hooked_model(model), as_candidates(data, split, run, k, max_queries)
    evaluator = Evaluator(cands, metrics, n_resamples=n_resamples)
    effects = RankEffects(cands.frame, cands.qrels)
    engine = SweepEngine(model, mode, base, strategy)
    base_mask = engine.base_mask
    kos, reasons, runnable, units = _knockouts(model, paths, layers, heads, base_mask, unit_size)
    rank_by = rank_by or ("delta_margin" if effects.judged else "abs_dscore")

    batches = ScoredBatches(engine, cands.pairs, batch_size, cache_bytes)
    clean = batches.clean()
    clean_pq = evaluator.per_query(clean)
    struct = _structural(runnable, base_mask, batches, mode) if structural else {}

    meta = {
        **(meta or {}),
        **_meta(model, cands, evaluator, engine, mode, base_mask, batch_size, clean_pq, kos, paths, layers, heads),
        **_ranking_meta(rank_by, effects, n_boot, struct),
    }
    out = Path(out) if out is not None else None
    partial = _sweep_journal(
        out, restart, model, cands, engine, evaluator, batch_size, n_resamples, unit_size, n_boot, structural, rank_by
    )
    unit_keys = [[ko.key for ko in u] for u in units]
    results = _resumed(partial, unit_keys, on_resume)
    todo = [i for i, u in enumerate(units) if u[0].key not in results and w.owns(i)]
    measure = _UnitMeasure(batches, evaluator, effects, clean, clean_pq, struct, mode, rank_by, n_boot)
    _measure_units(units, todo, measure, results, partial, len(runnable), show_progress_bar and w.main, callback)
    return _merged_result(w, out, partial, unit_keys, results, kos, reasons, mode, evaluator, clean_pq, meta, started)


def _knockouts(model, paths, layers, heads, base_mask, unit_size):
    """The knockouts, why each cannot run on `base_mask` (None: it can), those that can, and their units."""
    kos = knockout_set(model.n_layers, model.n_heads, paths, layers, heads)
    reasons = {ko.key: check_knockout(ko, base_mask) for ko in kos}

    runnable = [ko for ko in kos if reasons[ko.key] is None]
    units = _units(runnable, unit_size)
    return kos, reasons, runnable, units


def _structural(runnable, base_mask, batches, mode):
    """The runnable knockouts that provably cannot change the score on these batches (`structural_cells`)."""
    return structural_cells(runnable, base_mask, occupancy([b["segment_ids"] for _, b in batches.batches]), mode)


def _ranking_meta(rank_by, effects, n_boot, struct) -> dict:
    """The sweep's metadata on the sensitive measures and the structural knockouts."""
    return {
        "rank_by": rank_by,
        "measures": effects.names,
        "n_boot": n_boot,
        "n_structural": len(struct),
    }


def _merged_result(w, out, partial, unit_keys, results, kos, reasons, mode, evaluator, clean_pq, meta, started):
    """Rank 0 merges every rank's journal, assembles the tables and writes them; the other ranks read them back."""
    if w.distributed:
        w.barrier()  # every rank's journal is complete
        if not w.main:
            w.barrier()  # rank 0 merges and writes the tables
            return load_sweep(out)
        results = _done_results(partial.merged(), unit_keys)
    table, per_query = _assemble(kos, reasons, results, mode, evaluator, clean_pq)
    return _finish(SweepResult(table, per_query, meta), started, w, out, partial)


def _sweep_journal(
    out, restart, model, cands, engine, evaluator, batch_size, n_resamples, unit_size, n_boot, structural, rank_by
):
    """The sweep's journal (`_journal`) with every setting that decides its rows; None without `out`."""
    if out is None:
        return None
    return _journal(
        out,
        restart,
        model,
        cands,
        mode=engine.mode,
        base_mask=engine.base_mask,
        metrics=evaluator.names,
        batch_size=batch_size,
        n_resamples=n_resamples,
        unit_size=unit_size,
        n_boot=n_boot,
        structural=structural,
        rank_by=rank_by,
        strategy=engine.strategy,
    )


def _measure_units(units, todo, measure, results, partial, n_runnable, enabled, callback) -> None:
    """Measure the units `todo` into `results` (key -> (row, per-query)), journalled in `partial`."""
    prog = progress(
        n_runnable,
        "knockouts",
        enabled=enabled,
        done=n_runnable - sum(len(units[i]) for i in todo),
    )
    try:
        with torch.no_grad():
            for n_done, i in enumerate(todo, 1):
                rows, pqs = measure(units[i])
                for r, pq in zip(rows, pqs):
                    results[r["key"]] = (r, pq)
                if partial:
                    partial.add(i, rows, pqs)
                prog.advance(len(units[i]))
                if callback:
                    callback(n_done, len(todo))
    finally:
        prog.stop()
        if partial:
            partial.close()


def _journal(out: Path, restart: bool, model, cands: Candidates, base_mask, **settings) -> _Partial:
    """The sweep's `<out>.partial`, keyed by everything that decides its rows (another sweep's is refused)."""
    from mice.identity import job_identity, mask_identity

    key = job_identity(
        **model.identity(),
        pairs=cands.fingerprint(),
        qrels=_qrels_hash(cands),
        base_mask=mask_identity(base_mask),
        **settings,
    )
    return _Partial(out.with_name(out.name + ".partial"), key, restart)


def _finish(result: SweepResult, started: float, w, out, partial) -> SweepResult:
    """Stamp the time and process count, write the tables (rank 0) and drop the journal, then meet the others."""
    result.meta["elapsed_s"] = round(time.perf_counter() - started, 3)
    result.meta["processes"] = w.size
    if out is not None:
        save_sweep(result, out)
        partial.unlink()
    w.barrier()
    return result


class _UnitMeasure:
    """Score one unit of knockouts and measure each against the clean run: table rows and per-query values."""

    def __init__(
        self, batches, evaluator, effects, clean, clean_pq, struct: dict, mode: str, rank_by: str, n_boot: int
    ):
        self.batches, self.evaluator, self.effects = batches, evaluator, effects
        self.clean, self.clean_pq, self.struct = clean, clean_pq, struct
        self.mode, self.rank_by, self.n_boot = mode, rank_by, n_boot

    def __call__(self, unit: list[Knockout]) -> tuple[list[dict], list[dict]]:
        scores = self.batches.knockouts(unit)
        fx = self.effects.per_query(self.clean, scores)
        fx_sum = self.effects.summarize(fx, n_boot=self.n_boot)
        rows, pqs = [], []
        for j, (ko, s) in enumerate(zip(unit, scores)):
            summary, qdf = self.evaluator.compare(self.clean, self.clean_pq, s)
            sens = {c: float(v) for c, v in fx_sum.iloc[j].items() if c not in summary}
            for m in ("flip_rate", "delta_margin", "dscore", "abs_dscore"):
                if m in fx:
                    qdf[m] = fx[m][j]
            status = ("structural", self.struct[ko.key]) if ko.key in self.struct else ("ok", "")
            rows.append(
                _plain({"key": ko.key, **_ko_row(ko, self.mode, *status), **summary, **sens, "rank_by": self.rank_by})
            )
            pqs.append(_plain(qdf.to_dict(orient="list")))
        return rows, pqs


def _qrels_hash(cands: Candidates) -> str:
    return (
        ""
        if cands.qrels is None
        else hashlib.sha256(cands.qrels.sort_values(["query_id", "doc_id"]).to_csv(index=False).encode()).hexdigest()
    )


def _resumed(partial: _Partial | None, unit_keys: list[list[str]], on_resume) -> dict[str, tuple[dict, list]]:
    """The knockouts a journal already holds; `on_resume(journal, n)` is told when there are any."""
    results = _done_results(dict(partial.units) if partial else {}, unit_keys)
    if results and on_resume is not None:
        on_resume(partial.path, len(results))
    return results


def _done_results(done_units: dict[int, dict], unit_keys: list[list[str]]) -> dict[str, tuple[dict, list]]:
    """Finished knockouts by key, from journal records of the units that still have the same knockouts."""
    results: dict[str, tuple[dict, list]] = {}
    for i, keys in enumerate(unit_keys):
        if i in done_units and [r["key"] for r in done_units[i]["rows"]] == keys:
            for r, pq in zip(done_units[i]["rows"], done_units[i]["per_query"]):
                results[r["key"]] = (r, pq)
    return results


def _meta(
    model,
    cands: Candidates,
    evaluator: Evaluator,
    engine: SweepEngine,
    mode,
    base_mask,
    batch_size,
    clean_pq,
    kos,
    paths,
    layers,
    heads,
) -> dict:
    return {
        "format": SWEEP_FORMAT,
        "model": str(getattr(model.model, "name_or_path", "")),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "max_length": model.max_length,
        "source": cands.source,
        "query_ids": cands.query_ids,
        "n_pairs": len(cands),
        "mode": mode,
        "base": base_mask.to_dict(),
        "metrics": evaluator.names,
        "strategy": engine.strategy,
        "batch_size": batch_size,
        "clean": evaluator.summary(clean_pq),
        "n_knockouts": len(kos),
        "paths": paths if paths is None or isinstance(paths, str) else list(paths),
        "layers": layers if layers is None or isinstance(layers, (str, int)) else list(layers),
        "heads": heads if isinstance(heads, bool) else list(heads),
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }


def _assemble(kos, reasons, results, mode, evaluator: Evaluator, clean_pq) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, pq_frames = [], []
    clean_q = clean_pq.reset_index().rename(columns={"index": "query_id"})
    clean_q.insert(0, "path", "clean")
    clean_q.insert(0, "head", ALL_HEADS)
    clean_q.insert(0, "layer", -1)
    pq_frames.append(clean_q)
    for ko in kos:
        if reasons[ko.key] is not None:
            rows.append(_ko_row(ko, mode, "skipped", reasons[ko.key]))
            continue
        r, pq = results[ko.key]
        rows.append({c: v for c, v in r.items() if c != "key"})
        q = pd.DataFrame(pq)
        q.insert(0, "path", ko.path)
        q.insert(0, "head", ko.head)
        q.insert(0, "layer", ko.layer)
        pq_frames.append(q)
    table = pd.DataFrame(rows)
    for c in KEY_COLUMNS:
        if c not in table.columns:
            table[c] = ""
    metric_cols = [c for c in table.columns if c not in KEY_COLUMNS]
    table = table[KEY_COLUMNS + metric_cols]
    table["layer"] = table["layer"].astype("int64")
    table["head"] = table["head"].astype("int64")
    per_query = pd.concat(pq_frames, ignore_index=True)
    return table, per_query


# ---------------------------------------------------------------------- cumulative (whole-mask) ablations
DEFAULT_PRESETS = ("mask0", "mask1", "mask2", "mask3", "prettr", "sparse_ce")


def preset_masks(specs, num_layers: int) -> list[InteractionMask]:
    """Mask specs (`mask3:k=2`, `mask3(2)`, JSON files) -> masks; `mask3`/`prettr` without k take L/2."""
    if isinstance(specs, str):
        specs = [s for s in (x.strip() for x in _split_specs(specs)) if s]
    return [s if isinstance(s, InteractionMask) else InteractionMask.parse(str(s), num_layers) for s in specs]


def _split_specs(text: str) -> list[str]:
    """Split on commas outside parentheses and not inside `key=value` lists (`mask3:k=2,prettr(1)`)."""
    out, cur, depth = [], "", 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def ablate_masks(
    model,
    data,
    split: str | None = None,
    run=None,
    k: int = 20,
    *,
    masks=DEFAULT_PRESETS,
    mode: str = "renorm",
    max_queries: int | None = None,
    metrics=("nDCG@10", "RR@10"),
    batch_size: int = 16,
    n_resamples: int = 2000,
    out=None,
    show_progress_bar: bool = False,
) -> SweepResult:
    """Apply whole masks zero-shot (no retraining; e.g. the presets) and compare each with the clean model.

    With `out`, finished masks are journalled (`<out>.partial`), so an interrupted run resumes; under N
    processes mask i is rank i % N's and rank 0 writes the tables."""
    from mice.distributed import require_output, world

    require_output(out, "mask ablations")
    w = world()
    started = time.perf_counter()
    model = hooked_model(model)
    cands = as_candidates(data, split, run, k, max_queries)
    evaluator = Evaluator(cands, metrics, n_resamples=n_resamples)
    engine = SweepEngine(model, mode, None)
    batches = ScoredBatches(engine, cands.pairs, batch_size)
    masks = preset_masks(masks, model.n_layers)
    clean = batches.clean()
    clean_pq = evaluator.per_query(clean)
    out = Path(out) if out is not None else None
    partial = _masks_journal(out, model, cands, mode, masks, evaluator, batch_size, n_resamples)
    done = dict(partial.units) if partial else {}
    todo = [i for i in range(len(masks)) if i not in done and w.owns(i)]
    items = track(todo, "masks", enabled=show_progress_bar and w.main)
    try:
        for i in items:
            m = masks[i]
            scores = batches.mask(m)
            summary, qdf = evaluator.compare(clean, clean_pq, scores)
            n_blocked = int((~m.tables[:, :5, :5]).sum())
            qdf.insert(0, "mask", m.name)
            row = _plain({"mask": m.name, "mode": mode, "blocked_cells": n_blocked, **summary})
            pq = _plain(qdf.to_dict(orient="list"))
            done[i] = {"unit": i, "rows": [row], "per_query": [pq]}
            if partial:
                partial.add(i, [row], [pq])
    finally:
        if partial:
            partial.close()
    if w.distributed:
        w.barrier()
        if not w.main:
            w.barrier()
            return load_sweep(out)
        done = partial.merged()
    rows = [done[i]["rows"][0] for i in range(len(masks))]
    frames = [pd.DataFrame(done[i]["per_query"][0]) for i in range(len(masks))]
    clean_q = clean_pq.reset_index().rename(columns={"index": "query_id"})
    clean_q.insert(0, "mask", "clean")
    per_query = pd.concat([clean_q] + frames, ignore_index=True)
    meta = _masks_meta(model, cands, mode, evaluator, clean_pq, masks, started, w)
    result = SweepResult(pd.DataFrame(rows), per_query, meta)
    if out is not None:
        save_sweep(result, out)
        partial.unlink()
    w.barrier()
    return result


def _masks_journal(out, model, cands, mode, masks, evaluator, batch_size, n_resamples):
    """The mask ablation's `<out>.partial`, keyed by everything that decides its rows; None without `out`."""
    if out is None:
        return None
    from mice.identity import job_identity, mask_identity

    key = job_identity(
        **model.identity(),
        pairs=cands.fingerprint(),
        qrels=_qrels_hash(cands),
        mode=mode,
        masks=[[m.name, mask_identity(m)] for m in masks],
        metrics=evaluator.names,
        batch_size=batch_size,
        n_resamples=n_resamples,
    )
    return _Partial(out.with_name(out.name + ".partial"), key)


def _masks_meta(model, cands, mode, evaluator, clean_pq, masks, started, w) -> dict:
    """The mask ablation's metadata, its time taken up to now."""
    return {
        "format": "mice-mask-ablation/1",
        "model": str(getattr(model.model, "name_or_path", "")),
        "source": cands.source,
        "query_ids": cands.query_ids,
        "mode": mode,
        "metrics": evaluator.names,
        "clean": evaluator.summary(clean_pq),
        "masks": {m.name: m.to_dict() for m in masks},
        "elapsed_s": round(time.perf_counter() - started, 3),
        "processes": w.size,
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }
