"""Data parallelism for the long jobs (index build, re-ranking, sweeps) on torch.distributed's own launcher.

`mice --nproc N <command> …` starts N copies of `mice <command> …` through torch.distributed's elastic agent
(the engine behind `torchrun`; see `launch`); `torchrun` or `accelerate launch` started by hand work the same,
since a job reads only RANK / WORLD_SIZE from the environment. Every rank computes the same deterministic list of
work units and takes unit i when i % N == its rank, so each unit is computed exactly as one process computes it
(same batches, same numbers). Each rank appends finished units to its own journal (`<out>.partial.rank<r>`),
reads every rank's journal when it (re)starts so nothing is redone, and meets the others at a barrier; rank 0
then merges from the journals on the shared filesystem and writes the output. Nothing is gathered over the
network: a killed rank loses at most its unit in flight, and a relaunch, with any N, resumes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

BARRIER_TIMEOUT = timedelta(hours=24)  # ranks wait for the slowest one; an index build can take hours


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` of `size` (1 process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def owns(self, unit: int) -> bool:
        """Whether work unit `unit` is this rank's (round robin: balanced, and fixed for a given N)."""
        return unit % self.size == self.rank

    def barrier(self) -> None:
        """Wait for every rank (a no-op on one process)."""
        if self.size > 1:
            import torch.distributed as dist

            _ensure_group()
            dist.barrier()


def world() -> World:
    """The world this process runs in, from the launcher's environment (RANK, WORLD_SIZE)."""
    from mice.errors import MiceError

    try:
        rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MiceError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: not integers"
        ) from None
    if size < 1 or not 0 <= rank < size:
        raise MiceError(f"RANK={rank} is not a rank of WORLD_SIZE={size}")
    return World(rank, size)


def rank_device(device=None):
    """The device a scorer of this process uses. `None` means the best available (the CLI's default): this rank's
    GPU (`LOCAL_RANK` modulo the visible GPUs, as torchrun assigns them) when CUDA is present, else the CPU; a
    bare `"cuda"` under N processes is this rank's GPU too, so that N ranks on one node never share GPU 0."""
    import torch

    if device is not None and str(device) != "cuda":
        return device
    if not torch.cuda.is_available():
        return device  # None stays None (CPU); "cuda" without CUDA fails where it is used, naming it
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return f"cuda:{local % torch.cuda.device_count()}"


def _ensure_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():  # training's accelerate may have made one already: reuse it
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def require_output(out, what: str) -> None:
    """Ranks meet on the filesystem: a distributed job needs an output path."""
    from mice.errors import MiceError

    w = world()
    if w.distributed and out is None:
        raise MiceError(f"{what} across {w.size} processes needs an output file (--out): the ranks merge there")


@contextlib.contextmanager
def rank_lock(out) -> Iterator[None]:
    """Rank 0 holds `<out>.lock` (refusing another job on the same output); rank r > 0 holds its own
    `<out>.rank<r>.lock`, so the ranks of one job never refuse each other."""
    from mice.identity import output_lock

    w = world()
    target = out if w.main else Path(f"{out}.rank{w.rank}")
    with output_lock(target):
        yield


def journal_path(base: Path) -> Path:
    """This rank's journal next to `base` (`<base>` itself on one process, so single-process files keep
    their name)."""
    w = world()
    return base if w.size == 1 else base.with_name(f"{base.name}.rank{w.rank}")


def journal_paths(base: Path) -> list[Path]:
    """Every journal of `base` on disk, whichever N wrote it: `<base>` and `<base>.rank*`."""
    found = [base] if base.exists() else []
    found += sorted(p for p in base.parent.glob(base.name + ".rank*") if p.suffix != ".lock" and p.is_file())
    return found


class ShardedJournal:
    """The journal of one rank, plus every record the other ranks' journals (of the same job) hold.

    `records`: all records on disk at open time (this rank's and the others', any N), then this rank's appends.
    A foreign journal is read, never written or truncated: its torn last line is simply not read."""

    def __init__(self, base: Path, fmt: str, job, mismatch: str, restart: bool = False) -> None:
        from mice.files import JsonlJournal, read_journal

        self.base = Path(base)
        w = world()
        if restart and w.main:
            for p in journal_paths(self.base):
                p.unlink(missing_ok=True)
        if restart:
            w.barrier()  # nobody reads a journal rank 0 is deleting
        own = journal_path(self.base)
        self._journal = JsonlJournal(own, fmt, job, mismatch=mismatch)
        self.path = own
        self.records = [
            r for p in journal_paths(self.base) if p != own for r in read_journal(p, fmt, job, mismatch)
        ] + list(self._journal.records)

    def append(self, obj) -> None:
        self._journal.append(obj)
        self.records.append(obj)

    def close(self) -> None:
        self._journal.close()

    def all_records(self, fmt: str, job, mismatch: str) -> list:
        """Every rank's records, read after the barrier (rank 0 merges from these)."""
        from mice.files import read_journal

        return [r for p in journal_paths(self.base) for r in read_journal(p, fmt, job, mismatch)]

    def unlink_all(self) -> None:
        self.close()
        for p in journal_paths(self.base):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- launcher
LAUNCH_FLAGS = {
    "--nproc": "nproc",
    "--nnodes": "nnodes",
    "--node-rank": "node_rank",
    "--rdzv-endpoint": "rdzv_endpoint",
    "--rdzv-id": "rdzv_id",
    "--max-restarts": "max_restarts",
}


def split_launch_args(argv: list[str]) -> tuple[dict, list[str]]:
    """Leading launcher options of `mice --nproc N [--nnodes M …] <command> …`, and the command's own
    arguments, untouched (torchrun's own parser would read `--run` as its `--run-path`, `--model` as
    `--module`)."""
    from mice.errors import MiceError

    opts: dict = {}
    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in LAUNCH_FLAGS:
        flag, eq, value = argv[i].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise MiceError(f"{flag} needs a value")
            value = argv[i + 1]
            i += 1
        opts[LAUNCH_FLAGS[flag]] = value
        i += 1
    return opts, argv[i:]


def launch(opts: dict, command: list[str]) -> int:
    """Run `python -m mice <command>` in `nproc` processes per node through torch.distributed's elastic
    launcher (torchrun's engine and defaults: one node is standalone; several meet at `rdzv_endpoint`)."""
    from torch.distributed import run as torchrun

    from mice.errors import MiceError
    from mice.validate import check_settings

    try:
        nproc = int(opts.get("nproc", 1))
        nnodes = str(opts.get("nnodes", "1"))
        max_restarts = int(opts.get("max_restarts", 0))
    except ValueError as err:
        raise MiceError(f"launcher option: {err}") from None
    check_settings(
        {"nproc": nproc, "max_restarts": max_restarts}, {"nproc": "--nproc", "max_restarts": "--max-restarts"}
    )
    if not command:
        raise MiceError("mice --nproc N needs a command to run, e.g. `mice --nproc 2 rerank …`")
    args = ["--nproc-per-node", str(nproc), "--nnodes", nnodes, "--max-restarts", str(max_restarts)]
    if "rdzv_endpoint" in opts:
        args += [
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            opts["rdzv_endpoint"],
            "--rdzv-id",
            opts.get("rdzv_id", "mice"),
        ]
        if "node_rank" in opts:
            args += ["--node-rank", str(opts["node_rank"])]
    elif nnodes not in ("1", "1:1"):
        raise MiceError("several nodes need --rdzv-endpoint HOST:PORT (the same on every node)")
    else:
        args += ["--standalone"]
    parsed = torchrun.get_args_parser().parse_args([*args, "-m", "mice"])
    parsed.training_script_args = list(command)  # never parsed by torchrun: passed through as given
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(parsed)
    except ChildFailedError as err:
        codes = sorted({f.exitcode for f in err.failures.values()})
        raise LaunchFailed(
            codes[0] if codes else 1,
            f"{len(err.failures)} of the processes failed (exit codes {codes}); their errors are above",
        ) from None
    return 0


class LaunchFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
