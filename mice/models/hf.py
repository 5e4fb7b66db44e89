"""Silence Hugging Face logging and progress bars, so command output and training logs stay readable."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


def quiet_hf(*, load: bool = False) -> None:
    """HF load reports and progress bars ("Writing model shards", downloads) off for the rest of the process.

    Environment defaults cover a `transformers` imported later; an already imported one (or, with `load=True`,
    one imported now) is set directly. Explicit user settings of the environment variables win.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if load or "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Transformers' verbosity at "error" and its progress bars off inside the block; the previous state after."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    bars = hasattr(logging, "is_progress_bar_enabled") and logging.is_progress_bar_enabled()
    if bars:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
