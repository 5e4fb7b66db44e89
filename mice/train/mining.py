"""Hard negatives mined by a bi-encoder: each training query's top documents under a dense model.

BM25 negatives teach a cross-encoder what lexical overlap gets wrong; a bi-encoder's top documents are the ones
*it* confuses with the positive (sentence-transformers' `mine_hard_negatives`, RocketQA/TAS-B style). With the
bi-encoder as Margin-MSE teacher too they did not help the demo cross-encoder: distillation on
the teacher's own confusions asks the student to repeat them. Exact search over the whole corpus: the
collections trained on offline are a few thousand documents. The run is cached under the mice cache, keyed by
the miner's weights, the corpus, the split, the depth and the length, and written atomically.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def mined_run(dataset, split: str, spec: str, depth: int, max_length: int, batch_size: int = 64) -> pd.DataFrame:
    """(query_id, doc_id, score, rank) of the bi-encoder's top-`depth` documents per query of `split`."""
    from mice.data.base import cache_dir
    from mice.files import read_table, write_table
    from mice.identity import identity_hash
    from mice.models.loader import load

    miner = load(spec, max_length=max_length)
    key = identity_hash(
        {"miner": miner.identity(), "dataset": dataset.fingerprint(), "split": split, "depth": int(depth)}
    )
    path = cache_dir() / "mined" / f"{key[:20]}.parquet"
    if path.exists():
        return read_table(path)
    corpus = dataset.corpus()
    queries = dataset.queries(split)
    doc_ids, qids = list(corpus), sorted(queries)
    docs = miner.encode([corpus[d] for d in doc_ids], batch_size, cache=False)
    rows = []
    k = min(int(depth), len(doc_ids))
    for start in range(0, len(qids), 1024):
        chunk = qids[start : start + 1024]
        sims = miner.encode([queries[q] for q in chunk], batch_size, cache=False) @ docs.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for i, qid in enumerate(chunk):
            # ties broken by doc id, so the run does not depend on argpartition's order
            order = sorted(top[i], key=lambda j: (-sims[i, j], doc_ids[j]))
            rows += [(qid, doc_ids[j], float(sims[i, j]), r + 1) for r, j in enumerate(order)]
    run = pd.DataFrame(rows, columns=["query_id", "doc_id", "score", "rank"])
    write_table(run, path)
    return run
