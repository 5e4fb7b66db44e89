"""A training source of another kind of text: the installed Debian packages' synopsis -> extended description.

Why: the cross-encoder trained on docstrings alone narrows what the encoder knew, and on `embedded:meta` (a
Python distribution's one-line summary -> its project page) it does not beat BM25 significantly. Every Debian
machine lists its installed packages with a one-line synopsis and a prose description in
`/var/lib/dpkg/status`: short product descriptions, written by other people for other software. Query = the
synopsis, its one relevant document = the extended description, cleaned like `embedded:meta`'s (the Debian
format first: one leading space dropped, ` .` lines become paragraph breaks, list items keep their text).

Leakage guard: the packages that are Python distributions installed here (`python3-requests` while `requests`
is installed, `python3-yaml` while `PyYAML` is: the Debian package's synopsis and description come from the
same upstream text as the PyPI metadata `embedded:meta` tests on) are left out, matched by name (the Debian name
less a `python3-`/`python-`/`pypy3-` prefix, or its source package's name, `python-numpy`); so are
packages whose cleaned synopsis or description equals one of `embedded:meta`'s. What remains shares no
text with the test collection it is meant to help.

Splits: by the same stable hash of the id as the other embedded collections; the default shares are
(0.9, 0.1, 0): a training source (`mix:embedded:docs+embedded:debian`), with a small dev split to check it.
The collection depends only on the status file's content and the installed Python distributions (both in
`fingerprint()`); packages installed later change it, as `embedded:meta` changes with the environment.

Spec: `embedded:debian[?status=PATH&max_docs=N&max_words=N&min_words=N&fractions=0.9,0.1,0]`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mice.errors import DataError
from mice.data.base import warn
from mice.data.meta import _SOURCES as META_SOURCES
from mice.data.meta import SummaryDataset, _words, assemble, normalise_name, parse_options

BUILDER_VERSION = 1
STATUS = "/var/lib/dpkg/status"
OPTIONS = ("status", "max_docs", "max_words", "min_words", "fractions")
_PY_PREFIX = re.compile(r"^(python3?|pypy3?)-")


@dataclass(frozen=True)
class DebianConfig:
    """`status` is the dpkg status file; the rest as `MetaConfig`."""

    name: str = "debian"
    status: str = STATUS
    max_docs: int = 0
    max_words: int = 300
    min_words: int = 12
    fractions: tuple[float, float, float] = (0.9, 0.1, 0.0)


def parse_spec(spec: str) -> DebianConfig:
    """`embedded:debian[?status=PATH&max_docs=N&max_words=N&min_words=N&fractions=TRAIN,DEV,TEST]`."""
    return parse_options(spec, DebianConfig(), OPTIONS, text_options=("status",))


def debian_text(lines: list[str]) -> str:
    """A Debian extended description (continuation lines) as markdown-like text: ` .` is a paragraph break,
    one leading space goes, deeper-indented lines (lists, verbatim) lose their indent so they read as prose."""
    out = []
    for line in lines:
        body = line[1:] if line.startswith(" ") else line
        out.append("" if body.strip() == "." else body.strip())
    return "\n".join(out)


def read_status(path: str | Path) -> list[dict]:
    """One raw record per installed package of a dpkg status file (name, id, version, summary, description)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"{path}: cannot read the dpkg status file ({err.strerror or err})") from None
    records = []
    for lineno, block in _paragraphs(text):
        fields, current = {}, None
        for at, line in enumerate(block, lineno):
            if line[:1] in (" ", "\t"):
                if current is None:
                    raise DataError(f"{path}:{at}: continuation line before any field")
                fields[current].append(line)
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise DataError(f"{path}:{at}: not a 'Field: value' line: {line[:60]!r}")
            current = key.strip().lower()
            fields[current] = [value.strip()]
        name = (fields.get("package") or [""])[0]
        status = (fields.get("status") or ["install ok installed"])[0]
        if not name or not status.endswith(" installed") or "description" not in fields:
            continue
        desc = fields["description"]
        records.append(
            {
                "name": name,
                "id": normalise_name(name),
                "version": (fields.get("version") or [""])[0],
                "source": (fields.get("source") or [name])[0].split()[0],
                "summary": desc[0],
                "description": debian_text(desc[1:]),
                "content_type": "text/markdown",
                "rank": 0,
            }
        )
    records.sort(key=lambda r: (r["id"], r["version"]))
    return records


def _paragraphs(text: str):
    """(first line number, lines) of each blank-line separated stanza."""
    block, start = [], 0
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not block:
                start = i
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def python_names(records: list[dict], installed: set[str]) -> frozenset:
    """Ids of Debian packages that are an installed Python distribution, by their own name or their source
    package's, with or without a `python3-`-style prefix (`python3-yaml` from source `pyyaml` while `PyYAML` is
    installed; `tzdata` while `tzdata` is): conservative, since the guard is against shared upstream text."""
    out = set()
    for r in records:
        names = {r["id"], normalise_name(r.get("source") or r["id"])}
        if any(_PY_PREFIX.sub("", n) in installed for n in names) or names & installed:
            out.add(r["id"])
    return frozenset(out)


def build(cfg: DebianConfig) -> tuple[pd.DataFrame, dict]:
    """The collection's table [id, name, version, query, doc, split] and build statistics."""
    from mice.data.meta import MetaConfig, build as build_meta, read_installed

    records = read_status(cfg.status)
    installed = read_installed()
    exclude = python_names(records, {r["id"] for r in installed})
    df, stats = assemble(records, cfg, exclude)
    meta, _ = build_meta(MetaConfig(fractions=(0.0, 0.0, 1.0)))
    same_q = {" ".join(_words(t)) for t in meta["query"]}
    same_d = {" ".join(_words(t)) for t in meta["doc"]}
    shared = [
        (" ".join(_words(q)) in same_q) or (" ".join(_words(d)) in same_d) for q, d in zip(df["query"], df["doc"])
    ]
    stats["same_text_as_meta"] = int(sum(shared))
    df = df[[not s for s in shared]].reset_index(drop=True)
    stats["pairs"] = len(df)
    stats["splits"] = {s: int((df["split"] == s).sum()) for s in ("train", "dev", "test")}
    content = hashlib.sha1(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()
    status_hash = hashlib.sha1(Path(cfg.status).read_bytes()).hexdigest()
    key = hashlib.sha1(
        json.dumps(
            {
                "builder": BUILDER_VERSION,
                "source": [hashlib.sha1(p.read_bytes()).hexdigest() for p in (Path(__file__), *META_SOURCES)],
                "status": status_hash,
                "python": sorted({(r["id"], r["version"]) for r in installed}),
                "config": {**asdict(cfg), "status": str(cfg.status), "fractions": list(cfg.fractions)},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    stats.update(
        config={**asdict(cfg), "fractions": list(cfg.fractions)},
        key=key,
        content=content,
        python_packages_left_out=len(exclude),
    )
    if stats["splits"]["train"] == 0:
        warn(f"embedded:debian: no training pair from {cfg.status}")
    return df, stats


class DebianDataset(SummaryDataset):
    """Installed Debian packages as a dataset: one relevant document (its own description) per synopsis."""

    config_class = DebianConfig

    @staticmethod
    def builder(cfg) -> tuple[pd.DataFrame, dict]:
        return build(cfg)
