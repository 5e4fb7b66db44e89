"""First-stage retrieval: BM25 (bm25s) over a dataset's corpus, with the index cached per dataset.

The index lives in `cache_dir()/bm25/<dataset>-<fingerprint>/` and is rebuilt only when the corpus changes.
Tokenisation: lower-cased words of two or more characters, English stop words removed, no stemming (so the
same text always gives the same run, with no optional stemmer installed or not).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mice.data import Dataset, cache_dir, load_dataset
from mice.data.base import warn
from mice.files import read_table, write_table
from mice.rank.runs import make_run, sort_run

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class BM25Config:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"

    def tag(self) -> str:
        return f"{self.method}-k1{self.k1:g}-b{self.b:g}-{self.stopwords or 'nostop'}"


def _stopwords(name: str) -> frozenset[str]:
    if not name:
        return frozenset()
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str, stopwords: frozenset[str]) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in stopwords]


class BM25Index:
    """A bm25s index over one dataset's corpus, aligned with its doc ids."""

    def __init__(self, retriever, doc_ids: list[str], config: BM25Config) -> None:
        self.retriever, self.doc_ids, self.config = retriever, doc_ids, config
        self._stop = _stopwords(config.stopwords)
        self._vocab = retriever.vocab_dict

    @classmethod
    def build(cls, corpus: dict[str, str], config: BM25Config = BM25Config()) -> "BM25Index":
        import bm25s

        stop = _stopwords(config.stopwords)
        doc_ids = list(corpus)
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index([tokenize(corpus[d], stop) for d in doc_ids], show_progress=False)
        return cls(retriever, doc_ids, config)

    @classmethod
    def for_dataset(
        cls, dataset: "str | Dataset", config: BM25Config = BM25Config(), use_cache: bool = True
    ) -> "BM25Index":
        """Load the cached index of `dataset`, building (and caching, atomically) it on first use."""
        import bm25s

        ds = load_dataset(dataset)
        safe = re.sub(r"[^\w.-]+", "_", ds.name)[:60]
        folder = cache_dir() / "bm25" / f"{safe}-{ds.fingerprint()[:24]}-{config.tag()}"
        if use_cache and (folder / "doc_ids.json").exists():
            retriever = bm25s.BM25.load(str(folder), show_progress=False)
            doc_ids = json.loads((folder / "doc_ids.json").read_text(encoding="utf-8"))
            return cls(retriever, doc_ids, config)
        index = cls.build(ds.corpus(), config)
        if use_cache:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            try:
                index.retriever.save(str(tmp), show_progress=False)
                (tmp / "doc_ids.json").write_text(json.dumps(index.doc_ids), encoding="utf-8")
                try:
                    tmp.rename(folder)
                except OSError:  # built concurrently by another process: theirs is as good as ours
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return index

    def search(self, queries: dict[str, str], k: int = 100) -> pd.DataFrame:
        """Top-`k` documents per query as a run DataFrame (documents with no query term are not returned)."""
        k = min(k, len(self.doc_ids))
        qids, token_ids = [], []
        empty = 0
        for qid, text in queries.items():
            ids = [self._vocab[t] for t in tokenize(text, self._stop) if t in self._vocab]
            if ids:
                qids.append(qid)
                token_ids.append(ids)
            else:
                empty += 1
        if empty:
            warn(f"BM25: {empty} of {len(queries)} queries share no term with the corpus and get no results")
        rows_q, rows_d, rows_s = [], [], []
        if qids:
            docs, scores = self.retriever.retrieve(token_ids, k=k, show_progress=False, n_threads=0)
            for qid, di, sc in zip(qids, np.asarray(docs), np.asarray(scores)):
                keep = sc > 0
                rows_q.extend([qid] * int(keep.sum()))
                rows_d.extend(self.doc_ids[int(i)] for i in di[keep])
                rows_s.extend(float(s) for s in sc[keep])
        return sort_run(make_run({"query_id": rows_q, "doc_id": rows_d, "score": rows_s}))[
            ["query_id", "doc_id", "score"]
        ]


def bm25_run(
    dataset: "str | Dataset",
    split: str = "test",
    k: int = 100,
    config: BM25Config = BM25Config(),
    use_cache: bool = True,
) -> pd.DataFrame:
    """BM25 top-`k` run for the queries of `split` (DataFrame [query_id, doc_id, score], ranked)."""
    ds = load_dataset(dataset)
    queries = ds.queries(split)
    # the run itself is cached next to the index: every training run and search candidate on a dataset
    # retrieves its training negatives again, ~2 s for a few thousand queries each time
    path = None
    if use_cache:
        from mice.identity import identity_hash

        safe = re.sub(r"[^\w.-]+", "_", ds.name)[:60]
        key = identity_hash(
            {
                "data": ds.fingerprint(),
                "bm25": config.tag(),
                "split": split,
                "k": int(k),
                "queries": sorted(queries.items()),
            }
        )[:24]
        path = cache_dir() / "bm25" / "runs" / f"{safe}-{split}-{key}.parquet"
        if path.exists():
            return read_table(path)
    run = BM25Index.for_dataset(ds, config, use_cache).search(queries, k)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(run, path)
    return run
