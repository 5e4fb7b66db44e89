"""What every scorer shares: sentence-transformers' `rank` semantics, in one place.

`rank` returns `[{"corpus_id": int position in the input, "score": float[, "text": document]}]`, best first,
ties kept in input order, at most `top_k` entries. Scorers (HookedCrossEncoder, MICEModel, BiEncoder, the index
re-ranker) call `rank_by_scores` on their own `predict` output.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rank_by_scores(
    scores, documents: Sequence, top_k: int | None = None, return_documents: bool = False, text_key: str = "text"
) -> list[dict]:
    """Best-first rows of `documents` by `scores` (stable: ties keep input order)."""
    from mice.validate import positive

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(documents):
        from mice.errors import ModelError

        raise ModelError(f"{len(scores)} scores for {len(documents)} documents")
    if top_k is not None:
        positive("top_k", top_k)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [
        {"corpus_id": int(i), "score": float(scores[i]), **({text_key: documents[i]} if return_documents else {})}
        for i in order
    ]


class RankMixin:
    """`rank` for any scorer with `predict(pairs, batch_size=, show_progress_bar=, …)`: one implementation for
    the hooked cross-encoder, MICE, late interaction and the bi-encoder. Extra keyword arguments (`mask=`,
    `mode=` for the hooked cross-encoder) go to `predict`, which refuses the ones it does not know."""

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        **predict_options,
    ) -> list[dict]:
        """Documents sorted by score, as sentence-transformers' `CrossEncoder.rank` returns them."""
        scores = self.predict(
            [(query, d) for d in documents],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            **predict_options,
        )
        return rank_by_scores(scores, documents, top_k, return_documents)
