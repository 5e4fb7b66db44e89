"""`report.html` built from a run folder whose tables carry Markdown and HTML in every string cell, opened in
headless Chromium: no script of theirs runs (`window.__pwned` stays undefined, no dialog opens), the DOM shows
their text as text, and no file from outside the run folder is inlined."""

from __future__ import annotations

import pandas as pd
import pytest

from test_viz_browser import Opened, browser  # noqa: F401 (the fixture)

SECRET = "outside-the-run-0451"  # the content of a file beside the run folder, which must never be inlined
HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "![x](/etc/hostname)",
    "![y](../secret.png)",
    "[z](javascript:window.__pwned=3)",
    '<svg onload="window.__pwned = 4">',
    "**bold** `code` | pipe",
]


def _hostile_run(root):
    """A run folder (data sizes, efficiency bench, timings) with a hostile string in every string cell."""
    (root / "data").mkdir(parents=True)
    (root / "bench").mkdir()
    n = len(HOSTILE)
    pd.DataFrame({"domain": HOSTILE, "split": ["test"] * n, "queries": range(1, n + 1)}).to_csv(
        root / "data" / "sizes.csv", index=False
    )
    pd.DataFrame(
        {
            "method": HOSTILE,
            "doc_len": [64] * n,
            "median_ms": [1.5] * n,
            "docs": [100] * n,
            "query_len": [8] * n,
            "device": [HOSTILE[1]] * n,
            "threads": [1] * n,
        }
    ).to_csv(root / "bench" / "bench.csv", index=False)
    pd.DataFrame({"stage": HOSTILE, "seconds": [1.0] * n}).to_csv(root / "timings.csv", index=False)
    return root


def test_hostile_cells_run_no_script_show_as_text_and_inline_nothing_from_outside(browser, tmp_path):  # noqa: F811
    from mice.app.report import write_report_html

    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET.encode())
    run = _hostile_run(tmp_path / "run")
    html_path = write_report_html(run)
    page_text = html_path.read_text()
    import base64

    for needle in (
        SECRET,
        base64.b64encode(SECRET.encode()).decode()[:16],
        open("/etc/hostname").read().strip() and base64.b64encode(open("/etc/hostname", "rb").read()).decode()[:16],
    ):
        assert needle not in page_text  # neither the secret nor /etc/hostname, raw or as base64
    assert "data:image" not in page_text.split("<main", 1)[1]

    opened = Opened(browser, html_path)
    dialogs = []
    opened.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p = opened.page
    assert p.evaluate("typeof window.__pwned") == "undefined"
    assert p.eval_on_selector_all("main script, main img, main svg, main a[href^='javascript']", "xs => xs.length") == 0
    cells = p.eval_on_selector_all("main table td, main table th", "cs => cs.map(c => c.innerText)")
    for text in HOSTILE:  # each hostile string is in the DOM, as the very text it is
        assert text in cells, (text, cells[:20])
    assert HOSTILE[1] in p.inner_text("main")  # also where it is prose (the bench's device)
    for a in p.eval_on_selector_all("main a", "as => as.map(a => a.getAttribute('href'))"):
        assert not (a or "").lower().startswith("javascript"), a
    p.wait_for_timeout(200)  # an onerror or onload would have fired by now
    assert p.evaluate("typeof window.__pwned") == "undefined" and dialogs == []
    opened.check_clean()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
