"""Harvest (summary line, description) pairs from an installed package's docstrings.

Stdlib only and runnable as a script, because the embedded corpus builder runs it in a fresh interpreter per
package: importing every public submodule of torch or matplotlib has side effects (warnings filters, backends,
monkey-patching) that must not leak into the caller, and a submodule that crashes on import must only cost
one skipped module. Usage: ``python _docstrings.py PACKAGE OUT.json [MAX_DEPTH]``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import warnings

SKIP_SUBMODULES = {
    "tests",
    "test",
    "testing",
    "conftest",
    "setup",
    "benchmarks",
    "benchmark",
    "__main__",
    "_pytest",
    "conftest",
    "tools",
    "build",
    "backends",
    "examples",
}

MIN_SUMMARY_CHARS = 12
MIN_SUMMARY_WORDS = 3
MIN_DESCRIPTION_CHARS = 60
MIN_DESCRIPTION_WORDS = 10
MAX_DESCRIPTION_CHARS = 1500
MAX_SUMMARY_CHARS = 250

_SIGNATURE = re.compile(r"^\s*[\w.]+\s*\(.*\)\s*(->.*)?$", re.S)
_GOOGLE_SECTION = re.compile(
    r"^(args|arguments|parameters|params|returns?|yields?|raises|examples?|example usage|usage|notes?|warnings?|"
    r"see also|attributes|keyword args|keyword arguments|kwargs|references|shape|shapes|methods|todo|"
    r"inputs?|outputs?|reference|type|rtype|variables|properties|other parameters)\s*:{1,2}\s*$",
    re.I,
)
_FIELD = re.compile(
    r"^:(param|parameter|arg|argument|key|keyword|type|returns?|rtype|raises?|except|var|ivar|"
    r"cvar|vartype|meta)\b"
)
_DIRECTIVE = re.compile(r"^\.\.\s+[\w:-]+::")
_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")
_LINK_TARGET = re.compile(r"^(.*?)\s*<[^<>]+>$", re.S)
# the address in a default value's repr (pybind11 bakes `<... object at 0x7f...>` into signatures at import time):
# it differs from one interpreter to the next, and would make the collection's text do so
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


def _role_text(match: re.Match) -> str:
    inner = match.group(1)
    target = _LINK_TARGET.match(inner)
    if target and target.group(1):
        inner = target.group(1)
    return inner.lstrip("~!.")


def clean_inline(text: str) -> str:
    """Strip reST markup (roles, literals, emphasis) and collapse whitespace."""
    text = _ROLE.sub(_role_text, text)
    text = re.sub(r"`([^`<]*?)\s*<[^<>`]+>`_{1,2}", r"\1", text)  # `text <url>`_ hyperlinks
    text = re.sub(r"`([^`]+)`_{0,2}", lambda m: m.group(1).lstrip("~!."), text.replace("``", "`"))
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*(?!\w)", r"\1", text)
    text = re.sub(r"\|(\w+)\|", r"\1", text)
    text = re.sub(r"\s*\[[\w.-]+\]_", "", text)  # citation references like [1]_
    return " ".join(text.split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_underline(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and len(set(s)) == 1 and s[0] in "-=~^"


def split_docstring(doc: str | None) -> tuple[str, str] | None:
    """Split a docstring into (summary, description); None when it has no usable summary.

    The summary is the first paragraph (a leading call-signature paragraph, as numpy ufuncs and torch
    builtins have, is skipped). The description keeps the descriptive prose that follows and stops at the
    first section (numpydoc ``Parameters``/``-----``, Google ``Args:``, Sphinx ``:param``); reST directives,
    literal blocks and doctest lines are dropped, inline markup is stripped.
    """
    if not doc or not isinstance(doc, str):
        return None
    lines = inspect.cleandoc(_ADDRESS.sub(">", doc)).splitlines()
    # paragraphs of the head until the first blank line
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1

    def paragraph(start: int) -> tuple[list[str], int]:
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        return lines[start:end], end

    first, end = paragraph(i)
    if first and _SIGNATURE.match(" ".join(s.strip() for s in first)):
        i = end
        while i < len(lines) and not lines[i].strip():
            i += 1
        first, end = paragraph(i)
    if (
        not first
        or any(_is_underline(x) for x in first)
        or _DIRECTIVE.match(first[0].strip())
        or first[0].strip().startswith(">>>")
        or _GOOGLE_SECTION.match(first[0].strip())
    ):
        return None
    # a summary that runs into the description without a blank line: keep its first line if it is a sentence
    rest_of_first: list[str] = []
    if len(first) > 1 and first[0].rstrip().endswith(".") and not _GOOGLE_SECTION.match(first[1].strip()):
        first, rest_of_first = first[:1], first[1:]
    summary = clean_inline(" ".join(first))
    if len(summary) > MAX_SUMMARY_CHARS:
        head, sep, tail = summary.partition(". ")
        if not sep or len(head) > MAX_SUMMARY_CHARS:
            return None
        summary, rest_of_first = head + ".", [tail] + rest_of_first
    summary = summary.rstrip(":").strip()
    return summary, _description(rest_of_first + [""] + lines[end:])


def _description(body: list[str]) -> str:
    """The descriptive prose of a docstring's body, up to its first section; directives, literal blocks and
    doctests dropped, paragraphs joined one a line, inline markup stripped."""
    kept: list[str] = []
    skip_indent: int | None = None  # inside a directive / literal / doctest block: skip lines indented deeper
    in_doctest = False
    for j, raw in enumerate(body):
        line = raw.rstrip()
        s = line.strip()
        if in_doctest:
            if not s:
                in_doctest = False
                kept.append("")
            continue
        if skip_indent is not None:
            if not s or _indent(line) > skip_indent:
                continue
            skip_indent = None
        if not s:
            kept.append("")
            continue
        nxt = body[j + 1] if j + 1 < len(body) else ""
        if _is_underline(nxt) and not _is_underline(line):
            break  # numpydoc section header
        if _GOOGLE_SECTION.match(s) or _FIELD.match(s):
            break
        if s.startswith(">>>"):
            in_doctest = True
            continue
        if _DIRECTIVE.match(s):
            skip_indent = _indent(line)
            continue
        if _is_underline(s):
            continue
        if s.endswith("::"):
            # "For example::" introduces a literal block: keep the sentence, drop the block
            skip_indent = _indent(line)
            s = s[:-2].rstrip()
            if s:
                kept.append(s + ":")
            continue
        kept.append(s)
    paragraphs, cur = [], []
    for s in kept + [""]:
        if s:
            cur.append(s)
        elif cur:
            paragraphs.append(clean_inline(" ".join(cur)))
            cur = []
    description = "\n".join(p for p in paragraphs if p)
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0]
    return description


def acceptable(summary: str, description: str) -> bool:
    """Minimal lengths: a query of a few words, a document of a couple of sentences; no bare cross-refs."""
    if len(summary) < MIN_SUMMARY_CHARS or len(summary.split()) < MIN_SUMMARY_WORDS:
        return False
    if len(description) < MIN_DESCRIPTION_CHARS or len(description.split()) < MIN_DESCRIPTION_WORDS:
        return False
    low = summary.lower()
    if low.startswith(
        ("alias for", "alias of", "see ", "deprecated", "this function is deprecated", "multiply dispatched")
    ):
        return False
    return True


def _public(name: str) -> bool:
    return not name.startswith("_")


def _walk_modules(root: str, max_depth: int, stats: dict) -> list:
    """Import the package and its public submodules (breadth first, sorted); failures are counted, not fatal."""
    modules = []
    queue = [(root, 0)]
    seen = set()
    while queue:
        name, depth = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException as err:  # noqa: BLE001 - SystemExit and friends from broken optional modules
            if isinstance(err, KeyboardInterrupt):
                raise
            if name == root:
                raise
            stats["modules_failed"].append(f"{name}: {type(err).__name__}")
            continue
        modules.append(module)
        path = getattr(module, "__path__", None)
        if path is None or depth >= max_depth:
            continue
        try:
            children = sorted(info.name for info in pkgutil.iter_modules(path))
        except Exception:  # noqa: BLE001
            children = []
        for child in children:
            if _public(child) and child not in SKIP_SUBMODULES:
                queue.append((f"{name}.{child}", depth + 1))
    stats["modules_imported"] = len(modules)
    return modules


def _belongs(obj, root: str) -> bool:
    mod = getattr(obj, "__module__", None)
    return isinstance(mod, str) and mod.split(".")[0] == root


def _path_key(path: str, obj=None) -> tuple:
    """Prefer a path inside the module that defines the object, then the shortest one."""
    home = getattr(obj, "__module__", None) if obj is not None else None
    container = path.rsplit(".", 1)[0]
    foreign = isinstance(home, str) and not (home == container or home.startswith(container + "."))
    return (foreign, path.count("."), len(path), path)


def harvest(root: str, max_depth: int = 3) -> dict:
    """Every public function, class and class member of package `root`, with its best public path."""
    stats = {"modules_failed": [], "modules_imported": 0}
    modules = _walk_modules(root, max_depth, stats)
    found: dict[int, tuple[str, object]] = {}  # id(obj) -> (best path, obj); objects kept alive by modules

    def offer(path: str, obj) -> None:
        key = id(obj)
        if key not in found or _path_key(path, obj) < _path_key(found[key][0], obj):
            found[key] = (path, obj)

    classes = []
    for module in modules:
        if any(part.startswith("_") for part in module.__name__.split(".")):
            continue
        names = getattr(module, "__all__", None)
        if not isinstance(names, (list, tuple)):
            names = [n for n in vars(module) if _public(n)]
        for name in sorted({n for n in names if isinstance(n, str) and _public(n)}):
            try:
                obj = getattr(module, name)
            except Exception:  # noqa: BLE001
                continue
            if inspect.ismodule(obj) or not callable(obj) or not _belongs(obj, root):
                continue
            offer(f"{module.__name__}.{name}", obj)
            if inspect.isclass(obj):
                classes.append(obj)
    for cls in classes:
        cls_path = found[id(cls)][0]
        for name, member in sorted(vars(cls).items()):
            if not _public(name):
                continue
            raw = member
            if isinstance(member, (staticmethod, classmethod)):
                raw = member.__func__
            elif isinstance(member, property):
                raw = member.fget
            if raw is None or not (callable(raw) or isinstance(member, property)):
                continue
            if isinstance(member, property):
                offer(f"{cls_path}.{name}", member)
            else:
                offer(f"{cls_path}.{name}", raw)

    records = []
    for path, obj in sorted(found.values(), key=lambda po: po[0]):
        try:
            doc = obj.__doc__
        except Exception:  # noqa: BLE001
            continue
        if inspect.isclass(obj) and doc == getattr(type, "__doc__", None):
            continue
        parts = split_docstring(doc)
        if parts is None:
            continue
        summary, description = parts
        if not acceptable(summary, description):
            continue
        kind = "class" if inspect.isclass(obj) else ("property" if isinstance(obj, property) else "function")
        records.append({"id": path, "package": root, "kind": kind, "query": summary, "doc": description})
    version = getattr(sys.modules.get(root), "__version__", None)
    return {
        "package": root,
        "version": str(version) if version is not None else None,
        "objects": len(found),
        "records": records,
        **stats,
    }


def main(argv: list[str]) -> int:
    root, out = argv[0], argv[1]
    max_depth = int(argv[2]) if len(argv) > 2 else 3
    os.environ.setdefault("MPLBACKEND", "Agg")
    result = harvest(root, max_depth)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
