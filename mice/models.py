"""One entry point from a model spec to a scorer (anything with `predict(pairs) -> np.ndarray`)."""
from __future__ import annotations

import json
from pathlib import Path

from .backbone import resolve_model_path


def is_mice_folder(path) -> bool:
    cfg = Path(str(path)) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "mice" in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def load_scorer(spec, mask=None, device=None, max_length: int | None = None, mode: str = "renorm"):
    """A HookedCrossEncoder (under `mask`, if given), a MICEModel for MICE folders, or the packaged bi-encoder
    for `biencoder:packaged`."""
    s = str(spec)
    if s.startswith("biencoder:"):
        from .biencoder import BiEncoder

        return BiEncoder(device=device)
    path = resolve_model_path(s)
    if is_mice_folder(path):
        if mask is not None:
            from .errors import ModelError

            raise ModelError(f"{s}: a MICE model has its interaction pattern built in; --mask does not apply")
        from .mice_model import MICEModel

        model = MICEModel.from_pretrained(path)
        return model.to(device) if device is not None else model
    from .hooked import HookedCrossEncoder

    model = HookedCrossEncoder.from_pretrained(path, max_length=max_length, device=device)
    if mask is not None:
        model.set_mask(mask, mode)
    return model
