"""Token groups of a cross-encoder input: `[CLS] q… [SEP] d… [SEP] [PAD]…`.

Segments come from special-token positions, never from `token_type_ids`: RoBERTa-style tokenisers have none
and put two separators between query and document (both count as `sep1`).
"""

from __future__ import annotations

from typing import Sequence

import torch

SEGMENTS: tuple[str, ...] = ("cls", "q", "sep1", "d", "sep2", "pad")
SEG: dict[str, int] = {name: i for i, name in enumerate(SEGMENTS)}
REAL_SEGMENTS: tuple[str, ...] = SEGMENTS[:-1]  # pad is never attended and never shown


class PairBatch(dict):
    """Tokenised pairs (tensors) plus `segment_ids` and `n_truncated`, the number of tokens cut."""

    n_truncated: int = 0

    def to(self, device) -> "PairBatch":
        out = PairBatch({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})
        out.n_truncated = self.n_truncated
        return out


def _cls_sep_ids(tokenizer) -> tuple[int, int]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        from mice.errors import ModelError

        raise ModelError(f"tokenizer {type(tokenizer).__name__} has no CLS/SEP (or BOS/EOS) token")
    return int(cls_id), int(sep_id)


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> torch.Tensor:
    """Segment id per token (indices into SEGMENTS) for a batch of pair encodings.

    Rule per row: position 0 is `cls`; the first run of consecutive separators is `sep1`; the last separator
    is `sep2`; tokens in between are `q` and `d`; masked positions are `pad`.
    """
    cls_id, sep_id = _cls_sep_ids(tokenizer)
    ids = input_ids.tolist()
    valid = attention_mask.bool().tolist()
    out = torch.full_like(input_ids, SEG["pad"])
    for b, (row, ok) in enumerate(zip(ids, valid)):
        pos = [i for i, v in enumerate(ok) if v]
        if not pos:
            continue
        seps = [i for i in pos if row[i] == sep_id and i != pos[0]]
        if len(seps) < 2 or row[pos[0]] != cls_id:
            from mice.errors import DataError

            raise DataError(f"row {b}: not a pair encoding ([CLS] q [SEP] d [SEP] expected)")
        first = seps[0]
        end_sep1 = first
        while end_sep1 + 1 < len(row) and row[end_sep1 + 1] == sep_id and end_sep1 + 1 != seps[-1]:
            end_sep1 += 1
        last = seps[-1]
        seg = out[b]
        seg[pos[0]] = SEG["cls"]
        seg[pos[0] + 1 : first] = SEG["q"]
        seg[first : end_sep1 + 1] = SEG["sep1"]
        seg[end_sep1 + 1 : last] = SEG["d"]
        seg[last] = SEG["sep2"]
    return out


def encode_pairs(tokenizer, queries: Sequence[str], docs: Sequence[str], max_length: int = 512) -> PairBatch:
    """Tokenise pairs with padding and `longest_first` truncation (special tokens are never dropped).

    `n_truncated` counts the content tokens removed across the batch, so callers can report it.
    """
    queries, docs = list(queries), list(docs)
    if len(queries) != len(docs):
        from mice.errors import DataError

        raise DataError(f"{len(queries)} queries but {len(docs)} documents")
    full = tokenizer(queries, docs, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    enc = tokenizer(queries, docs, truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt")
    batch = PairBatch({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    batch["segment_ids"] = segment_ids(batch["input_ids"], batch["attention_mask"], tokenizer)
    kept = batch["attention_mask"].sum(dim=1).tolist()
    batch.n_truncated = int(sum(max(0, len(f) - k) for f, k in zip(full, kept)))
    return batch
