"""`query<TAB>document` pair files, as `mice score` and `mice ablate attribute --pairs` read them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mice.errors import DataError


def read_pairs(path: "str | os.PathLike | None" = None) -> list[tuple[str, str]]:
    """Pairs of a file (or standard input when `path` is None), blank lines skipped; a malformed line is a
    DataError naming file and line, and so is a missing or empty file."""
    source = str(path) if path is not None else "<stdin>"
    if path is not None and not Path(path).is_file():
        raise DataError(f"{source}: pairs file not found")
    pairs = []
    stream = open(path, encoding="utf-8") if path is not None else sys.stdin
    with stream:
        try:
            for n, line in enumerate(stream, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise DataError(f"{source}:{n}: expected 'query<TAB>document', got {len(parts)} field(s)")
                pairs.append((parts[0], parts[1]))
        except UnicodeDecodeError as err:
            raise DataError(f"{source}: not UTF-8 text ({err.reason})") from None
    if not pairs:
        raise DataError(f"{source}: no pairs")
    return pairs
