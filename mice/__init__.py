"""mice — open up cross-encoder re-rankers and slim them down (Minimal Interaction Cross-Encoders).

Path convention everywhere: `a->b` means tokens of group `a` attend to tokens of group `b`.
Heavy imports (torch, transformers) happen on first use of a name, so `import mice` and `mice --help` are fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "InteractionMask": ("mice.masks", "InteractionMask"),
    "HookedCrossEncoder": ("mice.models.hooked", "HookedCrossEncoder"),
    "MICEModel": ("mice.models.mice_model", "MICEModel"),
    "load": ("mice.models.loader", "load"),
    "ActivationCache": ("transformer_lens", "ActivationCache"),
    "load_dataset": ("mice.data", "load_dataset"),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mice' has no attribute {name!r}")
