"""A ColBERT-style late-interaction model over the same backbone: MICE's trained late-interaction baseline.

Token vectors = a linear projection (H -> `dim`, 128 as in ColBERT) of the backbone's last hidden states,
L2-normalised; score(q, d) = Σ over query tokens of the max over document tokens of the dot product (MaxSim).
Query (`[CLS] q [SEP]`) and document (`[CLS] d [SEP]`) are encoded separately by the same encoder; document
vectors are precomputed and stored (float16 by default), so at query time only the query is encoded.

Trained like MICE (`mice train --mode late-interaction --model CE_FOLDER`): it starts from the cross-encoder's
encoder (the classification head is dropped) with a fresh projection drawn under the seed, and is distilled from
the same teacher with Margin-MSE through the same loop, sampler and budget. Simplifications against ColBERTv2,
said so that nobody mistakes it for it: no `[Q]`/`[D]` marker tokens, no `[MASK]` query augmentation, no
punctuation filtering, no residual compression. PyLate (the reference implementation) is not used because its
current release pins transformers <= 5.3 and its fast-plaid dependency pins torch 2.11, while this toolkit runs
on transformers 5.x (newer) and torch 2.13.

Untrained (`MaxSimScorer(encoder)` with a random projection) it is still what `mice bench latency` times: the
timing does not depend on the weights.

Saved folder (`save_pretrained`): the encoder as a plain HF folder (config.json, model.safetensors, tokenizer),
plus `projection.safetensors` and `late_interaction.json` (format, dim, lengths, source).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mice.errors import ModelError
from mice.models.precision import ComputePrecision
from mice.models.scoring import RankMixin

FORMAT = "mice-late-interaction/1"
CONFIG_FILE = "late_interaction.json"
PROJECTION_FILE = "projection.safetensors"


@dataclass
class TokenVectors:
    """Padded document token vectors [N, Ld, dim] (stored dtype) and mask [N, Ld]."""

    vectors: torch.Tensor
    mask: torch.Tensor

    @property
    def bytes_per_token(self) -> int:
        return self.vectors.shape[-1] * self.vectors.element_size()


@dataclass
class LateInteractionConfig:
    dim: int = 128
    max_query_length: int = 32
    max_doc_length: int = 256
    source: str = ""
    format: str = FORMAT


def is_late_interaction_folder(path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _load_encoder(path, attn_implementation: str):
    from transformers import AutoModel

    from mice.models.mice_model import _quiet_transformers

    with _quiet_transformers():
        try:  # the pooler is never used: leave it out (BERT-family encoders accept the flag)
            return AutoModel.from_pretrained(path, attn_implementation=attn_implementation, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(path, attn_implementation=attn_implementation)


class MaxSimScorer(RankMixin, ComputePrecision, nn.Module):
    """Encoder + projection + MaxSim. `forward(queries, docs)` is differentiable (training); `predict`, `rank`
    and `save_pretrained` follow sentence-transformers' `CrossEncoder` like MICE's."""

    def __init__(
        self,
        encoder: nn.Module,
        dim: int = 128,
        seed: int = 0,
        tokenizer=None,
        config: LateInteractionConfig | None = None,
    ):
        super().__init__()
        self.encoder = encoder.eval()
        hidden = int(encoder.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj = nn.Linear(hidden, dim, bias=False)
        self.dim = dim
        self.tokenizer = tokenizer
        self.li_config = config or LateInteractionConfig(dim=dim)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        dim: int = 128,
        seed: int = 0,
        attn_implementation: str = "sdpa",
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        device=None,
    ) -> "MaxSimScorer":
        """A saved late-interaction folder (its trained projection), or any encoder / cross-encoder folder or hub
        name (its encoder, a fresh projection drawn under `seed`). The lengths override the saved ones."""
        from transformers import AutoTokenizer

        from mice.models.backbone import resolve_model_path

        path = resolve_model_path(name_or_path)
        try:
            encoder = _load_encoder(path, attn_implementation)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as err:
            raise ModelError(f"cannot load a late-interaction encoder from {name_or_path!r}: {err}") from None
        if is_late_interaction_folder(path):
            raw = json.loads((Path(path) / CONFIG_FILE).read_text())
            if raw.get("format") != FORMAT:
                raise ModelError(
                    f"{Path(path) / CONFIG_FILE}: unknown format {raw.get('format')!r} (expected {FORMAT!r})"
                )
            known = LateInteractionConfig.__dataclass_fields__
            cfg = LateInteractionConfig(**{k: v for k, v in raw.items() if k in known})
            model = cls(encoder, dim=cfg.dim, seed=seed, tokenizer=tokenizer, config=cfg)
            from safetensors.torch import load_file

            weights = load_file(str(Path(path) / PROJECTION_FILE))
            if set(weights) != {"weight"} or tuple(weights["weight"].shape) != tuple(model.proj.weight.shape):
                raise ModelError(f"{Path(path) / PROJECTION_FILE}: expected one [{cfg.dim}, H] weight")
            model.proj.load_state_dict(weights)
        else:
            model = cls(
                encoder,
                dim=dim,
                seed=seed,
                tokenizer=tokenizer,
                config=LateInteractionConfig(dim=dim, source=str(name_or_path)),
            )
        limit = int(getattr(encoder.config, "max_position_embeddings", 512))
        for name, value in (("max_query_length", max_query_length), ("max_doc_length", max_doc_length)):
            if value is not None:
                if not 2 <= int(value) <= limit:
                    raise ModelError(f"{name}={value} outside [2, {limit}] for this encoder")
                setattr(model.li_config, name, int(value))
        model.eval()
        return model.to(device) if device is not None else model

    def save_pretrained(self, path) -> Path:
        from safetensors.torch import save_file

        from mice.files import atomic_path, write_json_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        with atomic_path(path / PROJECTION_FILE) as tmp:
            save_file({"weight": self.proj.weight.detach().cpu().contiguous()}, str(tmp))
        write_json_atomic(path / CONFIG_FILE, asdict(self.li_config))  # last: a folder with it is complete
        return path

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def name(self) -> str:
        return f"late-interaction-{self.dim}d"

    def __repr__(self) -> str:
        c = self.li_config
        return (
            f"MaxSimScorer(dim={c.dim}, source={c.source!r}, max_query_length={c.max_query_length}, "
            f"max_doc_length={c.max_doc_length})"
        )

    # ------------------------------------------------------------------------------------------ encoding
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] normalised token vectors (padding rows zeroed)."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        v = F.normalize(self.proj(h), dim=-1)
        return v * attention_mask[..., None].to(v.dtype)

    def tokenize(self, texts: Sequence[str], kind: str) -> dict:
        if self.tokenizer is None:
            raise ModelError("this MaxSimScorer has no tokenizer (build it with from_pretrained)")
        n = self.li_config.max_query_length if kind == "query" else self.li_config.max_doc_length
        enc = self.tokenizer(
            [str(t) for t in texts],
            truncation=True,
            max_length=n,
            padding=True,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def encode_texts(self, texts: Sequence[str], kind: str) -> TokenVectors:
        batch = self.tokenize(texts, kind)
        return TokenVectors(self.encode(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"].bool())

    def encode_documents(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32, dtype=torch.float16
    ) -> TokenVectors:
        """What is stored: token vectors of tokenised documents, in `dtype`, on the CPU."""
        out = []
        with torch.inference_mode(), self.autocast():
            for i in range(0, len(input_ids), batch_size):
                out.append(
                    self.encode(
                        input_ids[i : i + batch_size].to(self.device),
                        attention_mask[i : i + batch_size].to(self.device),
                    )
                    .to(dtype)
                    .cpu()
                )
        return TokenVectors(torch.cat(out), attention_mask.bool().cpu())

    # ------------------------------------------------------------------------------------------- scoring
    @staticmethod
    def maxsim(query: torch.Tensor, docs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query [Lq, dim] (float), docs [N, Ld, dim], mask [N, Ld] -> scores [N]."""
        sim = torch.matmul(docs.to(query.dtype), query.T)  # [N, Ld, Lq]
        sim = sim.masked_fill(~mask[..., None], float("-inf"))
        return sim.amax(dim=1).float().sum(dim=-1)  # summed in float32 whatever the compute precision

    @staticmethod
    def maxsim_pairs(queries: TokenVectors, docs: TokenVectors) -> torch.Tensor:
        """Pairwise scores [N] for N query vectors and N document vectors (query padding rows are zero and
        add nothing)."""
        sim = torch.einsum("nqd,nld->nql", queries.vectors, docs.vectors.to(queries.vectors.dtype))
        sim = sim.masked_fill(~docs.mask[:, None, :], float("-inf"))
        best = sim.amax(dim=-1).float()  # summed in float32 whatever the compute precision
        return (best * queries.mask.to(best.dtype)).sum(dim=-1)

    def forward(self, queries: Sequence[str], docs: Sequence[str]) -> torch.Tensor:
        """Scores [B, G] for B queries and B×G documents (G per query, in order); differentiable."""
        group = len(docs) // len(queries)
        with self.autocast():
            q = self.encode_texts(list(queries), "query")
            d = self.encode_texts(list(docs), "doc")
            qv = TokenVectors(q.vectors.repeat_interleave(group, 0), q.mask.repeat_interleave(group, 0))
            return self.maxsim_pairs(qv, d).view(len(queries), group)

    def score(self, query_ids: torch.Tensor, docs: TokenVectors, batch_size: int = 100) -> np.ndarray:
        """Scores of all stored documents for one tokenised query [1, Lq]."""
        with torch.inference_mode(), self.autocast():
            q = self.encode(query_ids.to(self.device), torch.ones_like(query_ids, device=self.device))[0]
            out = [
                self.maxsim(
                    q, docs.vectors[i : i + batch_size].to(self.device), docs.mask[i : i + batch_size].to(self.device)
                )
                for i in range(0, len(docs.vectors), batch_size)
            ]
        return torch.cat(out).float().cpu().numpy()

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ):
        """Scores for (query, document) pairs, in input order. Each distinct query is encoded once; documents are
        encoded longest first, so a batch pads to lengths alike (what re-ranking a top-k list costs at most)."""
        from mice.validate import positive

        positive("batch_size", batch_size)
        pairs = [(str(q), str(d)) for q, d in pairs]
        out = torch.empty(len(pairs), dtype=torch.float32)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1]))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self.autocast():
                queries = self._query_vectors(list(dict.fromkeys(q for q, _ in pairs)), batch_size)
                for start in range(0, len(pairs), batch_size):
                    idx = order[start : start + batch_size]
                    qv = queries([pairs[i][0] for i in idx])
                    dv = self.encode_texts([pairs[i][1] for i in idx], "doc")
                    out[torch.tensor(idx, dtype=torch.long)] = self.maxsim_pairs(qv, dv).float().cpu()
        finally:
            self.train(was_training)
        return out.numpy() if convert_to_numpy else out

    def _query_vectors(self, texts: list[str], batch_size: int):
        """`take(queries) -> TokenVectors` of those queries (any of `texts`), all encoded once here, in batches; a
        query's padding rows are zero vectors that no score counts."""
        if not texts:
            return None
        parts = [self.encode_texts(texts[i : i + batch_size], "query") for i in range(0, len(texts), batch_size)]
        width = max(p.vectors.shape[1] for p in parts)
        vectors = torch.cat([F.pad(p.vectors, (0, 0, 0, width - p.vectors.shape[1])) for p in parts])
        mask = torch.cat([F.pad(p.mask, (0, width - p.mask.shape[1])) for p in parts])
        row = {q: i for i, q in enumerate(texts)}

        def take(queries: list[str]) -> TokenVectors:
            pos = torch.tensor([row[q] for q in queries], device=vectors.device)
            return TokenVectors(vectors.index_select(0, pos), mask.index_select(0, pos))

        return take

    def identity(self) -> dict:
        """Loaded weights (encoder and projection), lengths and compute precision, for resumable jobs."""
        from mice.identity import module_fingerprint, tokenizer_fingerprint

        return {
            "scorer": type(self).__name__,
            "weights": module_fingerprint(self),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "max_query_length": self.li_config.max_query_length,
            "max_length": self.li_config.max_doc_length,
            "compute_dtype": self.compute_dtype,
        }
