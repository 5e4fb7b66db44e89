"""The untuned packaged bi-encoder (all-MiniLM-L6-v2 weights) as a scorer: cosine of mean-pooled embeddings.

It is cheap (each text is encoded once, document embeddings are cached) and, on the embedded docstring
collection, a better ranker than BM25 — which makes it the teacher for distilling the demo cross-encoder.
Implemented on plain transformers with the model folder's own sentence-transformers pooling config, so it
needs no sentence-transformers install; embeddings match `SentenceTransformer(path).encode(...,
normalize_embeddings=True)` (checked in the tests when sentence-transformers is present).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mice.errors import ModelError
from mice.models.precision import ComputePrecision
from mice.models.scoring import RankMixin


class BiEncoder(RankMixin, ComputePrecision):
    """`predict(pairs) -> cosine similarities`, like a cross-encoder; `encode(texts) -> unit vectors`."""

    def __init__(
        self,
        name_or_path: str | os.PathLike = "packaged:minilm",
        device: str | None = None,
        max_length: int | None = None,
        cache_size: int = 200_000,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from mice.models.backbone import resolve_model_path

        path = Path(resolve_model_path(name_or_path))
        if not path.exists():
            raise ModelError(f"bi-encoder folder {path} not found")
        self.name_or_path = str(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        pooling = {"pooling_mode_mean_tokens": True}
        pool_cfg = path / "1_Pooling" / "config.json"
        if pool_cfg.exists():
            pooling = json.loads(pool_cfg.read_text())
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_mean_tokens", True):
            self.pooling = "mean"
        else:
            raise ModelError(f"{pool_cfg}: only mean or CLS pooling is supported")
        st_cfg = path / "sentence_bert_config.json"
        default_len = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.exists() else 256
        self.max_length = int(max_length or default_len)
        self.cache_size = cache_size
        self._cache: dict[str, np.ndarray] = {}

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode(), self.autocast():
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb.float().cpu().numpy()

    def encode(self, texts: Sequence[str], batch_size: int = 64, cache: bool = True) -> np.ndarray:
        """Unit-norm embeddings [N, dim]; texts are batched by length and (optionally) memoised."""
        texts = list(texts)
        # by length, then text: the batches (hence each text's padding) do not depend on set order
        todo = sorted({t for t in texts if not (cache and t in self._cache)}, key=lambda t: (len(t), t))
        fresh: dict[str, np.ndarray] = {}
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            fresh.update(zip(chunk, self._embed(chunk)))
        if cache:
            if len(self._cache) + len(fresh) > self.cache_size:
                self._cache.clear()
            self._cache.update(fresh)
        lookup = self._cache if cache else {}
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.stack([fresh[t] if t in fresh else lookup[t] for t in texts])

    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 64, show_progress_bar: bool = False
    ) -> np.ndarray:
        """Cosine similarity of each (query, document) pair, float32 [N]."""
        from mice.validate import positive

        positive("batch_size", batch_size)
        pairs = list(pairs)
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        q = self.encode([p[0] for p in pairs], batch_size)
        d = self.encode([p[1] for p in pairs], batch_size)
        return np.einsum("ij,ij->i", q, d).astype(np.float32)

    def identity(self) -> dict:
        from mice.identity import module_fingerprint, tokenizer_fingerprint

        return {
            "scorer": type(self).__name__,
            "weights": module_fingerprint(self.model),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "compute_dtype": self.compute_dtype,
        }

    def __repr__(self) -> str:
        return f"BiEncoder({self.name_or_path!r}, pooling={self.pooling}, max_length={self.max_length})"
