"""The product speaks of itself only: no dated run logs, issue numbers or words about how the work was organised
in the README, the docs, `--help` texts, code comments and docstrings. Dated numbers belong in docs/results.md
(one current table per result, each with its date and machine) and in CHANGELOG.md."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("mice", "probes", "ablations", "figures", "tests", "docs/scripts")

DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
FORBIDDEN = {
    "issue number": re.compile(r"\bissues?\s+#?\d+|(?<![\w&/{#])(?<!PR )#\d{1,4}\b(?![\w-])", re.I),
    "issue": re.compile(r"\b(the|this|that|an|each|every|which|whose) issue'?s?\b", re.I),
    "session": re.compile(
        r"\b(this|next|previous|earlier|later|another|that|one|each|three|two|several) sessions?\b"
        r"|\bbetween sessions\b",
        re.I,
    ),
    "task": re.compile(r"\b(this|that|the next|another|each) task\b", re.I),
    "ticket": re.compile(r"\btickets?\b", re.I),
    "sprint": re.compile(r"\bsprints?\b", re.I),
    "loan": re.compile(r"\bloan(s|ed)?\b|\blent\b|\bdevice tool\b|\bnot_drawn\b", re.I),
    "design brief": re.compile(r"\bDESIGN\.md\b"),
}

# Texts in files owned by parallel work, each struck off once its owner fixes it: {path: number of findings}.
ALLOWED = {}


def _check(text: str, where: str, dates: bool = True) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if dates and DATE.search(line):
            out.append(f"{where}:{n}: date: {line.strip()[:100]}")
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                out.append(f"{where}:{n}: {what}: {line.strip()[:100]}")
    return out


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    src = path.read_text()
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(src).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                first = node.body[0].lineno
                found += [(first + i, line) for i, line in enumerate(doc.splitlines())]
    return found


def code_findings() -> list[str]:
    out = []
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "tests/test_texts.py":
                continue
            for n, text in _comments_and_docstrings(path):
                out += [f"{rel}:{n}:{f.split(':', 2)[2]}" for f in _check(text, rel)]
    return out


def page_findings() -> list[str]:
    out = _check((ROOT / "README.md").read_text(), "README.md")
    out += _check((ROOT / "CHANGELOG.md").read_text(), "CHANGELOG.md", dates=False)
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT).as_posix()
        out += _check(page.read_text(), rel, dates=rel != "docs/results.md")
    return out


def help_findings() -> list[str]:
    import typer

    from mice.cli import app

    out = []

    def walk(cmd, path):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        out.extend(_check("\n".join(texts), " ".join(path)))
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ("mice",))
    return out


def _by_file(findings: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in findings:
        path = f.split(":", 1)[0]
        counts[path] = counts.get(path, 0) + 1
    return counts


@pytest.mark.parametrize(
    "text, what",
    [
        ("measured 2026-11-30 on the machine", "date"),
        ("see issue 12", "issue number"),
        ("(#17)", "issue number"),
        ("the issue's targets", "issue"),
        ("in the next session", "session"),
        ("no GPU was lent to us", "loan"),
        ("DESIGN.md says so", "design brief"),
        ("fixed in this sprint", "sprint"),
        ("as before (#12)", "issue number"),
    ],
)
def test_the_patterns_catch_what_they_are_for(text, what):
    assert any(f": {what}:" in f for f in _check(text, "x"))


@pytest.mark.parametrize(
    "text",
    [
        'scope="session"',
        "built once per session",
        "colour #444444",
        "the task of re-ranking",
        "mask3:k=2",
        "`{system}#{k}` names",
        "a progress task",
        "rank 0 merges",
        "sentence-transformers PR #3214",
    ],
)
def test_the_patterns_spare_product_text(text):
    assert _check(text, "x") == []


def test_readme_and_docs():
    assert page_findings() == []


def test_help_texts():
    assert help_findings() == []


def test_code_comments_and_docstrings():
    counts = _by_file(code_findings())
    assert {p: n for p, n in counts.items() if p not in ALLOWED} == {}
    assert {p: n for p, n in counts.items() if p in ALLOWED and n > ALLOWED[p]} == {}


def test_the_allowance_only_shrinks():
    counts = _by_file(code_findings())
    assert {p: n for p, n in ALLOWED.items() if counts.get(p, 0) < n} == {}


def test_readme_is_a_short_guide():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
