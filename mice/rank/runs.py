"""TREC run and qrels files <-> ir-measures-style DataFrames.

A run in memory is a DataFrame [query_id, doc_id, score] (str, str, float); qrels are
[query_id, doc_id, relevance] (str, str, int). On disk a run is the standard six-column TREC format
(`qid Q0 docid rank score tag`), written atomically, ranked by score (ties broken by doc id so that the same
scores always give the same file). Parquet/CSV tables with the same column names are accepted too.
"""

from __future__ import annotations

import io
import math
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


BOM = b"\xef\xbb\xbf"


def text_lines(path: str | os.PathLike, what: str):
    """(line number, line) of a UTF-8 text file, checked first: a folder, a byte-order mark or bytes that are
    not UTF-8 are one `DataError` naming the file (and line), never a traceback or a silently dropped line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a {what} file")
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    if data.startswith(BOM):
        raise DataError(
            f"{path}: starts with a UTF-8 byte-order mark (BOM), which would corrupt its first "
            "line; save it as UTF-8 without BOM"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); save the {what} file as UTF-8"
        ) from None
    return enumerate(io.StringIO(text, newline=None), 1)  # the lines `open()` would give


def read_any_table(path, what: str) -> pd.DataFrame:
    """A parquet/CSV table, or one `DataError` naming the file when it cannot be read as one."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a {what} table")
    try:
        return read_table(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as a {what} table ({' '.join(str(err).split())[:160]})") from None
    except Exception as err:  # pyarrow's own errors for a corrupt parquet file
        if type(err).__module__.startswith(("pyarrow", "pandas")):
            raise DataError(
                f"{path}: cannot be read as a {what} table ({type(err).__name__}: {' '.join(str(err).split())[:160]})"
            ) from None
        raise


def _check_scores(df: pd.DataFrame, path) -> pd.DataFrame:
    """The score column as float64, every value a finite number (row named otherwise)."""
    import numpy as np

    scores = pd.to_numeric(df["score"], errors="coerce")
    bad = ~np.isfinite(scores.to_numpy(dtype="float64", na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i + 1}: score must be a finite number, got {df['score'].iloc[i]!r}")
    return df.assign(score=scores.astype("float64"))


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
        df = read_any_table(path, "run")
        _check_columns(df, RUN_COLUMNS, path)
        df = make_run(_check_scores(df, path))
        dup = df.duplicated(["query_id", "doc_id"])
        if dup.any():
            row = df[dup].iloc[0]
            raise DataError(f"{path}: document {row.doc_id!r} listed twice for query {row.query_id!r}")
        return df
    qids, dids, scores = [], [], []
    seen: set[tuple[str, str]] = set()
    for lineno, line in text_lines(path, "run"):
        parsed = _run_line(path, lineno, line)
        if parsed is None:
            continue
        qid, did, score = parsed
        if (qid, did) in seen:
            raise DataError(f"{path}:{lineno}: document {did!r} listed twice for query {qid!r}")
        seen.add((qid, did))
        qids.append(qid)
        dids.append(did)
        scores.append(score)
    if not qids:
        raise DataError(f"{path}: run file is empty")
    return make_run({"query_id": qids, "doc_id": dids, "score": scores})


def _run_line(path, lineno: int, line: str) -> tuple[str, str, float] | None:
    """(query id, doc id, score) of one TREC run line, None for a blank line; errors name file and line."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) != 6:
        raise DataError(
            f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', "
            f"got {len(fields)}: {line.strip()[:80]!r}"
        )
    qid, _, did, rank, score, _ = fields
    try:
        int(rank)
        value = float(score)
    except ValueError:
        raise DataError(f"{path}:{lineno}: rank must be an integer and score a number: {line.strip()[:80]!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{lineno}: score must be a finite number, got {score!r}")
    return qid, did, value


class RunNotGrouped(DataError):
    """A run file lists a query's lines apart (streaming it query by query is not possible)."""


def _stream_lines(path: Path, what: str):
    """(line number, line) of a UTF-8 text file read line by line (`text_lines`' checks, without the whole file
    in memory)."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a {what} file")
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(BOM):
                raise DataError(
                    f"{path}: starts with a UTF-8 byte-order mark (BOM), which would corrupt its first "
                    "line; save it as UTF-8 without BOM"
                )
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[err.start]:02x}); save the {what} file as UTF-8"
                ) from None


def _top(rows: list[tuple[str, float]], k: int | None) -> list[str]:
    """Doc ids ranked as `sort_run` ranks them (score descending, ties by doc id), the first `k`."""
    rows.sort(key=lambda r: (-r[1], r[0]))
    return [d for d, _ in rows[:k]]


def iter_run_queries(path: str | os.PathLike, k: int | None = None):
    """Stream a TREC run file query by query: yields (query_id, its top-`k` doc ids ranked as `sort_run` ranks
    them), holding one query's lines at a time. Each query's lines must come together (TREC runs list them so);
    a query that comes back after another raises `RunNotGrouped` naming the line. Errors name file and line as
    `read_run`'s."""
    path = Path(path)
    current, rows, seen, finished = None, [], set(), set()
    empty = True
    for lineno, line in _stream_lines(path, "run"):
        parsed = _run_line(path, lineno, line)
        if parsed is None:
            continue
        qid, did, score = parsed
        empty = False
        if qid != current:
            if qid in finished:
                raise RunNotGrouped(
                    f"{path}:{lineno}: query {qid!r} comes back after other queries (its lines are not together)"
                )
            if current is not None:
                yield current, _top(rows, k)
                finished.add(current)
            current, rows, seen = qid, [], set()
        if did in seen:
            raise DataError(f"{path}:{lineno}: document {did!r} listed twice for query {qid!r}")
        seen.add(did)
        rows.append((did, score))
    if empty:
        raise DataError(f"{path}: run file is empty")
    yield current, _top(rows, k)


def format_run(run: pd.DataFrame, tag: str = "mice", k: int | None = None) -> str:
    """The TREC text of a run (sorted; scores written with full float precision)."""
    ranked = sort_run(run, k)
    tag = tag.replace(" ", "_") or "mice"
    return "".join(
        f"{q} Q0 {d} {r} {float(s)!r} {tag}\n"
        for q, d, r, s in zip(ranked["query_id"], ranked["doc_id"], ranked["rank"], ranked["score"])
    )


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
    if not math.isfinite(f) or f != int(f) or abs(f) > 1 << 31:
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
        df = read_any_table(path, "qrels")
        _check_columns(df, QRELS_COLUMNS, path)
        rel = pd.to_numeric(df["relevance"], errors="coerce")
        bad = ~rel.map(lambda v: math.isfinite(v) and v == int(v) and abs(v) <= 1 << 31)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(f"{path}: row {i + 1}: relevance must be an integer, got {df['relevance'].iloc[i]!r}")
        return _dedup_qrels(make_qrels(df.assign(relevance=rel)), path)
    rows = []
    ncols = None
    for lineno, line in text_lines(path, "qrels"):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if ncols is None:
            ncols = len(fields)
            if ncols not in (3, 4):
                raise DataError(
                    f"{path}:{lineno}: expected 'qid iter docid rel' (TREC) or "
                    f"'query-id corpus-id score' (BEIR), got {len(fields)} fields"
                )
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
        tmp.write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in qrels.itertuples(index=False)), encoding="utf-8")
    return path
