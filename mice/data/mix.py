"""Several collections as one: `mix:A+B+...`, for training on more than one kind of text.

The first collection keeps its ids; the i-th other one's ids become `i:ID` (ids of two collections may
coincide). Corpus, queries and judgements are the union; a split is present when any part has it. Train on a
mix and validate on the first part alone (`TrainConfig.dev_dataset`), so dev numbers stay comparable with a
model trained on that part only. The fingerprint joins the parts' fingerprints.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from mice.errors import DataError
from mice.data.base import Dataset


def split_spec(spec: str) -> list[str]:
    """`mix:A+B` -> [A, B] (at least two parts, none empty)."""
    body = spec[len("mix:") :] if spec.startswith("mix:") else spec
    parts = [p.strip() for p in body.split("+")]
    if len(parts) < 2 or not all(parts):
        raise DataError(f"{spec}: a mix names two or more datasets joined by '+' (mix:embedded:docs+embedded:debian)")
    if any(p.startswith("mix:") for p in parts):
        raise DataError(f"{spec}: a mix cannot hold another mix")
    return parts


class MixedDataset(Dataset):
    def __init__(self, parts: list[Dataset], spec: str | None = None) -> None:
        super().__init__()
        self.parts = list(parts)
        self.name = spec or "mix:" + "+".join(p.name for p in self.parts)

    @staticmethod
    def prefix(i: int) -> str:
        return "" if i == 0 else f"{i}:"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted({s for p in self.parts for s in p.splits}))

    def _load_corpus(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, part in enumerate(self.parts):
            out.update({self.prefix(i) + k: v for k, v in part.corpus().items()})
        return out

    def _load_queries(self, split: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, part in enumerate(self.parts):
            if split in part.splits:
                out.update({self.prefix(i) + k: v for k, v in part.queries(split).items()})
        return out

    def query_parts(self, split: str) -> dict[str, int]:
        """Which part each query of `split` comes from (its index in the mix)."""
        return {
            self.prefix(i) + k: i
            for i, part in enumerate(self.parts)
            if split in part.splits
            for k in part.queries(split)
        }

    def _load_qrels(self, split: str) -> pd.DataFrame:
        frames = []
        for i, part in enumerate(self.parts):
            if split in part.splits:
                q = part.qrels(split).copy()
                q["query_id"] = self.prefix(i) + q["query_id"].astype(str)
                q["doc_id"] = self.prefix(i) + q["doc_id"].astype(str)
                frames.append(q)
        return pd.concat(frames, ignore_index=True)

    def fingerprint(self) -> str:
        joined = "\0".join(p.fingerprint() for p in self.parts)
        return "mix-" + hashlib.sha1(joined.encode()).hexdigest()
