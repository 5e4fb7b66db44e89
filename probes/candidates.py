"""The (query, document) pairs a probe or an ablation looks at: the top-k candidates of a run, or plain pairs.

Probes and ablations share this so that a sweep, its derivation re-checks and its attention probe all see the
same candidates in the same order (queries sorted by id, documents in first-stage rank order).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from mice.errors import DataError


@dataclass
class Candidates:
    """Pairs to score: `frame` has one row per pair (query_id, doc_id, query, doc), grouped by query.

    `qrels` (judgements restricted to these queries) is None for plain pairs, which can be probed but not
    evaluated.
    """

    frame: pd.DataFrame
    qrels: pd.DataFrame | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.frame["query"], self.frame["doc"]))

    @property
    def query_ids(self) -> list[str]:
        return list(dict.fromkeys(self.frame["query_id"]))

    def fingerprint(self) -> str:
        """Changes whenever the pairs (ids and texts) change: keys resumable sidecars."""
        h = hashlib.sha1()
        for row in self.frame[["query_id", "doc_id", "query", "doc"]].itertuples(index=False):
            h.update(json.dumps(list(row)).encode())
        return h.hexdigest()

    def subset(self, query_ids: Sequence[str]) -> "Candidates":
        keep = set(query_ids)
        frame = self.frame[self.frame["query_id"].isin(keep)].reset_index(drop=True)
        qrels = None if self.qrels is None else self.qrels[self.qrels["query_id"].isin(keep)].reset_index(drop=True)
        return Candidates(frame, qrels, dict(self.source))


def from_pairs(pairs: Sequence[Sequence[str]]) -> Candidates:
    """Plain (query, doc) pairs, e.g. typed in a notebook; each pair is its own query `p<i>`."""
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise DataError("no (query, document) pairs given")
    if any(len(p) != 2 for p in pairs):
        raise DataError("pairs must be (query, document) tuples")
    frame = pd.DataFrame(
        {
            "query_id": [f"p{i}" for i in range(len(pairs))],
            "doc_id": [f"p{i}" for i in range(len(pairs))],
            "query": [p[0] for p in pairs],
            "doc": [p[1] for p in pairs],
        }
    )
    return Candidates(frame, None, {"kind": "pairs", "n": len(pairs)})


def resolve_run(dataset, split: str, run, k: int) -> pd.DataFrame:
    """A run DataFrame from a DataFrame, a run file, or `"bm25"` (computed with mice.rank.first_stage)."""
    from mice.rank.runs import make_run, read_run

    if isinstance(run, pd.DataFrame):
        return make_run(run)
    if str(run).lower() == "bm25":
        from mice.rank.first_stage import bm25_run

        return bm25_run(dataset, split, k=k)
    return read_run(run)


def from_run(
    dataset,
    split: str,
    run,
    k: int = 20,
    max_queries: int | None = None,
    query_ids: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    sample: str = "first",
    seed: int = 0,
) -> Candidates:
    """Top-`k` candidates of `run` for the judged queries of `split` (queries sorted by id).

    `max_queries` keeps N queries: the first N by id (`sample="first"`), or the first N of a random order drawn
    under `seed` (`sample="random"`; see `mice.train.devset.query_order`). Ids often sort by topic (the embedded
    docs by package), so the first N by id can be one topic. `query_ids` selects explicit ones; `exclude` removes
    some (used to hold out the queries a sweep saw when a derivation re-checks its mask).
    """
    from mice.data import load_dataset
    from mice.rank.rerank import candidates as top_k
    from mice.train.devset import query_order

    ds = load_dataset(dataset)
    queries = ds.queries(split)
    run_df = resolve_run(ds, split, run, k)
    cands = top_k(run_df, queries, k)
    qids = query_order(cands, sample, seed)
    if query_ids is not None:
        wanted = [str(q) for q in query_ids]
        missing = [q for q in wanted if q not in cands]
        if missing:
            raise DataError(
                f"{ds.name}/{split}: {len(missing)} requested queries have no candidates (e.g. {missing[:3]})"
            )
        qids = wanted
    skip = set(map(str, exclude))
    qids = [q for q in qids if q not in skip]
    if max_queries is not None:
        qids = qids[:max_queries]
    if query_ids is None:
        qids = sorted(qids)
    if not qids:
        raise DataError(f"{ds.name}/{split}: no queries with candidates to look at")
    corpus = ds.corpus()
    rows = []
    for q in qids:
        for d in cands[q]:
            if d not in corpus:
                raise DataError(f"run names document {d!r}, which is not in {ds.name}'s corpus")
            rows.append((q, d, queries[q], corpus[d]))
    frame = pd.DataFrame(rows, columns=["query_id", "doc_id", "query", "doc"])
    qrels = ds.qrels(split)
    qrels = qrels[qrels["query_id"].isin(set(qids))].reset_index(drop=True)
    name = _spec(dataset) if isinstance(dataset, (str, os.PathLike)) else getattr(ds, "spec", None) or ds.name
    source = {
        "kind": "run",
        "dataset": name,
        "split": split,
        "run": _spec(run) if isinstance(run, (str, os.PathLike)) else "<DataFrame>",
        "k": k,
        "max_queries": max_queries,
    }
    if sample != "first":  # recorded only when set, so that held-out queries are drawn the same way
        source.update(sample=sample, seed=int(seed))
    return Candidates(frame, qrels, source)


def _spec(value) -> str:
    """A spec as recorded in metadata: existing paths made absolute so a later step can find them anywhere."""
    from pathlib import Path

    p = Path(str(value))
    return str(p.resolve()) if p.exists() else str(value)


def as_candidates(
    data, split: str | None = None, run=None, k: int = 20, max_queries: int | None = None, sample: str = "first"
) -> Candidates:
    """Accept Candidates, a list of (query, doc) pairs, or a dataset (+ split and run)."""
    if isinstance(data, Candidates):
        return data
    if isinstance(data, (list, tuple)) and (not data or isinstance(data[0], (list, tuple))):
        c = from_pairs(data)
        return c if max_queries is None else c.subset(c.query_ids[:max_queries])
    if split is None or run is None:
        raise DataError("a dataset needs a split and a run (a run file, a DataFrame or 'bm25')")
    return from_run(data, split, run, k=k, max_queries=max_queries, sample=sample)
