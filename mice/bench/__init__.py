"""Benchmarks: latency (ours and the paper's protocol) and scale (throughput, bytes per token, projections)."""
