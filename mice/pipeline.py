"""A tiny stage runner for long jobs: every stage writes into a hidden work folder that becomes its real folder
only when the stage ends, so a rerun skips finished stages and Ctrl-C never leaves a half-written artefact under
a real name. An interrupted stage keeps its work folder, so stages with their own resume logic (re-ranking,
sweeps, training checkpoints) continue where they stopped."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .files import write_json_atomic

DONE = "stage.json"


@dataclass
class StageResult:
    name: str
    seconds: float
    cached: bool
    outputs: dict = field(default_factory=dict)


class Pipeline:
    """Runs named stages under `root`; stage `name` owns `root/name/` and returns a dict of facts to record."""

    def __init__(self, root, console=None, fingerprint: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.fingerprint = fingerprint or {}
        self.results: list[StageResult] = []

    def folder(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str, key: dict | None = None) -> dict | None:
        marker = self.folder(name) / DONE
        if not marker.is_file():
            return None
        try:
            info = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return None
        return info if info.get("fingerprint") == _as_json(self.fingerprint if key is None else key) else None

    def run(self, name: str, fn: Callable[[Path], dict | None], title: str | None = None,
            key: dict | None = None) -> dict:
        """Run `fn(folder)` unless the stage already finished with the same fingerprint.

        `fn` writes into `folder` (a work folder renamed at the end): outputs should name files relative to it.
        `key`: what the stage's result depends on (default: the pipeline's fingerprint); a finished stage is
        reused only while its key is unchanged.
        """
        key = _as_json(self.fingerprint if key is None else key)
        info = self.done(name, key)
        label = title or name
        if info is not None:
            self._say(f"[green]✓[/] {label} [dim](cached, {info['seconds']:.1f}s when run)[/]")
            self.results.append(StageResult(name, info["seconds"], True, info.get("outputs", {})))
            return info.get("outputs", {})
        folder = self.folder(name)
        work = folder.with_name(f".{name}.partial")
        resumed = work.exists()
        work.mkdir(parents=True, exist_ok=True)
        self._say(f"[bold cyan]▶[/] {label} …" + (" [dim](resuming)[/]" if resumed else ""))
        start = time.perf_counter()
        try:
            outputs = fn(work) or {}
        except BaseException:
            self._say(f"[red]✗[/] {label} stopped; its partial work is kept in {work} for the next run")
            raise
        seconds = time.perf_counter() - start
        write_json_atomic(work / DONE, {"stage": name, "seconds": seconds, "outputs": outputs,
                                        "fingerprint": key})
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
        self._say(f"[green]✓[/] {label} [dim]({seconds:.1f}s)[/]")
        self.results.append(StageResult(name, seconds, False, outputs))
        return outputs

    def timings(self):
        import pandas as pd

        return pd.DataFrame([{"stage": r.name, "seconds": round(r.seconds, 2), "cached": r.cached}
                             for r in self.results])

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)


def _as_json(obj):
    """Keys compare as they are stored: tuples become lists, etc."""
    return json.loads(json.dumps(obj, default=str))
