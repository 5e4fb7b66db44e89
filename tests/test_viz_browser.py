"""The interactive views in a real headless Chromium (Debian's, driven by Playwright): each page renders with no
console error and no network request, real hover/click events change what the DOM shows, and what the page
computes agrees with Python (path mass, per-query CI, edited mask JSON). Render times of demo-sized inputs are
printed, not asserted."""

import json
import shutil
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mice import InteractionMask
from mice.masks import all_paths
from mice.viz import KnockoutView, MaskView, PairAttentionView, PathMassView

CHROMIUM = os.environ.get("MICE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium per module, fresh profile. `make test` installs Debian's chromium when it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make test` installs it (apt-get install chromium), or set MICE_CHROMIUM")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is missing: it is in the dev extra (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1400, "height": 900},
        )
        yield ctx
        ctx.close()


class Opened:
    """A page opened from a file with every request routed: only file:, data: and blob: may load."""

    def __init__(self, ctx, path):
        self.page = ctx.new_page()
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r):
            url = r.request.url
            if url.startswith(("file:", "data:", "blob:")):
                r.continue_()
            else:
                self.requests.append(url)
                r.abort()

        self.page.route("**/*", route)
        start = time.perf_counter()
        self.page.goto(Path(path).resolve().as_uri(), wait_until="load")
        self.load_s = time.perf_counter() - start
        self.render_ms = [
            float(x) for x in self.page.eval_on_selector_all(".mice-viz", "els => els.map(e => e.dataset.renderMs)")
        ]

    def text(self, selector):
        return self.page.inner_text(selector)

    def check_clean(self):
        assert self.errors == [], self.errors
        assert self.requests == [], self.requests
        self.page.close()


def _pattern(L, H, T, seed=0):
    x = np.random.default_rng(seed).normal(size=(L, H, T, T)) * 2
    p = np.exp(x)
    return p / p.sum(-1, keepdims=True)


def _probe_table(L=6, H=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "layer": l,
            "head": h,
            "from": p.split("->")[0],
            "to": p.split("->")[1],
            "path": p,
            "mass": rng.random(),
            "std": rng.random() / 10,
            "n_pairs": 20,
        }
        for l in range(L)
        for h in range(-1, H)
        for p in all_paths()
    ]
    return pd.DataFrame(rows)


def _attribution(L=6, H=12, Q=30, seed=0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        [
            {"layer": l, "head": h, "path": p, "mode": "zero", "estimate": rng.normal()}
            for l in range(L)
            for h in range(-1, H)
            for p in all_paths()
        ]
    )
    pq = pd.DataFrame(
        [
            {"query_id": f"q{q:02d}", "layer": l, "head": -1, "path": p, "estimate": rng.normal()}
            for l in range(L)
            for p in all_paths()
            for q in range(Q)
        ]
    )
    return table, pq


# ---------------------------------------------------------------------------------------------- pair attention
def test_pair_view_hover_filter_and_path_mass_parity_with_probe(browser, tiny_bert, tmp_path):
    """A real tiny model's pattern: hovering changes the DOM, and the page's q->d mass equals the probe's."""
    from mice import HookedCrossEncoder
    from probes.attention import attention_paths

    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    pair = ("sort an array", "return a sorted copy of an array along the given axis")
    view = PairAttentionView.from_model(model, *pair)
    page = Opened(browser, view.save(tmp_path / "pair.html"))
    p = page.page
    before = page.text(".mv-hover")
    tokens = p.query_selector_all(".mv-tok")
    assert len(tokens) == len(view.tokens)
    q_tok = next(i for i, s in enumerate(view.segments) if s == "q")
    tokens[q_tok].hover()
    after = page.text(".mv-hover")
    assert after != before and after.startswith(f"#{q_tok} {view.tokens[q_tok]} (q) attends to")
    assert "mv-focus" in tokens[q_tok].get_attribute("class")
    # strongest target in the page = strongest in Python (mean over heads, last layer shown first)
    m = view.pattern[-1].mean(0)
    best = int(np.argmax(m[q_tok]))
    assert after.split("\n")[1].strip().startswith(f"{m[q_tok, best]:.3f}  #{best} ")
    # filter by path and pick layer 0: the status line shows the path mass; compare with probes.attention_paths
    p.select_option(".mv-controls label:nth-child(1) select", "0")
    p.select_option(".mv-controls label:nth-child(3) select", "q->d")
    shown = float(p.get_attribute(".mv-status", "data-mass"))
    probe = attention_paths(model, [pair])
    row = probe[(probe.layer == 0) & (probe["head"] == -1) & (probe.path == "q->d")]
    assert shown == pytest.approx(float(row["mass"].iloc[0]), abs=1e-4)
    assert shown == pytest.approx(view.path_mass("q->d", 0), abs=1e-4)
    # hovering a token outside the path's rows lists nothing it attends to on that path
    d_tok = next(i for i, s in enumerate(view.segments) if s == "d")
    tokens[d_tok].hover()
    assert "attends to [q->d]:\n  (nothing on this path)" in page.text(".mv-hover")
    # hovering the matrix names the cell under the pointer
    box = p.query_selector(".mv-matrix").bounding_box()
    p.mouse.move(box["x"] + 1, box["y"] + box["height"] - 1)
    assert page.text(".mv-hover").startswith(f"from #{len(view.tokens) - 1} ")
    page.check_clean()


# ---------------------------------------------------------------------------------------------- path mass
def test_path_mass_view_hover_and_head_modes(browser, tmp_path):
    table = _probe_table(L=3, H=4)
    page = Opened(browser, PathMassView(table).save(tmp_path / "paths.html"))
    p = page.page
    assert len(p.query_selector_all(".mv-cell")) == 3 * 25
    p.hover('.mv-cell[data-row="2"][data-col="7"]')  # layer 2, path all_paths()[7]
    path = all_paths()[7]
    want = table[(table.layer == 2) & (table["head"] == -1) & (table.path == path)]["mass"].iloc[0]
    assert page.text(".mv-hover").startswith(f"layer 2, mean over heads, path {path}")
    assert f"mass {want:.4f}" in page.text(".mv-hover")
    p.select_option(".mv-controls select", "all")
    assert len(p.query_selector_all(".mv-cell")) == 3 * 4 * 25
    p.hover('.mv-cell[data-row="5"][data-col="0"]')  # layer 1, head 1
    want = table[(table.layer == 1) & (table["head"] == 1) & (table.path == "cls->cls")]["mass"].iloc[0]
    assert page.text(".mv-hover").startswith("layer 1, head 1, path cls->cls") and f"{want:.4f}" in page.text(
        ".mv-hover"
    )
    page.check_clean()


# ---------------------------------------------------------------------------------------------- knockouts
def test_knockout_view_click_shows_per_query_effects_and_ci(browser, tmp_path):
    from scipy import stats

    table, pq = _attribution(L=3, H=2, Q=12)
    page = Opened(browser, KnockoutView(table, value="estimate", per_query=pq).save(tmp_path / "ko.html"))
    p = page.page
    assert page.text(".mv-detail") == "no cell selected"
    p.click('.mv-cell[data-row="1"][data-col="8"]')  # layer 1, all heads, path all_paths()[8]
    path = all_paths()[8]
    vals = pq[(pq.layer == 1) & (pq.path == path)]["estimate"].to_numpy()
    half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
    sel = page.text(".mv-selected")
    est = table[(table.layer == 1) & (table["head"] == -1) & (table.path == path)]["estimate"].iloc[0]
    assert f"knock out {path}" in sel and f"estimate = {est:.4f}" in sel
    assert f"[{vals.mean() - half:.4f}, {vals.mean() + half:.4f}] (95% t-interval over queries)" in sel
    bars = p.query_selector_all(".mv-bar")
    assert len(bars) == len(vals)
    assert page.text(".mv-pq-summary").startswith(f"{len(vals)} queries: {(vals < 0).sum()} below 0")
    assert (
        bars[0].get_attribute("data-query")
        == pq[(pq.layer == 1) & (pq.path == path)].sort_values("estimate")["query_id"].iloc[0]
    )
    # per-head maps have no per-query values here: the detail panel says so
    p.select_option(".mv-controls select", "1")
    p.click('.mv-cell[data-row="0"][data-col="0"]')
    assert "head 1" in page.text(".mv-selected") and "no per-query values" in page.text(".mv-detail")
    page.check_clean()


def test_knockout_view_of_a_real_sweep(browser, planted, tmp_path):
    """A saved sweep with its per-query sidecar (the planted model): click-through shows those queries."""
    from ablations.sweep import save_sweep, sweep

    folder, ds, run = planted
    res = sweep(folder, ds, "test", run, k=5, layers=[0], paths=["q->d", "d->q", "d->d"])
    out = save_sweep(res, tmp_path / "sweep.parquet")
    view = KnockoutView.from_sweep(out)
    page = Opened(browser, view.save(tmp_path / "sweep.html"))
    col = view.data()["paths"].index("q->d")
    page.page.click(f'.mv-cell[data-row="0"][data-col="{col}"]')
    n_q = res.per_query[(res.per_query.layer == 0) & (res.per_query.path == "q->d")]["query_id"].nunique()
    assert len(page.page.query_selector_all(".mv-bar")) == n_q > 0
    row = res.table[(res.table.layer == 0) & (res.table.path == "q->d")].iloc[0]
    sel = page.text(".mv-selected")
    assert f"delta_ndcg@10 = {row['delta_ndcg@10']:.4f}" in sel and f"kendall_tau {row['kendall_tau']:.4f}" in sel
    page.check_clean()


# ---------------------------------------------------------------------------------------------- mask
def test_mask_view_toggles_write_the_json_python_writes(browser, tmp_path):
    mask = InteractionMask.from_preset("mask1", 4)
    view = MaskView(mask, structural=[(3, "q->*"), (3, "d->*")])
    page = Opened(browser, view.save(tmp_path / "mask.html"))
    p = page.page
    assert len(p.query_selector_all(".mv-structural")) == 10
    assert json.loads(p.input_value(".mv-json"))["rules"] == list(InteractionMask.from_tables(mask.tables).rules)
    edits = [(0, "d->q"), (2, "cls->d"), (1, "d->q")]
    for layer, path in edits:
        cell = f'.mv-maskcell[data-layer="{layer}"][data-path="{path}"]'
        before = p.get_attribute(cell, "data-allowed")
        p.click(cell)
        assert p.get_attribute(cell, "data-allowed") != before
    shown = json.loads(p.input_value(".mv-json"))
    expected = view.toggled(edits)
    assert shown["rules"] == list(expected.rules) and shown["name"] == "mask1-edited"
    assert InteractionMask.from_dict(shown) == expected
    assert "3 edit(s)" in page.text(".mv-status")
    with p.expect_download() as dl:
        p.click(".mv-download")
    saved = tmp_path / "edited.json"
    dl.value.save_as(saved)
    assert InteractionMask.load(saved) == expected
    # blocking everything `sep1` may attend in layer 0 is refused, as InteractionMask refuses it
    p.click('.mv-maskcell[data-layer="0"][data-path="sep1->sep1"]')
    assert page.text(".mv-status").startswith("invalid: segment sep1 has nothing to attend to in layer 0")
    assert p.is_disabled(".mv-download")
    p.click(".mv-reset")
    assert page.text(".mv-status").startswith("unchanged") and not p.is_disabled(".mv-download")
    page.check_clean()


# ---------------------------------------------------------------------------------------------- demo-sized timing
def test_demo_sized_views_render(browser, tmp_path, capsys):
    """6 layers x 12 heads x 25 paths, a 128-token pair: print render times (JS time inside the page, and
    page load including parsing the embedded data); the check is only that each renders cleanly."""
    T = 128
    segs = ["cls"] + ["q"] * 12 + ["sep1"] + ["d"] * (T - 15) + ["sep2"]
    table, pq = _attribution()
    views = {
        "pair attention (128 tokens)": PairAttentionView(_pattern(6, 12, T), [f"tok{i}" for i in range(T)], segs),
        "path mass (6x12x25)": PathMassView(_probe_table()),
        "knockouts (6x12x25, 30 queries)": KnockoutView(table, value="estimate", per_query=pq),
        "mask (6 layers, structural)": MaskView(
            InteractionMask.from_preset("mask2", 6), structural=[(5, "q->*"), (5, "d->*"), (5, "sep1->*")]
        ),
    }
    lines = []
    for name, view in views.items():
        path = view.save(tmp_path / f"{name.split()[0]}.html")
        page = Opened(browser, path)
        assert len(page.render_ms) == 1
        lines.append(
            f"{name}: render {page.render_ms[0]:.1f} ms in page, load {1000 * page.load_s:.0f} ms, "
            f"{path.stat().st_size / 1e6:.2f} MB"
        )
        if name.startswith(("pair", "path")):  # the heaviest redraw: mean over 12 heads, or all 72 rows
            ms = page.page.evaluate("""() => { const s = document.querySelector(
                '.mv-controls label:nth-child(' + (document.querySelector('.mice-pair') ? 2 : 1) + ') select');
                s.value = s.options[s.options.length - 1].value; const t = performance.now();
                s.dispatchEvent(new Event('change')); return performance.now() - t; }""")
            lines[-1] += f", redraw ({'head 11' if name.startswith('pair') else 'every head'}) {ms:.1f} ms"
        page.check_clean()
    with capsys.disabled():
        print("\n[viz render times] " + "; ".join(lines))


# ---------------------------------------------------------------------------------------------- report.html
def _md_tables(md: str) -> list[list[str]]:
    """Header cells of every Markdown table in report.md, as the page shows them (report cells are escaped for
    Markdown: `n\\_queries` renders as `n_queries`)."""
    lines = md.splitlines()
    return [
        [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", c.strip()) for c in lines[i].strip().strip("|").split("|")]
        for i in range(len(lines) - 1)
        if lines[i].startswith("|") and lines[i + 1].startswith("|---")
    ]


def _md_figures(md: str) -> list[str]:
    return [Path(src).name for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)]


def _check_report(browser, html_path: Path, md: str):
    page = Opened(browser, html_path)
    p = page.page
    # every table of report.md, in order, with the same header cells
    headers = p.eval_on_selector_all(
        "main table.md-table", "ts => ts.map(t => [...t.querySelectorAll('th')].map(th => th.innerText.trim()))"
    )
    want = _md_tables(md)
    assert len(want) >= 5 and headers == [[re.sub(r"[`*]", "", c) for c in h] for h in want]
    # every figure, inlined (data: URI) and actually decoded by the browser
    imgs = p.eval_on_selector_all(
        "main img", "is => is.map(i => [i.dataset.source, i.src.slice(0, 15), i.naturalWidth])"
    )
    assert [i[0] for i in imgs] == _md_figures(md) and len(imgs) >= 5
    assert all(src.startswith("data:image/png") and w > 0 for _, src, w in imgs), imgs
    # a table of contents linking every section heading
    toc = p.eval_on_selector_all("nav.toc a", "as => as.map(a => a.getAttribute('href'))")
    heads = p.eval_on_selector_all("main h2, main h3", "hs => hs.map(h => '#' + h.id)")
    assert toc == heads and len(toc) >= 8
    for section in re.findall(r"^## (.+)$", md, flags=re.M):
        assert section.replace("`", "") in p.inner_text("nav.toc")
    # the interactive views sit in their sections, and respond to real input
    kinds = p.eval_on_selector_all(".mice-viz", "vs => vs.map(v => v.dataset.kind)")
    # the mask derived from the screen, and the trained search's derived configuration
    assert sorted(kinds) == ["knockouts", "mask", "mask", "pair", "paths"], kinds
    ko = p.query_selector(".mice-knockouts")
    ko.query_selector('.mv-cell[data-row="0"][data-col="0"]').click()
    assert (
        ko.query_selector(".mv-selected") is not None and "knock out" in ko.query_selector(".mv-selected").inner_text()
    )
    pm = p.query_selector(".mice-paths")
    pm.query_selector('.mv-cell[data-row="0"][data-col="1"]').hover()
    assert pm.query_selector(".mv-hover").inner_text().startswith("layer 0, mean over heads, path ")
    page.check_clean()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """A tiny demo built by this very code under a temporary folder: never the user's `runs/`, and never a
    folder some other code or preset built."""
    from mice.app.demo import run_demo

    run = tmp_path_factory.mktemp("demo") / "tiny"
    run_demo(run, "tiny")
    yield run
    shutil.rmtree(run.parent, ignore_errors=True)


@pytest.mark.integration
def test_demo_report_html_has_every_table_figure_and_view(browser, tiny_demo):
    assert (tiny_demo / "report.html").stat().st_mtime >= (tiny_demo / "report.md").stat().st_mtime - 5
    _check_report(browser, tiny_demo / "report.html", (tiny_demo / "report.md").read_text())


@pytest.mark.integration
def test_mice_figures_writes_report_html(browser, tiny_demo, tmp_path):
    out = tmp_path / "figs"
    res = subprocess.run(
        [sys.executable, "-m", "mice", "figures", "--from", str(tiny_demo), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert f"report: {out / 'report.html'}" in res.stdout
    from mice.files import read_table
    from mice.app.report import report_markdown

    md = report_markdown(tiny_demo, timings=read_table(tiny_demo / "timings.csv"), figures_dir=out)
    assert _md_tables(md) == _md_tables((tiny_demo / "report.md").read_text())
    _check_report(browser, out / "report.html", md)


# ---------------------------------------------------------------------------------------------- in a notebook
def test_views_through_a_kernel_and_exported_html(browser, tmp_path):
    """`_repr_html_` as Jupyter shows it: a real kernel runs the cells, nbconvert exports the outputs, and the
    views in the exported page (two on one page) render and respond."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from mice import InteractionMask\nfrom mice.viz import mask_view\n"
            "mask_view(InteractionMask.from_preset('mask1', 3))"
        ),
        nbformat.v4.new_code_cell("mask_view(InteractionMask.from_preset('mask2', 2))"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert all("text/html" in c.outputs[0]["data"] for c in nb.cells)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
    from mice.viz import page as make_page

    path = tmp_path / "exported.html"
    path.write_text(make_page("exported notebook", body))
    opened = Opened(browser, path)
    p = opened.page
    views = p.query_selector_all(".mice-mask")
    assert len(views) == 2 and len(views[0].query_selector_all(".mv-maskcell")) == 3 * 25
    cell = views[1].query_selector('.mv-maskcell[data-layer="1"][data-path="d->q"]')
    cell.click()
    assert cell.get_attribute("data-allowed") == "1"  # mask2 blocks d->q; the click allowed it, in view 2 only
    assert "1 edit(s): layer 1 d->q allowed" in views[1].query_selector(".mv-status").inner_text()
    assert views[0].query_selector(".mv-status").inner_text().startswith("unchanged")
    opened.check_clean()
