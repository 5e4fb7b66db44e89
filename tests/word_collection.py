"""A small BEIR folder of random word documents and a first-stage run over it: enough queries that a CLI job takes
seconds (so it can be killed half-way), built in milliseconds. Shared by the reliability and scale-out tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mice.rank.runs import make_run, write_run

WORDS = "array sort mean plot axis value matrix sum line figure index table frame column row".split()


def write_word_collection(root: Path, n_queries: int, n_docs: int, k: int) -> tuple[Path, Path]:
    """`root/data` (corpus, queries, qrels: query i judges document i mod n_docs) and `root/bm25.trec` (query i's
    candidates: documents i..i+k-1 mod n_docs). Returns (folder, run path)."""
    folder = root / "data"
    (folder / "qrels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "corpus.jsonl", "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, 30))}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for i in range(n_queries):
            fh.write(json.dumps({"_id": f"q{i:03d}", "text": " ".join(rng.choice(WORDS, 4))}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i:03d}\td{i % n_docs}\t1\n" for i in range(n_queries))
    )
    run = make_run([(f"q{i:03d}", f"d{(i + j) % n_docs}", float(k - j)) for i in range(n_queries) for j in range(k)])
    return folder, write_run(run, root / "bm25.trec")
