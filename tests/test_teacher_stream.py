"""Data paths at MS MARCO size, on small files: the streamed teacher file (arrays, de-duplication, errors naming
file and line), `sampling: triples` (seeded order, every triple once per epoch, bit-identical resume), the
offset-indexed corpus, and a re-rank at the authors' depth (1000) on a small synthetic collection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mice.data.local import OffsetTexts
from mice.errors import DataError, DataWarning, IdentityError
from mice.train.samples import TripleSampler
from mice.train.teacher import read_score_file, read_triples

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher(path, rows):
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


ROWS = [
    (9.5, 1.25, 3, 30, 31),
    (8.0, 2.0, 4, 40, 41),
    (9.5, 1.25, 3, 30, 31),
    (7.0, 0.5, 3, 30, 32),
    (8.0, 2.0, 4, 40, 41),
    (6.5, 3.0, 5, 50, 30),
]


def test_streamed_teacher_file_matches_the_line_reader_and_deduplicates(tmp_path):
    path = _teacher(tmp_path / "t.tsv", ROWS)
    t = read_triples(path, block_size=64)  # several blocks
    assert len(t) == 6 and t.qid.dtype == np.int32 and t.score_pos.dtype == np.float32
    pd.testing.assert_frame_equal(t.frame(), read_score_file(path), check_dtype=False)
    u = t.unique()
    assert len(u) == 4  # rows 3 and 5 repeat rows 1 and 2
    assert u.frame()[["qid", "pos", "neg"]].values.tolist() == [
        ["3", "30", "31"],
        ["4", "40", "41"],
        ["3", "30", "32"],
        ["5", "50", "30"],
    ]
    assert list(u.doc_ids.astype(str)) == ["30", "40", "50", "31", "41", "32"]  # shared vocabulary, first seen
    # non-numeric ids, space-separated
    (tmp_path / "s.txt").write_text("1.5 0.5 qa da db\n2 1 qb dc da\n1.5 0.5 qa da db\n")
    s = read_triples(tmp_path / "s.txt")
    assert len(s.unique()) == 2 and s.frame()["neg"].tolist() == ["db", "da", "db"]


@pytest.mark.parametrize(
    "text,where",
    [
        ("1\t2\t3\t4\t5\n1\t2\t3\t4\n", ":2:"),
        ("1\t2\t3\t4\t5\nx\t2\t3\t4\t5\n", ":2:"),
        ("1\t2\t3\t4\t5\n1\t2\t3\t4\t5\n1\tinf\t3\t4\t5\n", ":3:"),
    ],
)
def test_bad_teacher_lines_name_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"bad.tsv{where}"):
        read_triples(path)


def test_triple_sampling_order_epochs_and_resume(tmp_path):
    rows = [(float(i), 0.0, i % 7, 1000 + i, 2000 + i) for i in range(50)]
    t = read_triples(_teacher(tmp_path / "t.tsv", rows)).unique()
    queries = {str(q): f"query {q}" for q in range(7)}
    corpus = {str(d): f"doc {d}" for i in range(50) for d in (1000 + i, 2000 + i)}
    sampler = TripleSampler(t, queries, corpus, seed=3)
    first = [sampler.position(i) for i in range(50)]
    assert sorted(first) == list(range(50))  # an epoch visits every triple once
    assert first == list(np.random.default_rng([3, 0, 31]).permutation(50))  # in the seeded order
    second = [sampler.position(i) for i in range(50, 100)]
    assert sorted(second) == list(range(50)) and second != first  # a new order per epoch
    g = sampler.group(7)
    row = first[7]
    assert g.doc_ids == [str(1000 + row), str(2000 + row)] and g.query == f"query {row % 7}"
    assert sampler.teacher_scores(7) == (float(row), 0.0)
    # resume: a new sampler (a restarted process) at step 9 gives the batches an uninterrupted run gives
    whole = [sampler.batch(s, 4, rank, 2) for s in range(20) for rank in range(2)]
    resumed = TripleSampler(t, queries, corpus, seed=3)
    again = [resumed.batch(s, 4, rank, 2) for s in range(9, 20) for rank in range(2)]
    assert again == whole[18:]
    assert TripleSampler(t, queries, corpus, seed=4).batch(0, 4) != sampler.batch(0, 4)


# ------------------------------------------------------------------------------- training under sampling: triples
@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    """The tiny BEIR folder of test_train (train queries q0..q39, documents d0..d49), a tiny student, and a
    teacher file over it: 20 distinct known triples, 3 repeated lines and one line naming an unknown document."""
    from test_train import train_env

    for env in train_env(tmp_path_factory, "triples", student=dict(num_layers=2, seed=0)):
        rng = np.random.default_rng(5)
        rows = [
            (
                round(float(rng.uniform(5, 9)), 3),
                round(float(rng.uniform(-3, 3)), 3),
                f"q{i}",
                f"d{i}",
                f"d{(i + 1 + int(rng.integers(30))) % 40}",
            )
            for i in range(20)
        ]
        lines = rows[:10] + [rows[2]] + rows[10:15] + [rows[12], rows[0]] + [(1.0, 0.0, "q3", "d3", "nope")] + rows[15:]
        env["triples"] = rows
        env["teacher"] = str(_teacher(env["root"] / "teacher.tsv", lines))
        yield env


def _triples_cfg(env, out, **kw):
    from mice.train import preset

    settings = {"loss": "margin-mse", "teacher": env["teacher"], "negatives": 1, "sampling": "triples", **kw}
    return preset("tiny", "cross-encoder", model=env["student"], dataset=env["data"], output=str(out), **settings)


def test_training_under_sampling_triples_visits_the_files_triples_in_the_seeded_order(train_files, tmp_path):
    from mice.train import Trainer

    env, seen = train_files, []
    trainer = Trainer(
        _triples_cfg(env, tmp_path / "run", seed=7, max_steps=10, dev_split=None),
        callbacks=[lambda tr, step: seen.extend(tr.sampler.batch(step - 1, 2))],
        quiet=True,
    )
    with pytest.warns(DataWarning, match="1 of 21 triples name unknown"):
        res = trainer.train()
    assert res.steps == 10 and len(trainer.pool) == 20  # its training queries
    # one epoch: the 20 distinct known triples (repeats and the unknown document's line dropped), each once, in
    # the permutation the seed gives, with the file's own teacher scores
    order = np.random.default_rng([7, 0, 31]).permutation(20)
    expected = [env["triples"][i] for i in order]
    assert [(g.query_id, *g.doc_ids) for g in seen] == [(q, p, n) for _, _, q, p, n in expected]
    assert [g.teacher for g in seen] == [(pytest.approx(sp), pytest.approx(sn)) for sp, sn, *_ in expected]
    assert trainer.teacher.scores(seen[:3]).tolist() == [list(g.teacher) for g in seen[:3]]
    assert res.summary["teacher"]["pairs_scored"] == 0
    # the setting enters the job's identity (under its default it does not: older runs keep theirs)
    assert trainer.job["config.sampling"] == "triples"
    groups = Trainer(_triples_cfg(env, tmp_path / "groups", max_steps=1, sampling="groups", dev_split=None), quiet=True)
    with pytest.warns(DataWarning, match="1 of 24 triples"):  # groups read the file's lines, repeats included
        groups.train()
    assert "config.sampling" not in groups.job
    with pytest.raises(IdentityError, match="config.sampling"), pytest.warns(DataWarning):
        Trainer(
            _triples_cfg(env, tmp_path / "run", resume=True, max_steps=10, sampling="groups", dev_split=None),
            quiet=True,
        ).train()


def test_sampling_triples_is_refused_without_a_teacher_file_or_with_more_negatives(train_files, tmp_path):
    from mice.train.config import ConfigError

    with pytest.raises(ConfigError, match="negatives"):
        _triples_cfg(train_files, tmp_path / "x", negatives=2).validate()
    with pytest.raises(ConfigError, match="sampling: triples"):
        _triples_cfg(train_files, tmp_path / "x", teacher="source").validate()
    with pytest.raises(ConfigError, match="sampling.*'pairs'"):
        _triples_cfg(train_files, tmp_path / "x", sampling="pairs").validate()


def test_sigkilled_triples_run_resumes_bit_identically(train_files, tmp_path):
    """A real `mice train --set sampling=triples` killed with SIGKILL after a checkpoint, resumed: the same weights, to
    the bit, as a run that was never interrupted (the constant schedule lets the resumed run stop early)."""
    import os
    import signal
    import subprocess
    import time

    import torch
    from safetensors.torch import load_file

    from test_train_trust import _env, _train_args

    env = train_files
    extra = [
        "--set",
        "loss=margin-mse",
        "--set",
        f"teacher={env['teacher']}",
        "--set",
        "negatives=1",
        "--set",
        "sampling=triples",
        "--set",
        "eval_every=5000",
        "--set",
        "save_every=1",
        "--set",
        "lr_schedule=constant",
        "--set",
        "log_every=1",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_args(env, killed, "--max-steps", 5000, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    state = killed / "last" / "trainer_state.pt"
    deadline = time.time() + 180
    while not state.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.2)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = int(torch.load(state, weights_only=True)["step"])
    target = step + 3
    for out, more in ((killed, ["--resume"]), (tmp_path / "whole", [])):
        res = subprocess.run(
            _train_args(env, out, "--max-steps", target, *extra, *more),
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
    a, b = (
        load_file(str(killed / "last" / "model.safetensors")),
        load_file(str(tmp_path / "whole" / "last" / "model.safetensors")),
    )
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(f / "train_log.csv") for f in (killed, tmp_path / "whole")]
    assert logs[0]["step"].tolist() == logs[1]["step"].tolist()
    np.testing.assert_array_equal(logs[0]["loss"].to_numpy(), logs[1]["loss"].to_numpy())


def test_offset_corpus_reads_texts_on_demand(tmp_path):
    path = tmp_path / "collection.tsv"
    path.write_text("7\tseven is odd\n3\tthree\n12\ttwelve\twith a tab\n5\t\n")
    c = OffsetTexts(path)
    assert len(c) == 4 and c["3"] == "three" and c["12"] == "twelve\twith a tab" and c["5"] == ""
    assert c[7] == "seven is odd" and "4" not in c and "x" not in c
    assert sorted(c) == ["12", "3", "5", "7"]
    with pytest.raises(KeyError):
        c["4"]
    (tmp_path / "named.tsv").write_text("a\tfirst\nb\tsecond")  # other ids, no final newline
    n = OffsetTexts(tmp_path / "named.tsv")
    assert n["b"] == "second" and list(n) == ["a", "b"]


def test_data_bench_small(tmp_path):
    from mice.bench.data import run_data_bench

    out = run_data_bench(lines=20_000, passages=2_000, workdir=str(tmp_path), log=lambda s: None)
    assert out["teacher"]["rows"] == 20_000 and 19_000 < out["teacher"]["unique"] < 20_000
    assert out["corpus"]["rows"] == 2_000 and out["corpus"]["lookups_per_s"] > 0


def test_run_file_streams_query_by_query(tmp_path):
    """`mice rerank` reads a run file a whole query at a time: the same top-k as the whole-file reader, in the
    file's query order; a run whose query lines are apart falls back to the whole-file read, with a warning."""
    from mice.rank.rerank import candidates, run_candidates
    from mice.rank.runs import RunNotGrouped, iter_run_queries, read_run, sort_run

    rng = np.random.default_rng(1)
    rows = [(q, f"d{j}", float(rng.integers(0, 40))) for q in ("q3", "q1", "q2") for j in rng.permutation(1000)]
    path = tmp_path / "run.trec"
    path.write_text("".join(f"{q} Q0 {d} {i + 1} {s} bm25\n" for i, (q, d, s) in enumerate(rows)))
    whole = sort_run(read_run(path))
    streamed = list(iter_run_queries(path, k=1000))
    assert [q for q, _ in streamed] == ["q3", "q1", "q2"]  # ties (40 distinct scores) broken by doc id
    for q, docs in streamed:
        assert docs == whole[whole["query_id"] == q]["doc_id"].tolist()
    assert dict(iter_run_queries(path, k=10))["q1"] == whole[whole["query_id"] == "q1"]["doc_id"].tolist()[:10]
    queries = {"q1": "a", "q2": "b", "q9": "c"}
    with pytest.warns(DataWarning, match="1 run queries are not in the split"):
        cands, others = run_candidates(str(path), queries, 1000)
    assert others == ["q3"] and list(cands) == ["q1", "q2"] and cands == candidates(read_run(path), queries, 1000)
    apart = tmp_path / "apart.trec"
    lines = path.read_text().splitlines(keepends=True)
    apart.write_text("".join(lines[:1500] + lines[2500:] + lines[1500:2500]))  # q1's second half after q2
    with pytest.raises(RunNotGrouped, match=r"apart.trec:2001: query 'q1' comes back"):
        list(iter_run_queries(apart))
    with pytest.warns(DataWarning, match="comes back"):
        again, _ = run_candidates(str(apart), queries, 1000, warn_others=False)
    assert again == cands
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 1 x t\n")
    with pytest.raises(DataError, match="bad.trec:2: rank must be an integer and score a number"):
        list(iter_run_queries(tmp_path / "bad.trec"))


def test_rerank_at_depth_1000(tmp_path):
    """The authors' depth: 1000 candidates per query, MICE from the index, through `mice rerank`."""
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.index.store import IndexConfig, build_index
    from mice.models.mice_model import MICEModel
    from mice.models.testing import tiny_cross_encoder
    from mice.rank.runs import make_run, read_run, write_run

    words = "array sort mean plot axis value matrix sum line figure index table frame column row".split()
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    corpus = {f"d{i}": " ".join(rng.choice(words, 8)) for i in range(1200)}
    with open(data / "corpus.jsonl", "w") as fh:
        for d, text in corpus.items():
            fh.write(json.dumps({"_id": d, "title": "", "text": text}) + "\n")
    (data / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": " ".join(rng.choice(words, 3))}) + "\n" for i in range(2))
    )
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq1\td2\t1\n")
    run = make_run([(f"q{q}", f"d{(q * 100 + j) % 1200}", float(1000 - j)) for q in range(2) for j in range(1000)])
    write_run(run, tmp_path / "bm25.trec")
    mice = MICEModel.from_cross_encoder(
        tiny_cross_encoder(tmp_path / "ce", num_layers=3), contextual_layers=1, interaction_layers=2
    )
    mice_dir = mice.save_pretrained(tmp_path / "mice")
    build_index(mice, corpus, tmp_path / "idx", IndexConfig(dtype="pq", pq_m=8, shard_size=256, train_tokens=2000))
    res = CliRunner().invoke(
        app,
        [
            "rerank",
            "--model",
            str(mice_dir),
            "--dataset",
            str(data),
            "--run",
            str(tmp_path / "bm25.trec"),
            "--k",
            "1000",
            "--index",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "mice.trec"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = read_run(tmp_path / "mice.trec")
    assert out.groupby("query_id").size().tolist() == [1000, 1000]
    for q, g in out.groupby("query_id"):
        assert set(g["doc_id"]) == set(run[run["query_id"] == q]["doc_id"])
