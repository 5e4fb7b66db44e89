"""Training: fine-tune a cross-encoder, a masked cross-encoder (under an `InteractionMask`) or a MICE model.

Python API: `Trainer(TrainConfig(...)).train()`, `preset("quick", mode="mice", model=...)`, `train_seeds`.
CLI: `mice train` (see `mice train --help`). Runs data-parallel under `accelerate launch`.
"""

from __future__ import annotations

from mice.train.config import MODES, ConfigError, TrainConfig, TrainingDiverged, read_config_file
from mice.train.losses import combined_loss, listwise_ce, margin_mse, pointwise_bce
from mice.train.presets import PRESETS, preset, preset_settings

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "train_seeds",
    "preset",
    "preset_settings",
    "PRESETS",
    "MODES",
    "ConfigError",
    "TrainingDiverged",
    "read_config_file",
    "margin_mse",
    "listwise_ce",
    "pointwise_bce",
    "combined_loss",
    "MASK_KEY",
]


def __getattr__(name):
    if name in ("Trainer", "TrainResult", "train_seeds"):
        from mice.train import loop

        return getattr(loop, name)
    if name == "MASK_KEY":
        from mice.train.student import MASK_KEY

        return MASK_KEY
    raise AttributeError(f"module 'mice.train' has no attribute {name!r}")
