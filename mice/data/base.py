"""The one interface every data source presents: a corpus, queries per split, graded judgements per split."""

from __future__ import annotations

import abc
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Mapping

import pandas as pd

from mice.errors import DataError, DataWarning
from mice.rank.runs import make_qrels

QRELS_COLUMNS = ["query_id", "doc_id", "relevance"]


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def cache_dir() -> Path:
    """Where built artefacts (embedded corpus, BM25 indexes) live: `$MICE_CACHE`, else `~/.cache/mice`."""
    root = os.environ.get("MICE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mice"


class Dataset:
    """A retrieval test collection.

    Subclasses implement `_load_corpus`, `_load_queries(split)`, `_load_qrels(split)` and `splits`; this class
    checks split names, caches what was loaded and keeps queries and qrels consistent (`queries(split)` holds
    exactly the judged queries of that split).
    """

    name: str = "dataset"

    def __init__(self) -> None:
        self._corpus: dict[str, str] | None = None
        self._queries: dict[str, dict[str, str]] = {}
        self._qrels: dict[str, pd.DataFrame] = {}

    # -- to implement -------------------------------------------------------------------------------------
    @property
    def splits(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _load_corpus(self) -> dict[str, str]:
        raise NotImplementedError

    def _load_queries(self, split: str) -> dict[str, str]:
        raise NotImplementedError

    def _load_qrels(self, split: str) -> pd.DataFrame:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes when the data changes (keys caches such as the BM25 index)."""
        h = hashlib.sha1()
        for doc_id, text in sorted(self.corpus().items()):
            h.update(doc_id.encode())
            h.update(b"\0")
            h.update(text.encode())
            h.update(b"\1")
        return h.hexdigest()

    # -- public API -----------------------------------------------------------------------------------------
    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise DataError(f"{self.name}: no split {split!r} (available: {', '.join(self.splits) or 'none'})")
        return split

    def corpus(self) -> dict[str, str]:
        """doc_id -> text (title and body joined)."""
        if self._corpus is None:
            self._corpus = self._load_corpus()
        return self._corpus

    def queries(self, split: str) -> dict[str, str]:
        """query_id -> text for the queries of `split`."""
        self.check_split(split)
        if split not in self._queries:
            self._queries[split] = self._load_queries(split)
        return self._queries[split]

    def qrels(self, split: str) -> pd.DataFrame:
        """Judgements of `split` as a DataFrame [query_id, doc_id, relevance] (str, str, int)."""
        self.check_split(split)
        if split not in self._qrels:
            self._qrels[split] = self._load_qrels(split)
        return self._qrels[split]

    def stats(self) -> dict:
        out = {"name": self.name, "corpus": len(self.corpus())}
        for split in self.splits:
            q = self.qrels(split)
            out[split] = {
                "queries": len(self.queries(split)),
                "qrels": len(q),
                "relevant": int((q["relevance"] > 0).sum()),
            }
        return out

    def validate(self) -> dict:
        """Cross-check qrels against the corpus; returns counts of judged documents missing from it (warned)."""
        corpus = self.corpus()
        missing = {}
        for split in self.splits:
            q = self.qrels(split)
            n = int((~q["doc_id"].isin(corpus.keys())).sum())
            if n:
                warn(
                    f"{self.name}/{split}: {n} judgements name documents that are not in the corpus "
                    "(kept: they count as relevant documents no run can retrieve)"
                )
            missing[split] = n
        return missing

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} splits={list(self.splits)}>"


class InMemoryDataset(Dataset):
    """A dataset held in Python objects (notebooks, tests, converted data).

    `queries` and `qrels` map split -> {query_id: text} and split -> DataFrame (or rows of
    (query_id, doc_id, relevance)). Queries of a split are restricted to judged ones, as in BEIR.
    """

    def __init__(
        self,
        name: str,
        corpus: Mapping[str, str],
        queries: Mapping[str, Mapping[str, str]],
        qrels: Mapping[str, object],
    ) -> None:
        super().__init__()
        self.name = name
        self._corpus_src = {str(k): str(v) for k, v in corpus.items()}
        self._queries_src = {s: {str(k): str(v) for k, v in q.items()} for s, q in queries.items()}
        self._qrels_src = {s: q if isinstance(q, pd.DataFrame) else make_qrels(list(q)) for s, q in qrels.items()}
        for split, df in self._qrels_src.items():
            missing = set(df["query_id"].astype(str)) - set(self._queries_src.get(split, {}))
            if missing:
                raise DataError(
                    f"{name}/{split}: qrels name {len(missing)} unknown queries (e.g. {sorted(missing)[:3]})"
                )

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self._qrels_src))

    def _load_corpus(self):
        return dict(self._corpus_src)

    def _load_queries(self, split):
        judged = set(self.qrels(split)["query_id"])
        return {k: v for k, v in self._queries_src.get(split, {}).items() if k in judged}

    def _load_qrels(self, split):
        return make_qrels(self._qrels_src[split])

    def fingerprint(self) -> str:
        return "mem-" + super().fingerprint()


class TableDataset(Dataset, abc.ABC):
    """A collection held as one table (`id`, `query`, `doc`, `split`), built on first use by `_build()`: each
    query's one relevant document is the row's own `doc`, under the same id (the embedded collections)."""

    _table: "pd.DataFrame | None" = None
    build_stats: dict = {}

    @abc.abstractmethod
    def _build(self) -> tuple[pd.DataFrame, dict]:
        """The table and its build statistics (each collection builds its own)."""

    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table, self.build_stats = self._build()
        return self._table

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "dev", "test")

    def _load_corpus(self) -> dict[str, str]:
        return dict(zip(self.table["id"], self.table["doc"]))

    def _load_queries(self, split: str) -> dict[str, str]:
        t = self.table[self.table["split"] == split]
        return dict(zip(t["id"], t["query"]))

    def _load_qrels(self, split: str) -> pd.DataFrame:
        ids = self.table.loc[self.table["split"] == split, "id"]
        return make_qrels({"query_id": ids, "doc_id": ids, "relevance": 1})


def file_fingerprint(paths) -> str:
    """Cheap fingerprint of files on disk: absolute path, size and modification time."""
    parts = []
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        parts.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()
