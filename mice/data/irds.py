"""`irds:<id>` datasets through the optional `ir_datasets` package (pip install 'mice-toolkit[irds]')."""

from __future__ import annotations

import pandas as pd

from mice.errors import DataError
from mice.rank.runs import make_qrels
from mice.data.base import Dataset


def _import_ir_datasets():
    try:
        import ir_datasets
    except ImportError:
        raise DataError(
            "irds: datasets need the optional package ir_datasets "
            "(pip install 'mice-toolkit[irds]' or pip install ir_datasets); it is not installed"
        ) from None
    return ir_datasets


class IrdsDataset(Dataset):
    """An ir_datasets collection; its queries and qrels form one split (`test`, or `irds:<id>?split=dev`).

    ir_datasets downloads on first use; offline without a local copy the error says so."""

    def __init__(self, dataset_id: str, split: str = "test") -> None:
        super().__init__()
        self.dataset_id = dataset_id
        self.name = f"irds:{dataset_id}"
        self._split = split
        ir_datasets = _import_ir_datasets()
        try:
            self._ds = ir_datasets.load(dataset_id)
        except KeyError:
            raise DataError(f"irds: unknown dataset id {dataset_id!r}") from None

    @property
    def splits(self) -> tuple[str, ...]:
        return (self._split,)

    def _guard(self, what: str, fn):
        try:
            return fn()
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - network/download failures surface in many types
            raise DataError(
                f"{self.name}: could not load {what} ({type(err).__name__}: {err}); "
                "ir_datasets needs network access or a local copy"
            ) from None

    def _load_corpus(self) -> dict[str, str]:
        if not self._ds.has_docs():
            raise DataError(f"{self.name}: has no documents")

        def read():
            out = {}
            for doc in self._ds.docs_iter():
                text = getattr(doc, "default_text", None)
                text = text() if callable(text) else getattr(doc, "text", "")
                out[doc.doc_id] = text
            return out

        return self._guard("documents", read)

    def _load_queries(self, split: str) -> dict[str, str]:
        judged = set(self.qrels(split)["query_id"])

        def read():
            out = {}
            for q in self._ds.queries_iter():
                text = getattr(q, "default_text", None)
                out[q.query_id] = text() if callable(text) else getattr(q, "text", "")
            return {k: v for k, v in out.items() if k in judged}

        return self._guard("queries", read)

    def _load_qrels(self, split: str) -> pd.DataFrame:
        return self._guard(
            "qrels", lambda: make_qrels([(q.query_id, q.doc_id, q.relevance) for q in self._ds.qrels_iter()])
        )

    def fingerprint(self) -> str:
        return f"irds-{self.dataset_id}"
