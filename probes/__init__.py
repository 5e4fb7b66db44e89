"""Recording what a cross-encoder attends to, by segment path, layer and head.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from probes.attention import (
    attention_examples,
    attention_paths,
    layer_means,
    load_examples,
    load_probe,
    probe_attention,
    save_examples,
    save_probe,
)
from probes.candidates import Candidates, as_candidates, from_pairs, from_run

__all__ = [
    "attention_paths",
    "attention_examples",
    "probe_attention",
    "save_probe",
    "load_probe",
    "save_examples",
    "load_examples",
    "layer_means",
    "Candidates",
    "as_candidates",
    "from_pairs",
    "from_run",
]
