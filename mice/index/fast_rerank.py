"""MICE's fast path: re-rank a query's candidates from precomputed document states (or cached keys/values).

What makes it fast (each measured by `mice bench latency`):
- the query side that does not depend on the document (embeddings, the `a` contextual layers, the first
  interaction layer's self-attention, its cross-attention queries, and the `[CLS]` row of the first layer's
  feed-forward) is computed once per query and broadcast to every candidate;
- the keys/values of all live cross-attention layers are one fused projection of the layer-`a` states (they all
  read the same states), or are read precomputed from the index (`kv=True` at build time); for short queries
  (heads·(Lq-1) <= 0.75·H) they are never formed: the key/value projections are absorbed into the query side
  (`FastMICE(absorb=...)`), which costs ~heads·Lq/H of the projection. Families whose keys/values read a
  per-layer normalisation of the states (ModernBERT) project per layer and never absorb;
- the last interaction layer only computes the `[CLS]` row (under `cls_cross_attention="none"` its
  cross-attention cannot reach the score; under `uniform` only the `[CLS]` row's document mean is computed);
- under `uniform`, `[CLS]`'s cross-attention is a uniform average of the values, i.e. the value projection of
  the document's mean state (or the mean of the cached values): one [N, H] row per layer;
- documents are batched by length into a reused, preallocated float32 buffer (fp16/int8 storage, computed at the
  model's precision, fp32 by default); batches without padding run attention without a mask;
- everything runs under `torch.inference_mode` (and the model's `autocast()` when its `compute_dtype` is bf16 or
  fp16; the fused weights stay fp32); `threads` sets torch's intra-op threads.
Scores equal `MICEModel.predict` on the same states (≤ 1e-5 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mice.errors import IndexError_, ModelError
from mice.index.store import DocIndex, kv_projection
from mice.models.mice_model import DocStates, MICEModel


@dataclass
class PreparedQuery:
    """Document-independent work for one query, shared by all its candidates."""

    hidden: torch.Tensor  # [1, Lq, H] after the first interaction layer's self-attention sublayer
    self_mask: torch.Tensor | None  # [1, 1, Lq, Lq] bool (rows > 0 do not attend [CLS]); None if Lq == 1
    cross_q: torch.Tensor | None  # [1, heads, Lq-1, dh] first cross-attention queries (None if b == 1)
    cls_ffn: torch.Tensor  # [1, 1, H] the [CLS] row after the first interaction layer (document-independent);
    # under cls_cross_attention="uniform", the [CLS] row before the first cross-attention instead
    constant: torch.Tensor | None = None  # the score when b == 1 (documents cannot matter)


class FastMICE:
    """Inference-only scorer over a `MICEModel`'s weights, with fused projections (see the module docstring)."""

    def __init__(self, model: MICEModel, threads: int | None = None, absorb="auto"):
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model.eval()
        self.a, self.b = model.contextual_layers, model.interaction_layers
        self.H, self.heads = model.hidden_size, model.num_heads
        self.dh = self.H // self.heads
        self.absorb = absorb
        self.per_layer_kv = model.adapter.kv_norm  # keys/values of each layer read its own normalised states
        if self.per_layer_kv:
            self.absorb = False
        with torch.inference_mode():
            self.kv_w, self.kv_b = (None, None) if self.per_layer_kv else kv_projection(model)
            self.kv_wt = self.kv_w.T.contiguous() if self.kv_w is not None else None
            self.absorb_w = []  # per live cross layer: W_k as [heads, dh, H], W_vᵀ as [heads, H, dh], b_v
            for block in list(model.cross)[: 0 if self.per_layer_kv else model.live_cross_layers]:
                (_, wk, _), (_, wv, bv) = model.adapter.kv_weights(block)
                wk = wk.detach().float().view(self.heads, self.dh, self.H).contiguous()
                wv = wv.detach().float().view(self.heads, self.dh, self.H)
                bv = (bv.detach().float() if bv is not None else wv.new_zeros(self.H)).view(self.heads, 1, self.dh)
                self.absorb_w.append((wk, wv.transpose(1, 2).contiguous(), bv))

    @property
    def kv_slots(self) -> int:
        return 2 * self.model.live_cross_layers

    # ---------------------------------------------------------------------------------------- per query
    def prepare(self, query) -> PreparedQuery:
        """Run the document-independent query side once (text or a tokenised single-query batch)."""
        m = self.model
        with torch.inference_mode(), m.autocast():
            qs = m.encode_query([query] if isinstance(query, str) else query)
            if len(qs) != 1:
                raise ModelError("FastMICE.prepare takes one query")
            h = qs.hidden
            smask = m.query_self_mask(qs.mask) if h.shape[1] > 1 else None
            ad, a = m.adapter, self.a
            if m.cls_reads_document:  # the [CLS] row depends on the document from the first layer on
                cq = None if self.b == 1 else ad.project_q(a, h[:, 1:], m.cross[0])
                return PreparedQuery(h, smask, cq, h[:, :1])
            cls_row = ad.ffn(a, h[:, :1])
            if self.b == 1:
                return PreparedQuery(h, smask, None, cls_row, constant=m.head(cls_row).reshape(()))
            return PreparedQuery(h, smask, ad.project_q(a, h[:, 1:], m.cross[0]), cls_row)

    # --------------------------------------------------------------------------------------- per batch
    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, l, _ = x.shape
        return x.view(n, l, self.heads, self.dh).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, _, l, _ = x.shape
        return x.transpose(1, 2).reshape(n, l, self.H)

    def _run(self, prep: PreparedQuery, n: int, cross, cls_ctx=None) -> torch.Tensor:
        """Scores [N] through `MICEModel.run_interaction`, with this query's prepared work and `cross(j, q)`,
        `cls_ctx(j)` reading the documents (projected, absorbed or cached keys/values)."""
        if prep.constant is not None:
            return prep.constant.expand(n).clone()
        return self.model.run_interaction(
            prep.hidden, prep.self_mask, n, cross, cls_ctx, q0=prep.cross_q, cls0=prep.cls_ffn, shortcut=True
        )

    @staticmethod
    def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        """[N, 1, 1, Ld] boolean key mask, or None when no document in the batch is padded."""
        if mask is None or bool(mask.all()):
            return None
        return mask[:, None, None, :]

    def _sdpa_cross(self, q, k, v, key_mask) -> torch.Tensor:
        n = k.shape[0]
        ctx = F.scaled_dot_product_attention(
            q.expand(n, -1, -1, -1), self._split_heads(k), self._split_heads(v), attn_mask=key_mask
        )
        return self._merge_heads(ctx)

    def _absorbed_cross(self, j: int, q: torch.Tensor, states: torch.Tensor, mask: torch.Tensor | None):
        """Cross-attention straight over the layer-`a` states, keys/values never formed: per head,
        q·(W_k d + b_k) = (W_kᵀ q)·d + const (the constant cancels in the softmax) and
        Σ p (W_v d + b_v) = W_v (Σ p d) + b_v. Cheaper than projecting keys/values when
        heads·(Lq-1) < H (short queries); exact in real arithmetic."""
        n_docs, ld, H = states.shape
        heads, dh = self.heads, self.dh
        lq = q.shape[2]
        r = heads * lq
        wk, wv_t, bv = self.absorb_w[j]
        # einsum folds the documents into the GEMM rows; matmul would broadcast (copy) the weights per document
        qt = torch.einsum("nhqd,hdk->nhqk", q * (dh**-0.5), wk)  # [1|N, heads, Lq-1, H]
        if q.shape[0] == 1:  # shared query (first interaction layer): one GEMM over all document tokens
            s = torch.matmul(states, qt.reshape(r, H).T)  # [N, Ld, R]
            if mask is not None and not bool(mask.all()):
                s = s.masked_fill(~mask[:, :, None], float("-inf"))
            p = torch.softmax(s, dim=1)
            pd = torch.matmul(p.transpose(1, 2), states)  # [N, R, H]
        else:
            s = torch.matmul(qt.reshape(n_docs, r, H), states.transpose(1, 2))  # [N, R, Ld]
            if mask is not None and not bool(mask.all()):
                s = s.masked_fill(~mask[:, None, :], float("-inf"))
            p = torch.softmax(s, dim=-1)
            pd = torch.matmul(p, states)  # [N, R, H]
        ctx = torch.einsum("nhqk,hkd->nhqd", pd.view(n_docs, heads, lq, H), wv_t) + bv  # [N, heads, Lq-1, dh]
        return self._merge_heads(ctx)

    def use_absorbed(self, prep: PreparedQuery) -> bool:
        """Absorbed cross-attention costs 2·heads·(Lq-1)·H multiply-adds per document token, projecting keys
        and values 2·H² (+ the attention). The projection's one large GEMM runs faster per operation, so
        "auto" absorbs only when heads·(Lq-1) <= 0.75·H (measured crossover on CPU, MiniLM: ~Lq 24-32)."""
        if self.absorb != "auto":
            return bool(self.absorb)
        return self.heads * (prep.hidden.shape[1] - 1) <= 0.75 * self.H

    def score_states(self, prep: PreparedQuery, doc: DocStates) -> torch.Tensor:
        """Scores [N] from layer-`a` document states (float32 whatever the storage; bf16/fp16 autocast if the
        model's `compute_dtype` says so)."""
        n = len(doc)
        with torch.inference_mode(), self.model.autocast():
            if prep.constant is not None:
                return prep.constant.expand(n).clone()
            hidden = doc.hidden if doc.hidden.dtype == torch.float32 else doc.hidden.float()
            m = self.model
            cls_ctx = m.doc_mean_reader(DocStates(hidden, doc.mask)) if m.cls_reads_document else None
            if self.per_layer_kv:
                key_mask = self._key_mask(doc.mask)

                def cross(j, q):
                    k, v = m.adapter.project_kv(self.a + j, hidden, m.cross[j])
                    ctx = F.scaled_dot_product_attention(q.expand(n, -1, -1, -1), k, v, attn_mask=key_mask)
                    return self._merge_heads(ctx)

                return self._run(prep, n, cross, cls_ctx)
            if self.use_absorbed(prep):
                return self._run(prep, n, lambda j, q: self._absorbed_cross(j, q, hidden, doc.mask), cls_ctx)
            kv = torch.matmul(hidden, self.kv_wt)  # all live layers' K and V in one GEMM (biases below)
            key_mask = self._key_mask(doc.mask)
            H = self.H

            def cross(j, q):
                # the key bias shifts every score of a query row equally (cancels in the softmax); the value
                # bias passes through the convex combination, so it is added once to the context
                ctx = self._sdpa_cross(
                    q, kv[..., 2 * j * H : (2 * j + 1) * H], kv[..., (2 * j + 1) * H : (2 * j + 2) * H], key_mask
                )
                return ctx + self.kv_b[(2 * j + 1) * H : (2 * j + 2) * H]

            return self._run(prep, n, cross, cls_ctx)

    def score_kv(self, prep: PreparedQuery, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores [N] from cached keys/values [N, Ld, 2·live, H] (biases included; live = b - 1 under `none`,
        b under `uniform`)."""
        with torch.inference_mode(), self.model.autocast():
            key_mask = self._key_mask(mask)
            cls_ctx = None
            if self.model.cls_reads_document:

                def cls_ctx(j):  # the uniform average of layer j's cached values (real tokens)
                    return MICEModel.doc_mean(DocStates(kv[:, :, 2 * j + 1].float(), mask))

            return self._run(
                prep,
                kv.shape[0],
                lambda j, q: self._sdpa_cross(q, kv[:, :, 2 * j], kv[:, :, 2 * j + 1], key_mask),
                cls_ctx,
            )


class FastReranker:
    """Re-rank candidates (doc ids) of queries with MICE from a `DocIndex`.

    `use_kv`: "auto" uses the index's cached keys/values when it has them (and they match the model), True
    requires them, False always projects from the stored states. Documents are batched by length, at most
    `batch_size` documents per batch.
    """

    def __init__(
        self,
        model: MICEModel,
        index,
        use_kv="auto",
        batch_size: int = 64,
        threads: int | None = None,
        verify: bool = True,
    ):
        self.index = index if isinstance(index, DocIndex) else DocIndex.open(index, verify=verify)
        self.index.check_model(model)
        if use_kv == "auto":
            use_kv = False
            if self.index.has_kv:
                try:
                    self.index.check_model(model, kv=True)
                    use_kv = True
                except IndexError_:
                    use_kv = False
        elif use_kv:
            self.index.check_model(model, kv=True)
        self.use_kv = bool(use_kv)
        self.fast = FastMICE(model, threads=threads)
        self.batch_size = int(batch_size)
        self._buf: torch.Tensor | None = None

    @property
    def model(self) -> MICEModel:
        return self.fast.model

    def storage(self) -> dict:
        """Bytes stored per document token: the states, the cached keys/values, and what scoring reads."""
        idx = self.index
        return {
            "dtype": idx.dtype,
            "states_bytes_per_token": idx.bytes_per_token("states"),
            "kv_bytes_per_token": idx.bytes_per_token("kv") if idx.has_kv else 0.0,
            "read_bytes_per_token": idx.bytes_per_token("kv" if self.use_kv else "states"),
            "total_bytes_per_token": idx.bytes_per_token(),
        }

    def _batches(self, positions: np.ndarray):
        order = np.argsort(-self.index.lengths[positions], kind="stable")  # by length: little padding
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def score_positions(self, prep: PreparedQuery, positions: np.ndarray) -> np.ndarray:
        out = np.empty(len(positions), dtype=np.float32)
        for rows in self._batches(positions):
            pos = positions[rows]
            device = self.model.device
            if self.use_kv:
                batch, mask = self.index.kv(pos, out=self._buf)
                scores = self.fast.score_kv(prep, batch.to(device), mask.to(device))
            else:
                doc = self.index.states(pos, out=self._buf)
                batch = doc.hidden
                scores = self.fast.score_states(prep, doc.to(device))
            if self._buf is None or batch.numel() > self._buf.numel():
                self._buf = batch.view(-1)  # preallocated padding buffer for the next batches
            out[rows] = scores.float().cpu().numpy()
        return out

    def score(self, query: str, doc_ids: Sequence[str]) -> np.ndarray:
        """Scores of `doc_ids` for `query`, in the given order."""
        if not len(doc_ids):
            return np.zeros(0, dtype=np.float32)
        return self.score_positions(self.fast.prepare(query), self.index.positions(doc_ids))

    def rank(
        self, query: str, doc_ids: Sequence[str], top_k: int | None = None, return_documents: bool = False
    ) -> list[dict]:
        """Best first, sentence-transformers' format: [{corpus_id (position in `doc_ids`), score[, doc_id]}]."""
        from mice.models.scoring import rank_by_scores

        return rank_by_scores(self.score(query, doc_ids), list(doc_ids), top_k, return_documents, text_key="doc_id")


class IndexScorer:
    """Adapter for `mice.rank.rerank.rerank` (and `mice rerank --index`): scores candidates by doc id from the index
    (`predict_candidates`), so document texts are never re-encoded. Query-side work is cached per query text
    (the runner mixes queries within a batch)."""

    def __init__(self, reranker: FastReranker, cache_size: int = 16):
        self.reranker = reranker
        self.cache_size = int(cache_size)
        self._prepared: dict[str, PreparedQuery] = {}
        self.name_or_path = f"{reranker.model.name}@{reranker.index.path}"

    @property
    def compute_dtype(self) -> str:
        return self.reranker.model.compute_dtype

    def set_compute_dtype(self, dtype, flag: str = "--dtype") -> "IndexScorer":
        """The precision of the MICE model it runs (`mice.models.precision`); prepared queries are dropped."""
        self.reranker.model.set_compute_dtype(dtype, flag)
        self._prepared.clear()
        return self

    def _prepare(self, query: str) -> PreparedQuery:
        prep = self._prepared.pop(query, None)
        if prep is None:
            prep = self.reranker.fast.prepare(query)
        self._prepared[query] = prep  # most recent last
        while len(self._prepared) > self.cache_size:
            self._prepared.pop(next(iter(self._prepared)))
        return prep

    def predict_candidates(self, batch, batch_size: int = 32) -> np.ndarray:
        out = np.empty(len(batch), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(batch.queries):
            groups.setdefault(q, []).append(i)
        for query, rows in groups.items():
            positions = self.reranker.index.positions([batch.doc_ids[i] for i in rows])
            out[rows] = self.reranker.score_positions(self._prepare(query), positions)
        return out

    def runner_batching(self, k: int, chunk_pairs: int = 1024) -> dict:
        """`batch_size`/`chunk_pairs` for `mice.rank.rerank.rerank` so that each call holds whole queries (chunks
        are whole queries, and a batch spans a chunk): every query's candidates are then scored together,
        batched by length here, instead of in the runner's small mixed batches."""
        chunk = max(int(chunk_pairs), 8 * self.reranker.batch_size)
        return {"batch_size": chunk + int(k), "chunk_pairs": chunk}

    def predict(self, pairs, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Texts only (no ids): falls back to the model on the fly."""
        return self.reranker.model.predict(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar)

    def identity(self) -> dict:
        """The model's identity (compute precision included) plus the index's manifest checksum (which covers every
        shard's checksum)."""
        return {**self.reranker.model.identity(), "index": self.reranker.index.manifest["checksum"]}
