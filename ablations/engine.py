"""Scoring many knockouts of one batch without redoing the work they share.

A knockout first active at layer l cannot change layers < l, so the clean residual stream entering every layer
is computed once per batch (`prepare`) and each knockout restarts from it. On top of that, the `fast`
strategy (any family with a backbone adapter, `mice.models.adapters`: it runs the layer in pieces) uses three exact
shortcuts:

- at layer l the queries, keys, values and raw attention scores come from the clean stream and are shared by
  every knockout of that layer; only the softmax differs, one replica per knockout;
- a knockout `a->b` changes only the rows of group `a` at layer l, so the output projection and feed-forward
  block of layer l run on those rows only (the others keep their clean output);
- when the score head reads the `[CLS]` state only, the last layer computes the `[CLS]` row only (and a
  last-layer knockout of a path not starting at `cls` leaves the score exactly unchanged).

Several knockouts run together by replicating the batch along the batch dimension, each replica with its own
allow matrix. `replicate` is the generic fallback (any hooked model: replicas through `run_layers` with a
knockout hook), `naive` scores each knockout with a full forward pass (the reference for parity tests and the
benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mice.errors import MaskError
from mice.models.hooked import HookedCrossEncoder, knockout_hook, knockout_hooks
from mice.masks import InteractionMask
from mice.segments import SEG

from ablations.knockouts import ALL_HEADS, Knockout

STRATEGIES = ("auto", "fast", "replicate", "naive")


def supports_fast(model: HookedCrossEncoder) -> bool:
    """The fast strategy runs layers in pieces through the model's backbone adapter."""
    return getattr(model, "adapter", None) is not None


@dataclass
class BatchState:
    """The clean pass of one batch: residual stream entering each layer (`resid[l]`; `resid[L]` = final)."""

    batch: dict
    resid: list
    clean: torch.Tensor
    base_allow: list  # per layer: bool [B, T, T] or None (no base mask)

    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.resid) + sum(
            a.numel() for a in self.base_allow if a is not None
        )


class SweepEngine:
    """Scores of knockouts (or whole masks) on top of a base mask, batch by batch."""

    def __init__(
        self,
        model: HookedCrossEncoder,
        mode: str = "renorm",
        base: InteractionMask | None = None,
        strategy: str = "auto",
        token_budget: int = 16384,
    ):
        if mode not in ("renorm", "zero"):
            raise MaskError(f"unknown knockout mode {mode!r} (modes: renorm, zero)")
        if strategy not in STRATEGIES:
            raise MaskError(f"unknown sweep strategy {strategy!r} ({', '.join(STRATEGIES)})")
        self.model = model
        self.mode = mode
        base = model.resolve_mask(base)
        self.base = None if base is None or base.is_full() else base
        self.full = InteractionMask.full(model.n_layers)
        if strategy == "auto":
            strategy = "fast" if supports_fast(model) else "replicate"
        if strategy == "fast" and not supports_fast(model):
            raise MaskError(
                f"the fast sweep needs a backbone adapter; {type(model.model).__name__} has none "
                "(use strategy='replicate')"
            )
        self.strategy = strategy
        self.token_budget = token_budget
        model.model.eval()  # knockout effects are measured on the deterministic model (no dropout)
        self.L = model.n_layers
        self.H = model.n_heads

    @property
    def base_mask(self) -> InteractionMask:
        return self.base if self.base is not None else self.full

    # ------------------------------------------------------------------ clean pass
    @torch.no_grad()
    def prepare(self, batch) -> BatchState:
        model = self.model
        x = model.embed(batch)
        resid = [x]
        for l in range(self.L):
            x = model.run_layers(x, batch, l, l + 1, mask=self.base, mode=self.mode)
            resid.append(x)
        clean = model.score_head(x, batch)
        seg = batch["segment_ids"]
        base_allow = [None if self.base is None else self.base.compile(seg, l) for l in range(self.L)]
        return BatchState(batch, resid, clean, base_allow)

    # ------------------------------------------------------------------ knockouts
    @torch.no_grad()
    def score(self, state: BatchState, knockouts: list[Knockout]) -> torch.Tensor:
        """Scores [K, B] of each knockout (on top of the base mask) for the batch of `state`."""
        out = torch.empty(len(knockouts), state.clean.shape[0], dtype=state.clean.dtype, device=state.clean.device)
        if self.strategy == "naive":
            for i, ko in enumerate(knockouts):
                out[i] = self._naive(state.batch, ko)
            return out
        by_layer: dict[int, list[int]] = {}
        for i, ko in enumerate(knockouts):
            by_layer.setdefault(ko.layer, []).append(i)
        B, T = state.batch["input_ids"].shape
        for layer, idx in by_layer.items():
            if self.strategy == "fast":  # knockouts of a layer share its projections; cap the [R, B, T, T] masks
                chunk = max(1, min(len(idx), (1 << 26) // (B * T * T)))
            else:
                chunk = max(1, self.token_budget // (B * T))
            for s in range(0, len(idx), chunk):
                part = idx[s : s + chunk]
                kos = [knockouts[i] for i in part]
                if self.strategy == "fast":
                    out[part] = self._fast(state, layer, kos)
                else:
                    out[part] = self._replicate(state, layer, kos)
        return out

    def _blocked(self, seg: torch.Tensor, kos: list[Knockout]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per replica: blocked entries [R, B, T, T] and the heads they apply to [R, H]."""
        blk, heads = [], []
        for ko in kos:
            src = torch.zeros(len(SEG), dtype=torch.bool, device=seg.device)
            dst = torch.zeros_like(src)
            src[ko.src] = True
            dst[ko.dst] = True
            blk.append(src[seg].unsqueeze(2) & dst[seg].unsqueeze(1))
            h = torch.ones(self.H, dtype=torch.bool, device=seg.device)
            if ko.head != ALL_HEADS:
                h = torch.zeros_like(h)
                h[ko.head] = True
            heads.append(h)
        return torch.stack(blk), torch.stack(heads)

    def _fast(self, state: BatchState, layer: int, kos: list[Knockout]) -> torch.Tensor:
        model, L, mode = self.model, self.L, self.mode
        batch = state.batch
        seg, amask = batch["segment_ids"], batch["attention_mask"]
        x = state.resid[layer]
        B, T, D = x.shape
        R = len(kos)
        blk, heads = self._blocked(seg, kos)  # [R, B, T, T], [R, H]
        base_allow = state.base_allow[layer]
        if base_allow is not None:
            blk = blk & base_allow  # entries the base already removes are not knocked out again
        changed = blk.any(-1)  # [R, B, T]: rows whose attention changes
        ad = model.adapter
        last_cls = layer == L - 1 and ad.pools_cls
        if last_cls:
            changed[..., 1:] = False  # only the [CLS] row reaches the score
        active = changed.any(-1)  # [R, B]
        scores = state.clean.unsqueeze(0).repeat(R, 1)
        if not bool(active.any()):
            return scores

        # layer `layer`: shared projections and scores; a softmax per knockout on the changed rows only
        lctx = model.layer_context(batch, x.dtype)
        q = ad.project_q(layer, x, ctx=lctx)
        k, v = ad.project_kv(layer, x, ctx=lctx)
        s0 = torch.matmul(q, k.transpose(2, 3)) * ad.scaling + ad.layer_bias(lctx, layer)  # [B, H, T, T]
        if base_allow is not None and mode == "renorm":
            s0 = s0.masked_fill(~base_allow.unsqueeze(1), float("-inf"))
        if mode == "zero":
            p0 = torch.softmax(s0, dim=-1)
            if base_allow is not None:
                p0 = p0 * base_allow.unsqueeze(1).to(p0.dtype)
        ri, bi, ti = changed.nonzero(as_tuple=True)
        ctx = x.new_empty(ri.numel(), D)
        for b in torch.unique(bi).tolist():
            sel = (bi == b).nonzero(as_tuple=True)[0]
            rr, tt = ri[sel], ti[sel]
            blocked = blk[rr, b, tt].unsqueeze(0) & heads[rr].T.unsqueeze(-1)  # [H, n, T]
            if mode == "renorm":
                p = torch.softmax(s0[b][:, tt].masked_fill(blocked, float("-inf")), dim=-1)
            else:
                p = p0[b][:, tt] * (~blocked).to(p0.dtype)
            ctx[sel] = torch.matmul(p, v[b]).transpose(0, 1).reshape(-1, D)
        rows = ad.ffn(layer, ad.attn_out(layer, ctx, x[bi, ti]))  # [M, D]

        # the knocked-out sequences (replica, example) from layer + 1 on, a token budget at a time
        rs, bs = active.nonzero(as_tuple=True)
        where = torch.full((R, B), -1, dtype=torch.long, device=x.device)
        where[rs, bs] = torch.arange(rs.numel(), device=x.device)
        seq = where[ri, bi]
        if layer == L - 1:
            final = state.resid[L][bs, : 1 if last_cls else T].clone()
            final[seq, ti] = rows
            scores[rs, bs] = model.score_head(final, {"attention_mask": amask[bs]})
            return scores
        step = max(1, self.token_budget // T)
        out = torch.empty(rs.numel(), dtype=scores.dtype, device=scores.device)
        for s in range(0, rs.numel(), step):
            part = slice(s, s + step)
            h = state.resid[layer + 1][bs[part]].clone()
            mine = (seq >= s) & (seq < s + step)
            h[seq[mine] - s, ti[mine]] = rows[mine]
            sub = {"attention_mask": amask[bs[part]], "segment_ids": seg[bs[part]]}
            if not ad.pools_cls:
                out[part] = model.score_head(model.run_layers(h, sub, layer + 1, L, mask=self.base, mode=mode), sub)
                continue
            if layer + 1 < L - 1:
                h = model.run_layers(h, sub, layer + 1, L - 1, mask=self.base, mode=mode)
            out[part] = model.score_head(self._last_cls(h, sub), sub)
        scores[rs, bs] = out
        return scores

    def _last_cls(self, x: torch.Tensor, batch) -> torch.Tensor:
        """The last layer for the `[CLS]` row only: [N, 1, D] (keys and values still come from every token)."""
        model, l = self.model, self.L - 1
        ad = model.adapter
        lctx = model.layer_context(batch, x.dtype)
        allow = None if self.base is None else self.base.compile(batch["segment_ids"], l)
        a = ad.attention_sublayer(l, x, ad.layer_bias(lctx, l), allow, self.mode, rows=1, ctx=lctx)
        return ad.ffn(l, a)

    def _replicate(self, state: BatchState, layer: int, kos: list[Knockout]) -> torch.Tensor:
        model = self.model
        batch = state.batch
        seg, amask = batch["segment_ids"], batch["attention_mask"]
        x = state.resid[layer]
        B, T, D = x.shape
        R = len(kos)
        blk, heads = self._blocked(seg, kos)
        allow = ~(blk.unsqueeze(2) & heads[:, None, :, None, None])  # [R, B, H, T, T]
        rep = {"attention_mask": amask.repeat(R, 1), "segment_ids": seg.repeat(R, 1)}
        name = "hook_attn_scores" if self.mode == "renorm" else "hook_pattern"
        hook = knockout_hook(allow.reshape(R * B, self.H, T, T), self.mode)
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.{name}", hook)]):
            h = model.run_layers(x.repeat(R, 1, 1), rep, layer, None, mask=self.base, mode=self.mode)
        return model.score_head(h, rep).view(R, B)

    def _naive(self, batch, ko: Knockout) -> torch.Tensor:
        """Reference: one full forward pass with the knockout, as a user would write it."""
        model = self.model
        if ko.head == ALL_HEADS:
            return model(batch, mask=ko.mask(self.base_mask), mode=self.mode)
        single = self.full.with_blocked([ko.path], [ko.layer])
        hooks = knockout_hooks(model, batch, single, self.mode, heads=[ko.head])
        return model.run_with_hooks(batch, fwd_hooks=hooks, mask=self.base_mask, mode=self.mode)

    # ------------------------------------------------------------------ whole masks
    @torch.no_grad()
    def score_mask(self, state: BatchState, mask: InteractionMask) -> torch.Tensor:
        """Scores [B] under a whole mask (replacing the base), restarting from the first layer it changes."""
        ref = self.base_mask.tables
        diff = [l for l in range(self.L) if not (mask.tables[l] == ref[l]).all()]
        if not diff:
            return state.clean
        start = diff[0]
        if self.strategy == "naive":
            start = 0
        h = self.model.run_layers(state.resid[start], state.batch, start, None, mask=mask, mode=self.mode)
        return self.model.score_head(h, state.batch)
