"""The document-state index of MICE and the fast re-ranking path that reads it."""
