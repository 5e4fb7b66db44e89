"""Re-rank a first-stage run with any scorer (`predict(pairs, batch_size=...) -> np.ndarray`).

Work is cut into fixed chunks of consecutive queries (fixed by the whole job, so an interrupted and resumed
job scores exactly the same batches as an uninterrupted one); within a chunk, pairs are sorted by length and
batched, which keeps padding low. With `out=`, every finished query is appended to a sidecar
`<out>.partial` (one JSON line per query, flushed) and the run file appears, atomically, only when all queries
are done; rerunning the same job picks up from the sidecar. A finished job leaves a receipt `<out>.done.json`
(the job's identity and the run file's hash): rerunning a finished job reads its run instead of scoring again.

The scorer is called through `score_batch`, the single place to extend for scorers that need more than
texts (e.g. a MICE index keyed by doc id: give the scorer a `predict_candidates(batch, batch_size)` method).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from mice.data import Dataset, load_dataset
from mice.data.base import warn
from mice.errors import DataError
from mice.logs import progress as progress_bar
from mice.rank.runs import make_run, read_run, sort_run, write_run

PARTIAL_FORMAT = "mice-rerank-partial/1"
DONE_FORMAT = "mice-rerank-done/1"


@dataclass
class CandidateBatch:
    """A batch of (query, document) candidates with their ids, as handed to the scorer."""

    query_ids: list[str]
    doc_ids: list[str]
    queries: list[str]
    docs: list[str]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.queries, self.docs))

    def __len__(self) -> int:
        return len(self.doc_ids)


def score_batch(scorer, batch: CandidateBatch, batch_size: int) -> np.ndarray:
    """Scores of one batch. Scorers exposing `predict_candidates(batch, batch_size)` get ids as well as texts."""
    if hasattr(scorer, "predict_candidates"):
        scores = scorer.predict_candidates(batch, batch_size=batch_size)
    else:
        scores = scorer.predict(batch.pairs, batch_size=batch_size)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(batch):
        raise DataError(f"scorer returned {scores.shape[0]} scores for {len(batch)} pairs")
    return scores


def candidates(run: pd.DataFrame, queries: dict[str, str], k: int) -> dict[str, list[str]]:
    """query_id -> its top-`k` first-stage doc ids, for the queries of the split (sorted by query id)."""
    ranked = sort_run(run, k)
    outside = set(ranked["query_id"].unique()) - set(queries)
    ranked = ranked[ranked["query_id"].isin(queries.keys())]
    grouped = {q: list(g["doc_id"]) for q, g in ranked.groupby("query_id", sort=True)}
    _warn_candidates(sorted(outside), len(queries) - len(grouped))
    return grouped


def run_candidates(
    run: "pd.DataFrame | str | os.PathLike", queries: dict[str, str], k: int, warn_others: bool = True
) -> tuple[dict[str, list[str]], list[str]]:
    """(`candidates` of the run's queries that are in `queries`, the ids of its other queries). A TREC run file is
    streamed query by query (`iter_run_queries`): only the kept queries' top-`k` ids stay in memory, never the
    whole file (at the authors' depth, 1000 lines per query). A run whose queries' lines are not together, a
    DataFrame or a table file is read whole. `warn_others`: warn about the other queries (else they are dropped
    silently, as for a chosen subset of queries)."""
    from mice.rank.runs import RunNotGrouped, iter_run_queries

    if not isinstance(run, pd.DataFrame) and Path(run).suffix not in (".parquet", ".csv"):
        try:
            cands, others = {}, []
            for qid, docs in iter_run_queries(run, k):
                if qid in queries:
                    cands[qid] = docs
                else:
                    others.append(qid)
            cands = dict(sorted(cands.items()))
            _warn_candidates(others if warn_others else [], len(queries) - len(cands))
            return cands, others
        except RunNotGrouped as err:
            warn(f"{err}: the run is read whole")
    run_df = read_run(run) if not isinstance(run, pd.DataFrame) else make_run(run)
    others = sorted(set(run_df["query_id"].unique()) - set(queries))
    if not warn_others:
        run_df = run_df[run_df["query_id"].isin(queries.keys())]
    return candidates(run_df, queries, k), others


def _warn_candidates(others: list[str], missing: int) -> None:
    if others:
        warn(f"re-ranking: {len(others)} run queries are not in the split and are ignored")
    if missing:
        warn(f"re-ranking: {missing} queries of the split have no first-stage candidates (they stay empty)")


def _chunks(cands: dict[str, list[str]], target: int) -> list[list[str]]:
    chunks, cur, size = [], [], 0
    for qid in sorted(cands):
        cur.append(qid)
        size += len(cands[qid])
        if size >= target:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        chunks.append(cur)
    return chunks


def job_identity(
    scorer,
    dataset: Dataset,
    split: str,
    queries: dict[str, str],
    cands: dict[str, list[str]],
    k: int,
    batch_size: int,
    chunk_pairs: int | None,
    job=None,
) -> dict:
    """Content identity of a re-ranking job: the scorer's own identity (loaded weights, resolved mask tables,
    lengths, index checksum), the corpus content, the query texts and candidates, and every setting that changes
    the output. `job` (a string or dict) adds to it."""
    from mice.identity import dataset_identity, job_identity as _identity

    h = hashlib.sha256()
    for qid in sorted(cands):
        h.update(json.dumps([qid, queries.get(qid, ""), cands[qid]]).encode())
    if hasattr(scorer, "identity"):
        scorer_id = scorer.identity()
    else:  # a scorer of the user's own: `job` names it, else its class and path
        scorer_id = {} if job else {"scorer": _scorer_name(scorer)}
    extra = job if isinstance(job, dict) else ({"job": job} if job else {})
    return _identity(
        **scorer_id,
        **extra,
        corpus=dataset_identity(dataset),
        split=split,
        candidates=h.hexdigest(),
        k=k,
        batch_size=batch_size,
        chunk_pairs=chunk_pairs,
    )


def _ranked(run: pd.DataFrame) -> pd.DataFrame:
    """The shape `rerank` returns, whether it scored the run or read a finished one back."""
    return sort_run(run)[["query_id", "doc_id", "score"]]


def _receipt(out: Path) -> Path:
    return out.with_name(out.name + ".done.json")


def _finished(out: Path, key: dict, tag: str) -> "pd.DataFrame | None":
    """The run of this very job if it already finished at `out` (receipt and file hash agree), else None."""
    from mice.identity import file_hash, identity_hash

    receipt = _receipt(out)
    if not (out.is_file() and receipt.is_file()):
        return None
    try:
        obj = json.loads(receipt.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(obj, dict)
        or obj.get("format") != DONE_FORMAT
        or obj.get("job") != identity_hash(key)
        or obj.get("tag") != tag
        or obj.get("sha256") != file_hash(out)
    ):
        return None
    return _ranked(read_run(out))


def _write_receipt(out: Path, key: dict, tag: str) -> None:
    from mice.files import write_json_atomic
    from mice.identity import file_hash, identity_hash

    write_json_atomic(
        _receipt(out), {"format": DONE_FORMAT, "job": identity_hash(key), "tag": tag, "sha256": file_hash(out)}
    )


class _Partial:
    """The append-only sidecar of completed queries. A torn last line (killed mid-write) is discarded.

    Each record carries a checksum of its content under this job's identity (`sum`), and is checked on
    reading: the query is one of the job's, its documents are exactly its candidates, its scores finite
    numbers. A record edited by hand, or damaged, is refused, never used."""

    MISMATCH = (
        "partial results of a different re-ranking job; rerun with --overwrite to start afresh, or choose another --out"
    )

    def __init__(self, path: Path, key: dict, cands: dict[str, list[str]], restart: bool = False) -> None:
        from mice.distributed import ShardedJournal
        from mice.identity import identity_hash

        self.path, self.key, self.cands = path, key, cands  # one journal per rank (`mice.distributed`)
        self._salt = identity_hash(key)
        self._journal = ShardedJournal(path, PARTIAL_FORMAT, key, self.MISMATCH, restart=restart)
        self.done: dict[str, tuple[list[str], list[float]]] = self._parse(self._journal.records)

    def _sum(self, qid, doc_ids, scores) -> str:
        body = json.dumps([self._salt, qid, doc_ids, scores], sort_keys=True, allow_nan=True)
        return hashlib.sha256(body.encode()).hexdigest()[:32]

    def _parse(self, records) -> dict:
        done = {}
        for n, obj in enumerate(records, 2):  # line 1 is the header
            qid = obj.get("query_id") if isinstance(obj, dict) else None
            ids, scores = (obj.get("doc_ids"), obj.get("scores")) if isinstance(obj, dict) else (None, None)
            fine = (
                isinstance(qid, str)
                and qid in self.cands
                and ids == self.cands[qid]
                and isinstance(scores, list)
                and len(scores) == len(ids)
                and all(isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) for s in scores)
                and obj.get("sum") == self._sum(qid, ids, scores)
            )
            if not fine:
                raise DataError(
                    f"{self.path}: record {n} was edited or is damaged (its content or checksum does "
                    "not match this job); rerun with --overwrite to start afresh"
                )
            done[qid] = (ids, scores)
        return done

    def add(self, qid: str, doc_ids: list[str], scores: list[float]) -> None:
        self._journal.append(
            {"query_id": qid, "doc_ids": doc_ids, "scores": scores, "sum": self._sum(qid, doc_ids, scores)}
        )
        self.done[qid] = (doc_ids, scores)

    def close(self) -> None:
        self._journal.close()

    def merged(self) -> dict:
        """Every rank's finished queries (after the barrier)."""
        return self._parse(self._journal.all_records(PARTIAL_FORMAT, self.key, self.MISMATCH))

    def unlink(self) -> None:
        self._journal.unlink_all()


def rerank(
    scorer,
    dataset: "str | Dataset",
    split: str,
    run: "pd.DataFrame | str | os.PathLike",
    k: int = 100,
    batch_size: int = 32,
    out: "str | os.PathLike | None" = None,
    show_progress_bar: bool = False,
    tag: str = "mice-rerank",
    job: "str | dict | None" = None,
    chunk_pairs: int | None = None,
    score_fn: Callable[[object, CandidateBatch, int], np.ndarray] = score_batch,
    query_ids: "Iterable[str] | None" = None,
    overwrite: bool = False,
    on_resume: "Callable[[Path, int], None] | None" = None,
) -> pd.DataFrame:
    """Score each split query's top-`k` first-stage documents with `scorer`; return the new run.

    `run`: DataFrame or run file. `out`: write the TREC run there (atomically) and make the job resumable
    through `<out>.partial`, holding `<out>.lock` meanwhile. The sidecar is keyed by the job's content identity
    (`job_identity`: the scorer's `identity()`, data, candidates, settings; `job` adds to it): a sidecar left by
    another job is refused, naming what differs, unless `overwrite` starts afresh. `chunk_pairs`: pairs per unit
    of work (whole queries; default max(8 x batch_size, 64)); a resumed job redoes at most one chunk. `score_fn(scorer,
    batch, batch_size)` scores one `CandidateBatch`. `query_ids`: re-rank only these queries of the split
    (a fixed evaluation subset); the run's other queries are dropped without a warning. `on_resume(partial,
    n_done)` is called when finished queries are taken over, only after the lock and the identity check.
    """
    from mice.validate import positive

    positive("k", k)
    positive("batch_size", batch_size)
    if chunk_pairs is not None:
        positive("chunk_pairs", chunk_pairs)
    from mice.distributed import rank_lock, require_output

    require_output(out, "re-ranking")
    args = (
        scorer,
        dataset,
        split,
        run,
        k,
        batch_size,
        out,
        show_progress_bar,
        tag,
        job,
        chunk_pairs,
        score_fn,
        query_ids,
        overwrite,
        on_resume,
    )
    if out is None:
        return _rerank(*args)
    with rank_lock(out):
        return _rerank(*args)


def _job_candidates(dataset, split, run, k, query_ids) -> tuple[Dataset, dict, dict, dict]:
    """The dataset, the queries of the split (or of `query_ids`), their top-`k` candidates and the corpus, each
    checked: a run whose queries are none of the split's, or whose documents are not in the corpus, is refused."""
    ds = load_dataset(dataset)
    queries = ds.queries(split)
    if query_ids is not None:
        wanted = list(query_ids)
        unknown_q = [q for q in wanted if q not in queries]
        if unknown_q:
            raise DataError(
                f"re-ranking: {len(unknown_q)} query ids are not in {ds.name}'s {split} split (e.g. {unknown_q[:3]})"
            )
        queries = {q: queries[q] for q in wanted}
    cands, others = run_candidates(run, queries, k, warn_others=query_ids is None)
    if not cands and others and query_ids is None:
        where = f"{run}: " if not isinstance(run, pd.DataFrame) else "run: "
        raise DataError(
            f"{where}none of its {len(others)} queries is in {ds.name}'s {split} split "
            f"(e.g. {sorted(others)[:3]}); is --split right?"
        )
    corpus = ds.corpus()
    unknown = {d for docs in cands.values() for d in docs if d not in corpus}
    if unknown:
        where = f"{run}: " if not isinstance(run, pd.DataFrame) else ""
        raise DataError(
            f"{where}run names {len(unknown)} documents that are not in {ds.name}'s corpus (e.g. {sorted(unknown)[:3]})"
        )
    return ds, queries, cands, corpus


def _rerank(
    scorer,
    dataset,
    split,
    run,
    k,
    batch_size,
    out,
    progress,
    tag,
    job,
    chunk_pairs,
    score_fn,
    query_ids,
    overwrite,
    on_resume=None,
) -> pd.DataFrame:
    ds, queries, cands, corpus = _job_candidates(dataset, split, run, k, query_ids)
    partial = None
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        key = job_identity(scorer, ds, split, queries, cands, k, batch_size, chunk_pairs, job)
        if not overwrite:
            finished = _finished(out, key, tag)
            if finished is not None:  # this exact job already finished here: nothing to score
                return finished
        _receipt(out).unlink(missing_ok=True)
        partial = _Partial(out.with_name(out.name + ".partial"), key, cands, restart=overwrite)
    done = dict(partial.done) if partial else {}
    if done and on_resume is not None:
        on_resume(partial.path, len(done))

    from mice.distributed import world

    w = world()  # under N processes, chunk i is rank i % N's: the same chunks (and batches) as on one process
    chunks = [
        c
        for i, c in enumerate(_chunks(cands, target=chunk_pairs or max(batch_size * 8, 64)))
        if w.owns(i) and any(q not in done for q in c)
    ]
    prog = progress_bar(sum(len(cands[q]) for c in chunks for q in c), "re-ranking pairs", enabled=progress and w.main)
    try:
        for chunk in chunks:
            todo = {q for q in chunk if q not in done}
            scores = _score_chunk(chunk, queries, corpus, cands, scorer, score_fn, batch_size, prog)
            pos = 0
            for q in chunk:
                n = len(cands[q])
                if q in todo:
                    result = (list(cands[q]), [float(s) for s in scores[pos : pos + n]])
                    done[q] = result
                    if partial:
                        partial.add(q, *result)
                pos += n
    finally:
        prog.stop()
        if partial:
            partial.close()

    if w.distributed:
        w.barrier()  # every rank's journal is complete
        if not w.main:
            w.barrier()  # rank 0 merges and writes the run
            return read_run(out)
        done = partial.merged()
    rows = [(q, d, s) for q in sorted(done) if q in cands for d, s in zip(*done[q])]
    result = _ranked(make_run(rows))
    if out is not None:
        write_run(result, out, tag=tag)
        _write_receipt(out, key, tag)
        partial.unlink()
    if w.distributed:
        w.barrier()
    return result


def _score_chunk(chunk, queries, corpus, cands, scorer, score_fn, batch_size, prog) -> np.ndarray:
    """Scores of every candidate of a chunk's queries, in (query, rank) order: the whole chunk is scored, in
    batches of pairs sorted by length (a fixed composition, so a resumed job scores identical batches)."""
    items = [(q, d) for q in chunk for d in cands[q]]
    order = sorted(range(len(items)), key=lambda i: (len(queries[items[i][0]]) + len(corpus[items[i][1]]), i))
    scores = np.empty(len(items), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = CandidateBatch(
            [items[i][0] for i in idx],
            [items[i][1] for i in idx],
            [queries[items[i][0]] for i in idx],
            [corpus[items[i][1]] for i in idx],
        )
        scores[idx] = score_fn(scorer, batch, batch_size)
        prog.advance(len(idx))
    return scores


def _scorer_name(scorer) -> str:
    for attr in ("name_or_path", "spec"):
        value = getattr(scorer, attr, None)
        if isinstance(value, (str, os.PathLike)):
            return f"{type(scorer).__name__}:{value}"
    return type(scorer).__name__
