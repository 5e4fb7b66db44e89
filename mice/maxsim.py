"""A ColBERT-style late-interaction scorer over the same backbone, as a speed baseline for MICE.

Token vectors = a linear projection (H -> `dim`, 128 as in ColBERT) of the backbone's last hidden states,
L2-normalised; score(q, d) = Σ over query tokens of the max over document tokens of the dot product (MaxSim).
Document vectors are precomputed and stored (float16 by default); at query time only the query is encoded.
The projection is random unless trained: this module is for timing and storage comparisons, not quality.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TokenVectors:
    """Padded document token vectors [N, Ld, dim] (stored dtype) and mask [N, Ld]."""

    vectors: torch.Tensor
    mask: torch.Tensor

    @property
    def bytes_per_token(self) -> int:
        return self.vectors.shape[-1] * self.vectors.element_size()


class MaxSimScorer(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int = 128, seed: int = 0):
        super().__init__()
        self.encoder = encoder.eval()
        hidden = int(encoder.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj = nn.Linear(hidden, dim, bias=False)
        self.dim = dim

    @classmethod
    def from_pretrained(cls, name_or_path, dim: int = 128, seed: int = 0, attn_implementation: str = "sdpa"):
        from transformers import AutoModel

        from .backbone import resolve_model_path

        enc = AutoModel.from_pretrained(resolve_model_path(name_or_path), attn_implementation=attn_implementation)
        return cls(enc, dim=dim, seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] normalised token vectors (padding rows zeroed)."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        v = F.normalize(self.proj(h), dim=-1)
        return v * attention_mask[..., None].to(v.dtype)

    def encode_documents(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32,
                         dtype=torch.float16) -> TokenVectors:
        out = []
        with torch.inference_mode():
            for i in range(0, len(input_ids), batch_size):
                out.append(self.encode(input_ids[i:i + batch_size], attention_mask[i:i + batch_size]).to(dtype))
        return TokenVectors(torch.cat(out).cpu(), attention_mask.bool().cpu())

    @staticmethod
    def maxsim(query: torch.Tensor, docs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query [Lq, dim] (float), docs [N, Ld, dim], mask [N, Ld] -> scores [N]."""
        sim = torch.matmul(docs.to(query.dtype), query.T)  # [N, Ld, Lq]
        sim = sim.masked_fill(~mask[..., None], float("-inf"))
        return sim.amax(dim=1).sum(dim=-1)

    def score(self, query_ids: torch.Tensor, docs: TokenVectors, batch_size: int = 100) -> np.ndarray:
        """Scores of all stored documents for one tokenised query [1, Lq]."""
        with torch.inference_mode():
            q = self.encode(query_ids.to(self.device), torch.ones_like(query_ids, device=self.device))[0]
            out = [self.maxsim(q, docs.vectors[i:i + batch_size].to(self.device),
                               docs.mask[i:i + batch_size].to(self.device))
                   for i in range(0, len(docs.vectors), batch_size)]
        return torch.cat(out).float().cpu().numpy()
