"""A tiny stage runner for long jobs: every stage writes into a hidden work folder that becomes its real folder
only when the stage ends, so a rerun skips finished stages and Ctrl-C never leaves a half-written artefact under
a real name. An interrupted stage keeps its work folder, so stages with their own resume logic (re-ranking,
sweeps, training checkpoints) continue where they stopped — but only under the key it was started with: the
work folder records its key (`partial.json`), and one made under another key is discarded, never resumed (a
model half-trained with old settings must not be finished and recorded under new ones). A stage holds an
exclusive lock (`mice.identity.output_lock`) on its folder while it runs.

A stage's recorded `seconds` cover every attempt: while it runs, a heartbeat thread writes the time spent so far
into `partial.json` (every `heartbeat_s`), so a stage resumed after a crash or a SIGKILL counts the earlier
attempts' time too (at most one heartbeat of it is lost), and `attempts` says how many runs it took."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mice.files import write_json_atomic

DONE = "stage.json"
PARTIAL = "partial.json"  # in a work folder: the key the partial work was made under
log = logging.getLogger("mice.app.pipeline")


@dataclass
class StageResult:
    name: str
    seconds: float
    cached: bool
    outputs: dict = field(default_factory=dict)
    attempts: int | None = 1  # None: recorded before stages counted their attempts


class _Clock:
    """Time spent on one stage over all its attempts, written to the work folder's `partial.json` by a daemon
    thread every `interval` seconds and once more when the attempt stops."""

    def __init__(self, marker: Path, key, interval: float) -> None:
        try:
            before = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            before = {}
        self.prior = float(before.get("elapsed_s", 0.0))
        self.attempts = int(before.get("attempts", 0)) + 1
        self.marker, self.key, self.interval = marker, key, interval
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="mice-stage-clock")
        self._thread.start()

    @property
    def this_attempt(self) -> float:
        return time.perf_counter() - self.start

    @property
    def total(self) -> float:
        return self.prior + self.this_attempt

    def write(self) -> None:
        write_json_atomic(self.marker, {"key": self.key, "elapsed_s": self.total, "attempts": self.attempts})

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_if_possible()

    def _write_if_possible(self) -> None:
        with contextlib.suppress(OSError):  # the work folder may be gone (removed by the stage, or renamed)
            self.write()

    def stop(self, record: bool = False) -> None:
        """Stop the heartbeat; `record`: write the time once more (the attempt stopped before finishing)."""
        self._stop.set()
        self._thread.join()
        if record:
            self._write_if_possible()


class Pipeline:
    """Runs named stages under `root`; stage `name` owns `root/name/` and returns a dict of facts to record."""

    def __init__(self, root, console=None, fingerprint: dict | None = None, heartbeat_s: float = 30.0):
        self.root = Path(root)
        self.heartbeat_s = heartbeat_s
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

    def run(
        self, name: str, fn: Callable[[Path], dict | None], title: str | None = None, key: dict | None = None
    ) -> dict:
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
            self.results.append(StageResult(name, info["seconds"], True, info.get("outputs", {}), info.get("attempts")))
            return info.get("outputs", {})
        from mice.identity import output_lock

        folder = self.folder(name)
        work = folder.with_name(f".{name}.partial")
        with output_lock(work):
            resumed = self._adopt_partial(work, key, label)
            self._say(f"[bold cyan]▶[/] {label} …" + (" [dim](resuming)[/]" if resumed else ""))
            clock = _Clock(work / PARTIAL, key, self.heartbeat_s)
            try:
                outputs = fn(work) or {}
            except BaseException:
                clock.stop(record=True)
                self._say(f"[red]✗[/] {label} stopped; its partial work is kept in {work} for the next run")
                raise
            clock.stop()
            seconds = clock.total
            write_json_atomic(
                work / DONE,
                {
                    "stage": name,
                    "seconds": seconds,
                    "attempts": clock.attempts,
                    "seconds_last_attempt": clock.this_attempt,
                    "outputs": outputs,
                    "fingerprint": key,
                },
            )
            (work / PARTIAL).unlink(missing_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
            work.rename(folder)
        tries = f", {clock.attempts} attempts" if clock.attempts > 1 else ""
        self._say(f"[green]✓[/] {label} [dim]({seconds:.1f}s{tries})[/]")
        self.results.append(StageResult(name, seconds, False, outputs, clock.attempts))
        return outputs

    def _adopt_partial(self, work: Path, key, label: str) -> bool:
        """Keep `work` for resumption only if it was made under `key`; otherwise start it afresh. Returns
        whether partial work is resumed. The key is recorded before the stage writes anything."""
        from mice.identity import identity_diff

        if work.exists():
            try:
                recorded = json.loads((work / PARTIAL).read_text()).get("key")
                diff = identity_diff(recorded, key)
            except (OSError, json.JSONDecodeError, AttributeError):
                diff = "no key recorded"
            if not diff:
                return True
            message = f"{label}: discarding partial work in {work} made under another key [differs: {diff}]"
            log.info(message)
            self._say(f"[yellow]{message}[/]")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_json_atomic(work / PARTIAL, {"key": key})
        return False

    def timings(self):
        import pandas as pd

        return pd.DataFrame(
            [(r.name, round(r.seconds, 2), r.cached, r.attempts) for r in self.results],
            columns=["stage", "seconds", "cached", "attempts"],
        ).astype({"attempts": "Int64"})

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)


def _as_json(obj):
    """Keys compare as they are stored: tuples become lists, etc."""
    return json.loads(json.dumps(obj, default=str))
