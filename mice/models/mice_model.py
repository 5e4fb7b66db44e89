"""MICE-ℓa+b: a Minimal Interaction Cross-Encoder built from a cross-encoder with a backbone adapter
(`mice.models.adapters`: BERT/MiniLM, ELECTRA, RoBERTa, ModernBERT with a `[CLS]`-pooling head).

Query and document are tokenised separately (`[CLS] q [SEP]`, `[CLS] d [SEP]`) and each runs through the
backbone's embeddings and first `a` layers alone (shared weights, plain padding masks; ModernBERT's local
layers keep their window, rotary positions restart at 0 in each sequence). The document's
layer-`a` hidden states ("doc states") are all the upper part needs, so they can be computed offline and
stored (see `mice.index.store`). Then `b` *interaction layers*, initialised from backbone layers a…a+b-1, run on the
query side only:

1. query self-attention (the layer's own attention incl. its output dense + LayerNorm); query tokens do not
   attend `[CLS]`, `[CLS]` attends the query tokens and itself, padding is masked;
2. cross-attention from the query tokens to the layer-`a` document states, through a NEW attention block per
   layer initialised as a copy of that layer's self-attention. `cls_cross_attention` decides what `[CLS]`
   gets there: `none` (the paper's text, default): its row passes through this sublayer unchanged (no
   attention output, no dense, no LayerNorm); `uniform` (the authors' code, which fills `[CLS]`'s row of the
   cross-attention scores with the minimum value): a uniform average of the document values, then the
   sublayer's dense + LayerNorm like any other row. The authors' average also covers padding, which makes a
   pair's score depend on its batch neighbours; ours averages the real document tokens only, so scores stay
   batch-independent and the index path can reproduce them;
3. the layer's feed-forward block (intermediate + output).

The score is the source model's own head (BERT: pooler + dropout + classifier; ModernBERT: final norm, head,
classifier) on the query `[CLS]`, a raw logit. Layers above a+b are dropped.

ModernBERT follows the authors' `ModernBertCrossAttentionLayer` (xpmir/mice): the cross-attention block has
q/k/v split from the layer's `Wqkv` and a copy of its `Wo`; it is global (no window) and uses no rotary; query
rows and document states both pass through the layer's own attention norm before it (pre-LN), and its output
is added to the residual. Where we differ: our query self-attention keeps the local window and the padding
mask. Cached keys/values (index `kv`) are computed per layer from that layer's norm of the states.

Token types: the query gets token type 0 and the document token type 1 (when the backbone has two token types),
which is how the source cross-encoder saw them in a pair; positions restart at 0 in each sequence.

Known consequences under `none`, asserted in the tests: with b = 1 the `[CLS]` never sees the document (it
reads the query before the query reads the document), so the score does not depend on the document; more
generally the last interaction layer's cross-attention cannot reach the score (`[CLS]` reads the query *before*
it, and the feed-forward is per token), so its block always gets a zero gradient and inference skips it. Under
`uniform` neither holds: `[CLS]` reads the document's mean value in every interaction layer, so b = 1 does not
collapse and every cross-attention block is live.

The query side that does not depend on the document (embeddings, the `a` contextual layers and the first
interaction layer's self-attention) is `encode_query`; it is computed once per query and broadcast to all its
candidate documents (`interact` accepts one query for N documents).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from mice.models.adapters import adapter_for, attention_core, merge_heads, position_limit, supported_types
from mice.errors import ModelError
from mice.logs import track
from mice.models.precision import ComputePrecision
from mice.models.scoring import RankMixin
from mice.models.hf import quiet_transformers as _quiet_transformers  # noqa: F401  (also imported by mice.bench.latency)

_DOC_CHUNK = 8  # batches of distinct documents encoded at once by `MICEModel.predict` (their states are kept)

FORMAT = "mice-model/1"
CLS_CROSS_MODES = ("none", "uniform")


@dataclass
class MICEArchitecture:
    """What makes a MICE model besides the backbone's HF config; saved under the "mice" key of config.json."""

    contextual_layers: int
    interaction_layers: int
    source: str = ""
    max_query_length: int = 64
    max_doc_length: int = 512
    query_token_type: int = 0
    doc_token_type: int = 1
    mask: str | None = None
    cls_cross_attention: str = "none"  # none (the paper's text) | uniform (the authors' code)
    format: str = FORMAT

    @classmethod
    def from_dict(cls, obj: dict) -> "MICEArchitecture":
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class DocStates:
    """Layer-`a` document states, padded: `hidden` [N, Ld, H] and `mask` [N, Ld] (bool, True = real token).

    A padded batch (not a list of ragged tensors) because that is what attention consumes; `from_list` pads a
    list of per-document [L_i, H] tensors and `unpadded` gives them back.
    """

    hidden: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def select(self, index) -> "DocStates":
        """Documents at `index` (list, slice or tensor), trimmed to their own longest length."""
        if isinstance(index, slice):
            hidden, mask = self.hidden[index], self.mask[index]
        else:
            idx = torch.as_tensor(index, dtype=torch.long, device=self.hidden.device)
            hidden, mask = self.hidden.index_select(0, idx), self.mask.index_select(0, idx)
        keep = int(mask.sum(dim=1).max().item()) if len(mask) else 0
        return DocStates(hidden[:, :keep], mask[:, :keep])

    def to(self, device=None, dtype=None) -> "DocStates":
        return DocStates(self.hidden.to(device=device, dtype=dtype), self.mask.to(device=device))

    def unpadded(self) -> list[torch.Tensor]:
        return [h[: int(n)] for h, n in zip(self.hidden, self.lengths.tolist())]

    @classmethod
    def from_list(cls, states: Sequence[torch.Tensor], dtype=None, device=None) -> "DocStates":
        if not len(states):
            raise ModelError("DocStates.from_list: no documents")
        width = max(int(s.shape[0]) for s in states)
        hdim = int(states[0].shape[-1])
        dtype = dtype or states[0].dtype
        device = device or states[0].device
        hidden = torch.zeros(len(states), width, hdim, dtype=dtype, device=device)
        mask = torch.zeros(len(states), width, dtype=torch.bool, device=device)
        for i, s in enumerate(states):
            n = int(s.shape[0])
            hidden[i, :n] = torch.as_tensor(s).to(device=device, dtype=dtype)
            mask[i, :n] = True
        return cls(hidden, mask)


@dataclass
class QueryStates:
    """The document-independent query side: hidden [B, Lq, H] after the first interaction layer's
    self-attention sublayer, and the query padding mask [B, Lq] (bool)."""

    hidden: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


class MICEModel(RankMixin, ComputePrecision, nn.Module):
    """MICE-ℓa+b (see the module docstring). Build with `from_cross_encoder`, load with `from_pretrained`.

    `forward(query_batch, doc_batch=None, doc_states=None) -> Tensor[B]` is differentiable; `predict`, `rank`
    and `save_pretrained` follow sentence-transformers' `CrossEncoder`.
    """

    def __init__(
        self, backbone: nn.Module, tokenizer, mice_config: MICEArchitecture, cross: nn.ModuleList | None = None
    ):
        super().__init__()
        model_type = getattr(backbone.config, "model_type", "")
        if model_type not in supported_types():
            raise ModelError(
                f"MICE needs an encoder with a backbone adapter ({', '.join(supported_types())}); got {model_type!r}"
            )
        adapter = adapter_for(backbone)
        if not adapter.pools_cls:
            raise ModelError(
                f"MICE scores from the query's [CLS] row; this {adapter.family} head pools by "
                f"{getattr(backbone.config, 'classifier_pooling', '?')!r} (not supported yet)"
            )
        a, b = mice_config.contextual_layers, mice_config.interaction_layers
        n_layers = adapter.n_layers
        if a < 0 or b < 1 or a + b > n_layers:
            raise ModelError(
                f"MICE-ℓ{a}+{b} does not fit a backbone with {n_layers} layers "
                f"(need a >= 0, b >= 1, a + b <= {n_layers})"
            )
        if n_layers > a + b:  # the layers above a+b are dropped
            adapter.truncate(a + b)
        if mice_config.cls_cross_attention not in CLS_CROSS_MODES:
            raise ModelError(
                f"cls_cross_attention={mice_config.cls_cross_attention!r}: expected one of {', '.join(CLS_CROSS_MODES)}"
            )
        self.backbone = backbone
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.mice_config = mice_config
        if cross is None:  # a new cross-attention block per interaction layer, copied from its self-attention
            cross = nn.ModuleList(adapter.new_cross_block(a + j) for j in range(b))
        self.cross = cross

    # ----------------------------------------------------------------------------------------- properties
    @property
    def config(self):
        """The backbone's Hugging Face config (truncated to a+b layers)."""
        return self.backbone.config

    @property
    def base(self) -> nn.Module:
        return self.adapter.base

    @property
    def layers(self) -> nn.ModuleList:
        return self.adapter.layers

    @property
    def contextual_layers(self) -> int:
        return self.mice_config.contextual_layers

    @property
    def interaction_layers(self) -> int:
        return self.mice_config.interaction_layers

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden

    @property
    def num_heads(self) -> int:
        return self.adapter.n_heads

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def name(self) -> str:
        return f"MICE-ℓ{self.contextual_layers}+{self.interaction_layers}"

    def __repr__(self) -> str:  # the nn.Module repr of a whole BERT is not what a notebook user wants
        return (
            f"MICEModel({self.name}, source={self.mice_config.source!r}, hidden={self.hidden_size}, "
            f"heads={self.num_heads}, max_query_length={self.mice_config.max_query_length}, "
            f"max_doc_length={self.mice_config.max_doc_length})"
        )

    # ---------------------------------------------------------------------------------------- construction
    @classmethod
    def from_cross_encoder(
        cls,
        name_or_path,
        contextual_layers: int = 3,
        interaction_layers: int = 3,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        mask=None,
        device=None,
        seed: int = 0,
        cls_cross_attention: str = "none",
    ) -> "MICEModel":
        """MICE-ℓa+b from a `...ForSequenceClassification` folder, a sentence-transformers modular folder
        (`mice.models.st_format`), or a bare encoder (`BertModel`): then the pooler comes from the encoder and the
        classifier is fresh (1 label, initialised under `seed`).
        `cls_cross_attention`: none (the paper's text) or uniform (the authors' code); see the module docstring."""
        from transformers import AutoConfig, AutoTokenizer

        from mice.models.backbone import resolve_model_path
        from mice.models.st_format import load_classifier, local_folder

        path = local_folder(resolve_model_path(name_or_path))
        try:
            AutoConfig.from_pretrained(path)
        except Exception as err:  # noqa: BLE001 - surface as a typed error
            raise ModelError(f"cannot load a model config from {name_or_path!r}: {err}") from err
        with _quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = load_classifier(path, 1, attn_implementation="eager")
        if int(backbone.config.num_labels) != 1:
            raise ModelError(
                f"{name_or_path}: MICE scores with a 1-logit head; this model has {backbone.config.num_labels} labels"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        mcfg = MICEArchitecture(
            contextual_layers=int(contextual_layers),
            interaction_layers=int(interaction_layers),
            source=str(name_or_path),
            mask=getattr(mask, "name", mask),
            cls_cross_attention=str(cls_cross_attention),
        )
        cls._set_lengths(mcfg, backbone.config, tokenizer, max_query_length, max_doc_length)
        if adapter_for(backbone).token_types < 2:
            mcfg.doc_token_type = 0
        model = cls(backbone, tokenizer, mcfg)
        model.eval()
        return model.to(device) if device is not None else model

    @staticmethod
    def _position_limit(hf_config) -> int:
        return position_limit(hf_config)

    @classmethod
    def _set_lengths(cls, mcfg: MICEArchitecture, hf_config, tokenizer, max_query_length, max_doc_length) -> None:
        limit = min(cls._position_limit(hf_config), 512)
        tok_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < limit:
            limit = tok_limit
        if max_doc_length is not None:
            mcfg.max_doc_length = int(max_doc_length)
        elif mcfg.max_doc_length > limit or not mcfg.max_doc_length:
            mcfg.max_doc_length = limit
        if max_query_length is not None:
            mcfg.max_query_length = int(max_query_length)
        mcfg.max_query_length = min(mcfg.max_query_length, limit)
        for what, n in (("max_query_length", mcfg.max_query_length), ("max_doc_length", mcfg.max_doc_length)):
            if n < 2 or n > cls._position_limit(hf_config):
                raise ModelError(f"{what}={n} outside [2, {cls._position_limit(hf_config)}] for this backbone")

    @classmethod
    def from_pretrained(
        cls,
        path,
        device=None,
        max_length: int | None = None,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
    ) -> "MICEModel":
        """Load a folder written by `save_pretrained` (config.json with a "mice" key, safetensors weights).

        `max_query_length` / `max_doc_length` (`max_length` is an alias of the latter) override the saved
        lengths for this load, e.g. to re-rank long-query sets with the paper's 512 tokens per side."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ModelError(f"{path}: no config.json (not a saved model folder)")
        raw = json.loads(cfg_file.read_text())
        if "mice" not in raw:
            raise ModelError(f'{cfg_file}: no "mice" key; use MICEModel.from_cross_encoder for a cross-encoder')
        mcfg = MICEArchitecture.from_dict(raw.pop("mice"))
        if mcfg.format != FORMAT:
            raise ModelError(f"{cfg_file}: unknown MICE format {mcfg.format!r} (expected {FORMAT!r})")
        model_type = raw.pop("model_type", None)
        if model_type is None:
            raise ModelError(f"{cfg_file}: no model_type")
        hf_config = AutoConfig.for_model(model_type, **raw)
        hf_config._attn_implementation = "eager"
        with _quiet_transformers():
            backbone = AutoModelForSequenceClassification.from_config(hf_config, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        cls._set_lengths(
            mcfg, hf_config, tokenizer, max_query_length, max_doc_length if max_doc_length is not None else max_length
        )
        model = cls(backbone, tokenizer, mcfg)
        weights = path / "model.safetensors"
        if not weights.exists():
            raise ModelError(f"{path}: no model.safetensors")
        state = {_from_file_key(k): v for k, v in load_file(str(weights)).items()}
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ModelError(
                f"{weights}: weights do not match {model.name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        model.load_state_dict(state, strict=True)
        model.eval()
        return model.to(device) if device is not None else model

    def _weights_for_saving(self) -> dict[str, torch.Tensor]:
        """HF key names for the backbone (the folder reads like a truncated cross-encoder: `bert.…`,
        `classifier.…`) plus `mice_cross.{j}.…` for the cross-attention blocks."""
        return {_to_file_key(k): v.detach().contiguous() for k, v in self.state_dict().items()}

    def save_pretrained(self, path) -> Path:
        """Plain folder: model.safetensors, tokenizer files, config.json = backbone config + "mice" key.

        config.json is written last, so a folder with a config.json is complete."""
        from safetensors.torch import save_file

        from mice.files import atomic_path, write_json_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "model.safetensors") as tmp:
            save_file(
                {k: v.cpu() for k, v in self._weights_for_saving().items()},
                str(tmp),
                metadata={"format": "pt", "mice": FORMAT},
            )
        self.tokenizer.save_pretrained(str(path))
        cfg = self.config.to_dict()
        cfg["architectures"] = [type(self.backbone).__name__]
        cfg.pop("_attn_implementation_autoset", None)
        cfg["mice"] = asdict(self.mice_config)
        write_json_atomic(path / "config.json", cfg)
        return path

    # ----------------------------------------------------------------------------------------- tokenising
    def _tokenize(self, texts: Sequence[str], max_length: int, token_type: int) -> dict:
        texts = [str(t) for t in texts]
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        ids = enc["input_ids"].to(self.device)
        return {
            "input_ids": ids,
            "attention_mask": enc["attention_mask"].to(self.device),
            "token_type_ids": torch.full_like(ids, token_type),
        }

    def tokenize_queries(self, queries: Sequence[str]) -> dict:
        """`[CLS] q [SEP]` per query, padded, token type 0, on the model's device."""
        return self._tokenize(queries, self.mice_config.max_query_length, self.mice_config.query_token_type)

    def tokenize_documents(self, docs: Sequence[str]) -> dict:
        """`[CLS] d [SEP]` per document, padded, token type 1 (0 if the backbone has one type)."""
        return self._tokenize(docs, self.mice_config.max_doc_length, self.mice_config.doc_token_type)

    # ------------------------------------------------------------------------------------------ the model
    def _dropout_p(self) -> float:
        return self.adapter.dropout_p(self.training)

    def _embed(self, batch: dict) -> torch.Tensor:
        return self.adapter.embed(batch["input_ids"], batch.get("token_type_ids"))

    def self_block(self, l: int, h: torch.Tensor, mask: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """Backbone layer l's self-attention sublayer (bool `mask`, True = may attend; a local layer's window is
        added), for the first `rows` rows only when given."""
        window = self.adapter.local_window(l, h.shape[1], h.device)
        if window is not None and mask is not None:
            mask = mask & window
        return self.adapter.attention_sublayer(l, h, mask, rows=rows, dropout_p=self._dropout_p())

    def contextualize(self, batch: dict) -> torch.Tensor:
        """Embeddings and the first `a` layers of one side alone (plain padding mask): [B, L, H]."""
        h = self._embed(batch)
        mask = batch["attention_mask"].bool()[:, None, None, :]
        for l in range(self.contextual_layers):
            h = self.adapter.ffn(l, self.self_block(l, h, mask))
        return h

    @staticmethod
    def query_self_mask(query_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, Lq, Lq] bool: every row attends real tokens, except that rows > 0 do not attend `[CLS]`."""
        lq = query_mask.shape[1]
        allowed = query_mask.bool()[:, None, None, :].expand(-1, 1, lq, lq).clone()
        allowed[:, :, 1:, 0] = False
        return allowed

    def _to_batch(self, batch, kind: str) -> dict:
        if isinstance(batch, str):
            batch = [batch]
        if isinstance(batch, (list, tuple)):
            return self.tokenize_queries(batch) if kind == "query" else self.tokenize_documents(batch)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in dict(batch).items()}

    def encode_query(self, query_batch) -> QueryStates:
        """The document-independent query side, computed once per query: embeddings, the `a` contextual
        layers and the first interaction layer's self-attention sublayer. `query_batch`: texts or tokens."""
        batch = self._to_batch(query_batch, "query")
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.full_like(batch["input_ids"], self.mice_config.query_token_type)
        qmask = batch["attention_mask"].bool()
        h = self.contextualize(batch)
        h = self.self_block(self.contextual_layers, h, self.query_self_mask(qmask))
        return QueryStates(h, qmask)

    def encode_doc_batch(self, doc_batch) -> DocStates:
        """Layer-`a` states of a tokenised (or raw text) document batch, with gradients if enabled."""
        batch = self._to_batch(doc_batch, "doc")
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.full_like(batch["input_ids"], self.mice_config.doc_token_type)
        return DocStates(self.contextualize(batch), batch["attention_mask"].bool())

    @property
    def cls_reads_document(self) -> bool:
        return self.mice_config.cls_cross_attention == "uniform"

    @staticmethod
    def doc_mean(doc: DocStates) -> torch.Tensor:
        """[N, 1, H] mean of each document's real-token states (what a uniform attention row averages)."""
        m = doc.mask.to(doc.hidden.dtype)[..., None]
        return (doc.hidden * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)

    def doc_reader(self, doc: DocStates):
        """`cross(j, q)`: interaction layer j's cross-attention context [N, Lq-1, H] (heads merged, before the
        output sublayer) for queries q [1|N, heads, Lq-1, dh] over the states of `doc`."""
        ad, a = self.adapter, self.contextual_layers
        bias = doc.mask[:, None, None, :]

        def cross(j, q):
            k, v = ad.project_kv(a + j, doc.hidden, self.cross[j])
            z, _ = attention_core(q, k, v, bias, scaling=ad.scaling, dropout_p=self._dropout_p())
            return merge_heads(z)

        return cross

    def doc_mean_reader(self, doc: DocStates):
        """`cls_ctx(j)`: the `[CLS]` row's cross-attention context [N, 1, H] under `uniform`: the mean of the
        document values = the value projection of the mean state (the projection is affine)."""
        ad, a = self.adapter, self.contextual_layers
        if ad.kv_norm:  # values are affine in each layer's own normalisation of the states
            return lambda j: ad.project_v(
                a + j, self.doc_mean(DocStates(ad.kv_input(a + j, doc.hidden), doc.mask)), self.cross[j]
            )
        mean = self.doc_mean(doc)
        return lambda j: ad.project_v(a + j, mean, self.cross[j])

    def _cls_cross(self, j: int, cls: torch.Tensor, cls_ctx) -> torch.Tensor:
        if not self.cls_reads_document:
            return cls
        ctx = cls_ctx(j)
        if cls.shape[0] != ctx.shape[0]:
            cls = cls.expand(ctx.shape[0], -1, -1)
        return self.adapter.attn_out(self.contextual_layers + j, ctx, cls, self.cross[j])

    def cls_cross(self, j: int, cls: torch.Tensor, doc: DocStates) -> torch.Tensor:
        """The `[CLS]` row [N, 1, H] after interaction layer j's cross-attention sublayer: unchanged under
        `none`; under `uniform`, the mean of the document values through the sublayer's output."""
        return self._cls_cross(j, cls, self.doc_mean_reader(doc) if self.cls_reads_document else None)

    def cross_block(self, j: int, h: torch.Tensor, doc: DocStates) -> torch.Tensor:
        """Interaction layer j's cross-attention sublayer: query tokens (rows > 0) read the document states;
        the `[CLS]` row as `cls_cross_attention` says (`cls_cross`)."""
        l, tokens = self.contextual_layers + j, h[:, 1:]
        q = self.adapter.project_q(l, tokens, self.cross[j])
        out = self.adapter.attn_out(l, self.doc_reader(doc)(j, q), tokens, self.cross[j])
        return torch.cat([self.cls_cross(j, h[:, :1], doc), out], dim=1)

    def run_interaction(
        self,
        h: torch.Tensor,
        smask: torch.Tensor | None,
        n: int,
        cross,
        cls_ctx=None,
        q0: torch.Tensor | None = None,
        cls0: torch.Tensor | None = None,
        shortcut: bool | None = None,
    ) -> torch.Tensor:
        """The b interaction layers, scores [N]: the one implementation of MICE's interaction (`interact` and
        the fast path, `mice.index.fast_rerank`, differ only in how they read the document).

        h [1|N, Lq, H]: the query after the first interaction layer's self-attention sublayer (one query may be
        shared by all N documents); smask: its self-attention mask (bool, broadcastable to [.., 1, Lq, Lq]);
        `cross(j, q)`: layer j's cross-attention context (`doc_reader`); `cls_ctx(j)`: the `[CLS]` row's
        under `uniform` (`doc_mean_reader`). q0 / cls0: the first layer's cross-attention queries and (under
        `none`) its `[CLS]` output, when already computed once per query.

        Only `[CLS]` reaches the head, so in the last interaction layer only its row matters: under `none` the
        last cross-attention is dead weight, under `uniform` only its `[CLS]` row counts. With `shortcut`
        (default: without autograd) the last layer computes that row only (same scores); without it every
        parameter gets a (zero) gradient, as DDP expects.
        """
        ad, a, b = self.adapter, self.contextual_layers, self.interaction_layers
        if shortcut is None:
            shortcut = not torch.is_grad_enabled()
        for j in range(b):
            l, cut = a + j, shortcut and j == b - 1
            if j > 0:
                h = self.self_block(l, h, smask, rows=1 if cut else None)
            if cut:
                out = self.head(ad.ffn(l, self._cls_cross(j, h[:, :1], cls_ctx)))
                return out.expand(n).clone() if out.shape[0] != n else out
            tokens = h[:, 1:]
            q = q0 if j == 0 and q0 is not None else ad.project_q(l, tokens, self.cross[j])
            tokens = ad.attn_out(l, cross(j, q), tokens, self.cross[j])  # [N, Lq-1, H]
            if j == 0 and cls0 is not None and not self.cls_reads_document:
                h = torch.cat([cls0.expand(len(tokens), -1, -1), ad.ffn(l, tokens)], dim=1)
            else:
                cls = self._cls_cross(j, h[:, :1], cls_ctx)
                h = ad.ffn(l, torch.cat([cls.expand(len(tokens), -1, -1), tokens], dim=1))
        return self.head(h)

    def interact(self, query: QueryStates, doc: DocStates) -> torch.Tensor:
        """Scores [N] from document-independent query states (B = N, or B = 1 shared by all N documents)."""
        n = len(doc)
        h, qmask = query.hidden, query.mask
        if len(query) != n:
            if len(query) != 1:
                raise ModelError(f"{len(query)} queries for {n} documents (need equal counts or one query)")
            h, qmask = h.expand(n, -1, -1), qmask.expand(n, -1)
        if doc.hidden.dtype != h.dtype:
            doc = DocStates(doc.hidden.to(h.dtype), doc.mask)
        return self.run_interaction(
            h,
            self.query_self_mask(qmask),
            n,
            self.doc_reader(doc),
            self.doc_mean_reader(doc) if self.cls_reads_document else None,
        )

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The source model's scoring head (final norm, pooling, classifier) on the query `[CLS]`: a raw logit
        per row, [B] (float32, also under a bf16/fp16 `compute_dtype`)."""
        with self.full_precision():
            return self.adapter.logits(self.adapter.final_norm(h.float()))[..., 0]

    def forward(self, query_batch, doc_batch=None, doc_states: DocStates | None = None) -> torch.Tensor:
        """Scores [B] (raw logits, differentiable). Documents either tokenised/texts in `doc_batch` (encoded in
        the same call) or precomputed `doc_states`. One query may be paired with all documents."""
        if (doc_batch is None) == (doc_states is None):
            raise ModelError("forward needs exactly one of doc_batch or doc_states")
        with self.autocast():
            doc = doc_states if doc_states is not None else self.encode_doc_batch(doc_batch)
            doc = doc.to(self.device)
            return self.interact(self.encode_query(query_batch), doc)

    # ------------------------------------------------------------------------------- sentence-transformers
    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> DocStates:
        """Layer-`a` states of `texts` (no gradients), in input order; batches are formed by length."""
        states = list(self.iter_document_states(texts, batch_size=batch_size, show_progress_bar=show_progress_bar))
        ordered: list[torch.Tensor | None] = [None] * len(texts)
        for i, s in states:
            ordered[i] = s
        return (
            DocStates.from_list(ordered)
            if ordered
            else DocStates(torch.zeros(0, 0, self.hidden_size), torch.zeros(0, 0, dtype=torch.bool))
        )

    def iter_document_states(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        sort_by_length: bool = True,
        with_token_ids: bool = False,
    ) -> Iterable[tuple]:
        """Yield (position, [L_i, H] states[, [L_i] token ids]) per document, batched by token length (what the index
        stores; an anchored compressed index also stores the ids)."""
        texts = [str(t) for t in texts]
        if not texts:
            return
        order = list(range(len(texts)))
        if sort_by_length:
            lengths = [
                len(ids)
                for ids in self.tokenizer(texts, truncation=True, max_length=self.mice_config.max_doc_length)[
                    "input_ids"
                ]
            ]
            order.sort(key=lambda i: -lengths[i])
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in track(range(0, len(order), batch_size), "encoding documents", show_progress_bar):
                    idx = order[start : start + batch_size]
                    batch = self._to_batch([texts[i] for i in idx], "doc")
                    with self.autocast():  # not around the yield: the consumer's own work stays in fp32
                        doc = self.encode_doc_batch(batch)
                    for row, i in enumerate(idx):
                        n = int(doc.mask[row].sum())
                        if with_token_ids:
                            yield i, doc.hidden[row, :n], batch["input_ids"][row, :n].cpu()
                        else:
                            yield i, doc.hidden[row, :n]
        finally:
            self.train(was_training)

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 32,
        doc_states: DocStates | None = None,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ):
        """Scores for (query, document) pairs, in input order. With `doc_states` (one per pair, same order),
        the document texts are not used. A document's layer-`a` states do not depend on the query, so each
        distinct document text is encoded once however many queries it is paired with (a re-ranking pool shares
        documents across queries), and pairs sharing a query in a batch share its query-side work."""
        from mice.validate import positive

        positive("batch_size", batch_size)
        pairs = [(str(q), d) for q, d in pairs]
        if doc_states is not None and len(doc_states) != len(pairs):
            raise ModelError(f"{len(doc_states)} document states for {len(pairs)} pairs")
        out = torch.empty(len(pairs), dtype=torch.float32)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.autocast():
                for idx, doc in self._pair_batches(pairs, batch_size, doc_states, show_progress_bar):
                    queries = [pairs[i][0] for i in idx]
                    uniq = list(dict.fromkeys(queries))
                    qs = self.encode_query(uniq)
                    if len(uniq) > 1:
                        pos = torch.tensor([uniq.index(q) for q in queries], device=self.device)
                        qs = QueryStates(qs.hidden.index_select(0, pos), qs.mask.index_select(0, pos))
                    out[torch.tensor(idx)] = self.interact(qs, doc).float().cpu()
        finally:
            self.train(was_training)
        return out.numpy() if convert_to_numpy else out

    def _pair_batches(self, pairs, batch_size: int, doc_states: DocStates | None, show_progress_bar: bool):
        """(pair indices, their DocStates) batches. Given states: pairs by query. Else distinct documents are
        encoded `_DOC_CHUNK` batches at a time, longest first, and every pair of a chunk's documents is scored
        from those states, by query."""
        if doc_states is not None:
            order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
            for start in track(range(0, len(order), batch_size), "scoring", show_progress_bar):
                idx = order[start : start + batch_size]
                yield idx, doc_states.select(idx).to(self.device)
            return
        texts = list(dict.fromkeys(str(d) for _, d in pairs))
        at = {t: i for i, t in enumerate(texts)}
        of_doc: list[list[int]] = [[] for _ in texts]
        for i, (_, d) in enumerate(pairs):
            of_doc[at[str(d)]].append(i)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.mice_config.max_doc_length)["input_ids"]
        lengths = [len(ids) for ids in tokens]
        by_len = sorted(range(len(texts)), key=lambda j: -lengths[j])
        chunk = _DOC_CHUNK * batch_size
        for start in track(range(0, len(by_len), chunk), "scoring", show_progress_bar):
            docs = by_len[start : start + chunk]
            states: dict[int, torch.Tensor] = {}
            for b in range(0, len(docs), batch_size):
                part = docs[b : b + batch_size]
                enc = self.encode_doc_batch([texts[j] for j in part])
                for row, j in enumerate(part):
                    states[j] = enc.hidden[row, : int(enc.mask[row].sum())]
            rows = sorted(
                ((pairs[i][0], -lengths[j], i, j) for j in docs for i in of_doc[j]), key=lambda r: (r[0], r[1], r[2])
            )
            for b in range(0, len(rows), batch_size):
                part = rows[b : b + batch_size]
                yield [r[2] for r in part], DocStates.from_list([states[r[3]] for r in part])

    def identity(self) -> dict:
        """What makes this scorer's output what it is (for resumable jobs): loaded weights, lengths, compute
        precision."""
        from mice.identity import module_fingerprint, tokenizer_fingerprint

        return {
            "scorer": type(self).__name__,
            "weights": module_fingerprint(self),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "query_max_length": self.mice_config.max_query_length,
            "max_length": self.mice_config.max_doc_length,
            "compute_dtype": self.compute_dtype,
        }

    # ------------------------------------------------------------------------------------- fingerprints
    def _hash_tensors(self, h, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, t in named:
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())

    def tokenizer_fingerprint(self) -> str:
        tok = self.tokenizer
        h = hashlib.sha256()
        vocab = sorted(tok.get_vocab().items())
        h.update(json.dumps(vocab, ensure_ascii=False).encode())
        specials = {
            k: getattr(tok, k, None)
            for k in ("cls_token", "sep_token", "pad_token", "bos_token", "eos_token", "unk_token")
        }
        h.update(json.dumps(specials, sort_keys=True).encode())
        h.update(json.dumps(tok(["Fingerprint Ëxample 123, ok?"])["input_ids"]).encode())  # normaliser
        return h.hexdigest()

    def fingerprint(self) -> str:
        """Identity of the document side: contextual-layer weights, tokenizer, `a` and the document token type.
        Two models with equal fingerprints produce the same document states (what an index stores)."""
        h = hashlib.sha256()
        h.update(
            f"mice-doc-states/1 a={self.contextual_layers} type={self.mice_config.doc_token_type} "
            f"model_type={self.config.model_type}".encode()
        )
        h.update(self.tokenizer_fingerprint().encode())
        named = [
            p for prefix, module in self.adapter.embedding_modules() for p in module.named_parameters(prefix=prefix)
        ]
        for l in range(self.contextual_layers):
            named += list(self.layers[l].named_parameters(prefix=f"layer.{l}"))
        self._hash_tensors(h, named)
        return h.hexdigest()[:32]

    @property
    def live_cross_layers(self) -> int:
        """Interaction layers whose cross-attention can reach the score: all but the last (b - 1) under
        `none`; all b under `uniform` (the last one's `[CLS]` row reads the document's mean value)."""
        return self.interaction_layers - (0 if self.cls_reads_document else 1)

    def kv_fingerprint(self) -> str:
        """Identity of cached cross-attention keys/values: the document side plus the key/value projections
        of the live cross-attention blocks (the last one never reaches the score and is not cached)."""
        h = hashlib.sha256(self.fingerprint().encode())
        named = []
        for j, block in enumerate(list(self.cross)[: self.live_cross_layers]):
            for prefix, module in self.adapter.kv_input_modules(self.contextual_layers + j):
                named += list(module.named_parameters(prefix=prefix))
            for what, w, bias in self.adapter.kv_weights(block):
                named += [(f"cross.{j}.{what}.weight", w)]
                named += [(f"cross.{j}.{what}.bias", bias)] if bias is not None else []
        self._hash_tensors(h, named)
        return h.hexdigest()[:32]


def _to_file_key(key: str) -> str:
    return key[len("backbone.") :] if key.startswith("backbone.") else "mice_" + key


def _from_file_key(key: str) -> str:
    return key[len("mice_") :] if key.startswith("mice_") else "backbone." + key
