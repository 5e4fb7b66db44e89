"""`report.html`: the Markdown report rendered as one self-contained page (every figure inlined as a data: URI,
a table of contents, the interactive views embedded in their sections). Built from the report's own Markdown
text, so it holds exactly the tables and figures of `report.md`."""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote

from mice.errors import DataError
from mice.viz.html import CSP, View

PAGE_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;display:flex}
nav.toc{position:sticky;top:0;align-self:flex-start;max-height:100vh;overflow:auto;min-width:210px;max-width:260px;
  padding:16px;background:#fafafa;border-right:1px solid #e5e5e5;font-size:13px}
nav.toc ul{list-style:none;padding-left:0;margin:0} nav.toc ul ul{padding-left:14px}
nav.toc a{color:#0b5cad;text-decoration:none} nav.toc a:hover{text-decoration:underline}
main{padding:16px 28px;max-width:1100px;min-width:0}
table.md-table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;display:block;overflow-x:auto}
table.md-table th,table.md-table td{border:1px solid #ddd;padding:3px 7px;text-align:left}
table.md-table th{background:#f3f3f3}
main img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
section.views{border-left:3px solid #3b75af;padding-left:12px;margin:12px 0 24px}
section.views>h4{margin:4px 0}
"""


def _slug(text: str, seen: dict) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", text).lower()).strip("-") or "section"
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _inline_images(body: str, base: Path, figures_dir=None) -> str:
    """Figures inlined as data URIs; only files inside the run folder, or the figures folder the caller drew
    into, are read (a path in a table cell cannot reach anything else)."""
    roots = [Path(base).resolve()] + ([Path(figures_dir).resolve()] if figures_dir else [])

    def repl(m):
        src = unquote(html.unescape(m.group(1)))  # markdown-it percent-encodes link targets
        if src.startswith("data:"):
            return m.group(0)
        root = roots[0]
        path = (root / src).resolve()  # an absolute src stays absolute; links are followed before checking
        if not any(path.is_relative_to(r) for r in roots):
            raise DataError(
                f"report.html: figure {src} is outside the run folder {root}; only files inside it are inlined"
            )
        if not path.is_file():
            raise DataError(f"report.html: figure {src} not found (looked in {base})")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:{mime};base64,{data}" data-source="{html.escape(path.name)}"'

    return re.sub(r'<img src="([^"]*)"', repl, body)


def _split_sections(markdown: str) -> list[tuple[str, str]]:
    """(title of its `## ` heading or '' for the preamble, text) in order; fences are respected."""
    sections, title, buf, fence = [], "", [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            sections.append((title, "\n".join(buf)))
            title, buf = line[3:].strip(), []
        buf.append(line)
    sections.append((title, "\n".join(buf)))
    return sections


def render_report_html(
    markdown: str,
    base,
    views: dict[str, list[tuple[str, View]]] | None = None,
    title: str = "MICE demo report",
    figures_dir=None,
) -> str:
    """Markdown (as `report.md` holds it) -> one page. `base`: where relative figure paths resolve;
    `figures_dir`: a folder of figures drawn outside it (`mice figures --out`), also inlined.
    `views`: section title -> [(caption, view)], embedded at the end of that section (an "Interactive views"
    section collects those whose section is absent)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    views = dict(views or {})
    parts = []
    for sec_title, text in _split_sections(markdown):
        parts.append(md.render(text))
        if sec_title in views:
            parts.append(_views_html(views.pop(sec_title)))
    leftover = [v for vs in views.values() for v in vs]
    if leftover:
        parts.append(md.render("## Interactive views") + _views_html(leftover))
    body = _inline_images("\n".join(parts), Path(base), figures_dir)
    body = body.replace("<table>", '<table class="md-table">')
    seen: dict = {}
    toc: list[tuple[int, str, str]] = []

    def head(m):
        level, inner = int(m.group(1)), m.group(2)
        anchor = _slug(inner, seen)
        if level in (2, 3):
            toc.append((level, anchor, inner))
        return f'<h{level} id="{anchor}">{inner}</h{level}>'

    body = re.sub(r"<h([1-4])>(.*?)</h\1>", head, body)
    nav = ['<nav class="toc"><strong>Contents</strong><ul>']
    open_sub = False
    for level, anchor, inner in toc:
        if level == 3 and not open_sub:
            nav.append("<ul>")
            open_sub = True
        elif level == 2 and open_sub:
            nav.append("</ul>")
            open_sub = False
        nav.append(f'<li><a href="#{anchor}">{inner}</a></li>')
    nav.append("</ul></ul></nav>" if open_sub else "</ul></nav>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>\n<body>\n"
        + "".join(nav)
        + f"\n<main>\n{body}\n</main>\n</body></html>\n"
    )


def _views_html(items: list[tuple[str, View]]) -> str:
    out = ['<section class="views">']
    for caption, view in items:
        out.append(f"<h4>{html.escape(caption)}</h4>")
        out.append(view.html())
    out.append("</section>")
    return "\n".join(out)


def demo_views(root) -> dict[str, list[tuple[str, View]]]:
    """The interactive views a demo folder's saved results support, keyed by report section title."""
    from mice.viz import KnockoutView, MaskView, PairAttentionView, PathMassView

    root = Path(root)
    views: dict[str, list] = {}
    probe = root / "probe" / "probe.parquet"
    if probe.exists():
        items = [("Explore: attention mass by layer, head and path (hover a cell)", PathMassView.from_file(probe))]
        examples = sorted((root / "probe").glob("*examples*.npz"))
        if examples:
            from mice.results import load_examples

            exs = load_examples(examples[0])
            if exs:
                items.append(
                    (
                        "Explore: one pair's token-level attention (hover a token, pick layer/head/path)",
                        PairAttentionView.from_example(exs[0]),
                    )
                )
        views["Attention paths (probe)"] = items
    sweep = root / "sweep" / "sweep.parquet"
    if sweep.exists():
        views["Knockouts"] = [
            ("Explore: knockout effects (click a cell for per-query values and a CI)", KnockoutView.from_sweep(sweep))
        ]
    mask = root / "derive" / "mask.json"
    if mask.exists():
        from mice.reach import structural_table
        from mice.masks import InteractionMask

        loaded = InteractionMask.load(mask)
        views["Derived interaction mask"] = [
            (
                "Explore: the derived mask (click cells to edit, download JSON; "
                "hatched cells are structural: they cannot change the score)",
                MaskView(loaded, structural=structural_table(loaded)),
            )
        ]
    derived = root / "search" / "derived.json"
    if derived.exists():
        from mice.derived import DerivedConfig

        cfg = DerivedConfig.load(derived)
        if cfg.mask is not None:
            from mice.reach import structural_table

            m = cfg.interaction_mask()
            views["Trained search"] = [
                (
                    f"Explore: the mask of the derived configuration ({cfg.decision}; click "
                    "cells to edit, download JSON)",
                    MaskView(m, structural=structural_table(m)),
                )
            ]
    return views
