"""One entry point from a model spec to a scorer (anything with `predict(pairs) -> np.ndarray`)."""
from __future__ import annotations

import json
from pathlib import Path

from .backbone import resolve_model_path


MASK_KEY = "mice_mask"  # config.json key under which a masked cross-encoder records its interaction mask


def _config(path) -> dict:
    cfg = Path(str(path)) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_mice_folder(path) -> bool:
    return "mice" in _config(path)


def saved_mask(path):
    """The interaction mask a masked cross-encoder was trained under (None for a plain one)."""
    obj = _config(path).get(MASK_KEY)
    if obj is None:
        return None
    from .masks import InteractionMask

    return InteractionMask.from_dict(obj, f"{path}/config.json[{MASK_KEY}]")


def load_scorer(spec, mask=None, device=None, max_length: int | None = None, mode: str = "renorm"):
    """A HookedCrossEncoder (under `mask`, if given, else under the mask it was trained with), a MICEModel for
    MICE folders, or the packaged bi-encoder for `biencoder:packaged`."""
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
    mask = mask if mask is not None else saved_mask(path)
    if mask is not None:
        model.set_mask(mask, mode)
    return model
