"""Knockouts, their effect on the ranking, and mask derivation (greedy, merge-layer, layer-drop).

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""

from ablations.attribution import (
    AttributionResult,
    PathAttribution,
    attribute,
    check_exact,
    compare_tables,
    load_attribution,
)
from ablations.derive import Derivation, MergeLayerResult, derive_mask, merge_layer_search, write_report
from ablations.engine import SweepEngine, supports_fast
from ablations.knockouts import Knockout, check_knockout, knockout_set, parse_layers, parse_paths
from ablations.layer_drop import choose_interaction_layers, load_layer_drop
from ablations.metrics import RankEffects
from ablations.structural import reach, structural_cells
from ablations.sweep import SweepResult, ablate_masks, load_sweep, save_sweep, sweep

__all__ = [
    "sweep",
    "ablate_masks",
    "load_sweep",
    "save_sweep",
    "SweepResult",
    "SweepEngine",
    "supports_fast",
    "Knockout",
    "knockout_set",
    "check_knockout",
    "parse_layers",
    "parse_paths",
    "derive_mask",
    "merge_layer_search",
    "Derivation",
    "MergeLayerResult",
    "write_report",
    "load_layer_drop",
    "choose_interaction_layers",
    "attribute",
    "PathAttribution",
    "AttributionResult",
    "check_exact",
    "compare_tables",
    "load_attribution",
    "RankEffects",
    "reach",
    "structural_cells",
]
