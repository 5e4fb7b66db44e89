"""The docs site stays true to the code: the CLI page is what the commands say, the API page covers every name
`import mice` offers, and every page is in the site's navigation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mice

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_the_cli_reference_is_generated_from_the_commands():
    done = subprocess.run(
        [sys.executable, str(DOCS / "scripts" / "cli_reference.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert done.returncode == 0, done.stderr


def test_the_api_page_covers_every_public_name():
    page = (DOCS / "api.md").read_text()
    assert [name for name in mice.__all__ if f"`mice.{name}`" not in page] == []


def test_every_page_is_in_the_navigation():
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages == nav


def test_the_architecture_page_answers_the_three_questions_with_one_path_each():
    page = (DOCS / "architecture.md").read_text()
    for question, path in (
        ("how a knockout is applied", "mice/models/adapters.py"),
        ("decision rule", "ablations/search.py"),
        ("add a backbone family", "mice/models/adapters.py"),
    ):
        section = page[page.lower().index(question.lower()) :]
        assert path in section.split("\n\n")[0], question
        assert (ROOT / path).exists()
