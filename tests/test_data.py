"""Datasets from real files (BEIR, MS MARCO TSV, files:), malformed inputs, irds error, BEIR export."""

import json
import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from mice.cli import app
from mice.data import DataWarning, InMemoryDataset, load_dataset, write_beir
from mice.errors import DataError

CORPUS = {
    "d1": ("Sorting", "Return a sorted copy of an array along the given axis."),
    "d2": ("", "Compute the arithmetic mean along the specified axis of the input array."),
    "d3": ("Plotting", "Plot y versus x as lines and markers on the current figure."),
    "d4": ("", "Return a list of the nodes in the graph, each node once."),
    "d5": ("", "A compressed sparse row matrix for efficient arithmetic and row slicing."),
    "d6": ("", "Read a comma separated values file into a data frame with typed columns."),
}
QUERIES = {
    "q1": "sort an array",
    "q2": "mean of the values",
    "q3": "plot a line",
    "q4": "graph nodes",
    "q5": "read csv file",
}
QRELS = {"test": [("q1", "d1", 1), ("q2", "d2", 2), ("q3", "d3", 1)], "dev": [("q4", "d4", 1), ("q5", "d6", 1)]}


def write_beir_folder(folder, corpus=CORPUS, queries=QUERIES, qrels=QRELS):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        for k, (title, text) in corpus.items():
            fh.write(json.dumps({"_id": k, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for k, text in queries.items():
            fh.write(json.dumps({"_id": k, "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows)
        )
    return folder


def test_beir_folder(tmp_path):
    ds = load_dataset(write_beir_folder(tmp_path / "mini"))
    assert ds.name == "mini" and ds.splits == ("dev", "test")
    assert ds.corpus()["d1"] == "Sorting Return a sorted copy of an array along the given axis."
    assert ds.corpus()["d2"].startswith("Compute")
    assert ds.queries("test") == {"q1": "sort an array", "q2": "mean of the values", "q3": "plot a line"}
    assert set(ds.queries("dev")) == {"q4", "q5"}
    q = ds.qrels("test")
    assert list(q.columns) == ["query_id", "doc_id", "relevance"] and q["relevance"].tolist() == [1, 2, 1]
    with pytest.raises(DataError, match="no split 'train'"):
        ds.queries("train")
    assert ds.stats()["test"] == {"queries": 3, "qrels": 3, "relevant": 3}


def test_msmarco_and_files_specs_agree_with_beir(tmp_path):
    folder = tmp_path / "marco"
    folder.mkdir()
    (folder / "collection.tsv").write_text("".join(f"{k}\t{(t + ' ' + x).strip()}\n" for k, (t, x) in CORPUS.items()))
    for split, rows in QRELS.items():
        (folder / f"queries.{split}.tsv").write_text("".join(f"{q}\t{QUERIES[q]}\n" for q, _, _ in rows))
        (folder / f"qrels.{split}.tsv").write_text("".join(f"{q}\t0\t{d}\t{r}\n" for q, d, r in rows))
    marco = load_dataset(folder)
    beir = load_dataset(write_beir_folder(tmp_path / "beir"))
    assert marco.corpus() == beir.corpus()
    for split in ("dev", "test"):
        assert marco.queries(split) == beir.queries(split)
        pd.testing.assert_frame_equal(marco.qrels(split), beir.qrels(split))
    files = load_dataset(
        f"files:corpus={folder / 'collection.tsv'},queries={folder / 'queries.test.tsv'},"
        f"qrels={folder / 'qrels.test.tsv'}"
    )
    assert files.splits == ("test",) and files.queries("test") == beir.queries("test")


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (
            lambda f: f.joinpath("corpus.jsonl").write_text(
                '{"_id": "d1", "text": "fine"}\n{"_id": "d2", "text": "broken\n'
            ),
            r"corpus.jsonl:2: invalid JSON",
        ),
        (
            lambda f: f.joinpath("corpus.jsonl").write_text(
                '{"_id": "d1", "text": "fine"}\n{"id": "d2", "text": "no _id"}\n'
            ),
            r"corpus.jsonl:2: missing field '_id'",
        ),
        (
            lambda f: f.joinpath("queries.jsonl").write_text('{"_id": "q1", "text": "sort"}\n{"_id": "q2"}\n'),
            r"queries.jsonl:2: missing field 'text'",
        ),
        (
            lambda f: f.joinpath("queries.jsonl").write_text(
                '{"_id": "q1", "text": "sort"}\n{"_id": "q2", "text": "   "}\n'
            ),
            r"queries.jsonl:2: query 'q2' has empty text",
        ),
        (
            lambda f: f.joinpath("qrels", "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq99\td2\t1\n"),
            r"test.tsv:3: qrels name query 'q99'",
        ),
        (
            lambda f: f.joinpath("qrels", "test.tsv").write_text("query-id\tcorpus-id\nq1\td1\n"),
            r"test.tsv:1: expected 'qid iter docid rel'.*got 2 fields",
        ),
    ],
)
def test_malformed_inputs_name_file_and_line(tmp_path, mutate, pattern):
    folder = write_beir_folder(tmp_path / "bad")
    mutate(folder)
    ds = load_dataset(folder)
    with pytest.raises(DataError, match=pattern):
        ds.corpus()
        for split in ds.splits:
            ds.queries(split)


def test_empty_and_duplicate_documents_are_skipped_with_counted_warnings(tmp_path):
    folder = write_beir_folder(tmp_path / "skips")
    with open(folder / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "d7", "title": "", "text": "  "}) + "\n")
        fh.write(json.dumps({"_id": "d8", "text": ""}) + "\n")
        fh.write(json.dumps({"_id": "d1", "text": "a second d1"}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_dataset(folder).corpus()
    assert len(corpus) == len(CORPUS) and corpus["d1"].startswith("Sorting")
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("skipped 2 documents with empty text (line 7, 8)" in m for m in messages), messages
    assert any("skipped 1 documents with a duplicate id" in m and "line 9" in m for m in messages), messages


def test_tsv_without_tab_and_unknown_specs(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "collection.tsv").write_text("d1\tok\nd2 no tab here\n")
    (folder / "queries.test.tsv").write_text("q1\tquery\n")
    (folder / "qrels.test.tsv").write_text("q1 0 d1 1\n")
    with pytest.raises(DataError, match=r"collection.tsv:2: expected 'id<TAB>text'"):
        load_dataset(folder).corpus()
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="not a dataset folder"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="unknown embedded collection"):
        load_dataset("embedded:recipes")
    with pytest.raises(DataError, match="files: need corpus"):
        load_dataset("files:corpus=x.tsv")


def test_irds_without_ir_datasets_is_a_clear_error():
    try:  # ir_datasets is an optional extra, absent here
        import ir_datasets  # noqa: F401

        pytest.skip("ir_datasets is installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match=r"optional package ir_datasets .*not installed"):
        load_dataset("irds:msmarco-passage/dev/small")


def test_write_beir_round_trip_and_in_memory(tmp_path):
    mem = InMemoryDataset(
        "mem", {k: f"{t} {x}".strip() for k, (t, x) in CORPUS.items()}, {"test": QUERIES}, {"test": QRELS["test"]}
    )
    assert set(mem.queries("test")) == {"q1", "q2", "q3"}  # judged queries only
    back = load_dataset(write_beir(mem, tmp_path / "export"))
    assert back.corpus() == mem.corpus() and back.queries("test") == mem.queries("test")
    pd.testing.assert_frame_equal(back.qrels("test"), mem.qrels("test"))
    with pytest.raises(DataError, match="qrels name 1 unknown queries"):
        InMemoryDataset("bad", {"d": "x"}, {"test": {}}, {"test": [("q", "d", 1)]})


def test_data_info_cli(tmp_path):
    folder = write_beir_folder(tmp_path / "cli")
    result = CliRunner().invoke(app, ["data", "info", str(folder), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert "6 documents" in result.output and "test" in result.output and "sort an array" in result.output
    exported = CliRunner().invoke(app, ["data", "export", str(folder), str(tmp_path / "copy")])
    assert exported.exit_code == 0, exported.output
    assert load_dataset(tmp_path / "copy").corpus() == load_dataset(folder).corpus()
