"""BM25 first stage on a real BEIR folder: ranking, cached index, CLI."""

import warnings

import pytest
from typer.testing import CliRunner

from mice.cli import app
from mice.data import DataWarning, InMemoryDataset, load_dataset
from mice.rank.first_stage import BM25Index, bm25_run
from mice.rank.runs import read_run

from test_data import write_beir_folder


@pytest.fixture()
def beir(tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    return write_beir_folder(tmp_path / "mini")


def test_bm25_ranks_the_matching_document_first_and_caches_its_index(beir, tmp_path):
    run = bm25_run(beir, "test", k=3)
    top = run.groupby("query_id").head(1).set_index("query_id")["doc_id"].to_dict()
    assert top == {"q1": "d1", "q2": "d2", "q3": "d3"}
    assert run.groupby("query_id").size().max() <= 3 and (run["score"] > 0).all()
    assert list(run.columns) == ["query_id", "doc_id", "score"]
    folders = [f for f in (tmp_path / "cache" / "bm25").iterdir() if f.name != "runs"]
    assert len(folders) == 1 and (folders[0] / "doc_ids.json").exists()
    assert len(list((tmp_path / "cache" / "bm25" / "runs").glob("*-test-*.parquet"))) == 1  # the run itself
    again = bm25_run(load_dataset(beir), "test", k=3)  # loaded from the cache
    assert again.equals(run)
    one = bm25_run(beir, "test", k=1)  # its own key, not the k=3 run
    assert one.groupby("query_id").size().max() == 1 and bm25_run(beir, "test", k=1).equals(one)
    assert len(list((tmp_path / "cache" / "bm25" / "runs").glob("*.parquet"))) == 2
    fresh = BM25Index.build(load_dataset(beir).corpus()).search(load_dataset(beir).queries("test"), k=3)
    assert fresh.equals(run)


def test_queries_without_known_terms_get_no_results_with_a_warning():
    ds = InMemoryDataset(
        "t",
        {"d1": "alpha beta", "d2": "gamma delta"},
        {"test": {"q1": "alpha", "q2": "the of and", "q3": "zeta"}},
        {"test": [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d2", 1)]},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = bm25_run(ds, "test", k=10, use_cache=False)
    assert run[["query_id", "doc_id"]].values.tolist() == [["q1", "d1"]]
    assert any(issubclass(w.category, DataWarning) and "2 of 3 queries" in str(w.message) for w in caught)


def test_retrieve_cli_writes_a_trec_run(beir, tmp_path):
    out = tmp_path / "runs" / "bm25.trec"
    result = CliRunner().invoke(
        app, ["retrieve", "bm25", "--dataset", str(beir), "--split", "dev", "--k", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert set(run["query_id"]) == {"q4", "q5"} and run.groupby("query_id").size().max() <= 2
    assert out.read_text().splitlines()[0].split()[5] == "bm25"
