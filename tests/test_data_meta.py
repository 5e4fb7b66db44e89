"""The `embedded:meta` collection (summary -> long description of the installed distributions): built from the
real metadata of this interpreter's environment (no mocks), plus markup cleaning and deduplication on crafted
records."""

import random
import warnings

import pandas as pd
import pytest

from mice.data import DataWarning, MetaDataset, load_dataset
from mice.data.meta import (
    MetaConfig,
    assemble,
    build,
    clean_description,
    normalise_name,
    parse_spec,
    read_installed,
    _unfold_header,
)
from mice.errors import DataError

LONG = (
    "This library does one thing and does it well, with a small API, good documentation, type hints and "
    "tests on every supported version of Python."
)


@pytest.fixture(scope="module")
def installed():
    return read_installed()


def test_built_from_installed_metadata_deterministic_and_consistent(installed):
    cfg = MetaConfig()
    first, stats = build(cfg)
    second, again = build(cfg)
    pd.testing.assert_frame_equal(first, second)
    assert stats["key"] == again["key"] and stats["content"] == again["content"]
    # the environment running the tests has pytest, pandas, numpy, torch...: a real collection
    assert stats["distributions"] >= 20 and len(first) >= 10
    assert list(first.columns) == ["id", "name", "version", "query", "doc", "split"]
    assert first["id"].is_unique and first["doc"].is_unique
    assert first["query"].str.lower().str.split().str.join(" ").is_unique
    assert (first["id"] == first["name"].map(normalise_name)).all() and first["id"].is_monotonic_increasing
    assert (first["doc"].str.split().str.len() >= cfg.min_words).all()
    assert (first["doc"].str.split().str.len() <= cfg.max_words).all()
    assert "mice-toolkit" not in set(first["id"])
    # no markup survives on real READMEs
    text = " ".join(first["doc"])
    for leftover in ("](http", "![", "```", ".. image::", "<img", "<a href", ":target:", "http://", "https://"):
        assert leftover not in text, leftover

    ds = load_dataset("embedded:meta")
    assert isinstance(ds, MetaDataset) and ds.splits == ("train", "dev", "test")
    pd.testing.assert_frame_equal(ds.table, first)
    assert ds.fingerprint() == MetaDataset(cfg).fingerprint()
    ids = [set(ds.queries(s)) for s in ds.splits]
    assert not ids[0] and not (ids[1] & ids[2]) and len(ids[1] | ids[2]) == len(first)  # default: no train
    assert len(ids[2]) > len(ids[1])
    corpus = ds.corpus()
    for split in ds.splits:
        q = ds.qrels(split)
        assert set(q["query_id"]) == set(ds.queries(split))
        assert q["doc_id"].isin(corpus.keys()).all() and (q["query_id"] == q["doc_id"]).all()
    assert ds.validate() == {"train": 0, "dev": 0, "test": 0}


def test_independent_of_the_order_distributions_are_found(installed):
    cfg = MetaConfig()
    reference, _ = assemble(installed, cfg)
    shuffled = list(installed)
    random.Random(0).shuffle(shuffled)
    pd.testing.assert_frame_equal(assemble(shuffled, cfg)[0], reference)
    pd.testing.assert_frame_equal(assemble(list(reversed(installed)), cfg)[0], reference)


def test_fractions_and_cap_keep_each_id_in_its_split(installed):
    full, _ = assemble(installed, MetaConfig())
    everything, _ = assemble(installed, parse_spec("embedded:meta?fractions=0,0,1"))
    assert set(everything["split"]) == {"test"} and len(everything) == len(full)
    capped, _ = assemble(installed, parse_spec("embedded:meta?max_docs=10&max_words=50"))
    assert len(capped) == min(10, len(full)) and set(capped["id"]) <= set(full["id"])
    assert (capped["doc"].str.split().str.len() <= 50).all()
    merged = capped.merge(full, on="id", suffixes=("", "_full"))
    assert (merged["split"] == merged["split_full"]).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(parse_spec("embedded:meta?max_docs=10"))
    assert any(issubclass(w.category, DataWarning) and "test queries" in str(w.message) for w in caught)


def test_markdown_cleaning():
    text = """# fast-widget

[![PyPI](https://img.shields.io/pypi/v/fast-widget.svg)](https://pypi.org/project/fast-widget/)
[![CI](https://github.com/x/y/badge.svg)](https://github.com/x/y/actions) ![logo](docs/logo.png)

<p align="center"><img src="logo.png"/></p>
<!-- BADGES: END -->

Widgets, fast. Build **widgets** quickly. See the [user guide](https://example.org/guide) and `Widget`.

## Installation

```bash
pip install fast-widget
```

## Usage

    widget = build()

| option | meaning |
|--------|---------|
| size   | how big |

- first item
- second item with [a link][ref], see https://example.org &amp; more

[ref]: https://example.org
"""
    out = clean_description(text, "fast-widget", "Widgets, fast.", "text/markdown")
    # "Installation" holds only code: its heading goes; "Usage" still has its list below the code and the table
    assert out == (
        "Build widgets quickly. See the user guide and Widget. Usage first item second item with a link, see & more"
    )
    assert (
        clean_description(text, "fast-widget", "Widgets, fast.", "text/markdown", max_words=3)
        == "Build widgets quickly."
    )


def test_rest_cleaning():
    text = """==========
FastWidget
==========

.. image:: https://img.shields.io/pypi/v/fastwidget.svg
    :target: https://pypi.org/project/fastwidget/

|ci| |docs|

.. |ci| image:: https://ci.example.org/badge.svg
   :target: https://ci.example.org
.. |docs| image:: https://docs.example.org/badge.svg

FastWidget builds widgets with :func:`fastwidget.build` and ``Widget``; read the
`documentation <https://fastwidget.readthedocs.io>`_ or Trio_.

Usage
-----

Install it::

    pip install fastwidget

.. code-block:: python

    import fastwidget

>>> fastwidget.build()

.. _Trio: https://trio.org
"""
    out = clean_description(text, "FastWidget", "Widgets, fast.", "text/x-rst")
    assert (
        out == "FastWidget builds widgets with fastwidget.build and Widget; read the documentation or Trio. "
        "Usage Install it:"
    )
    # the first heading stays when it says more than the name
    kept = clean_description("Widgets for busy people\n=======================\n\n" + LONG, "fastwidget", "", "")
    assert kept.startswith("Widgets for busy people This library")
    # an old-style `Description:` header: continuation lines carry 8 spaces (setuptools) or 7 and `|`
    assert _unfold_header("First line\n        second\n       |third") == "First line\nsecond\nthird"


def _record(name, summary, description, rank=0, version="1.0"):
    return {
        "name": name,
        "id": normalise_name(name),
        "version": version,
        "summary": summary,
        "description": description,
        "content_type": "text/markdown",
        "rank": rank,
        "site": f"/site{rank}",
    }


def test_filters_and_deduplication():
    records = [
        _record("Alpha_Tool", "Parse alpha files quickly", "Alpha parses files. " + LONG, rank=1, version="2.0"),
        _record("alpha-tool", "Parse alpha files (system copy)", "The system copy. " + LONG, rank=3),  # shadowed
        _record("beta", "Parse alpha files quickly.", "Beta, another description. " + LONG),  # same summary
        _record("gamma", "Gamma does gamma things", "Alpha parses files. " + LONG),  # same description
        _record("delta", "UNKNOWN", "Delta. " + LONG),
        _record("epsilon", "Epsilon", "Epsilon. " + LONG),  # one word: the name
        _record("zeta", "Zeta makes zeta things", "Too short to be a document."),
        _record("eta", "Eta makes eta things", ""),
        _record("mice-toolkit", "This very toolkit", "Its README. " + LONG),
    ]
    df, stats = assemble(records, MetaConfig(fractions=(0.0, 0.0, 1.0)))
    assert list(df["id"]) == ["alpha-tool"]
    row = df.iloc[0]
    assert row["name"] == "Alpha_Tool" and row["version"] == "2.0" and row["doc"].startswith("Alpha parses")
    assert stats["distributions"] == 8 and stats["other_copies"] == 1
    assert stats["duplicate_queries"] == 1 and stats["duplicate_docs"] == 1
    assert stats["no_summary"] == 1 and stats["short_summary"] == 1
    assert stats["short_description"] == 1 and stats["no_description"] == 1
    assert assemble(list(reversed(records)), MetaConfig(fractions=(0.0, 0.0, 1.0)))[0].equals(df)


def test_bad_options_name_the_spec():
    with pytest.raises(DataError, match=r"embedded:meta\?colour=red: unknown option 'colour'"):
        load_dataset("embedded:meta?colour=red")
    with pytest.raises(DataError, match="bad value for 'fractions'"):
        parse_spec("embedded:meta?fractions=0.5,0.6,0.1")
    with pytest.raises(DataError, match="bad value for 'max_docs'"):
        parse_spec("embedded:meta?max_docs=many")
    with pytest.raises(DataError, match="bad value for 'max_words'"):
        parse_spec("embedded:meta?max_words=0")
    with pytest.raises(DataError, match="min_words .* larger than max_words"):
        parse_spec("embedded:meta?min_words=50&max_words=20")
    with pytest.raises(DataError, match=r"unknown embedded collection 'metadata' \(docs, docs-ood, meta, debian\)"):
        load_dataset("embedded:metadata")
    assert parse_spec("embedded:meta?max_docs=5&min_words=3").max_docs == 5


def test_cli_data_info_shows_the_metadata_build():
    from typer.testing import CliRunner

    from mice.cli import app

    result = CliRunner().invoke(
        app, ["data", "info", "embedded:meta?max_docs=60&fractions=0,0.2,0.8", "--examples", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "installed distributions:" in result.output and "embedded:meta?max_docs=60" in result.output
    bad = CliRunner().invoke(app, ["data", "info", "embedded:meta?max_docs=-1"])  # `main()` prints it as one line
    assert isinstance(bad.exception, DataError) and "bad value for 'max_docs'" in str(bad.exception)
