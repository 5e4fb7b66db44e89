"""What every scorer shares: sentence-transformers' `rank` semantics, in one place.

`rank` returns `[{"corpus_id": int position in the input, "score": float[, "text": document]}]`, best first,
ties kept in input order, at most `top_k` entries. Scorers (HookedCrossEncoder, MICEModel, BiEncoder, the index
re-ranker) call `rank_by_scores` on their own `predict` output.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def rank_by_scores(scores, documents: Sequence, top_k: int | None = None, return_documents: bool = False,
                   text_key: str = "text") -> list[dict]:
    """Best-first rows of `documents` by `scores` (stable: ties keep input order)."""
    from .validate import positive

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(documents):
        from .errors import ModelError

        raise ModelError(f"{len(scores)} scores for {len(documents)} documents")
    if top_k is not None:
        positive("top_k", top_k)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"corpus_id": int(i), "score": float(scores[i]), **({text_key: documents[i]} if return_documents else {})}
            for i in order]
