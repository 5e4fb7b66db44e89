"""Models: the one loader, the hooked cross-encoder, MICE, late interaction, the bi-encoder, the family adapters,
sentence-transformers folders and compute precision."""
