"""One adapter per backbone family: the only code that knows where a family keeps its layers and how they run.

Everything that runs a model goes through an adapter: the hooked cross-encoder (`mice.models.hooked`), the sweep
engine (`ablations.engine`), attribution (through the hooked model), MICE (`mice.models.mice_model`), its fast path
and index (`mice.index.fast_rerank`, `mice.index.store`). So a new family is one adapter, not a copy of four code paths.

An adapter exposes a layer two ways:
- whole, as the HF module (`run_layer`), so the registered attention function and its hook points run;
- in pieces (`project_q`, `project_kv`, `attn_out`, `ffn`), for code that reuses work across rows or inputs
  (knockouts of one layer sharing its projections, MICE's query rows reading document states).
Both use `attention_core`, the one place where scores, masks (both knockout modes), softmax and values meet.

`block` arguments name the attention block whose weights project (default: layer `l`'s own); MICE passes its
cross-attention copies. Masks are additive (0 / large negative) or boolean (True = may attend), broadcastable
to [B, heads, Tq, Tk]; `allow` (bool [B, Tq, Tk]) is an interaction mask applied in `mode`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
import torch.nn.functional as F

from mice.errors import ModelError

MODES = ("renorm", "zero")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


def attention_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    allow: torch.Tensor | None = None,
    mode: str = "renorm",
    scaling: float | None = None,
    dropout_p: float = 0.0,
    block=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of q [B, heads, Tq, dh] over k, v [B, heads, Tk, dh]: (z [B, Tq, heads, dh], pattern or None).

    `renorm` blocks `~allow` before the softmax, `zero` zeroes it after (no renormalisation). `block` is a
    `mice.models.hooked.HookedBlock` whose hook points the scores, pattern and z pass through. When nothing is hooked
    and the mask renormalises, one fused `scaled_dot_product_attention` call gives the same result (no pattern).
    """
    if scaling is None:
        scaling = q.size(-1) ** -0.5
    if k.shape[0] != q.shape[0]:  # one query set for many key/value sets, or the reverse
        n = max(q.shape[0], k.shape[0])
        q, k, v = q.expand(n, -1, -1, -1), k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)
    if mode == "renorm" and (block is None or not block.attn_hooked()):
        if allow is not None:
            if bias is None:
                bias = torch.zeros(allow.shape[0], 1, *allow.shape[1:], dtype=q.dtype, device=q.device)
            elif bias.dtype == torch.bool:
                bias = _additive(bias, q.dtype)
            bias = bias.masked_fill(~allow.unsqueeze(1), float("-inf"))
        elif bias is not None and bias.dtype == torch.bool and bias.shape[0] != q.shape[0]:
            bias = bias.expand(q.shape[0], *bias.shape[1:])
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scaling, dropout_p=dropout_p)
        return z.transpose(1, 2).contiguous(), None
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if bias is not None:
        scores = scores.masked_fill(~bias, torch.finfo(scores.dtype).min) if bias.dtype == torch.bool else scores + bias
    if allow is not None and mode == "renorm":
        scores = scores.masked_fill(~allow.unsqueeze(1), float("-inf"))
    if block is not None:
        scores = block.attn.hook_attn_scores(scores)
    pattern = torch.softmax(scores, dim=-1)
    if allow is not None and mode == "zero":
        pattern = pattern * allow.unsqueeze(1).to(pattern.dtype)
    if block is not None:
        pattern = block.attn.hook_pattern(pattern)
    weights = F.dropout(pattern, p=dropout_p, training=dropout_p > 0)
    z = torch.matmul(weights, v).transpose(1, 2).contiguous()
    if block is not None:
        z = block.attn.hook_z(z)
    return z, pattern


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean keep-mask → additive mask (0 kept, dtype's minimum blocked), as HF's eager masks are."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    """[B, T, heads, dh] (what `attention_core` returns) → [B, T, heads·dh]."""
    return z.reshape(*z.shape[:2], -1)


class Adapter(ABC):
    """The interface (see the module docstring). Subclasses implement one family each."""

    family = "?"
    model_types: tuple[str, ...] = ()
    kv_norm = False  # whether cross-attention keys/values read a per-layer normalised stream (`kv_input`)

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.base = getattr(model, model.base_model_prefix)

    # --- shape
    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The encoder's layer modules, in order."""

    @abstractmethod
    def truncate(self, n: int) -> None:
        """Keep layers [0, n) (MICE drops the layers above a+b)."""

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def hidden(self) -> int:
        return int(self.config.hidden_size)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5

    @property
    def token_types(self) -> int:
        """How many token types the embeddings know (1: none to set)."""
        return 1

    @property
    def pools_cls(self) -> bool:
        """Whether the head reads the `[CLS]` row only (then the last layer's other rows cannot reach it)."""
        return True

    @classmethod
    def config_position_limit(cls, config) -> int:
        """Most tokens one sequence can hold, from the HF config alone."""
        return int(getattr(config, "max_position_embeddings", 512))

    def position_limit(self) -> int:
        return self.config_position_limit(self.config)

    def dropout_p(self, training: bool) -> float:
        return 0.0

    # --- whole model pieces
    @abstractmethod
    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream entering layer 0, [B, T, H]."""

    @abstractmethod
    def embedding_modules(self) -> list[tuple[str, nn.Module]]:
        """(prefix, module) of everything before layer 0 (document-side fingerprints hash them)."""

    @abstractmethod
    def layer_context(self, attention_mask: torch.Tensor, dtype: torch.dtype):
        """Per-batch inputs every layer needs besides the stream (padding mask, positions...)."""

    @abstractmethod
    def layer_bias(self, ctx, l: int) -> torch.Tensor | None:
        """Additive mask of layer `l` (padding, and the window on local layers)."""

    @abstractmethod
    def run_layer(self, l: int, h: torch.Tensor, ctx, **hook_kwargs) -> torch.Tensor:
        """Layer `l` through its HF module, so the registered attention function (and its hooks) run."""

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return h

    @abstractmethod
    def logits(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own pooling and classification head on the final stream: [B, labels]."""

    # --- a layer in pieces
    @abstractmethod
    def new_cross_block(self, l: int) -> nn.Module:
        """A new cross-attention block for MICE, initialised from layer `l`'s self-attention weights."""

    def local_window(self, l: int, t: int, device) -> torch.Tensor | None:
        """Bool [t, t] window of layer `l` when it is a local (sliding-window) layer, else None."""
        return None

    def kv_input(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """The stream layer `l`'s cross-attention keys/values are affine in (`kv_weights`, `project_v`)."""
        return x

    def kv_input_modules(self, l: int) -> list[tuple[str, nn.Module]]:
        """(prefix, module) of what `kv_input(l, ·)` applies (cached keys/values depend on them)."""
        return []

    @abstractmethod
    def project_q(self, l: int, x: torch.Tensor, block=None, ctx=None) -> torch.Tensor:
        """Queries [B, heads, T, dh] of the rows x (the first T positions of `ctx`'s sequences)."""

    @abstractmethod
    def project_kv(self, l: int, x: torch.Tensor, block=None, ctx=None):
        """Keys and values [B, heads, T, dh] of the stream x."""

    @abstractmethod
    def project_v(self, l: int, x: torch.Tensor, block=None) -> torch.Tensor:
        """Values with heads merged, [.., H], of `kv_input(l, ·)` (affine: the mean of values is the value of
        the mean)."""

    @abstractmethod
    def kv_weights(self, block) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """[("key", W, b), ("value", W, b)] of a cross block as affine maps of `kv_input(l, ·)`."""

    @abstractmethod
    def attn_out(self, l: int, z: torch.Tensor, resid: torch.Tensor, block=None) -> torch.Tensor:
        """The attention sublayer's output for context z [.., H] (heads merged) on the stream `resid`."""

    @abstractmethod
    def ffn(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """Layer l's feed-forward block with its residual and norm, as the family places them."""

    def attention_sublayer(
        self,
        l: int,
        x: torch.Tensor,
        bias=None,
        allow=None,
        mode: str = "renorm",
        rows: int | None = None,
        dropout_p: float = 0.0,
        block=None,
        kv=None,
        ctx=None,
        kv_ctx=None,
    ) -> torch.Tensor:
        """Layer `l`'s attention sublayer for the first `rows` rows of x (all by default), keys and values
        from every row of x (or from `kv`, another stream with its own `kv_ctx`: cross-attention)."""
        xq = x if rows is None else x[:, :rows]
        src = x if kv is None else kv
        if rows is not None:
            if bias is not None and bias.shape[-2] != 1:
                bias = bias[..., :rows, :]
            allow = None if allow is None else allow[:, :rows]
        q = self.project_q(l, xq, block, ctx)
        k, v = self.project_kv(l, src, block, ctx if kv is None else kv_ctx)
        z, _ = attention_core(q, k, v, bias, allow, mode, self.scaling, dropout_p)
        return self.attn_out(l, merge_heads(z), xq, block)


class BertAdapter(Adapter):
    """BERT/MiniLM, ELECTRA, RoBERTa: post-LN layers (`encoder.layer`), token types (none for RoBERTa), head
    = pooler + classifier where the head has a pooler, else the family's own head on position 0."""

    family = "bert"
    model_types = ("bert", "electra") + ROBERTA_LIKE

    def __init__(self, model):
        super().__init__(model)
        if not hasattr(self.base, "encoder") or not hasattr(self.base.encoder, "layer"):
            raise ModelError(f"{type(model).__name__}: expected a BERT-family encoder (…encoder.layer)")

    @property
    def layers(self):
        return self.base.encoder.layer

    def truncate(self, n: int) -> None:
        self.base.encoder.layer = nn.ModuleList(list(self.layers)[:n])
        self.config.num_hidden_layers = n

    @property
    def token_types(self) -> int:
        return int(getattr(self.config, "type_vocab_size", 1) or 1)

    @classmethod
    def config_position_limit(cls, config) -> int:
        limit = int(getattr(config, "max_position_embeddings", 512))
        if getattr(config, "model_type", "") in ROBERTA_LIKE:  # positions start after the padding index
            limit -= int(config.pad_token_id or 1) + 1
        return limit

    def dropout_p(self, training: bool) -> float:
        return float(self.config.attention_probs_dropout_prob) if training else 0.0

    def embed(self, input_ids, token_type_ids=None):
        h = self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        project = getattr(self.base, "embeddings_project", None)  # ELECTRA's small embeddings
        return project(h) if project is not None else h

    def embedding_modules(self):
        out = [("embeddings", self.base.embeddings)]
        if getattr(self.base, "embeddings_project", None) is not None:
            out.append(("embeddings_project", self.base.embeddings_project))
        return out

    def layer_context(self, attention_mask, dtype):
        """The additive [B, 1, 1, T] key-padding mask, as HF's eager path builds it."""
        return _additive(attention_mask[:, None, None, :].to(torch.bool), dtype)

    def layer_bias(self, ctx, l):
        return ctx

    def run_layer(self, l, h, ctx, **hook_kwargs):
        out = self.layers[l](h, ctx, **hook_kwargs)
        return out[0] if isinstance(out, tuple) else out

    def logits(self, h, attention_mask=None):
        model = self.model
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None and isinstance(getattr(model, "classifier", None), nn.Linear):
            return model.classifier(model.dropout(pooler(h)))
        return model.classifier(h)  # ELECTRA / RoBERTa heads read position 0 themselves

    def new_cross_block(self, l):
        import copy

        return copy.deepcopy(self.layers[l].attention)

    def _block(self, l, block):
        return self.layers[l].attention if block is None else block

    def project_q(self, l, x, block=None, ctx=None):
        return split_heads(self._block(l, block).self.query(x), self.n_heads)

    def project_kv(self, l, x, block=None, ctx=None):
        s = self._block(l, block).self
        return split_heads(s.key(x), self.n_heads), split_heads(s.value(x), self.n_heads)

    def project_v(self, l, x, block=None):
        return self._block(l, block).self.value(x)

    def kv_weights(self, block):
        s = block.self
        return [("key", s.key.weight, s.key.bias), ("value", s.value.weight, s.value.bias)]

    def attn_out(self, l, z, resid, block=None):
        return self._block(l, block).output(z, resid)

    def ffn(self, l, h):
        layer = self.layers[l]
        return layer.output(layer.intermediate(h), h)


class ModernBertContext:
    """Per-batch layer inputs of a ModernBERT: additive masks per layer type (padding on global layers,
    padding and the sliding window on local ones) and rotary (cos, sin) per layer type."""

    def __init__(self, masks: dict, rope: dict):
        self.masks, self.rope = masks, rope


class ModernBertAdapter(Adapter):
    """ModernBERT/Ettin (`ModernBertForSequenceClassification`): pre-LN layers (layer 0 without attention
    norm), fused `Wqkv`, rotary embeddings with separate global and local frequencies, global and sliding-window
    layers (`layer_types`), GeGLU MLP, `final_norm`, no token types; head = `classifier_pooling` (cls|mean) →
    dense → act → norm → classifier.

    The window is enforced only through the mask, so it is folded into the layer's additive mask here and
    every interaction mask is applied on top of it (never instead of it)."""

    family = "modernbert"
    model_types = ("modernbert",)
    kv_norm = True  # cross-attention reads the layer's attention norm of the document states

    @property
    def layers(self):
        return self.base.layers

    def truncate(self, n: int) -> None:
        self.base.layers = nn.ModuleList(list(self.layers)[:n])
        self.config.num_hidden_layers = n
        self.config.layer_types = list(self.config.layer_types)[:n]

    @property
    def pools_cls(self) -> bool:
        return self.config.classifier_pooling == "cls"

    def dropout_p(self, training: bool) -> float:
        return float(self.config.attention_dropout) if training else 0.0

    def embed(self, input_ids, token_type_ids=None):
        return self.base.embeddings(input_ids=input_ids)

    def embedding_modules(self):
        return [("embeddings", self.base.embeddings)]

    def _rope(self, t: int, dtype, device) -> dict:
        x = torch.empty(0, dtype=dtype, device=device)
        pos = torch.arange(t, device=device).unsqueeze(0)
        return {kind: self.base.rotary_emb(x, pos, kind) for kind in set(self.config.layer_types)}

    def layer_context(self, attention_mask, dtype):
        keep = attention_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, T]
        t = keep.shape[-1]
        pos = torch.arange(t, device=keep.device)
        window = (pos[:, None] - pos[None, :]).abs() <= self.config.sliding_window  # as HF's bidirectional window
        masks = {"full_attention": _additive(keep, dtype), "sliding_attention": _additive(keep & window, dtype)}
        return ModernBertContext(masks, self._rope(t, dtype, keep.device))

    def layer_bias(self, ctx, l):
        return ctx.masks[self.config.layer_types[l]]

    def run_layer(self, l, h, ctx, **hook_kwargs):
        kind = self.config.layer_types[l]
        return self.layers[l](h, attention_mask=ctx.masks[kind], position_embeddings=ctx.rope[kind], **hook_kwargs)

    def final_norm(self, h):
        return self.base.final_norm(h)

    def logits(self, h, attention_mask=None):
        model = self.model
        if self.pools_cls:
            pooled = h[:, 0]
        else:  # mean over real tokens, as HF does (all rows when no mask is given)
            m = (
                torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
                if attention_mask is None
                else attention_mask.to(h.dtype)
            )
            pooled = (h * m.unsqueeze(-1)).sum(dim=1) / m.sum(dim=1, keepdim=True)
        return model.classifier(model.drop(model.head(pooled)))

    def new_cross_block(self, l):
        return ModernBertCross(self.layers[l].attn)

    def local_window(self, l, t, device):
        if self.config.layer_types[l] != "sliding_attention":
            return None
        pos = torch.arange(t, device=device)
        return (pos[:, None] - pos[None, :]).abs() <= self.config.sliding_window

    def kv_input(self, l, x):
        return self.layers[l].attn_norm(x)

    def kv_input_modules(self, l):
        return [(f"layer.{l}.attn_norm", self.layers[l].attn_norm)]

    def _qkv(self, l, x, block, ctx):
        layer = self.layers[l]
        b, t, _ = x.shape
        return layer.attn.Wqkv(layer.attn_norm(x)).view(b, t, 3, self.n_heads, self.head_dim), layer

    def _rotate(self, l, x, ctx):
        """HF's `apply_rotary_pos_emb` for one tensor [B, heads, T, dh] at positions [0, T)."""
        t = x.shape[2]
        kind = self.config.layer_types[l]
        cos, sin = (ctx.rope if ctx is not None else self._rope(t, x.dtype, x.device))[kind]
        cos, sin = cos[:, :t].unsqueeze(1), sin[:, :t].unsqueeze(1)
        xf = x.float()
        half = xf.shape[-1] // 2
        rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)

    def project_q(self, l, x, block=None, ctx=None):
        if block is not None:  # cross-attention: no rotary (query and document positions are unrelated)
            return split_heads(block.q_proj(self.kv_input(l, x)), self.n_heads)
        qkv, _ = self._qkv(l, x, block, ctx)
        return self._rotate(l, qkv[:, :, 0].transpose(1, 2), ctx)

    def project_kv(self, l, x, block=None, ctx=None):
        if block is not None:
            xn = self.kv_input(l, x)
            return split_heads(block.k_proj(xn), self.n_heads), split_heads(block.v_proj(xn), self.n_heads)
        qkv, _ = self._qkv(l, x, block, ctx)
        return self._rotate(l, qkv[:, :, 1].transpose(1, 2), ctx), qkv[:, :, 2].transpose(1, 2)

    def project_v(self, l, x, block=None):
        return block.v_proj(x)

    def kv_weights(self, block):
        return [("key", block.k_proj.weight, block.k_proj.bias), ("value", block.v_proj.weight, block.v_proj.bias)]

    def attn_out(self, l, z, resid, block=None):
        attn = self.layers[l].attn if block is None else block
        return resid + attn.out_drop(attn.Wo(z))

    def ffn(self, l, h):
        layer = self.layers[l]
        return h + layer.mlp(layer.mlp_norm(h))


class ModernBertCross(nn.Module):
    """MICE's cross-attention block for a ModernBERT layer, as in the authors' `ModernBertCrossAttention`:
    separate q/k/v projections split from the layer's fused `Wqkv`, and a copy of its `Wo`. Global (no window)
    and without rotary; queries and document states both go through the layer's own attention norm first."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        hidden = attn.Wo.in_features
        w = attn.Wqkv.weight.detach()
        b = attn.Wqkv.bias.detach() if attn.Wqkv.bias is not None else None
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(w.shape[1], hidden, bias=b is not None)
            with torch.no_grad():
                lin.weight.copy_(w[i * hidden : (i + 1) * hidden])
                if b is not None:
                    lin.bias.copy_(b[i * hidden : (i + 1) * hidden])
            setattr(self, name, lin.to(w.device, w.dtype))
        import copy

        self.Wo = copy.deepcopy(attn.Wo)
        self.out_drop = copy.deepcopy(attn.out_drop)


ADAPTERS: list[type[Adapter]] = [BertAdapter, ModernBertAdapter]


def supported_types() -> tuple[str, ...]:
    return tuple(t for cls in ADAPTERS for t in cls.model_types)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of an HF `…ForSequenceClassification` model's family."""
    model_type = getattr(model.config, "model_type", "")
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    raise ModelError(
        f"{type(model).__name__} ({model_type!r}): no backbone adapter; supported model types: "
        f"{', '.join(supported_types())}"
    )


def position_limit(config) -> int:
    """Most tokens per sequence for an HF config, without building the model."""
    model_type = getattr(config, "model_type", "")
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls.config_position_limit(config)
    return Adapter.config_position_limit(config)
