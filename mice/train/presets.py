"""Named starting points for `mice train --preset NAME` (flags and config files override them).

- `tiny`: seconds, for tests and notebooks (tiny models, a handful of steps);
- `quick`: this laptop-class machine (2 CPU cores): the demo cross-encoder from the packaged MiniLM on
  `embedded:docs` in about 5 minutes, and a masked (mask2) or MICE-ℓ2+4 model distilled from it (teacher: that
  cross-encoder, Margin-MSE) in about 5 minutes; each stops by wall clock (`max_minutes`) as well as steps. The
  cross-encoder recipe is the measured one (DESIGN.md): listwise CE + Margin-MSE against the packaged
  bi-encoder's cosine ×10, lr 6e-5 (encoder) / 1e-3 (fresh pooler + classifier), max length 96;
- `paper`: the MICE paper's recipe for GPU users with MS MARCO through `irds:` (lr 7e-6, batch 32, 5k warmup,
  125k steps, Margin-MSE against a teacher).
"""
from __future__ import annotations

from ..errors import MiceError
from .config import SOURCE_TEACHER, TrainConfig

_COMMON = {
    "tiny": {"max_steps": 8, "batch_size": 2, "negatives": 2, "bm25_depth": 10, "max_length": 64,
             "max_query_length": 24, "lr": 1e-4, "eval_every": 4, "save_every": 4, "log_every": 2,
             "dev_queries": 10, "dev_top_k": 10, "warmup_steps": 1},
    "quick": {"dataset": "embedded:docs", "batch_size": 4, "negatives": 3, "bm25_depth": 20, "max_length": 96,
              "max_query_length": 32, "dev_queries": 50, "dev_top_k": 20, "log_every": 10,
              "max_minutes": 5.5, "eval_batch_size": 64},
    "paper": {"batch_size": 32, "lr": 7e-6, "warmup_steps": 5000, "max_steps": 125_000, "loss": "margin-mse",
              "negatives": 1, "max_length": 512, "max_query_length": 32, "eval_every": 5000,
              "save_every": 5000, "log_every": 100, "dev_queries": 1000, "dev_top_k": 100,
              "dataset": "irds:msmarco-passage/train?split=train", "train_split": "train",
              "dev_dataset": "irds:msmarco-passage/dev/small?split=dev", "dev_split": "dev", "bm25_depth": 100},
}

_BY_MODE = {
    ("tiny", "cross-encoder"): {"loss": "listwise"},
    ("tiny", "masked"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER, "mask": "mask2"},
    ("tiny", "mice"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER, "contextual_layers": 1,
                       "interaction_layers": 2},  # a tiny model needs >= 3 layers
    ("quick", "cross-encoder"): {"model": "packaged:minilm", "loss": "listwise+margin-mse",
                                 "teacher": "biencoder:packaged", "teacher_scale": 10.0, "lr": 6e-5,
                                 "head_lr": 1e-3, "warmup_steps": 30, "max_steps": 300, "eval_every": 75,
                                 "save_every": 75, "eval_at_start": False},
    ("quick", "masked"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER, "mask": "mask2", "lr": 5e-5,
                          "warmup_steps": 20, "max_steps": 300, "eval_every": 75, "save_every": 75,
                          "eval_at_start": False},
    # MICE-ℓ2+4: measured on embedded:docs, 300 steps from the demo cross-encoder reach its dev RR@10, while
    # ℓ3+3 (whose last cross-attention is dead weight, leaving two that read the document) is at ~75% after 400
    ("quick", "mice"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER, "contextual_layers": 2,
                        "interaction_layers": 4, "lr": 6e-5, "warmup_steps": 20, "max_steps": 300,
                        "eval_every": 75, "save_every": 75, "eval_at_start": False},  # untrained MICE ≈ random
    ("paper", "cross-encoder"): {"model": "packaged:minilm"},
    ("paper", "masked"): {"teacher": SOURCE_TEACHER, "mask": "mask3:k=3",
                          "model": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
    ("paper", "mice"): {"teacher": SOURCE_TEACHER, "contextual_layers": 3, "interaction_layers": 3,
                        "model": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
}

PRESETS = tuple(_COMMON)


def preset_settings(name: str, mode: str) -> dict:
    """The settings a preset gives `mode` (a flat dict of TrainConfig fields)."""
    if name not in _COMMON:
        raise MiceError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return {**_COMMON[name], **_BY_MODE.get((name, mode), {}), "mode": mode}


def preset(name: str, mode: str = "cross-encoder", **overrides) -> TrainConfig:
    """A `TrainConfig` from a preset, with `overrides` applied (Python API)."""
    return TrainConfig().updated(preset_settings(name, mode), f"preset {name}").updated(overrides)
