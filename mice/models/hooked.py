"""A Hugging Face cross-encoder opened up as a TransformerLens `HookedRootModule`.

The HF `…ForSequenceClassification` model is kept as is; we register our own attention function with
`transformers.AttentionInterface`, so the HF attention modules compute scores → mask → softmax → values through
`HookPoint`s. Edits made in hooks are honoured (unlike the TransformerLens bridge for BERT), and interaction
masks and knockouts are applied in the same place, in either mode:

- `renorm`: blocked scores are set to -inf before the softmax (what training masks do);
- `zero`: blocked weights are zeroed after the softmax, without renormalising.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mice.models.adapters import MODES, adapter_for, attention_core
from mice.errors import MaskError, ModelError
from mice.logs import track
from mice.masks import InteractionMask
from mice.models.precision import ComputePrecision
from mice.models.scoring import RankMixin
from mice.segments import PairBatch, encode_pairs

ATTN_NAME = "mice_hooked"


class HookedAttention(nn.Module):
    """Hook points of one attention layer (TransformerLens names and shapes)."""

    def __init__(self):
        super().__init__()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], before softmax
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos], after softmax (and zero-mode mask)
        self.hook_z = HookPoint()  # [batch, pos, head, d_head], per-head output before the output projection


class HookedBlock(nn.Module):
    """Hook points of one layer. They live on the wrapper, never on the HF modules: the attention function
    receives the block of the forward in progress as a keyword argument (`mice_block`)."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        self.hook_resid_pre = HookPoint()
        self.attn = HookedAttention()
        self.hook_resid_post = HookPoint()

    def attn_hooked(self) -> bool:
        """Whether any hook (forward or backward, temporary or permanent) sits on this layer's attention."""
        return any(p.has_hooks() for p in (self.attn.hook_attn_scores, self.attn.hook_pattern, self.attn.hook_z))


def hooked_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    mice_block: HookedBlock | None = None,
    mice_allow: torch.Tensor | None = None,
    mice_mode: str = "renorm",
    **kwargs,
):
    """Drop-in for HF's eager attention, routed through the hook points of `mice_block`.

    `mice_block`, `mice_allow` (bool [B, T, T], the compiled interaction mask of this layer) and `mice_mode` are
    passed down by `HookedCrossEncoder.run_layers` through the HF layer's keyword arguments; an HF model called
    directly gets none of them and behaves as plain eager attention. The arithmetic is `attention_core`'s
    (fused when nothing is hooked and the mask renormalises: masked scoring costs what plain scoring does).
    """
    return attention_core(
        query,
        key,
        value,
        attention_mask,
        mice_allow,
        mice_mode,
        scaling,
        dropout if module.training else 0.0,
        mice_block,
    )


def register_attention() -> None:
    """Make our attention function (and its mask function) known to HF under `ATTN_NAME`. Idempotent; called
    when a HookedCrossEncoder is built, not at import."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, hooked_attention_forward)
    # Without a registered mask function HF passes no padding mask to a custom attention function.
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)


class HookedCrossEncoder(RankMixin, ComputePrecision, HookedRootModule):
    """A cross-encoder with TransformerLens hooks, interaction masks and sentence-transformers verbs."""

    def __init__(self, model, tokenizer, max_length: int | None = None, device=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter_for(model)
        self.base = self.adapter.base
        self.layers = self.adapter.layers
        self.n_layers = self.adapter.n_layers
        self.n_heads = self.adapter.n_heads
        limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512, self.adapter.position_limit())
        self.max_length = _pair_length(model.config, limit, max_length)
        self.blocks = nn.ModuleList(HookedBlock(l) for l in range(self.n_layers))
        register_attention()
        current = model.config._attn_implementation
        self._orig_attn = "eager" if current == ATTN_NAME else current  # wrapped twice: both wrappers work
        model.set_attn_implementation(ATTN_NAME)
        self._default_mask: tuple[InteractionMask | None, str] = (None, "renorm")
        self.setup()
        self.model.eval()
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls, name_or_path, max_length: int | None = None, device=None, num_labels: int = 1, **model_kwargs
    ) -> "HookedCrossEncoder":
        """Load any HF `…ForSequenceClassification` cross-encoder, a sentence-transformers modular one (its
        head modules in the family's head, `mice.models.st_format`), or a bare encoder with a fresh head."""
        from transformers import AutoTokenizer

        from mice.models.backbone import resolve_model_path
        from mice.models.st_format import load_classifier, local_folder

        path = local_folder(resolve_model_path(name_or_path))
        try:
            model = load_classifier(path, num_labels, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as err:
            raise ModelError(f"cannot load cross-encoder {name_or_path!r}: {err}") from None
        model.name_or_path = str(name_or_path)
        return cls(model, tokenizer, max_length=max_length, device=device)

    def save_pretrained(self, path) -> None:
        """A plain HF folder (config, safetensors weights, tokenizer) loadable without this toolkit. The pair
        length in use is recorded (config.json `mice_max_length`), so scoring defaults to what training saw."""
        setattr(self.model.config, LENGTH_KEY, int(self.max_length))
        self.model.config._attn_implementation = self._orig_attn
        try:
            self.model.save_pretrained(path)
        finally:
            self.model.config._attn_implementation = ATTN_NAME
        self.tokenizer.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self):
        return self.model.config

    def identity(self) -> dict:
        """What makes this scorer's output what it is (for resumable jobs): loaded weights, default mask and
        mode as resolved tables, pair length, compute precision."""
        from mice.identity import mask_identity, module_fingerprint, tokenizer_fingerprint

        mask, mode = self._default_mask
        return {
            "scorer": type(self).__name__,
            "weights": module_fingerprint(self.model),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "mask": mask_identity(mask, mode),
            "max_length": self.max_length,
            "compute_dtype": self.compute_dtype,
        }

    def run_with_cache(self, *model_args, **kwargs):
        """TransformerLens' `run_with_cache`, returning an `ActivationCache` (names `blocks.{l}.attn.hook_pattern`…)."""
        from transformer_lens import ActivationCache

        out, cache = super().run_with_cache(*model_args, **kwargs)
        return out, cache if isinstance(cache, ActivationCache) else ActivationCache(cache, self)

    # ------------------------------------------------------------------ masks
    def resolve_mask(self, mask) -> InteractionMask | None:
        """An InteractionMask, a preset spec (`mask3:k=2`), a JSON path, or None."""
        if mask is None or isinstance(mask, InteractionMask):
            m = mask
        else:
            m = InteractionMask.parse(str(mask), self.n_layers)
        if m is not None and m.num_layers != self.n_layers:
            raise MaskError(f"mask {m.name!r} has {m.num_layers} layers, the model has {self.n_layers}")
        return m

    @contextlib.contextmanager
    def using_mask(self, mask, mode: str = "renorm"):
        """Make `mask` the default for every forward/predict/rank inside the block."""
        previous = self._default_mask
        self._default_mask = (self.resolve_mask(mask), _check_mode(mode))
        try:
            yield self
        finally:
            self._default_mask = previous

    def set_mask(self, mask, mode: str = "renorm") -> None:
        """Make `mask` the default from now on (e.g. to train a masked cross-encoder)."""
        self._default_mask = (self.resolve_mask(mask), _check_mode(mode))

    def _mask_and_mode(self, mask, mode):
        if mask is None and mode is None:
            return self._default_mask
        m = self.resolve_mask(mask) if mask is not None else self._default_mask[0]
        return m, _check_mode(mode or self._default_mask[1])

    # ------------------------------------------------------------------ forward pieces
    def tokenize(self, pairs: Sequence[Sequence[str]]) -> PairBatch:
        queries = [p[0] for p in pairs]
        docs = [p[1] for p in pairs]
        return encode_pairs(self.tokenizer, queries, docs, self.max_length).to(self.device)

    def _as_batch(self, batch_or_pairs) -> PairBatch:
        if isinstance(batch_or_pairs, dict):
            return batch_or_pairs
        return self.tokenize(batch_or_pairs)

    def embed(self, batch) -> torch.Tensor:
        """Residual stream entering layer 0."""
        return self.adapter.embed(batch["input_ids"], batch.get("token_type_ids"))

    def layer_context(self, batch, dtype: torch.dtype):
        """What every layer of this batch needs besides the stream (the adapter's padding/window masks...)."""
        return self.adapter.layer_context(batch["attention_mask"], dtype)

    def run_layers(
        self, resid: torch.Tensor, batch, start: int = 0, end: int | None = None, mask=None, mode: str | None = None
    ) -> torch.Tensor:
        """Layers [start, end) on a residual stream: lets sweeps resume from a cached clean stream."""
        m, md = self._mask_and_mode(mask, mode)
        end = self.n_layers if end is None else end
        ctx = self.layer_context(batch, resid.dtype)
        compiled: dict[bytes, torch.Tensor] = {}  # layers with the same table share one compiled allow matrix
        for l in range(start, end):
            allow = None
            if m is not None:
                key = m.tables[l].tobytes()
                if key not in compiled:
                    compiled[key] = m.compile(batch["segment_ids"], l)
                allow = compiled[key]
            block = self.blocks[l]
            resid = block.hook_resid_pre(resid)
            resid = block.hook_resid_post(
                self.adapter.run_layer(l, resid, ctx, mice_block=block, mice_allow=allow, mice_mode=md)
            )
        return resid

    def score_head(self, resid: torch.Tensor, batch=None) -> torch.Tensor:
        """The model's own head (final norm, pooling, classifier) on the final stream; one raw score per pair, in
        float32 also under a bf16/fp16 `compute_dtype`. `batch` gives the padding to mean-pooling heads."""
        if batch is None and not self.adapter.pools_cls:
            raise ModelError("this head mean-pools over real tokens: score_head needs the batch (its padding)")
        amask = None if batch is None else batch["attention_mask"]
        with self.full_precision():
            logits = self.adapter.logits(self.adapter.final_norm(resid.float()), amask)
        if logits.shape[-1] == 1:
            return logits[:, 0]
        if logits.shape[-1] == 2:  # binary head: log-odds of the relevant class
            return logits[:, 1] - logits[:, 0]
        raise ModelError(f"classifier has {logits.shape[-1]} labels; a re-ranker needs 1 (score) or 2 (binary)")

    def forward(self, batch_or_pairs, mask=None, mode: str | None = None) -> torch.Tensor:
        """Raw scores [B] (differentiable), computed at `compute_dtype`. `batch_or_pairs`: a tokenised batch or a
        list of (query, doc)."""
        batch = self._as_batch(batch_or_pairs)
        with self.autocast():
            resid = self.embed(batch)
            resid = self.run_layers(resid, batch, 0, None, mask=mask, mode=mode)
            return self.score_head(resid, batch)

    # ------------------------------------------------------------------ sentence-transformers verbs
    @torch.no_grad()
    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        batch_size: int = 32,
        mask=None,
        mode: str | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Raw scores for (query, doc) pairs, batched by length (order preserved)."""
        from mice.validate import positive

        positive("batch_size", batch_size)
        pairs = [tuple(p) for p in pairs]
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        m, md = self._mask_and_mode(mask, mode)
        order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        starts = range(0, len(pairs), batch_size)
        starts = track(starts, "scoring", enabled=show_progress_bar)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in starts:
                idx = order[s : s + batch_size]
                scores = self.forward([pairs[i] for i in idx], mask=m, mode=md)
                out[idx] = scores.float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out


LENGTH_KEY = "mice_max_length"  # config.json: the pair length a cross-encoder was trained (or saved) at
_WARNED_LENGTHS: set = set()


def _pair_length(config, limit: int, requested: int | None) -> int:
    """The pair length to score at: the requested one (refused beyond the position limit; a warning, once per
    model and length, beyond the length the model was trained at), else the trained one, else the limit."""
    trained = getattr(config, LENGTH_KEY, None)
    if trained is not None and (isinstance(trained, bool) or not isinstance(trained, int) or trained < 2):
        raise ModelError(
            f"{getattr(config, 'name_or_path', '') or 'the model'}/config.json: {LENGTH_KEY} must be "
            f"an integer >= 2, got {trained!r}"
        )
    if requested is None:
        return min(int(trained), limit) if trained else limit
    from mice.validate import check_setting

    check_setting("max_length", requested)
    if requested > limit:
        raise ModelError(f"max_length {requested} exceeds what the model can encode ({limit} positions)")
    if trained and requested > int(trained):
        key = (getattr(config, "_name_or_path", ""), int(trained), requested)
        if key not in _WARNED_LENGTHS:
            _WARNED_LENGTHS.add(key)
            import logging

            logging.getLogger("mice").warning(
                "scoring at max_length %d, longer than the %d tokens this model was trained at", requested, int(trained)
            )
    return int(requested)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise MaskError(f"unknown knockout mode {mode!r} (modes: {', '.join(MODES)})")
    return mode


def knockout_hook(allow: torch.Tensor, mode: str = "renorm"):
    """A TransformerLens hook `(tensor, hook) -> tensor` knocking out every position where `allow` is False.

    `allow` broadcasts to [B, H, T, T]. Attach it to `hook_attn_scores` for `renorm`, `hook_pattern` for `zero`.
    """

    def hook(tensor, hook=None):
        if mode == "renorm":
            return tensor.masked_fill(~allow, float("-inf"))
        return tensor * allow.to(tensor.dtype)

    return hook


def knockout_hooks(
    model: HookedCrossEncoder, batch, mask: InteractionMask, mode: str = "renorm", heads: Iterable[int] | None = None
) -> list:
    """`fwd_hooks` list applying `mask` through hooks (optionally only to some heads) — same result as passing it."""
    name = "hook_attn_scores" if mode == "renorm" else "hook_pattern"
    hooks = []
    for l in range(model.n_layers):
        if mask.tables[l].all() or np.array_equal(mask.tables[l], InteractionMask.full(mask.num_layers).tables[l]):
            continue
        allow = mask.compile(batch["segment_ids"], l).unsqueeze(1)  # [B, 1, T, T]
        if heads is not None:
            sel = torch.zeros(model.n_heads, dtype=torch.bool, device=allow.device)
            sel[list(heads)] = True
            allow = allow | ~sel[None, :, None, None]
        hooks.append((f"blocks.{l}.attn.{name}", knockout_hook(allow, mode)))
    return hooks
