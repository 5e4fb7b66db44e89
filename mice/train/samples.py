"""Training groups: one query, one relevant document and `n` hard negatives.

Negatives come from BM25's top-`depth` for the query with every judged-relevant document removed (or from a
teacher score file's triples). The sampler is *stateless*: the groups of step `s` depend only on (seed, s), so a
resumed run sees exactly the batches an uninterrupted one would, and under data parallelism every process draws
the same global batch and takes its own slice (rank r of R gets groups [r·B, (r+1)·B)) — which is why R
processes with batch B train exactly like one process with batch R·B.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import numpy as np
import pandas as pd

from mice.errors import DataError

T = TypeVar("T")
REUSE_SIZE = 4  # what `reused` keeps: the pools and dev candidates of the last few (data, settings)
_REUSED: "OrderedDict[tuple, object]" = OrderedDict()


@dataclass
class Group:
    """A query with its documents: `doc_ids[0]` is the positive, the rest negatives."""

    query_id: str
    query: str
    doc_ids: list[str]
    docs: list[str]
    teacher: tuple[float, ...] | None = None  # the teacher's scores of `doc_ids` when the sampler knows them


@dataclass
class TrainingPool:
    """Where groups are drawn from: per query, its relevant documents and its negative candidates."""

    queries: Mapping[str, str]
    positives: dict[str, list[str]]
    candidates: dict[str, list[str]]
    corpus: Mapping[str, str]
    parts: Mapping[str, int] | None = None  # a mix's part index per query (None: one collection)

    def __post_init__(self):
        self.query_ids = sorted(q for q in self.positives if self.positives[q] and self.candidates.get(q))
        if not self.query_ids:
            raise DataError("no training query has both a relevant document and a negative candidate")

    def __len__(self) -> int:
        return len(self.query_ids)


def pool_from_dataset(
    dataset, split: str, depth: int, miner: str | None = None, miner_max_length: int = 256
) -> TrainingPool:
    """Relevant documents from the qrels of `split`, negatives from BM25's top-`depth` minus the judged relevant;
    with a `miner` (bi-encoder spec), its top-`depth` are candidates too (BM25's first, then the miner's new ones)."""
    from mice.data.base import warn
    from mice.rank.first_stage import bm25_run

    corpus = dataset.corpus()
    queries = dataset.queries(split)
    qrels = dataset.qrels(split)
    rel = qrels[qrels["relevance"] > 0]
    positives: dict[str, list[str]] = {}
    missing = 0
    for qid, did in zip(rel["query_id"], rel["doc_id"]):
        if did in corpus:
            positives.setdefault(qid, []).append(did)
        else:
            missing += 1
    if missing:
        warn(f"{dataset.name}/{split}: {missing} relevant documents are not in the corpus (not used for training)")
    run = bm25_run(dataset, split, k=depth)
    if miner is not None:
        from mice.train.mining import mined_run

        run = pd.concat(
            [
                run[["query_id", "doc_id"]],
                mined_run(dataset, split, miner, depth, miner_max_length)[["query_id", "doc_id"]],
            ]
        )
    judged = set(zip(rel["query_id"], rel["doc_id"]))
    candidates: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for qid, did in zip(run["query_id"], run["doc_id"]):
        if (qid, did) not in judged and (qid, did) not in seen:
            seen.add((qid, did))
            candidates.setdefault(qid, []).append(did)
    parts = dataset.query_parts(split) if hasattr(dataset, "query_parts") else None
    pool = TrainingPool(queries, positives, candidates, corpus, parts)
    dropped = len(positives) - len(pool)
    if dropped:
        warn(
            f"{dataset.name}/{split}: {dropped} of {len(positives)} training queries have no BM25 negative "
            f"in the top {depth} and are not used"
        )
    return pool


def reused(key: tuple, build: Callable[[], T]) -> T:
    """`build()`, kept for the rest of the process under `key` (the last `REUSE_SIZE` keys): what a run builds
    from its data alone is built once by a search or a frontier that starts dozens of runs in one process. The
    key must name everything the result depends on; the result is shared, so nobody may modify it."""
    if key in _REUSED:
        _REUSED.move_to_end(key)
        return _REUSED[key]  # type: ignore[return-value]
    value = build()
    _REUSED[key] = value
    while len(_REUSED) > REUSE_SIZE:
        _REUSED.popitem(last=False)
    return value


def shared_pool(dataset, split: str, depth: int, miner: str | None = None, miner_max_length: int = 256) -> TrainingPool:
    """`pool_from_dataset`, built once per process for the same data and settings (`reused`). The key: the
    dataset's fingerprint (what the BM25 index and run it reads are cached under), the content of the split's
    queries and judgements, the depth and the miner's weights; an edited file or a retrained miner never gets a
    stale pool."""
    return reused(
        ("pool", *data_key(dataset, split), int(depth), _miner_key(miner, miner_max_length)),
        lambda: pool_from_dataset(dataset, split, depth, miner, miner_max_length),
    )


def data_key(dataset, split: str) -> tuple:
    """What a pool or a dev set built from `split` of `dataset` depends on, for `reused`: the corpus through the
    dataset's fingerprint (hashing it all again would cost more than the pool on a large collection), and the
    split's queries and judgements by content."""
    from mice.identity import dataset_identity

    return (
        type(dataset).__name__,
        dataset.name,
        dataset.fingerprint(),
        split,
        dataset_identity(dataset, [split], corpus=False),
    )


def _miner_key(miner: str | None, max_length: int):
    from mice.identity import weights_fingerprint

    return None if miner is None else (str(miner), weights_fingerprint(miner), int(max_length))


def pool_from_triples(triples: pd.DataFrame, dataset) -> TrainingPool:
    """Groups from a teacher file's (qid, pos, neg) triples: positives and negatives as the file pairs them."""
    corpus = dataset.corpus()
    queries: dict[str, str] = {}
    for split in dataset.splits:
        queries.update(dataset.queries(split))
    known = (
        triples["qid"].isin(queries.keys()) & triples["pos"].isin(corpus.keys()) & triples["neg"].isin(corpus.keys())
    )
    if not known.all():
        from mice.data.base import warn

        warn(
            f"teacher file: {int((~known).sum())} of {len(triples)} triples name unknown queries or documents (skipped)"
        )
    triples = triples[known]
    positives: dict[str, list[str]] = {}
    candidates: dict[str, list[str]] = {}
    # first occurrences of each (query, document) pair, in file order: hashed, not a scan of the lists
    for pairs, into in ((triples[["qid", "pos"]], positives), (triples[["qid", "neg"]], candidates)):
        for qid, did in pairs.drop_duplicates().itertuples(index=False):
            into.setdefault(qid, []).append(did)
    return TrainingPool(queries, positives, candidates, corpus)


class GroupSampler:
    """Deterministic groups per step: epoch-wise shuffled queries, a random positive, `negatives` random
    candidates (without replacement when there are enough, else with).

    With a mix and `mix_alpha` < 1, part s is drawn with weight n_s ** mix_alpha (n_s: its training queries) and
    still statelessly: the weights become counts in a cycle of `CYCLE` groups, spread evenly over it, and each
    part walks through its own epoch-wise shuffles. `mix_alpha` = 1 draws every query equally often over the union,
    exactly as for one collection."""

    CYCLE = 100

    def __init__(self, pool: TrainingPool, negatives: int, seed: int = 0, mix_alpha: float = 1.0):
        self.pool, self.negatives, self.seed = pool, int(negatives), int(seed)
        self._perm: dict[tuple[int, int], np.ndarray] = {}
        self._by_part: list[list[str]] | None = None
        if pool.parts is not None and float(mix_alpha) != 1.0:
            by_part: dict[int, list[str]] = {}
            for qid in pool.query_ids:
                by_part.setdefault(int(pool.parts[qid]), []).append(qid)
            if len(by_part) > 1:
                self._by_part = [by_part[k] for k in sorted(by_part)]
                self._cycle, self._rank, self._counts = self.cycle(
                    [len(q) for q in self._by_part], float(mix_alpha), self.CYCLE
                )

    @property
    def mixed(self) -> bool:
        """Whether parts are drawn by their own weights (a mix of two or more parts, `mix_alpha` < 1)."""
        return self._by_part is not None

    @staticmethod
    def cycle(sizes: list[int], alpha: float, length: int) -> tuple[list[int], list[int], list[int]]:
        """(part of each cycle position, its rank among that part's positions, positions per part): part s gets
        a share ∝ sizes[s] ** alpha of `length` (largest remainder, at least 1 each), spread evenly."""
        weights = np.array(sizes, dtype=float) ** alpha
        exact = weights / weights.sum() * length
        counts = np.floor(exact).astype(int)
        for s in np.argsort(-(exact - np.floor(exact)), kind="stable")[: length - int(counts.sum())]:
            counts[s] += 1
        for s in np.flatnonzero(counts == 0):  # a tiny part still comes once a cycle, at the largest's expense
            counts[s], counts[np.argmax(counts)] = 1, counts.max() - 1
        slots = sorted(((k + 0.5) / c, s, k) for s, c in enumerate(counts) for k in range(c))
        return [s for _, s, _ in slots], [k for _, _, k in slots], [int(c) for c in counts]

    def _permutation(self, part: int, epoch: int, n: int) -> np.ndarray:
        if (part, epoch) not in self._perm:
            if len(self._perm) > 8:
                self._perm.clear()
            # one collection keeps the seed sequence it always had, so its groups did not change
            key = [self.seed, epoch, 17] if self._by_part is None else [self.seed, part, epoch, 17]
            self._perm[(part, epoch)] = np.random.default_rng(key).permutation(n)
        return self._perm[(part, epoch)]

    def query_id(self, index: int) -> str:
        """The query of the `index`-th group."""
        if self._by_part is None:
            ids = self.pool.query_ids
            local, part = index, 0
        else:
            turn, pos = divmod(index, len(self._cycle))
            part = self._cycle[pos]
            ids = self._by_part[part]
            local = turn * self._counts[part] + self._rank[pos]
        n = len(ids)
        return ids[int(self._permutation(part, local // n, n)[local % n])]

    def group(self, index: int) -> Group:
        """The `index`-th group of the infinite stream (same index, same group)."""
        qid = self.query_id(index)
        rng = np.random.default_rng([self.seed, index, 29])
        pos_list = self.pool.positives[qid]
        pos = pos_list[int(rng.integers(len(pos_list)))]
        cands = self.pool.candidates[qid]
        replace = len(cands) < self.negatives
        negs = [cands[int(i)] for i in rng.choice(len(cands), size=self.negatives, replace=replace)]
        ids = [pos] + negs
        corpus = self.pool.corpus
        return Group(qid, self.pool.queries[qid], ids, [corpus[d] for d in ids])

    def batch(self, step: int, size: int, rank: int = 0, world: int = 1) -> list[Group]:
        """This process's share of the global batch of step `step` (global size = size × world)."""
        start = (step * world + rank) * size
        return [self.group(start + j) for j in range(size)]


class TripleSampler:
    """`sampling: triples` (the authors' sampler): the `index`-th group is the file's triple at position
    perm(seed, epoch)[index mod n] of that epoch's seeded permutation, as (query, positive, negative), so every
    triple is visited once per epoch. Stateless like `GroupSampler`: a resumed run sees the same batches.

    `triples`: `mice.train.teacher.TripleArrays` (de-duplicate first with `.unique()`); `queries`/`corpus`: texts
    by id (any mapping, e.g. an offset-indexed corpus)."""

    def __init__(self, triples, queries: Mapping[str, str], corpus: Mapping[str, str], seed: int = 0):
        if not len(triples):
            raise DataError("sampling: triples needs at least one triple")
        self.triples, self.queries, self.corpus, self.seed = triples, queries, corpus, int(seed)
        self._perm: tuple[int, np.ndarray] | None = None

    def position(self, index: int) -> int:
        """Row of the triple the `index`-th group comes from."""
        n = len(self.triples)
        epoch, i = divmod(int(index), n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 31]).permutation(n))
        return int(self._perm[1][i])

    def __len__(self) -> int:
        """The training queries the triples name (as `len(TrainingPool)`)."""
        return len(np.unique(self.triples.qid))

    def group(self, index: int) -> Group:
        """The `index`-th group: its triple's query, positive and negative, with the triple's teacher scores."""
        t, row = self.triples, self.position(index)
        qid = str(t.query_ids[t.qid[row]])
        ids = [str(t.doc_ids[t.pos[row]]), str(t.doc_ids[t.neg[row]])]
        try:
            return Group(qid, self.queries[qid], ids, [self.corpus[d] for d in ids], self.teacher_scores(index))
        except KeyError as err:
            raise DataError(f"{t.path}: triple {row + 1} names {err.args[0]!r}, which the dataset lacks") from None

    def teacher_scores(self, index: int) -> tuple[float, float]:
        row = self.position(index)
        return float(self.triples.score_pos[row]), float(self.triples.score_neg[row])

    def batch(self, step: int, size: int, rank: int = 0, world: int = 1) -> list[Group]:
        start = (step * world + rank) * size
        return [self.group(start + j) for j in range(size)]


def known_triples(triples, queries: Mapping[str, str], corpus: Mapping[str, str]):
    """`triples` (`TripleArrays`) less those naming a query or document the dataset lacks (with a warning, as
    `pool_from_triples`); one membership test per distinct id, not per triple."""
    known_q = np.fromiter((str(q) in queries for q in triples.query_ids), bool, len(triples.query_ids))
    known_d = np.fromiter((str(d) in corpus for d in triples.doc_ids), bool, len(triples.doc_ids))
    keep = known_q[triples.qid] & known_d[triples.pos] & known_d[triples.neg]
    if keep.all():
        return triples
    if not keep.any():
        raise DataError(
            f"{triples.path}: none of its {len(triples)} triples names a query and documents of the "
            "dataset (are the ids those of the dataset?)"
        )
    from mice.data.base import warn

    warn(f"teacher file: {int((~keep).sum())} of {len(triples)} triples name unknown queries or documents (skipped)")
    return triples.take(keep)
