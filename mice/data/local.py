"""Datasets read from files: BEIR folders, MS MARCO-style TSV folders, or explicitly named files.

Errors name the file and line. Empty documents and duplicate ids are skipped with one counted warning per
file (skipping is the sane default there); a bad JSON line, a missing field, an empty query or qrels naming
an unknown query are errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from mice.errors import DataError
from mice.files import unique_keys
from mice.rank.runs import read_qrels, text_lines
from mice.data.base import Dataset, file_fingerprint, warn


class _Skips:
    """Count skipped lines per reason and warn once, naming the first few line numbers."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self.lines: dict[str, list[int]] = {}

    def add(self, reason: str, lineno: int) -> None:
        self.lines.setdefault(reason, []).append(lineno)

    def report(self) -> None:
        for reason, lines in self.lines.items():
            shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
            warn(f"{self.path}: skipped {len(lines)} {self.what} with {reason} (line {shown})")


def _jsonl(path: Path):
    for lineno, line in text_lines(path, "JSONL"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=unique_keys(f"{path}:{lineno}", DataError))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _field(obj: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(f"{path}:{lineno}: missing field {key!r} (found {sorted(obj)})")
        return ""
    value = obj[key]
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def read_jsonl_texts(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """BEIR `corpus.jsonl` (kind="doc": `_id`, `text`, optional `title`) or `queries.jsonl` (kind="query")."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out: dict[str, str] = {}
    skips = _Skips(path, "documents" if kind == "doc" else "queries")
    for lineno, obj in _jsonl(path):
        key = _field(obj, "_id", path, lineno)
        if not key.strip() or any(c.isspace() for c in key):
            raise DataError(
                f"{path}:{lineno}: '_id' must be a non-empty id without spaces, got {key!r} "
                "(run files separate fields by whitespace)"
            )
        text = _field(obj, "text", path, lineno).strip()
        if kind == "doc":
            title = _field(obj, "title", path, lineno, required=False).strip()
            text = f"{title} {text}".strip() if title else text
        _add(out, key, text, kind, path, lineno, skips)
    skips.report()
    if not out:
        raise DataError(f"{path}: no {'documents' if kind == 'doc' else 'queries'}")
    return out


def read_tsv_texts(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """MS MARCO-style `id<TAB>text` lines (collection.tsv, queries.<split>.tsv)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out: dict[str, str] = {}
    skips = _Skips(path, "documents" if kind == "doc" else "queries")
    for lineno, line in text_lines(path, "TSV"):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{path}:{lineno}: expected 'id<TAB>text', found no tab: {line[:60]!r}")
        key, text = line.split("\t", 1)
        key = key.strip()
        if not key:
            raise DataError(f"{path}:{lineno}: empty id")
        _add(out, key, " ".join(text.split("\t")).strip(), kind, path, lineno, skips)
    skips.report()
    if not out:
        raise DataError(f"{path}: no {'documents' if kind == 'doc' else 'queries'}")
    return out


def _add(out: dict, key: str, text: str, kind: str, path: Path, lineno: int, skips: _Skips) -> None:
    if not text:
        if kind == "query":
            raise DataError(f"{path}:{lineno}: query {key!r} has empty text")
        skips.add("empty text", lineno)
        return
    if key in out:
        skips.add("a duplicate id (first kept)", lineno)
        return
    out[key] = text


def read_texts(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """JSONL (BEIR) or TSV (MS MARCO), chosen by extension."""
    path = Path(path)
    return read_jsonl_texts(path, kind) if path.suffix == ".jsonl" else read_tsv_texts(path, kind)


def _line_of(path: Path, value: str) -> int | None:
    for lineno, line in text_lines(path, "qrels"):
        fields = line.split("\t") if "\t" in line else line.split()
        if fields and fields[0].strip() == value:
            return lineno
    return None


def checked_qrels(path: Path, queries: Mapping[str, str]) -> pd.DataFrame:
    """Read qrels and insist that every judged query exists (the error names the first offending line)."""
    df = read_qrels(path)
    unknown = ~df["query_id"].isin(queries.keys())
    if unknown.any():
        qid = df.loc[unknown, "query_id"].iloc[0]
        n = df.loc[unknown, "query_id"].nunique()
        where = _line_of(path, qid) if path.suffix not in (".parquet", ".csv") else None
        loc = f"{path}:{where}" if where else str(path)
        raise DataError(
            f"{loc}: qrels name query {qid!r}, which is not in the queries file ({n} unknown queries in all)"
        )
    return df


class FilesDataset(Dataset):
    """A corpus file, a queries file (or one per split) and a qrels file per split.

    Files are read lazily and once. Formats are chosen by extension: `.jsonl` is BEIR-style JSON lines,
    anything else `id<TAB>text`; qrels may be TREC, BEIR TSV or a table (see `mice.rank.runs.read_qrels`).
    """

    def __init__(
        self,
        corpus: str | os.PathLike,
        queries: str | os.PathLike | Mapping[str, str | os.PathLike],
        qrels: Mapping[str, str | os.PathLike],
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.corpus_path = Path(corpus)
        self.qrels_paths = {s: Path(p) for s, p in qrels.items()}
        if isinstance(queries, Mapping):
            self.queries_paths = {s: Path(p) for s, p in queries.items()}
        else:
            self.queries_paths = {s: Path(queries) for s in self.qrels_paths}
        missing = set(self.qrels_paths) - set(self.queries_paths)
        if missing:
            raise DataError(f"no queries file for split(s) {sorted(missing)}")
        for p in [self.corpus_path, *self.queries_paths.values(), *self.qrels_paths.values()]:
            if not p.exists():
                raise DataError(f"{p}: file not found")
        self.name = name or self.corpus_path.parent.name or str(self.corpus_path)
        self._all_queries: dict[Path, dict[str, str]] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self.qrels_paths))

    def _query_file(self, split: str) -> dict[str, str]:
        path = self.queries_paths[split]
        if path not in self._all_queries:
            self._all_queries[path] = read_texts(path, "query")
        return self._all_queries[path]

    def _load_corpus(self) -> dict[str, str]:
        return read_texts(self.corpus_path, "doc")

    def _load_qrels(self, split: str) -> pd.DataFrame:
        return checked_qrels(self.qrels_paths[split], self._query_file(split))

    def _load_queries(self, split: str) -> dict[str, str]:
        judged = set(self.qrels(split)["query_id"])
        return {k: v for k, v in self._query_file(split).items() if k in judged}

    def fingerprint(self) -> str:
        return "files-" + file_fingerprint([self.corpus_path])


def beir_folder(folder: str | os.PathLike) -> FilesDataset:
    """A BEIR folder: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`."""
    folder = Path(folder)
    qrels_dir = folder / "qrels"
    qrels = {p.stem: p for p in sorted(qrels_dir.glob("*.tsv"))} if qrels_dir.is_dir() else {}
    if not qrels:
        raise DataError(f"{folder}: BEIR folder without qrels/<split>.tsv files")
    return FilesDataset(folder / "corpus.jsonl", folder / "queries.jsonl", qrels, name=folder.name)


def msmarco_folder(folder: str | os.PathLike) -> FilesDataset:
    """An MS MARCO-style folder: `collection.tsv`, `queries.<split>.tsv`, `qrels.<split>.tsv` (TREC qrels)."""
    folder = Path(folder)
    queries = {p.name[len("queries.") : -len(".tsv")]: p for p in sorted(folder.glob("queries.*.tsv"))}
    qrels = {p.name[len("qrels.") : -len(".tsv")]: p for p in sorted(folder.glob("qrels.*.tsv"))}
    splits = sorted(set(queries) & set(qrels))
    if not splits:
        raise DataError(f"{folder}: expected queries.<split>.tsv with a matching qrels.<split>.tsv")
    for split in sorted(set(qrels) - set(queries)):
        warn(f"{folder}: qrels.{split}.tsv has no queries.{split}.tsv; split {split!r} ignored")
    return FilesDataset(
        folder / "collection.tsv", {s: queries[s] for s in splits}, {s: qrels[s] for s in splits}, name=folder.name
    )


def folder_dataset(folder: str | os.PathLike) -> FilesDataset:
    folder = Path(folder)
    if (folder / "corpus.jsonl").exists():
        return beir_folder(folder)
    if (folder / "collection.tsv").exists():
        return msmarco_folder(folder)
    raise DataError(
        f"{folder}: not a dataset folder (expected corpus.jsonl + queries.jsonl + qrels/<split>.tsv "
        "(BEIR) or collection.tsv + queries.<split>.tsv + qrels.<split>.tsv (MS MARCO))"
    )


def files_spec(body: str) -> FilesDataset:
    """`corpus=PATH,queries=PATH,qrels=PATH[,split=NAME]`; per split: `queries.dev=PATH,qrels.dev=PATH`."""
    corpus, queries, qrels, split, name = None, {}, {}, "test", None
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"files: expected key=value, got {item!r}")
        key, value = key.strip(), value.strip()
        if key == "corpus":
            corpus = value
        elif key == "split":
            split = value
        elif key == "name":
            name = value
        elif key.split(".")[0] in ("queries", "qrels"):
            kind, _, sp = key.partition(".")
            (queries if kind == "queries" else qrels)[sp or None] = value
        else:
            raise DataError(f"files: unknown key {key!r} (corpus, queries, qrels, split, name)")
    if corpus is None or not qrels or not queries:
        raise DataError("files: need corpus=PATH, queries=PATH and qrels=PATH")
    qrels = {(s or split): p for s, p in qrels.items()}
    if None in queries and len(queries) == 1:
        queries = queries[None]
    else:
        queries = {(s or split): p for s, p in queries.items()}
    return FilesDataset(corpus, queries, qrels, name=name)


class OffsetTexts(Mapping):
    """id → text of an `id<TAB>text` file (MS MARCO's collection.tsv), read on demand from a memory map: one
    int64 offset per line and the ids as one array, no Python string per line. Numeric ids are looked up by binary
    search; other ids through one dict of ids (still no text in memory)."""

    _BLOCK = 1 << 26

    def __init__(self, path):
        from pyarrow import csv as pacsv
        import pyarrow as pa

        self.path = Path(path)
        self._raw = (
            np.memmap(self.path, dtype=np.uint8, mode="r") if self.path.stat().st_size else np.zeros(0, np.uint8)
        )
        ends = [np.flatnonzero(self._raw[s : s + self._BLOCK] == 10) + s for s in range(0, len(self._raw), self._BLOCK)]
        ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        if len(self._raw) and self._raw[-1] != 10:
            ends = np.append(ends, len(self._raw))
        self._starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        self._ends = ends.astype(np.int64)
        import pyarrow.compute as pc

        # whole lines as one Arrow column (a delimiter that never occurs), then the text before the first tab
        opts = pacsv.ParseOptions(delimiter="\x01", quote_char=False, ignore_empty_lines=False)
        try:
            lines = pacsv.read_csv(
                self.path,
                read_options=pacsv.ReadOptions(column_names=["line"]),
                parse_options=opts,
                convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False),
            ).column("line")
        except pa.ArrowInvalid as err:  # a \x01 byte or invalid UTF-8 in some line
            raise DataError(f"{self.path}: not an 'id<TAB>text' file ({str(err).splitlines()[0][:120]})") from None
        ids = pc.list_element(pc.split_pattern(lines, "\t", max_splits=1), 0)
        del lines
        if len(ids) != len(self._starts):
            raise DataError(f"{self.path}: {len(self._starts)} lines but {len(ids)} 'id<TAB>text' rows")
        try:
            num = np.asarray(ids.cast(pa.int64()).to_numpy(zero_copy_only=False))
            self._order = np.argsort(num, kind="stable")
            self._sorted = num[self._order]
            self._index = None
        except (pa.ArrowInvalid, ValueError):
            self._index = {d: i for i, d in enumerate(ids.to_pylist())}

    def __len__(self) -> int:
        return len(self._starts)

    def _row(self, key) -> int:
        if self._index is not None:
            return self._index[str(key)]
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise KeyError(key) from None
        i = int(np.searchsorted(self._sorted, k))
        if i >= len(self._sorted) or self._sorted[i] != k:
            raise KeyError(key)
        return int(self._order[i])

    def __getitem__(self, key) -> str:
        r = self._row(key)
        line = bytes(self._raw[self._starts[r] : self._ends[r]]).rstrip(b"\r")
        return line.split(b"\t", 1)[1].decode("utf-8") if b"\t" in line else ""

    def __contains__(self, key) -> bool:
        try:
            self._row(key)
            return True
        except KeyError:
            return False

    def __iter__(self):
        if self._index is not None:
            return iter(self._index)
        return (str(int(self._sorted[i])) for i in np.argsort(self._order, kind="stable"))
