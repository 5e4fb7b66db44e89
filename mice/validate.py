"""Ranges of numeric settings, checked at the edge (CLI options and public API arguments) before any work starts.

One table, keyed by the option's Python name, gives each name one meaning and one range across every command:
`--batch-size` is always >= 1, `--k` always >= 1, `--max-length` always >= 2 (`[CLS]` and a `[SEP]`). A numeric
CLI option missing from the table fails `tests/test_fuzz_inputs.py`, so a new option gets a range when it lands.
Choice options (`--dtype`) are checked the same way against `CHOICES`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from mice.errors import MiceError


class SettingError(MiceError, ValueError):
    """A numeric setting is out of its range; the message names the option and the range."""


# name -> (low, high, low_inclusive); None = unbounded on that side
MAX_LAYERS = 1024  # no encoder has more; a bigger count is a typo, refused before anything is built per layer
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "batch_size": (1, None, True),
    "nproc": (1, None, True),  # `mice --nproc N` (mice.distributed.launch)
    "max_restarts": (0, None, True),
    "k": (1, None, True),
    "max_length": (2, None, True),
    "max_query_length": (2, None, True),
    "max_doc_length": (2, None, True),
    "max_queries": (1, None, True),
    "check_queries": (1, None, True),
    "dev_queries": (1, None, True),
    "examples": (0, None, True),
    "docs": (1, None, True),
    "queries": (1, None, True),  # `mice bench scale`: queries re-ranked
    "candidates": (1, None, True),  # `mice bench scale`: candidates per query
    "query_len": (2, None, True),
    "repeats": (1, None, True),
    "warmup": (0, None, True),
    "warmup_steps": (0, None, True),
    "threads": (1, None, True),
    "num_threads": (1, None, True),
    "resamples": (1, None, True),
    "alpha": (0, 1, False),
    "tolerance": (0, None, True),
    "patience": (0, None, True),
    "max_steps": (1, None, True),
    "max_minutes": (0, None, False),
    "eval_every": (1, None, True),
    "eval_pairs": (1, None, True),  # `mice bench train`: pairs re-ranked per evaluation measurement
    "save_every": (1, None, True),
    "negatives": (1, 1024, True),  # sampled per query and batched: 100000 would allocate for hours
    "contextual_layers": (1, MAX_LAYERS, True),
    "interaction_layers": (1, MAX_LAYERS, True),
    "lr": (0, None, False),
    "head_lr": (0, None, False),
    "teacher_scale": (0, None, False),
    "mix_alpha": (0, 1, True),  # `mice train --set mix_alpha=…`: a mix's parts drawn ∝ n ** alpha
    "k1": (0, None, True),
    "b": (0, 1, True),
    "num_layers": (1, MAX_LAYERS, True),
    "seed": (None, None, True),
    "reference": (None, None, True),
    "ig_steps": (0, None, True),
    "max_rechecks": (0, None, True),
    "check": (0, None, True),
    "shard_size": (1, None, True),
    "chunk_pairs": (1, None, True),
    "paper_batch": (1, None, True),
    "paper_runs": (1, None, True),
    "paper_warmup": (0, None, True),
    "weight_decay": (0, None, True),
    "steps": (1, None, True),  # `mice ablate search`: the first rung's training steps
    "eta": (2, None, True),
    "finalists": (1, None, True),
    "max_rungs": (1, None, True),
    "seeded_from": (0, None, True),  # `mice ablate search --seeded-from`: the first rung promoted on every seed
    "cut_alpha": (0, 1, False),  # `mice ablate search --cut-alpha`: the level of `--cut significant`'s test
    "max_interaction_layers": (1, MAX_LAYERS, True),
    "fidelity_queries": (1, None, True),  # the joint search's screening pool
    "confirm_queries": (1, None, True),  # its held-out dev queries
    "confirm_extra_queries": (1, None, True),  # its further labelled confirmation queries
    "rung_queries": (1, None, True),  # its screening queries before the last rung
    "draw": (0, None, True),  # which draw of held-out queries, screening sample and seeds
    "replicates": (1, None, True),  # `mice ablate joint --validate`: independent runs of the search
    "test_k": (1, None, True),  # `mice ablate frontier`: candidates re-ranked per test query
    "max_runs": (0, None, True),  # `mice ablate frontier`: new (configuration, seed) runs before stopping
    "validate_search": (0, None, True),  # `mice demo`: draws of the search scored against the frontier (0: none)
    "bits": (1, 8, True),  # residual codec: bits per dimension
    "pq_m": (1, None, True),  # product quantization: sub-vectors (bytes per token)
    "pq_refine": (0, None, True),  # a second pq stage: sub-vectors (bytes per token), 0 = none
    "centroids": (2, 65536, True),  # residual codec: k-means centroids (a 2-byte id)
    "train_tokens": (1, None, True),  # codebooks: token states sampled to train them
    "depth": (1, None, True),  # candidates per query re-ranked
    "budget_s": (1, None, True),  # `mice bench gpu`: seconds before no new unit starts
    "lines": (1, None, True),  # `mice bench data`: synthetic teacher lines
    "passages": (1, None, True),  # `mice bench data`: synthetic corpus size
}


# name -> the values a choice option accepts (same rule: one name, one meaning, across every command)
CHOICES: dict[str, tuple[str, ...]] = {
    "compute_dtype": ("fp32", "bf16", "fp16"),  # `--dtype` of score/rerank/train, `--compute-dtype` of index build
}


def _describe(name: str, low, high, low_inclusive, flag: str | None = None) -> str:
    opt = flag or "--" + name.replace("_", "-")
    if low is not None and high is not None:
        return f"{opt} must be in {'[' if low_inclusive else '('}{low}, {high}]"
    if low is not None:
        return f"{opt} must be {'>=' if low_inclusive else '>'} {low}"
    return f"{opt} must be <= {high}"


def check_setting(name: str, value: Any, flag: str | None = None) -> Any:
    """Check one named setting against `RANGES` or `CHOICES` (None passes: it means "default"); `flag` names it
    in errors."""
    if value is not None and name in CHOICES and value not in CHOICES[name]:
        opt = flag or "--" + name.replace("_", "-")
        raise SettingError(f"{opt} must be one of {', '.join(CHOICES[name])} (got {value!r})")
    if value is None or isinstance(value, bool) or name not in RANGES:
        return value
    if not isinstance(value, (int, float)):
        return value
    low, high, low_inclusive = RANGES[name]
    bad = isinstance(value, float) and not math.isfinite(value)
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or value > high
    if bad:
        raise SettingError(f"{_describe(name, low, high, low_inclusive, flag)} (got {value})")
    return value


def check_settings(values: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> None:
    """Check every known numeric setting of a call (CLI keyword arguments or an API call's arguments); `flags`
    maps Python names to the option names users typed (`num_threads` -> `--threads`)."""
    for name, value in values.items():
        check_setting(name, value, (flags or {}).get(name))


def positive(name: str, value: int) -> int:
    """API guard: `value` must be an int >= 1 (batch sizes, k, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(f"{name} must be an integer >= 1 (got {value!r})")
    return value
