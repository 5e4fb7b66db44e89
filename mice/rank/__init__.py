"""Ranking: first-stage retrieval, re-ranking with any scorer, run and qrels files, evaluation."""
