"""Parity checks shared by the per-family test files (BERT-family and ModernBERT), so every family is held to the
same check with the same tolerance."""

import torch

from mice import HookedCrossEncoder, InteractionMask
from mice.models.hooked import knockout_hooks

# mixed lengths, so every batch is padded
PAIRS = [
    ("sort an array", "return a sorted copy of an array along the given axis"),
    ("mean", "compute the arithmetic mean along the specified axis of the input array values"),
    ("plot a line on the current figure", "plot y versus x"),
    ("graph nodes", "return a list of the nodes in the graph, as a dict of node attributes keyed by node"),
    ("sparse matrix format", "a compressed sparse row matrix"),
]


def assert_hook_equals_mask(folder, pairs, preset: str, mode: str, atol: float = 1e-5) -> None:
    """A knockout applied by hooks on `hook_pattern` scores as the same knockout applied as an interaction mask
    (≤ `atol`), and the knockout really moves the scores (> 1e-3), so the comparison can fail."""
    model = HookedCrossEncoder.from_pretrained(folder)
    batch = model.tokenize(pairs)
    mask = InteractionMask.parse(preset, model.n_layers)
    with torch.no_grad():
        clean = model(batch)
        by_mask = model(batch, mask=mask, mode=mode)
        by_hook = model.run_with_hooks(batch, fwd_hooks=knockout_hooks(model, batch, mask, mode))
    assert (by_mask - by_hook).abs().max() <= atol, (by_mask - by_hook).abs().max()
    assert (by_mask - clean).abs().max() > 1e-3
