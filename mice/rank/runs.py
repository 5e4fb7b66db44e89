"""TREC run and qrels files <-> ir-measures-style DataFrames.

A run in memory is a DataFrame [query_id, doc_id, score] (str, str, float); qrels are
[query_id, doc_id, relevance] (str, str, int). On disk a run is the standard six-column TREC format
(`qid Q0 docid rank score tag`), written atomically, ranked by score (ties broken by doc id so that the same
scores always give the same file). Parquet/CSV tables with the same column names are accepted too.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from mice.errors import DataError, DataWarning
from mice.files import atomic_path, read_table

RUN_COLUMNS = ["query_id", "doc_id", "score"]
QRELS_COLUMNS = ["query_id", "doc_id", "relevance"]
_TABLE_SUFFIXES = (".parquet", ".csv")


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def make_run(rows) -> pd.DataFrame:
    """A run DataFrame with the canonical dtypes from rows or a DataFrame with the run columns."""
    df = rows[RUN_COLUMNS].copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=RUN_COLUMNS)
    df["query_id"] = df["query_id"].astype(str)
    df["doc_id"] = df["doc_id"].astype(str)
    df["score"] = df["score"].astype("float64")
    return df.reset_index(drop=True)


def sort_run(run: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Rank each query's documents by score (descending; ties by doc id), keep the top `k`, add `rank` (1-based)."""
    run = make_run(run).sort_values(["query_id", "score", "doc_id"], ascending=[True, False, True], kind="stable")
    run["rank"] = run.groupby("query_id", sort=False).cumcount() + 1
    if k is not None:
        run = run[run["rank"] <= k]
    return run.reset_index(drop=True)


def _check_columns(df: pd.DataFrame, needed: list[str], path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(df.columns)})")


def read_run(path: str | os.PathLike) -> pd.DataFrame:
    """Read a TREC run (`qid Q0 docid rank score tag`) or a parquet/CSV table; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: run file not found")
    if path.suffix in _TABLE_SUFFIXES:
        df = read_table(path)
        _check_columns(df, RUN_COLUMNS, path)
        df = make_run(df)
        dup = df.duplicated(["query_id", "doc_id"])
        if dup.any():
            row = df[dup].iloc[0]
            raise DataError(f"{path}: document {row.doc_id!r} listed twice for query {row.query_id!r}")
        return df
    qids, dids, scores = [], [], []
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DataError(f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', "
                                f"got {len(fields)}: {line.strip()[:80]!r}")
            qid, _, did, rank, score, _ = fields
            try:
                int(rank)
                score = float(score)
            except ValueError:
                raise DataError(f"{path}:{lineno}: rank must be an integer and score a number: "
                                f"{line.strip()[:80]!r}") from None
            if (qid, did) in seen:
                raise DataError(f"{path}:{lineno}: document {did!r} listed twice for query {qid!r}")
            seen.add((qid, did))
            qids.append(qid)
            dids.append(did)
            scores.append(score)
    if not qids:
        raise DataError(f"{path}: run file is empty")
    return make_run({"query_id": qids, "doc_id": dids, "score": scores})


def format_run(run: pd.DataFrame, tag: str = "mice", k: int | None = None) -> str:
    """The TREC text of a run (sorted; scores written with full float precision)."""
    ranked = sort_run(run, k)
    tag = tag.replace(" ", "_") or "mice"
    return "".join(f"{q} Q0 {d} {r} {float(s)!r} {tag}\n"
                   for q, d, r, s in zip(ranked["query_id"], ranked["doc_id"], ranked["rank"], ranked["score"]))


def write_run(run: pd.DataFrame, path: str | os.PathLike, tag: str = "mice", k: int | None = None) -> Path:
    """Write `run` atomically: TREC text, or a table when the path ends in .parquet/.csv."""
    path = Path(path)
    if path.suffix in _TABLE_SUFFIXES:
        from mice.files import write_table

        return write_table(sort_run(run, k), path)
    with atomic_path(path) as tmp:
        tmp.write_text(format_run(run, tag, k), encoding="utf-8")
    return path


def make_qrels(rows) -> pd.DataFrame:
    df = rows[QRELS_COLUMNS].copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=QRELS_COLUMNS)
    df["query_id"] = df["query_id"].astype(str)
    df["doc_id"] = df["doc_id"].astype(str)
    df["relevance"] = df["relevance"].astype("int64")
    return df.reset_index(drop=True)


def _relevance(value: str, path, lineno: int) -> int:
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if f != f or f != int(f):
        raise DataError(f"{path}:{lineno}: relevance must be an integer, got {value!r}")
    return int(f)


def read_qrels(path: str | os.PathLike) -> pd.DataFrame:
    """Read judgements in any of the usual layouts; errors name file and line.

    Accepted: TREC (`qid iter docid rel`, whitespace separated), BEIR TSV with its header
    (`query-id corpus-id score`), headerless three-column `qid docid rel`, or a parquet/CSV table with columns
    query_id, doc_id, relevance. A pair judged twice keeps its first judgement (counted warning).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: qrels file not found")
    if path.suffix in _TABLE_SUFFIXES:
        df = read_table(path)
        _check_columns(df, QRELS_COLUMNS, path)
        return _dedup_qrels(make_qrels(df), path)
    rows = []
    ncols = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if ncols is None:
                ncols = len(fields)
                if ncols not in (3, 4):
                    raise DataError(f"{path}:{lineno}: expected 'qid iter docid rel' (TREC) or "
                                    f"'query-id corpus-id score' (BEIR), got {len(fields)} fields")
                if ncols == 3 and fields[2].lower() in ("score", "relevance", "rel", "label"):
                    continue  # BEIR header
                if ncols == 3 and fields[0].lower() in ("query-id", "query_id", "qid"):
                    raise DataError(f"{path}:{lineno}: header {line.strip()!r} lacks a score/relevance column")
            if len(fields) != ncols:
                raise DataError(f"{path}:{lineno}: expected {ncols} fields like the first line, got {len(fields)}")
            if ncols == 4:
                qid, _, did, rel = fields
            else:
                qid, did, rel = fields
            if not qid or not did:
                raise DataError(f"{path}:{lineno}: empty query or document id")
            rows.append((qid, did, _relevance(rel, path, lineno)))
    if not rows:
        raise DataError(f"{path}: no judgements")
    return _dedup_qrels(make_qrels(rows), path)


def _dedup_qrels(df: pd.DataFrame, path) -> pd.DataFrame:
    dup = df.duplicated(["query_id", "doc_id"])
    if dup.any():
        _warn(f"{path}: {int(dup.sum())} duplicate judgements ignored (first kept)")
        df = df[~dup].reset_index(drop=True)
    return df


def write_qrels(qrels: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write qrels in TREC format (`qid 0 docid rel`), or a table for .parquet/.csv, atomically."""
    path = Path(path)
    qrels = make_qrels(qrels)
    if path.suffix in _TABLE_SUFFIXES:
        from mice.files import write_table

        return write_table(qrels, path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in qrels.itertuples(index=False)),
                       encoding="utf-8")
    return path
