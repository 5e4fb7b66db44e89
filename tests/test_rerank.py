"""Re-ranking with a real tiny cross-encoder: scores, resumption after a crash (byte-identical), CLI."""

import numpy as np
import pytest
from typer.testing import CliRunner

from mice.cli import app
from mice.data import DataWarning, load_dataset
from mice.errors import DataError
from mice.models.loader import load
from mice.rank.rerank import rerank
from mice.rank.runs import make_run, read_run, write_run

from test_data import CORPUS, QRELS, write_beir_folder


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    from mice.models.testing import tiny_cross_encoder

    return tiny_cross_encoder(tmp_path_factory.mktemp("tiny") / "bert", family="bert", num_layers=2)


@pytest.fixture()
def setup(tmp_path, monkeypatch, tiny_ce):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    folder = write_beir_folder(tmp_path / "mini")
    # every test query gets all six documents as candidates, in a fixed first-stage order
    first = make_run([(q, d, float(10 - i)) for q, _, _ in QRELS["test"] for i, d in enumerate(sorted(CORPUS))])
    first_path = write_run(first, tmp_path / "first.trec")
    return folder, first_path, load(str(tiny_ce))


class Crashing:
    """Wraps a scorer and dies after `n` batches, like a job killed mid-way."""

    def __init__(self, scorer, n):
        self.scorer, self.n = scorer, n

    def predict(self, pairs, batch_size=32):
        if self.n == 0:
            raise KeyboardInterrupt("killed")
        self.n -= 1
        return self.scorer.predict(pairs, batch_size=batch_size)


def test_rerank_scores_are_the_scorers_and_ranked(setup):
    folder, first_path, scorer = setup
    ds = load_dataset(folder)
    run = rerank(scorer, ds, "test", first_path, k=4, batch_size=3)
    assert run.groupby("query_id").size().tolist() == [4, 4, 4]
    first = read_run(first_path)
    for qid, group in run.groupby("query_id"):
        top4 = first[first["query_id"] == qid].nlargest(4, "score")["doc_id"].tolist()
        assert set(group["doc_id"]) == set(top4)
        direct = scorer.predict([(ds.queries("test")[qid], ds.corpus()[d]) for d in group["doc_id"]])
        np.testing.assert_allclose(group["score"].to_numpy(), direct, atol=1e-5)
        assert (np.diff(group["score"].to_numpy()) <= 0).all()


def test_killed_rerank_resumes_to_the_same_bytes(setup, tmp_path):
    folder, first_path, scorer = setup
    # one query per chunk (6 pairs), two batches of 3 per query
    opts = dict(k=6, batch_size=3, chunk_pairs=6, job="tiny")
    clean = tmp_path / "clean.trec"
    rerank(scorer, folder, "test", first_path, out=clean, **opts)
    assert not clean.with_name("clean.trec.partial").exists()

    out = tmp_path / "resumed.trec"
    partial = out.with_name("resumed.trec.partial")
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of the second query
        rerank(Crashing(scorer, n=3), folder, "test", first_path, out=out, **opts)
    assert not out.exists()
    lines = partial.read_text().splitlines()
    assert len(lines) == 2 and '"query_id": "q1"' in lines[1]  # header + the finished query
    with open(partial, "ab") as fh:  # a torn line, as a kill in the middle of a write leaves it
        fh.write(b'{"query_id": "q2", "doc_')

    calls = []

    class Counting:
        def predict(self, pairs, batch_size=32):
            calls.append(len(pairs))
            return scorer.predict(pairs, batch_size=batch_size)

    rerank(Counting(), folder, "test", first_path, out=out, **opts)
    assert calls == [3, 3, 3, 3]  # q2 and q3 only
    assert out.read_bytes() == clean.read_bytes()
    assert not partial.exists()


def test_a_finished_job_is_read_back_not_rescored(setup, tmp_path):
    folder, first_path, scorer = setup
    calls = []

    class Counting:
        def predict(self, pairs, batch_size=32):
            calls.append(len(pairs))
            return scorer.predict(pairs, batch_size=batch_size)

    out = tmp_path / "r.trec"
    first = rerank(Counting(), folder, "test", first_path, k=6, out=out, job="tiny")
    scored = len(calls)
    assert scored > 0 and out.with_name("r.trec.done.json").exists()
    again = rerank(Counting(), folder, "test", first_path, k=6, out=out, job="tiny")
    assert len(calls) == scored  # the receipt matched: nothing scored again
    assert again.equals(first)
    rerank(Counting(), folder, "test", first_path, k=5, out=out, job="tiny")  # another job (k): scored
    assert len(calls) > scored
    scored = len(calls)
    out.write_text(out.read_text().replace("mice-rerank", "edited", 1))  # the run file changed after the receipt
    rerank(Counting(), folder, "test", first_path, k=5, out=out, job="tiny")
    assert len(calls) > scored
    scored = len(calls)
    rerank(Counting(), folder, "test", first_path, k=5, out=out, job="tiny", overwrite=True)
    assert len(calls) > scored


def test_partial_of_another_job_is_refused(setup, tmp_path):
    folder, first_path, scorer = setup
    out = tmp_path / "x.trec"
    with pytest.raises(KeyboardInterrupt):
        rerank(Crashing(scorer, n=0), folder, "test", first_path, k=6, out=out, job="model-a")
    with pytest.raises(DataError, match="different re-ranking job"):
        rerank(scorer, folder, "test", first_path, k=6, out=out, job="model-b")


def test_run_with_unknown_documents_is_an_error(setup, tmp_path):
    folder, _, scorer = setup
    bad = write_run(make_run([("q1", "d1", 1.0), ("q1", "nope", 0.5)]), tmp_path / "bad.trec")
    with pytest.warns(DataWarning, match="2 queries of the split have no first-stage candidates"):
        with pytest.raises(DataError, match=r"bad.trec: run names 1 documents that are not in"):
            rerank(scorer, folder, "test", bad, k=10)


def test_rerank_cli_after_bm25(setup, tmp_path, tiny_ce):
    folder, _, _ = setup
    bm = tmp_path / "bm25.trec"
    out = tmp_path / "rr.trec"
    runner = CliRunner()
    assert runner.invoke(app, ["retrieve", "bm25", "-d", str(folder), "--k", "5", "-o", str(bm)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "rerank",
            "--model",
            str(tiny_ce),
            "--dataset",
            str(folder),
            "--run",
            str(bm),
            "--k",
            "5",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    reranked, first = read_run(out), read_run(bm)
    pairs = ["query_id", "doc_id"]
    assert set(map(tuple, reranked[pairs].values)) == set(map(tuple, first[pairs].values))
    ev = runner.invoke(app, ["evaluate", str(bm), str(out), "-d", str(folder), "--resamples", "200"])
    assert ev.exit_code == 0, ev.output
    assert "bm25.trec" in ev.output and "rr.trec" in ev.output


def test_query_subset_reranks_only_those_queries_without_warnings(setup, recwarn):
    folder, first_path, scorer = setup
    ds = load_dataset(folder)
    full = rerank(scorer, ds, "test", first_path, k=4)
    qids = sorted(full["query_id"].unique())[:2]
    sub = rerank(scorer, ds, "test", first_path, k=4, query_ids=qids)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
    assert sorted(sub["query_id"].unique()) == qids
    expected = full[full["query_id"].isin(qids)].reset_index(drop=True)
    np.testing.assert_allclose(sub["score"].to_numpy(), expected["score"].to_numpy(), atol=1e-6)
    assert sub["doc_id"].tolist() == expected["doc_id"].tolist()
    with pytest.raises(DataError, match="1 query ids are not in"):
        rerank(scorer, ds, "test", first_path, k=4, query_ids=["nope"])
