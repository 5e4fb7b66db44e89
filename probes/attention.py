"""Attention mass along segment paths, for every layer and head, aggregated over a set of pairs.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b` (row a, column b of the attention
matrix). For one pair, layer and head, the mass of `a->b` is the attention weight a token of `a` puts on all
tokens of `b`, averaged over the tokens of `a`. The table reports its mean over pairs (`mass`), the spread
over pairs (`std`) and the token-weighted mean (`token_mass`). Without a mask, `mass` sums to 1 over `to` for
every (layer, head, from); `head == -1` rows average the heads of a layer (per pair, then over pairs).

Patterns are reduced inside `hook_pattern` hooks, so nothing like a full activation cache is kept; the raw
patterns of a few chosen examples can be recorded separately (`attention_examples`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mice.errors import ModelError
from mice.logs import track
from mice.results import EXAMPLES_FORMAT, load_examples, load_probe, read_result, sidecar  # noqa: F401 (re-exported)
from mice.segments import REAL_SEGMENTS, SEG, SEGMENTS

from probes.candidates import Candidates, as_candidates

N_SEG = len(SEGMENTS)
PROBE_FORMAT = "mice-probe-attention/1"
COLUMNS = ["layer", "head", "from", "to", "path", "mass", "std", "n_pairs", "token_mass", "n_tokens"]


def hooked_model(model, max_length: int | None = None):
    """A HookedCrossEncoder from a model object or a spec (folder, hub name, `packaged:minilm`)."""
    from mice.models.hooked import HookedCrossEncoder

    if isinstance(model, HookedCrossEncoder):
        return model
    if isinstance(model, (str, os.PathLike)):
        from mice.models.loader import load

        return load(str(model), max_length=max_length, kind="hooked")
    raise ModelError(
        f"probes and ablations need a cross-encoder with hooks (HookedCrossEncoder), got "
        f"{type(model).__name__}; MICE models have their interaction pattern built in"
    )


def _batches(n: int, lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches over pairs sorted by length (less padding), fixed for a given input."""
    order = np.argsort([-x for x in lengths], kind="stable")
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


class _PathAccumulator:
    """Running sums of per-pair path masses (float64), so any number of pairs fits in constant memory."""

    def __init__(self, n_layers: int, n_heads: int):
        shape = (n_layers, n_heads + 1, N_SEG, N_SEG)
        self.sum = np.zeros(shape)
        self.sumsq = np.zeros(shape)
        self.tok_sum = np.zeros(shape)
        self.n_pairs = np.zeros(N_SEG)
        self.n_tokens = np.zeros(N_SEG)

    def add_counts(self, onehot):
        counts = onehot.sum(1)  # [B, 6]
        self.n_pairs += (counts > 0).sum(0).double().numpy()
        self.n_tokens += counts.sum(0).double().numpy()

    def hook(self, layer: int, onehot):
        import torch

        counts = onehot.sum(1)  # [B, 6]
        present = (counts > 0).to(torch.float64)
        denom = counts.clamp(min=1)

        def fn(pattern, hook=None):
            p = pattern.detach().to(torch.float64)
            oh = onehot.to(torch.float64)
            to_seg = torch.matmul(p, oh[:, None])  # [B, H, T, 6]: mass each token sends to each segment
            tok = torch.einsum("bta,bhtc->bhac", oh, to_seg)  # [B, H, 6, 6] summed over attending tokens
            per_pair = tok / denom[:, None, :, None]
            per_pair = torch.cat([per_pair, per_pair.mean(1, keepdim=True)], dim=1)  # head -1 = mean of heads
            tok = torch.cat([tok, tok.mean(1, keepdim=True)], dim=1)
            w = present[:, None, :, None]
            self.sum[layer] += (per_pair * w).sum(0).numpy()
            self.sumsq[layer] += (per_pair**2 * w).sum(0).numpy()
            self.tok_sum[layer] += tok.sum(0).numpy()
            return pattern

        return fn

    def table(self) -> pd.DataFrame:
        n_layers, n_h1 = self.sum.shape[:2]
        rows = []
        for l in range(n_layers):
            for hi in range(n_h1):
                head = hi if hi < n_h1 - 1 else -1
                for a in REAL_SEGMENTS:
                    ia = SEG[a]
                    n = self.n_pairs[ia]
                    for b in REAL_SEGMENTS:
                        ib = SEG[b]
                        mean = self.sum[l, hi, ia, ib] / n if n else np.nan
                        var = (self.sumsq[l, hi, ia, ib] - n * mean**2) / (n - 1) if n > 1 else np.nan
                        std = float(np.sqrt(max(var, 0.0))) if n > 1 else np.nan
                        ntok = self.n_tokens[ia]
                        rows.append(
                            (
                                l,
                                head,
                                a,
                                b,
                                f"{a}->{b}",
                                float(mean),
                                std,
                                int(n),
                                float(self.tok_sum[l, hi, ia, ib] / ntok) if ntok else np.nan,
                                int(ntok),
                            )
                        )
        return pd.DataFrame(rows, columns=COLUMNS)


def attention_paths(
    model,
    data,
    split: str | None = None,
    run=None,
    k: int = 20,
    max_queries: int | None = None,
    batch_size: int = 16,
    mask=None,
    mode: str = "renorm",
    show_progress_bar: bool = False,
) -> pd.DataFrame:
    """Mean attention mass per (layer, head, from, to) over the pairs of `data`.

    `data`: a dataset (spec or object, with `split` and `run`: a run file, DataFrame or "bm25", top-`k` per
    query, first `max_queries` queries), a list of (query, doc) pairs, or `Candidates`. `mask`/`mode` probe
    the model under an interaction mask. Returns the tidy table (columns `COLUMNS`); `table.attrs["meta"]`
    says what was probed.
    """
    import torch

    model = hooked_model(model)
    cands = as_candidates(data, split, run, k, max_queries)
    pairs = cands.pairs
    acc = _PathAccumulator(model.n_layers, model.n_heads)
    batches = _batches(len(pairs), [len(q) + len(d) for q, d in pairs], batch_size)
    batches = track(batches, "probing attention", enabled=show_progress_bar)
    resolved = model.resolve_mask(mask)
    with torch.no_grad(), model.using_mask(resolved, mode):
        for idx in batches:
            batch = model.tokenize([pairs[i] for i in idx])
            onehot = torch.nn.functional.one_hot(batch["segment_ids"], N_SEG).to(torch.float64).cpu()
            acc.add_counts(onehot)
            hooks = [(f"blocks.{l}.attn.hook_pattern", _on_cpu(acc.hook(l, onehot))) for l in range(model.n_layers)]
            model.run_with_hooks(batch, fwd_hooks=hooks)
    table = acc.table()
    table.attrs["meta"] = {
        "format": PROBE_FORMAT,
        "model": str(getattr(model.model, "name_or_path", "")),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "n_pairs": len(pairs),
        "n_queries": len(cands.query_ids),
        "mask": None if resolved is None else resolved.to_dict(),
        "mode": mode,
        "source": cands.source,
        "convention": "a->b: tokens of group a attend to tokens of group b",
    }
    return table


def _on_cpu(fn):
    def hook(pattern, hook=None):
        fn(pattern.cpu())
        return pattern

    return hook


def attention_examples(
    model, data, n: int = 3, split: str | None = None, run=None, k: int = 20, mask=None, mode: str = "renorm"
) -> list[dict]:
    """Raw attention patterns of `n` chosen pairs: for each of the first `n` queries, its best-ranked
    relevant candidate (or its top candidate when nothing is judged relevant, or plain pairs in order).

    Each example: query_id, doc_id, tokens, segments (names), pattern float32 [layers, heads, T, T].
    """
    import torch

    model = hooked_model(model)
    cands = as_candidates(data, split, run, k, None)
    chosen = _choose_examples(cands, n)
    out = []
    resolved = model.resolve_mask(mask)
    with torch.no_grad(), model.using_mask(resolved, mode):
        for row in chosen.itertuples(index=False):
            batch = model.tokenize([(row.query, row.doc)])
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
            pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.n_layers)])
            ids = batch["input_ids"][0].tolist()
            out.append(
                {
                    "query_id": row.query_id,
                    "doc_id": row.doc_id,
                    "tokens": model.tokenizer.convert_ids_to_tokens(ids),
                    "segments": [SEGMENTS[s] for s in batch["segment_ids"][0].tolist()],
                    "pattern": pattern.float().cpu().numpy(),
                }
            )
    return out


def _choose_examples(cands: Candidates, n: int) -> pd.DataFrame:
    frame = cands.frame
    picks = []
    rel = set()
    if cands.qrels is not None:
        q = cands.qrels
        rel = set(zip(q.loc[q["relevance"] > 0, "query_id"], q.loc[q["relevance"] > 0, "doc_id"]))
    for qid, group in frame.groupby("query_id", sort=False):
        if len(picks) >= n:
            break
        hits = [i for i, r in enumerate(group.itertuples(index=False)) if (r.query_id, r.doc_id) in rel]
        picks.append(group.iloc[hits[0] if hits else 0])
    return pd.DataFrame(picks).reset_index(drop=True) if picks else frame.iloc[:0]


def save_examples(examples: list[dict], path) -> Path:
    """One compressed .npz: per example its pattern, tokens and segments, plus a JSON index."""
    from mice.files import atomic_path

    path = Path(path)
    arrays = {}
    index = []
    for i, ex in enumerate(examples):
        arrays[f"pattern_{i}"] = ex["pattern"].astype(np.float32)
        index.append(
            {"query_id": ex["query_id"], "doc_id": ex["doc_id"], "tokens": ex["tokens"], "segments": ex["segments"]}
        )
    arrays["index"] = np.array(json.dumps({"format": EXAMPLES_FORMAT, "examples": index}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def save_probe(table: pd.DataFrame, out, examples: list[dict] | None = None, meta: dict | None = None) -> Path:
    """Write the table (parquet/CSV by extension), `<stem>.meta.json` and, if given, `<stem>.examples.npz`."""
    from mice.files import write_json_atomic, write_table

    out = Path(out)
    meta = dict(meta or table.attrs.get("meta", {}))
    if examples:
        meta["examples"] = sidecar(out, ".examples.npz").name
        save_examples(examples, sidecar(out, ".examples.npz"))
    frame = table.copy()
    frame.attrs = {}
    write_table(frame, out)
    write_json_atomic(sidecar(out, ".meta.json"), meta)
    return out


def probe_attention(
    model,
    data,
    out,
    split: str | None = None,
    run=None,
    k: int = 20,
    max_queries: int | None = None,
    examples: int = 0,
    batch_size: int = 16,
    mask=None,
    mode: str = "renorm",
    show_progress_bar: bool = False,
) -> pd.DataFrame:
    """`attention_paths` + `attention_examples`, saved beside each other (what `mice probe attention` does)."""
    model = hooked_model(model)
    cands = as_candidates(data, split, run, k, max_queries)
    table = attention_paths(
        model, cands, batch_size=batch_size, mask=mask, mode=mode, show_progress_bar=show_progress_bar
    )
    exs = attention_examples(model, cands, n=examples, mask=mask, mode=mode) if examples else None
    save_probe(table, out, exs)
    return table


def layer_means(table: pd.DataFrame) -> pd.DataFrame:
    """Head-averaged rows only (head == -1): one row per (layer, from, to)."""
    return table[table["head"] == -1].reset_index(drop=True)
