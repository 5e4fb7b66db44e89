"""The embedded docstring collection: docstring splitting, robustness to broken submodules, determinism, cache."""

import sys
import textwrap
import warnings

import pandas as pd
import pytest

from mice.data import DataWarning, EmbeddedDataset, load_dataset
from mice.data._docstrings import split_docstring
from mice.data.embedded import EmbeddedConfig, build, parse_spec
from mice.errors import DataError


def test_split_docstring_numpydoc_and_signature():
    doc = """
    add(x1, x2, /, out=None) -> ndarray

    Add arguments element-wise, returning
    a new array.

    The sum is computed with :func:`numpy.add` semantics and
    ``dtype`` promotion [1]_, see `the guide <https://x.org>`_.

    .. math:: y = x_1 + x_2

    >>> np.add(1, 2)
    3

    Parameters
    ----------
    x1 : array_like
        First input.
    """
    summary, description = split_docstring(doc)
    assert summary == "Add arguments element-wise, returning a new array."
    assert description == "The sum is computed with numpy.add semantics and dtype promotion, see the guide."


def test_split_docstring_google_style_and_literal_blocks():
    doc = """Builds a tensor from the given data.
    The result shares memory when possible.

    For example::

        t = build([1, 2])

    .. note::
        Notes are dropped.

    Args:
        data: anything.
    """
    summary, description = split_docstring(doc)
    assert summary == "Builds a tensor from the given data."
    assert description == "The result shares memory when possible.\nFor example:"
    assert split_docstring(None) is None and split_docstring("Parameters\n----------\nx : int") is None


def test_object_addresses_are_dropped_from_docstrings():
    """pybind11 writes a default value's repr, address included, into a signature: the text must not depend on
    where the object happened to live in that interpreter."""
    doc = (
        "Reduce the tensors across the group.\n\n"
        "reduce(self, opts: Options = <torch.Options object at {}>) -> Work\n"
        "Reduces the tensors from all processes of the group into one."
    )
    first, second = split_docstring(doc.format("0x7feb24a70fb0")), split_docstring(doc.format("0x7fa7713c4cb0"))
    assert first == second
    assert "<torch.Options object>" in first[1] and "0x" not in first[1]


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A real importable package with a good submodule, a broken one and a private one."""
    root = tmp_path / "site" / "mice_fakepkg"
    root.mkdir(parents=True)
    long = "This description is long enough to pass the minimal length filter of the harvester easily."
    (root / "__init__.py").write_text(
        textwrap.dedent(f'''
        from .good import normalise_vector, Accumulator

        def scale_values(x):
            """Scale values to the unit interval quickly.

            {long} It rescales.
            """
    ''')
    )
    (root / "good.py").write_text(
        textwrap.dedent(f'''
        def normalise_vector(v):
            """Normalise a vector to unit length.

            {long} It divides by the norm.
            """

        def too_short(v):
            """Short one here.

            Tiny.
            """

        class Accumulator:
            """Accumulate running sums of numbers.

            {long} It keeps a total.
            """

            def push(self, x):
                """Push one number onto the running total.

                {long} It adds x.
                """

            def push_twice(self, x):
                """Push one number onto the running total.

                {long} Duplicate summary: dropped by deduplication.
                """
    ''')
    )
    (root / "broken.py").write_text("raise RuntimeError('this submodule cannot be imported')\n")
    hidden = f'def hidden():\n    """Hidden function never harvested.\n\n    {long}\n    """\n'
    (root / "_private.py").write_text(hidden)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site") + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    yield "mice_fakepkg"
    sys.modules.pop("mice_fakepkg", None)


def test_broken_submodules_are_skipped_and_counted(fake_package):
    cfg = EmbeddedConfig(name="fake", packages=(fake_package,), fractions=(0.0, 0.0, 1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, stats = build(cfg, use_cache=False)
    assert sorted(table["id"]) == [
        "mice_fakepkg.Accumulator",
        "mice_fakepkg.Accumulator.push",
        "mice_fakepkg.normalise_vector",
        "mice_fakepkg.scale_values",
    ]
    row = table.set_index("id").loc["mice_fakepkg.normalise_vector"]
    assert row["query"] == "Normalise a vector to unit length." and row["doc"].endswith("It divides by the norm.")
    assert "Normalise a vector" not in row["doc"]
    info = stats["packages"][fake_package]
    assert info["modules_failed"] == 1 and "mice_fakepkg.broken: RuntimeError" in info["failed_examples"]
    assert stats["duplicate_queries"] == 1 and set(table["split"]) == {"test"}
    assert any(
        issubclass(w.category, DataWarning) and "1 submodules could not be imported" in str(w.message) for w in caught
    )


def test_missing_package_and_bad_options():
    with pytest.raises(DataError, match="'no_such_pkg_xyz' is not installed"):
        build(EmbeddedConfig(packages=("no_such_pkg_xyz",)))
    with pytest.raises(DataError, match="unknown option 'colour'"):
        parse_spec("embedded:docs?colour=red")
    with pytest.raises(DataError, match="bad value for 'fractions'"):
        parse_spec("embedded:docs?fractions=0.5,0.6,0.1")
    assert parse_spec("embedded:docs-ood").packages == ("sympy", "networkx")


def test_small_stdlib_collection_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    spec = "embedded:docs?packages=json,logging,email&max_per_package=60"
    cfg = parse_spec(spec)
    first, _ = build(cfg, use_cache=False)
    second, _ = build(cfg, use_cache=False)
    pd.testing.assert_frame_equal(first, second)
    assert 60 < len(first) <= 3 * 60 and first["package"].value_counts().max() <= 60
    assert first["id"].is_unique and first["query"].str.lower().is_unique and first["doc"].is_unique

    ds = load_dataset(spec)
    assert isinstance(ds, EmbeddedDataset) and ds.splits == ("train", "dev", "test")
    pd.testing.assert_frame_equal(ds.table, first)
    cached = list((tmp_path / "cache" / "embedded").glob("docs-*.parquet"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = EmbeddedDataset(cfg)  # a fresh object reads the cache instead of rebuilding
    pd.testing.assert_frame_equal(again.table, first)
    assert cached[0].stat().st_mtime_ns == mtime

    split_ids = [set(ds.queries(s)) for s in ds.splits]
    assert sum(map(len, split_ids)) == len(first) and not (split_ids[0] & split_ids[2])
    assert len(ds.queries("train")) > len(ds.queries("test"))
    qrels = ds.qrels("train")
    assert (qrels["query_id"] == qrels["doc_id"]).all() and (qrels["relevance"] == 1).all()
    assert set(ds.corpus()) == set(first["id"])
