"""TREC run / qrels files: round trips, canonical ordering, and errors that name file and line."""

import warnings

import pandas as pd
import pytest

from mice.data import DataWarning
from mice.errors import DataError
from mice.rank.runs import format_run, make_run, read_qrels, read_run, sort_run, write_qrels, write_run


def test_run_round_trip_is_ranked_and_canonical(tmp_path):
    run = make_run([("q2", "b", 1.0), ("q1", "z", 0.5), ("q1", "a", 0.5), ("q1", "m", 2.25), ("q2", "c", -3e-7)])
    path = write_run(run, tmp_path / "r.trec", tag="my tag")
    lines = path.read_text().splitlines()
    # ranked by score, ties by doc id; ranks restart per query; tag has no spaces
    assert [l.split()[:4] for l in lines] == [
        ["q1", "Q0", "m", "1"],
        ["q1", "Q0", "a", "2"],
        ["q1", "Q0", "z", "3"],
        ["q2", "Q0", "b", "1"],
        ["q2", "Q0", "c", "2"],
    ]
    assert all(l.split()[5] == "my_tag" for l in lines)
    back = read_run(path)
    pd.testing.assert_frame_equal(
        sort_run(back)[["query_id", "doc_id", "score"]], sort_run(run)[["query_id", "doc_id", "score"]]
    )
    # a row order permutation gives the same bytes
    assert format_run(run.sample(frac=1, random_state=3)) == format_run(run)
    # top-k cut
    assert len(read_run(write_run(run, tmp_path / "k.trec", k=1))) == 2


def test_run_as_table(tmp_path):
    run = make_run([("q1", "d1", 1.5), ("q1", "d2", 0.5)])
    back = read_run(write_run(run, tmp_path / "r.parquet"))
    assert list(back["doc_id"]) == ["d1", "d2"] and back["score"].tolist() == [1.5, 0.5]


@pytest.mark.parametrize(
    "body, needle",
    [
        ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n", ":2: expected 6 fields"),
        ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 two 1.0 t\n", ":2: rank must be an integer"),
        ("q1 Q0 d1 1 x t\n", ":1: rank must be an integer and score a number"),
        ("q1 Q0 d1 1 2.0 t\n\nq1 Q0 d1 2 1.0 t\n", ":3: document 'd1' listed twice"),
    ],
)
def test_malformed_run_names_file_and_line(tmp_path, body, needle):
    path = tmp_path / "bad.trec"
    path.write_text(body)
    with pytest.raises(DataError) as err:
        read_run(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_qrels_formats_agree(tmp_path):
    trec = tmp_path / "q.trec"
    trec.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    beir = tmp_path / "q.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")
    a, b = read_qrels(trec), read_qrels(beir)
    pd.testing.assert_frame_equal(a, b)
    assert str(a["relevance"].dtype) == "int64" and a["query_id"].tolist() == ["q1", "q1", "q2"]
    c = read_qrels(write_qrels(a, tmp_path / "out.qrels"))
    pd.testing.assert_frame_equal(a, c)
    d = read_qrels(write_qrels(a, tmp_path / "out.csv"))
    pd.testing.assert_frame_equal(a, d)


def test_qrels_errors_and_duplicates(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: relevance must be an integer"):
        read_qrels(bad)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("q1 0 d1 1\nq1 d2 1\n")
    with pytest.raises(DataError, match=r"ragged.txt:2: expected 4 fields"):
        read_qrels(ragged)
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"query_id": ["q"], "doc_id": ["d"]}).to_csv(missing, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['relevance'\]"):
        read_qrels(missing)
    dup = tmp_path / "dup.txt"
    dup.write_text("q1 0 d1 1\nq1 0 d1 2\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = read_qrels(dup)
    assert q["relevance"].tolist() == [1]
    assert any(issubclass(w.category, DataWarning) and "1 duplicate judgements" in str(w.message) for w in caught)
