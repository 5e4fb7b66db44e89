"""Knockouts, their effect on the ranking, and mask derivation (greedy, merge-layer, layer-drop).

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""
from .attribution import AttributionResult, PathAttribution, attribute, check_exact, compare_tables, load_attribution
from .derive import Derivation, MergeLayerResult, derive_mask, merge_layer_search, write_report
from .engine import SweepEngine, supports_fast
from .knockouts import Knockout, check_knockout, knockout_set, parse_layers, parse_paths
from .layer_drop import choose_interaction_layers, load_layer_drop
from .metrics import RankEffects
from .structural import reach, structural_cells
from .sweep import SweepResult, ablate_masks, load_sweep, save_sweep, sweep

__all__ = ["sweep", "ablate_masks", "load_sweep", "save_sweep", "SweepResult", "SweepEngine", "supports_fast",
           "Knockout", "knockout_set", "check_knockout", "parse_layers", "parse_paths", "derive_mask",
           "merge_layer_search", "Derivation", "MergeLayerResult", "write_report", "load_layer_drop",
           "choose_interaction_layers", "attribute", "PathAttribution", "AttributionResult", "check_exact",
           "compare_tables", "load_attribution", "RankEffects", "reach", "structural_cells"]
