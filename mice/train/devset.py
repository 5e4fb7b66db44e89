"""Which dev queries validation uses: the first N by id, or N drawn at random, never any excluded query.

The paper validates on 500 random MS MARCO dev queries with dev.small removed, because dev.small is its test
set: choosing checkpoints on test queries makes the reported score optimistic. The draw depends on `dev_seed`
only, so every training seed of a preset validates on the same queries."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from mice.errors import DataError

SAMPLES = ("first", "random")  # how N queries are drawn: the first N by id, or N at random


def excluded_query_ids(spec: str | None) -> set[str]:
    """Query ids named by `spec`: a file of ids (one per line; the first whitespace-separated field counts,
    `#` lines are comments) or a dataset spec (the queries of all its splits)."""
    if not spec:
        return set()
    path = Path(str(spec)).expanduser()
    if path.is_file():
        ids = set()
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if fields and not fields[0].startswith("#"):
                    ids.add(fields[0])
        if not ids:
            raise DataError(f"{path}: dev exclusion list has no query ids")
        return ids
    from mice.data import load_dataset

    ds = load_dataset(str(spec))
    ids = set()
    for split in ds.splits:
        ids.update(ds.queries(split))
    return ids


def query_order(query_ids: Iterable[str], sample: str = "first", seed: int = 0) -> list[str]:
    """The order in which the first N queries are taken: by id ("first"), or a seeded random permutation
    ("random"). Any N-prefix of a random order is a random sample, and smaller samples nest in larger ones: the
    demo's exact sweep re-measures the first queries of its attribution screen, and held-out queries are the rest."""
    ids = sorted(set(map(str, query_ids)))
    if sample == "first":
        return ids
    if sample == "random":
        return [ids[int(i)] for i in np.random.default_rng([int(seed), 43]).permutation(len(ids))]
    raise DataError(f"sample={sample!r}: expected first or random")


def select_dev_queries(
    query_ids: Iterable[str], n: int | None, sample: str = "first", seed: int = 0, exclude: set[str] | None = None
) -> list[str]:
    """The dev query ids to validate on, sorted. Errors when the exclusion leaves nothing."""
    pool = sorted(set(query_ids) - set(exclude or ()))
    if not pool:
        raise DataError("dev set: no query left after the exclusion list (dev_exclude)")
    if n is None or n >= len(pool):
        return pool
    if sample == "first":
        return pool[:n]
    if sample == "random":
        pick = np.random.default_rng([int(seed), 41]).choice(len(pool), size=int(n), replace=False)
        return sorted(pool[int(i)] for i in pick)
    raise DataError(f"dev_sample={sample!r}: expected first or random")
