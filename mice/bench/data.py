"""`mice bench data`: the data paths at MS MARCO size, on synthetic files of that size.

Writes, to a temporary folder, a teacher file of `lines` lines `score_pos<TAB>score_neg<TAB>qid<TAB>pos<TAB>neg`
(MS MARCO-like integer ids: ~`lines`/100 queries, `passages` documents, 1% of the lines repeated) and a corpus of
`passages` lines `pid<TAB>text` (~`words` words each). Then, each in a fresh process so that its peak resident
memory (`ru_maxrss`) is its own: `mice.train.teacher.read_triples` + `.unique()` (time, peak memory, triples
kept), and `mice.data.local.OffsetTexts` opening the corpus plus 10,000 random look-ups (time, peak memory).
The targets (≤ 5 min and ≤ 4 GiB for 40M lines, ≤ 1 min to open 1M passages) are printed as ratios, never
asserted; on a machine shared with other jobs the times are upper bounds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "triples":
    from mice.train.teacher import read_triples
    t = read_triples(sys.argv[2]); n = len(t); u = len(t.unique())
    out = {"rows": n, "unique": u, "queries": len(t.query_ids), "documents": len(t.doc_ids)}
else:
    import numpy as np
    from mice.data.local import OffsetTexts
    c = OffsetTexts(sys.argv[2]); opened = time.perf_counter() - t0
    rng = np.random.default_rng(0); ids = rng.integers(0, len(c), 10000)
    t1 = time.perf_counter(); chars = sum(len(c[str(i)]) for i in ids)
    out = {"rows": len(c), "open_s": opened, "lookups_per_s": 10000 / (time.perf_counter() - t1), "chars": chars}
out["seconds"] = time.perf_counter() - t0
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def write_teacher_file(path: Path, lines: int, passages: int, seed: int = 0, chunk: int = 2_000_000) -> Path:
    """Synthetic `score_pos score_neg qid pos neg` lines (tab-separated), 1% of them repeats of earlier lines."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    rng = np.random.default_rng(seed)
    queries = max(1, lines // 100)
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pacsv.CSVWriter(
        str(path),
        pa.schema(
            [
                (k, t)
                for k, t in (
                    ("sp", pa.float32()),
                    ("sn", pa.float32()),
                    ("q", pa.int64()),
                    ("p", pa.int64()),
                    ("n", pa.int64()),
                )
            ]
        ),
        write_options=opts,
    ) as w:
        for start in range(0, lines, chunk):
            n = min(chunk, lines - start)
            q = rng.integers(0, queries, n)
            p, ng = rng.integers(0, passages, n), rng.integers(0, passages, n)
            sp, sn = rng.normal(5, 2, n).astype(np.float32).round(3), rng.normal(0, 2, n).astype(np.float32).round(3)
            rep = rng.random(n) < 0.01  # repeats of the chunk's first lines
            for arr in (q, p, ng, sp, sn):
                arr[rep] = arr[: rep.sum()]
            w.write_batch(pa.record_batch([sp, sn, q, p, ng], names=["sp", "sn", "q", "p", "n"]))
    return path


def write_corpus(path: Path, passages: int, words: int = 55, seed: int = 0, chunk: int = 200_000) -> Path:
    """`pid<TAB>text` lines of ~`words` random lower-case words."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, passages, chunk):
            n = min(chunk, passages - start)
            body = vocab[rng.integers(0, len(vocab), (n, words))]
            fh.write("".join(f"{start + i}\t{' '.join(row)}\n" for i, row in enumerate(body)))
    return path


def _measure(kind: str, path: Path) -> dict:
    import os

    res = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(path)], capture_output=True, text=True, env={**os.environ}
    )
    if res.returncode != 0:
        raise RuntimeError(f"{kind}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_data_bench(
    lines: int = 40_000_000, passages: int = 1_000_000, workdir: str | None = None, log: Callable[[str], None] = print
) -> dict:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mice-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        teacher = write_teacher_file(work / "teacher.tsv", lines, passages)
        corpus = write_corpus(work / "collection.tsv", passages)
        log(
            f"  wrote {lines:,} teacher lines ({teacher.stat().st_size / 2**30:.2f} GiB) and {passages:,} passages "
            f"({corpus.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s"
        )
        tri, cor = _measure("triples", teacher), _measure("corpus", corpus)
        log(
            f"  teacher file: {tri['rows']:,} triples ({tri['unique']:,} unique, {tri['queries']:,} queries, "
            f"{tri['documents']:,} documents) in {tri['seconds']:.1f} s, peak {tri['peak_mib']:,.0f} MiB  "
            f"-> {tri['seconds'] / 300:.2f} of 5 min, {tri['peak_mib'] / 4096:.2f} of 4 GiB"
        )
        log(
            f"  corpus: {cor['rows']:,} passages opened in {cor['open_s']:.1f} s ({cor['open_s'] / 60:.2f} of 1 min), "
            f"{cor['lookups_per_s']:,.0f} random look-ups/s, peak {cor['peak_mib']:,.0f} MiB"
        )
        return {"teacher": tri, "corpus": cor, "lines": lines, "passages": passages}
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
