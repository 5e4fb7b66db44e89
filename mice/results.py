"""Readers (and the one writer) of saved result tables, shared by the recorders and by what only reads.

`probes/` and `ablations/` write these tables; `figures/`, `mice.viz` and notebooks read them back. Keeping
the readers here lets the readers depend on the core alone, so drawing a figure never imports a recorder.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mice.errors import DataError, MiceError
from mice.files import read_table, write_together

EXAMPLES_FORMAT = "mice-probe-examples/1"
LAYER_DROP_COLUMNS = ("interaction_layers", "contextual_layers", "metric", "value")


def sidecar(out, suffix: str) -> Path:
    """`attn.parquet` + `.meta.json` -> `attn.meta.json` (files that travel with a table)."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def read_result(path, what: str, columns, kind: str | None = None) -> tuple[pd.DataFrame, dict]:
    """A saved result table and its `.meta.json` sidecar ({} when absent). A missing file, or a table without
    `columns` (a sequence, or a function of the table's columns giving one), is a DataError naming the file
    (`what`: "probe table"; `kind`: "an attention-path table")."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    table = read_table(path)
    if callable(columns):
        columns = columns(table.columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not {kind or 'a ' + what} (missing columns {missing})")
    meta_path = sidecar(path, ".meta.json")
    return table, (json.loads(meta_path.read_text()) if meta_path.exists() else {})


# ------------------------------------------------------------------------------------------------- probes
def load_probe(path) -> pd.DataFrame:
    """A saved probe table, with its metadata (if present) in `attrs["meta"]`."""
    table, meta = read_result(path, "probe table", ("layer", "head", "from", "to", "mass"), "an attention-path table")
    if meta:
        table.attrs["meta"] = meta
    return table


def load_examples(path) -> list[dict]:
    """Saved raw attention patterns of a few pairs: query_id, doc_id, tokens, segments and pattern each."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: examples file not found")
    with np.load(path, allow_pickle=False) as z:
        index = json.loads(str(z["index"]))
        if index.get("format") != EXAMPLES_FORMAT:
            raise DataError(f"{path}: not a probe examples file (format {index.get('format')!r})")
        return [{**ex, "pattern": z[f"pattern_{i}"]} for i, ex in enumerate(index["examples"])]


# ------------------------------------------------------------------------------------------------- sweeps
@dataclass
class SweepResult:
    """`table`: one row per knockout; `per_query`: per-query values; `meta`: what was swept."""

    table: pd.DataFrame
    per_query: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        return save_sweep(self, out)


def save_sweep(result: SweepResult, out) -> Path:
    """Write meta, per-query values and the table as one (`write_together`): all three are written before any is
    renamed into place, the table last, so its presence means a complete sweep and a failed write leaves none."""
    out = Path(out)
    ext = out.suffix
    if ext not in (".parquet", ".csv", ".tsv"):
        raise DataError(f"{out}: use a .parquet or .csv output")
    meta = dict(result.meta)
    meta["per_query"] = sidecar(out, f".per_query{ext}").name
    write_together(
        [(sidecar(out, ".meta.json"), meta), (sidecar(out, f".per_query{ext}"), result.per_query), (out, result.table)]
    )
    return out


def load_sweep(path) -> SweepResult:
    """A saved sweep (table, per-query values if present, metadata if present)."""
    path = Path(path)
    table, meta = read_result(
        path,
        "sweep table",
        lambda cols: ("mask", "mode") if "mask" in cols else ("layer", "head", "path", "mode", "status"),
        "a knockout sweep or mask ablation table",
    )
    pq_path = sidecar(path, f".per_query{path.suffix}")
    per_query = read_table(pq_path) if pq_path.exists() else pd.DataFrame()
    return SweepResult(table, per_query, meta)


# ------------------------------------------------------------------------------------- searches over layers
def load_layer_drop(table) -> pd.DataFrame:
    """Validate (and read, for a path) a layer-drop results table: one row per (variant, metric)."""
    if not isinstance(table, pd.DataFrame):
        table = read_table(table)
    missing = [c for c in LAYER_DROP_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"layer-drop results need columns {list(LAYER_DROP_COLUMNS)}; missing {missing}")
    t = table.copy()
    try:
        t["interaction_layers"] = t["interaction_layers"].astype(int)
        t["contextual_layers"] = t["contextual_layers"].astype(int)
        t["value"] = t["value"].astype(float)
    except (TypeError, ValueError) as err:
        raise DataError(f"layer-drop results: layer counts must be integers and values numbers ({err})") from None
    t["metric"] = t["metric"].astype(str)
    if (t["interaction_layers"] < 0).any() or (t["contextual_layers"] < 0).any():
        raise DataError("layer-drop results: negative layer counts")
    return t


def curve(table: pd.DataFrame, stage: str, trained: bool = True) -> pd.DataFrame:
    """The points of one curve of a trained search: every candidate of `stage` at the first rung (trained) or
    untrained. Raises if they did not all have the same number of steps (the equal-steps rule)."""
    t = table[(table["stage"] == stage) & (table["trained"] == trained)]
    if trained:
        t = t[(t["rung"] == 0) & (t["seeds"] == t["seeds"].iloc[0])] if len(t) else t
    if t["steps"].nunique() > 1:
        raise MiceError(f"{stage} curve mixes step counts {sorted(t['steps'].unique())}: not comparable")
    return t.reset_index(drop=True)
