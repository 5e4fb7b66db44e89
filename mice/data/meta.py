"""A third offline collection, out of domain by kind of text: the metadata of the installed distributions.

Query = a distribution's one-line `Summary`; its one relevant document = its long description (the
`Description` field or the metadata payload: a PyPI project page, mostly a README), cleaned to plain prose:
markdown and reST markup stripped (badges and images dropped, links reduced to their text, code fences,
literal and indented code blocks, doctests, HTML tags and comments, tables, directives and heading markers
removed), the first heading dropped when it only repeats the name or the summary, a copy of the summary at
the start of the text removed (as the docstring collection removes the summary from its documents), whitespace
collapsed and the text cut to its first `max_words` words (documents are re-ranked at 96-128 tokens anyway).

What is dropped: distributions without a summary (`UNKNOWN` counts as missing), with a one-word summary or one
that only repeats the name, with a description shorter than `min_words` words once cleaned, and duplicates:
several installed copies of one distribution (the copy earliest on `sys.path` wins, the one `import` would
see), then repeated summaries and repeated descriptions (normalised; the alphabetically first distribution
keeps it, e.g. one of a family of plugins sharing a README). This project's own distribution is left out: its
README is about this collection and changes with every release. Query and document ids are the normalised
distribution names (PEP 503).

Which environment: the running interpreter's (`importlib.metadata.distributions()` over `sys.path`). Records
are sorted by id before anything else, so the collection depends only on what is installed, never on the
order in which it is found.

Splits: by a stable hash of the id, like `embedded:docs`. The default shares are (0, 0.2, 0.8): the collection
exists to test transfer to another kind of text, so nothing goes to train (a model trained on it would no
longer be tested out of domain, and ~200 pairs are too few to train on anyway); a small dev split (about one
in five) is left for checking a pipeline or picking a setting without looking at test; test gets the rest,
because with one environment's ~150-200 distributions every test query narrows the confidence interval.
`fractions=0,0,1` puts everything in test. The hash decides per id, so installing one more distribution never
moves another one to a different split.

No disk cache: reading a few hundred METADATA files and cleaning them takes under a second, and a
development version reinstalled under the same version string (`pip install -e .` again) can change its
description, which a cache keyed by (name, version) would miss. `fingerprint()` (what keys the BM25 index
cache) joins that key (the sorted (name, version) list, the builder's source and the options) with a hash of
the built table itself, so it changes exactly when the collection does.

Spec: `embedded:meta[?max_docs=N&max_words=N&min_words=N&fractions=0,0.2,0.8]`.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import json
import re
import sys
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl

import pandas as pd

from mice.errors import DataError
from mice.data._docstrings import clean_inline
from mice.data.base import TableDataset, warn

# the same hash as embedded:docs, so the same id always lands in the same split
from mice.data.embedded import _stable_unit, first_pair, parse_fractions

BUILDER_VERSION = 1
SPLITS = ("train", "dev", "test")
MIN_SUMMARY_WORDS = 2  # "Screen-scraping library" is a fine keyword query; "Accelerate" is not
MIN_TEST_QUERIES = 50
SELF = "mice-toolkit"  # this project: its README describes this collection and changes with every release
OPTIONS = ("max_docs", "max_words", "min_words", "fractions")
_SOURCES = (Path(__file__), Path(__file__).with_name("_docstrings.py"))  # the builder and its inline cleaner


@dataclass(frozen=True)
class MetaConfig:
    """`max_docs` caps the collection (0 = no cap; a stable hash picks which), `max_words` cuts each document,
    `min_words` drops shorter documents, `fractions` are the train/dev/test shares of the hash space."""

    name: str = "meta"
    max_docs: int = 0
    max_words: int = 300
    min_words: int = 12
    fractions: tuple[float, float, float] = (0.0, 0.2, 0.8)

    def key(self, installed: list[tuple[str, str]]) -> str:
        """Keyed by the sorted (name, version) list, the builder's source and the options."""
        payload = {
            "builder": BUILDER_VERSION,
            "source": [hashlib.sha1(p.read_bytes()).hexdigest() for p in _SOURCES],
            "installed": sorted(installed),
            "config": {**asdict(self), "fractions": list(self.fractions)},
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_spec(spec: str) -> MetaConfig:
    """`embedded:meta[?max_docs=N&max_words=N&min_words=N&fractions=TRAIN,DEV,TEST]`."""
    return parse_options(spec, MetaConfig(), OPTIONS)


def parse_options(spec: str, default, options: tuple[str, ...], text_options: tuple[str, ...] = ()):
    """`embedded:NAME?key=value&...` over a summary -> description collection's config (`default`): integer
    options, `fractions`, and free-text `text_options` (a path)."""
    body = spec.split(":", 1)[1] if ":" in spec else default.name
    name, _, query = body.partition("?")
    if name != default.name:
        raise DataError(f"{spec}: not the {default.name} collection (embedded:{default.name})")
    changes: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in options:
            raise DataError(f"{spec}: unknown option {key!r} ({', '.join(options)})")
        try:
            if key in text_options:
                if not value:
                    raise ValueError("empty")
                changes[key] = value
            elif key == "fractions":
                changes[key] = parse_fractions(value)
            else:
                n = int(value)
                if n < 0 or (key == "max_words" and n == 0):
                    raise ValueError("must be positive" if key == "max_words" else "must be >= 0")
                changes[key] = n
        except ValueError as err:
            raise DataError(f"{spec}: bad value for {key!r}: {value!r} ({err})") from None
    cfg = replace(default, **changes)
    if cfg.min_words > cfg.max_words:
        raise DataError(f"{spec}: min_words ({cfg.min_words}) is larger than max_words ({cfg.max_words})")
    return cfg


# -- reading the installed metadata ------------------------------------------------------------------------


def normalise_name(name: str) -> str:
    """PEP 503 normalised distribution name: `Jinja2` -> `jinja2`, `typing_extensions` -> `typing-extensions`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _unfold_header(text: str) -> str:
    """A `Description:` header keeps its line breaks as a newline + 8 spaces (setuptools) or + 7 spaces and `|`."""
    lines = text.splitlines()
    out = lines[:1]
    for line in lines[1:]:
        if line.startswith("       |"):
            line = line[8:]
        elif line.startswith("        "):
            line = line[8:]
        out.append(line)
    return "\n".join(out)


def _site_rank(dist, path_index: dict[str, int]) -> tuple[int, str]:
    try:
        site = str(Path(str(dist.locate_file(""))).resolve())
    except Exception:  # noqa: BLE001 - a custom finder's distribution without files: rank it last
        return len(path_index), ""
    return path_index.get(site, len(path_index)), site


def read_installed(path: list[str] | None = None) -> list[dict]:
    """One raw record per installed distribution found on `path` (default `sys.path`), sorted.

    Records: name, id (normalised name), version, summary, description (raw markup), content_type,
    rank (position of its folder on the path: lower wins among copies) and site.
    """
    path = list(sys.path if path is None else path)
    path_index: dict[str, int] = {}
    for i, entry in enumerate(path):
        try:
            path_index.setdefault(str(Path(entry or ".").resolve()), i)
        except OSError:
            continue
    records = []
    for dist in importlib.metadata.distributions(path=path):
        try:
            meta = dist.metadata
            name = meta.get("Name") if meta is not None else None
        except Exception:  # noqa: BLE001 - an unreadable METADATA file is one distribution less
            continue
        if not name:
            continue
        payload = meta.get_payload()
        description = (
            payload if isinstance(payload, str) and payload.strip() else _unfold_header(meta.get("Description") or "")
        )
        rank, site = _site_rank(dist, path_index)
        records.append(
            {
                "name": str(name),
                "id": normalise_name(str(name)),
                "version": str(meta.get("Version") or ""),
                "summary": str(meta.get("Summary") or ""),
                "description": str(description),
                "content_type": str(meta.get("Description-Content-Type") or ""),
                "rank": rank,
                "site": site,
            }
        )
    records.sort(key=lambda r: (r["id"], r["rank"], r["version"], r["summary"], r["description"]))
    return records


# -- cleaning markup -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```+|~~~+)")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_RULE_LINE = re.compile(r"^\s*([-=~^#*+_:`'\".|])\1{2,}\s*$")  # underlines, overlines, horizontal rules
_TABLE_LINE = re.compile(r"^\s*(\|.*\||\+[-=+:]+\+)\s*$|^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")
_LIST_ITEM = re.compile(r"^\s*([-*+\u2022]|\d+[.)]|#\.)\s+")
_DIRECTIVE = re.compile(r"^\s*\.\.(\s|$)")
_SUBST_IMAGE = re.compile(r"^\s*\.\.\s+\|([^|]+)\|\s+image::", re.I)
_PROMPT = re.compile(r"^\s*(>>>|\.\.\.\s|\$\s|>\s*\$\s|In \[\d+\]:|pip install|conda install|uv (pip|add)\s)")
_REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+")
_HTML_BLOCKS = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>", re.S | re.I)
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\((?:[^()]|\([^()]*\))*\)|!\[[^\]]*\]\[[^\]]*\]")
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^()]*\))*\)|\[([^\]]*)\]\[[^\]]*\]")
_URL = re.compile(r"<?\b(?:https?|ftp|file)://[^\s>)\]]+>?|\bwww\.[^\s>)\]]+")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SHORTCODE = re.compile(r"(?<![\w`]):[a-z0-9_+-]+:(?![\w`])")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _alnum(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[\W_]+", "", t.lower()) for t in text.split()) if w]


def _after_fence(lines: list[str], i: int, mark: str) -> int:
    """The line after the fence that closes the one opened at line `i` (or the end)."""
    i += 1
    while i < len(lines) and not lines[i].strip().startswith(mark[0] * len(mark)):
        i += 1
    return i + 1


def _after_block(lines: list[str], i: int, base: int) -> int:
    """The first line after line `i` that is not blank and not indented deeper than `base`."""
    i += 1
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        i += 1
    return i


def _prose(s: str, badges: set[str]) -> tuple[str, bool]:
    """A line's prose without blockquote marks and badge substitutions, and whether a literal block follows it
    (reST `::`, kept as `:`)."""
    s = re.sub(r"^(>\s?)+", "", s).strip()  # blockquotes
    literal_next = s.endswith("::")  # reST: the indented block that follows is literal
    if literal_next:
        s = s[:-2].rstrip()
        s = s + ":" if s else s
    for b in badges:  # reST image substitutions (badges) go; other substitutions keep their text
        s = s.replace(f"|{b}|_", " ").replace(f"|{b}|", " ")
    return s, literal_next


def _paragraphs(text: str, markdown: bool) -> list[tuple[bool, str]]:
    """Block-level pass: (is_heading, text) paragraphs with code, directives, tables and rules removed."""
    text = textwrap.dedent(_HTML_BLOCKS.sub("\n", text.replace("\r\n", "\n").replace("\t", "    ")))
    lines = text.split("\n")
    badges = {m.group(1) for m in map(_SUBST_IMAGE.match, lines) if m}
    out: list[tuple[bool, str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append((False, " ".join(para)))
            para.clear()

    i, n = 0, len(lines)
    prev_blank, prev_listy, literal_next = True, False, False
    while i < n:
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            prev_blank = True
            i += 1
            continue
        ind = _indent(line)
        fence = _FENCE.match(line)
        if fence:  # markdown code fence: skip to the closing fence (or the end)
            flush()
            i = _after_fence(lines, i, fence.group(1))
            prev_blank, literal_next = True, False
            continue
        if (
            _DIRECTIVE.match(line)
            or (literal_next and prev_blank and ind > 0)
            or (markdown and prev_blank and ind >= 4 and not prev_listy)
        ):
            # reST directive / comment / target, a literal block after `::`, or an indented markdown code
            # block: skip the line and everything indented deeper (blank lines included)
            flush()
            i = _after_block(lines, i, ind if _DIRECTIVE.match(line) else ind - 1)
            prev_blank, literal_next = True, False
            continue
        nxt = lines[i + 1] if i + 1 < n else ""
        if _RULE_LINE.match(line):  # an overline, underline or horizontal rule
            flush()
            i += 1
            continue
        if _RULE_LINE.match(nxt) and not para and not _TABLE_LINE.match(line) and len(s) <= 120:
            flush()  # a setext / reST heading: title line followed by its underline
            out.append((True, s))
            i += 2
            prev_blank, literal_next, prev_listy = True, False, False
            continue
        heading = _MD_HEADING.match(line)
        if heading and not para:
            out.append((True, heading.group(1).strip()))
            i += 1
            prev_blank, literal_next, prev_listy = True, False, False
            continue
        if _TABLE_LINE.match(line) or _PROMPT.match(line) or _REF_DEF.match(line):
            flush()
            i += 1
            prev_blank = True
            continue
        listy = bool(_LIST_ITEM.match(line))
        if listy:
            flush()
            s = _LIST_ITEM.sub("", line).strip()
        s, literal_next = _prose(s, badges)
        if s.strip():
            para.append(s)
        prev_blank = False
        prev_listy = listy or (prev_listy and ind > 0)
        i += 1
    flush()
    return out


def _inline(text: str) -> str:
    text = _TAG.sub(" ", text)
    text = _MD_IMAGE.sub(" ", text)
    text = _MD_LINK.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    text = re.sub(r"`([^`<]*?)\s*<[^<>`]+>`_{1,2}", r"\1", text)  # reST `text <url>`_ before URLs go
    text = _URL.sub(" ", text)
    text = clean_inline(text)  # reST roles, literals, emphasis, substitutions, citations
    text = re.sub(r"(?<!\w)__([^_]+)__(?!\w)|~~([^~]+)~~", lambda m: m.group(1) or m.group(2), text)
    text = re.sub(r"\[!(NOTE|TIP|IMPORTANT|WARNING|CAUTION)\]", " ", text, flags=re.I)  # GitHub alerts
    text = re.sub(r"(?<![\w\]])\[([^\[\]]+)\](?![(\[:\w])", r"\1", text)  # shortcut reference links [text]
    text = re.sub(r"(?<!\w)_([^_\s][^_]*?)_(?!\w)", r"\1", text)  # markdown _emphasis_
    text = re.sub(r"(?<=\w)_(?=[\s.,;:!?)\]]|$)", "", text)  # reST named references: Trio_
    text = re.sub(r"\\(\s|(?=\S))", "", text)  # backslash escapes
    text = _SHORTCODE.sub(" ", text)
    text = html.unescape(text)
    text = re.sub(r"\(\s*\)|\[\s*\]", " ", text)  # what remains of empty links
    return re.sub(r"\s+(?=[.,;:!?](\s|$))", "", " ".join(text.split()))


def clean_description(
    text: str, name: str = "", summary: str = "", content_type: str = "", max_words: int = 300
) -> str:
    """Markdown / reST / HTML long description -> plain prose (see the module docstring), cut to `max_words`."""
    if not text or not text.strip():
        return ""
    ct = content_type.lower()
    markdown = "markdown" in ct or ("rst" not in ct and not re.search(r"^\.\. |^(=+|-+|~+)\s*$", text, re.M))
    paras = [(h, _inline(t)) for h, t in _paragraphs(text, markdown)]
    paras = [(h, t) for h, t in paras if t]
    # headings of sections that hold no prose (only code, tables or images) say nothing
    paras = [(h, t) for k, (h, t) in enumerate(paras) if not h or (k + 1 < len(paras) and not paras[k + 1][0])]
    if paras and paras[0][0]:  # the first heading goes when it only repeats the name (or the summary)
        h, n = _alnum(paras[0][1]), _alnum(name)
        short = len(paras[0][1].split()) <= 4
        if h and (
            h == n
            or h == _alnum(summary)
            or (short and n and len(h) >= 3 and (n.startswith(h) or n.endswith(h) or h.startswith(n)))
        ):
            paras = paras[1:]
    words = " ".join(t for _, t in paras).split()
    target = _words(summary)
    if target:  # a leading copy of the summary (the query) goes, as it does in the docstring collection
        got, j = [], 0
        while j < len(words) and len(got) < len(target):
            got.extend(_words(words[j]))
            j += 1
        if got == target:
            words = words[j:]
    return " ".join(words[:max_words])


def clean_summary(text: str) -> str:
    text = " ".join((text or "").split())
    return "" if text.upper() in ("UNKNOWN", "NONE") else _inline(text)


# -- assembling the collection -------------------------------------------------------------------------------


def assemble(records: list[dict], cfg, exclude: frozenset = frozenset()) -> tuple[pd.DataFrame, dict]:
    """Clean, filter, deduplicate, cap and split raw records (pure and deterministic: any order in, same out).
    Records whose id is in `exclude` are left out (counted in `excluded`)."""
    stats = {
        "distributions": 0,
        "other_copies": 0,
        "excluded": 0,
        "no_summary": 0,
        "short_summary": 0,
        "no_description": 0,
        "short_description": 0,
        "duplicate_queries": 0,
        "duplicate_docs": 0,
    }
    best: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["id"], r.get("rank", 0), r["version"], r["summary"], r["description"])):
        if r["id"] in best:
            stats["other_copies"] += 1
        else:
            best[r["id"]] = r
    stats["distributions"] = len(best)
    seen_q, seen_d, kept = set(), set(), []
    for rid in sorted(best):
        r = best[rid]
        if rid == SELF:
            continue
        if rid in exclude:
            stats["excluded"] += 1
            continue
        query = clean_summary(r["summary"])
        if not query:
            stats["no_summary"] += 1
            continue
        if len(query.split()) < MIN_SUMMARY_WORDS or _alnum(query) == _alnum(r["name"]):
            stats["short_summary"] += 1
            continue
        doc = clean_description(r["description"], r["name"], query, r.get("content_type", ""), cfg.max_words)
        if not doc:
            stats["no_description"] += 1
            continue
        if len(doc.split()) < cfg.min_words:
            stats["short_description"] += 1
            continue
        if not first_pair(" ".join(_words(query)), " ".join(_words(doc)), seen_q, seen_d, stats):
            continue
        kept.append({"id": rid, "name": r["name"], "version": r["version"], "query": query, "doc": doc})
    df = pd.DataFrame(kept, columns=["id", "name", "version", "query", "doc"])
    if cfg.max_docs and len(df) > cfg.max_docs:
        order = sorted(df["id"], key=lambda i: _stable_unit(i, "cap"))[: cfg.max_docs]
        df = df[df["id"].isin(set(order))]
    train, dev, _ = cfg.fractions
    unit = [_stable_unit(i, "split") for i in df["id"]]
    df = df.assign(split=["train" if u < train else "dev" if u < train + dev else "test" for u in unit])
    df = df.sort_values("id").reset_index(drop=True)
    stats["pairs"] = len(df)
    stats["splits"] = {s: int((df["split"] == s).sum()) for s in SPLITS}
    return df, stats


def build(cfg: MetaConfig, path: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The collection's table [id, name, version, query, doc, split] and build statistics (not cached on disk)."""
    records = read_installed(path)
    df, stats = assemble(records, cfg)
    content = hashlib.sha1(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()
    stats.update(
        config={**asdict(cfg), "fractions": list(cfg.fractions)},
        key=cfg.key(sorted({(r["id"], r["version"]) for r in records})),
        content=content,
        sites=sorted({r["site"] for r in records if r["site"]}),
    )
    if stats["splits"]["test"] < MIN_TEST_QUERIES:
        warn(
            f"embedded:{cfg.name}: only {stats['splits']['test']} test queries from {stats['distributions']} "
            f"installed distributions (fewer than {MIN_TEST_QUERIES}: confidence intervals will be wide)"
        )
    return df, stats


class SummaryDataset(TableDataset):
    """A summary -> description collection built from installed software's records (its own description is a
    query's one relevant document); subclasses name their config class and builder."""

    config_class: type = MetaConfig

    def __init__(self, cfg=None, spec: str | None = None) -> None:
        super().__init__()
        self.config = cfg or self.config_class()
        self.name = spec or f"embedded:{self.config.name}"
        self._table = None
        self.build_stats = {}

    @staticmethod
    def builder(cfg) -> tuple[pd.DataFrame, dict]:
        return build(cfg)

    def _build(self) -> tuple[pd.DataFrame, dict]:
        return self.builder(self.config)

    def fingerprint(self) -> str:
        self.table
        return f"{self.config.name}-{self.build_stats['key'][:16]}-{self.build_stats['content'][:16]}-{len(self.table)}"


class MetaDataset(SummaryDataset):
    """Installed distributions' metadata as a dataset: one relevant document (its own description) per query."""
