"""Datasets: one interface (`Dataset`) over BEIR folders, MS MARCO-style TSV, explicit files, ir_datasets and
the embedded collections (docstrings; installed distributions' metadata). `load_dataset(spec)` accepts every
form; any API that takes a dataset accepts a spec string too.

Spec strings:
- a folder: BEIR (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`) or MS MARCO-style
  (`collection.tsv`, `queries.<split>.tsv`, `qrels.<split>.tsv`);
- `files:corpus=PATH,queries=PATH,qrels=PATH[,split=test]` (jsonl or `id<TAB>text`; TREC or BEIR qrels);
- `irds:<ir_datasets id>[?split=NAME]` (optional extra `ir_datasets`);
- `embedded:docs`, `embedded:docs-ood`, with options such as `embedded:docs?packages=json,logging`;
- `embedded:meta[?max_docs=N&max_words=N&min_words=N&fractions=0,0.2,0.8]`: summary -> long description of every
  installed distribution (out of domain by kind of text; see `meta.py`).
- `embedded:debian[?status=PATH&...]`: synopsis -> description of every installed Debian package, a training
  source of another kind of text (see `debian.py`).
- `mix:A+B[+...]`: several datasets as one (ids of all but the first prefixed `i:`), to train on a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

from mice.errors import DataError
from mice.data.base import Dataset, DataWarning, InMemoryDataset, cache_dir
from mice.data.embedded import EmbeddedConfig, EmbeddedDataset
from mice.data.meta import MetaConfig, MetaDataset
from mice.data.local import FilesDataset, beir_folder, msmarco_folder

__all__ = [
    "Dataset",
    "DataWarning",
    "InMemoryDataset",
    "FilesDataset",
    "EmbeddedDataset",
    "EmbeddedConfig",
    "MetaDataset",
    "MetaConfig",
    "load_dataset",
    "cache_dir",
    "beir_folder",
    "msmarco_folder",
    "write_beir",
]

_LOADED: dict[str, Dataset] = {}


def load_dataset(spec: "str | os.PathLike | Dataset") -> Dataset:
    """Resolve a dataset spec (see the module docstring) or pass a `Dataset` through.

    Embedded and ir_datasets collections are memoised per process (they are costly to open); file datasets
    are re-read so edits on disk are seen.
    """
    if isinstance(spec, Dataset):
        return spec
    s = str(spec).strip()
    if s.startswith("mix:"):
        from mice.data.mix import MixedDataset, split_spec

        if s not in _LOADED:
            _LOADED[s] = MixedDataset([load_dataset(p) for p in split_spec(s)], spec=s)
        return _LOADED[s]
    if s.startswith("embedded"):
        from mice.data.embedded import parse_spec

        if s.split(":", 1)[-1].partition("?")[0] == "debian":
            from mice.data.debian import DebianDataset, parse_spec as parse_debian

            if s not in _LOADED:
                _LOADED[s] = DebianDataset(parse_debian(s), spec=s)
            return _LOADED[s]
        if s.split(":", 1)[-1].partition("?")[0] == "meta":
            from mice.data.meta import parse_spec as parse_meta

            if s not in _LOADED:  # per process, like embedded:docs (a new MetaDataset re-reads what is installed)
                _LOADED[s] = MetaDataset(parse_meta(s), spec=s)
            return _LOADED[s]
        key = f"{s}@{cache_dir()}"
        if key not in _LOADED:
            _LOADED[key] = EmbeddedDataset(parse_spec(s), spec=s)
        return _LOADED[key]
    if s.startswith("irds:"):
        from urllib.parse import parse_qsl

        from mice.data.irds import IrdsDataset

        body, _, query = s[len("irds:") :].partition("?")
        opts = dict(parse_qsl(query))
        if s not in _LOADED:
            _LOADED[s] = IrdsDataset(body, split=opts.get("split", "test"))
        return _LOADED[s]
    if s.startswith("files:"):
        from mice.data.local import files_spec

        return files_spec(s[len("files:") :])
    path = Path(s).expanduser()
    if path.is_dir():
        from mice.data.local import folder_dataset

        return folder_dataset(path)
    if path.exists():
        raise DataError(
            f"{path}: a dataset is a folder (BEIR or MS MARCO layout) or a spec; for single files "
            "use files:corpus=...,queries=...,qrels=..."
        )
    raise DataError(f"unknown dataset {s!r}: not a folder, and not embedded:..., irds:..., files:... or mix:...")


def check_split_name(split, source) -> str:
    """A split name is a plain file-name stem (letters, digits, `.`, `_`, `-`; not `.` or `..`): it names files
    (`qrels/<split>.tsv`), so a separator or a parent reference would write outside the output folder."""
    import re

    from mice.errors import DataError

    s = str(split)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", s) or ".." in s:
        raise DataError(
            f"{source}: split name {s!r} is not a plain name (letters, digits, '.', '_', '-'; no path "
            "separators or '..')"
        )
    return s


def write_beir(dataset: "str | Dataset", folder: str | os.PathLike) -> Path:
    """Export any dataset as a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), atomically per file."""
    import json

    from mice.files import write_text_atomic

    ds = load_dataset(dataset)
    folder = Path(folder)
    for split in ds.splits:  # each becomes a file name under qrels/: nothing may lead out of the folder
        check_split_name(split, ds.name)
    write_text_atomic(
        folder / "corpus.jsonl",
        "".join(
            json.dumps({"_id": k, "title": "", "text": v}, ensure_ascii=False) + "\n" for k, v in ds.corpus().items()
        ),
    )
    queries = {}
    for split in ds.splits:
        queries.update(ds.queries(split))
        q = ds.qrels(split)
        write_text_atomic(
            folder / "qrels" / f"{split}.tsv",
            "query-id\tcorpus-id\tscore\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in q.itertuples(index=False)),
        )
    write_text_atomic(
        folder / "queries.jsonl",
        "".join(json.dumps({"_id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in queries.items()),
    )
    return folder
