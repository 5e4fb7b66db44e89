"""Atomic artefact writing: a file is either complete under its final name or absent."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator


def _file_mode() -> int:
    """What `open()` would give a new file under the process umask (mkstemp's temp files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()

_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some and rerun (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some and rerun (finished work is kept)",
    errno.EROFS: "read-only file system; choose an output on a writable one",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a folder, where a file was expected",
    errno.ENOTDIR: "a part of the path is a file",
    errno.EFBIG: "file too large for this file system or process limit",
}


def os_error_line(err: OSError) -> str:
    """One line for an OS error: the path, and what to do about it."""
    what = _OS_HINTS.get(err.errno) or err.strerror or type(err).__name__
    path = err.filename if err.filename is not None else "output"
    return f"{path}: {what}" + (f" (and {err.filename2})" if getattr(err, "filename2", None) else "")


def check_output(path, folder: bool = False, what: str = "--out") -> Path:
    """Before any work: `path` can be written (its folder exists or can be made, and takes a file), and is not a
    folder where a file is meant (or a file where a folder is). One `OSError` naming the path otherwise."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        code = errno.EISDIR if path.is_dir() else errno.ENOTDIR
        raise OSError(code, os.strerror(code), f"{path} ({what})")
    where = path if folder else path.parent
    existing = where
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), f"{existing} ({what})")
    try:  # a real write: permissions, read-only mounts and full disks all show here
        fd, probe = tempfile.mkstemp(prefix=".mice-write-check.", dir=existing)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise OSError(err.errno, err.strerror, f"{existing} ({what})") from None
    return path


MAX_JSON_BYTES = 64 << 20  # a settings/mask/record file larger than this is not one


def unique_keys(source, error=ValueError):
    """A `json.loads` `object_pairs_hook` that refuses a key given twice in one object (naming `source`)."""

    def pairs(items):
        obj = {}
        for key, value in items:
            if key in obj:
                raise error(f"{source}: key {key!r} appears twice in one object (the value would be ambiguous)")
            obj[key] = value
        return obj

    return pairs


def strict_json(text: str, source, error=ValueError):
    """`json.loads` that refuses what it would otherwise accept silently: a key given twice in one object (the
    last would win), nesting too deep to parse, and text larger than `MAX_JSON_BYTES`. Every refusal, and
    malformed JSON, is one `error` naming `source` (with line and column where there is one)."""
    if len(text) > MAX_JSON_BYTES:
        raise error(
            f"{source}: {len(text)} characters, more than a JSON file of this kind can hold ({MAX_JSON_BYTES} at most)"
        )

    try:
        return json.loads(text, object_pairs_hook=unique_keys(source, error))
    except json.JSONDecodeError as err:
        raise error(f"{source}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Ctrl-C or an exception inside the block leaves no half-written artefact behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with named_os_errors(path):
            yield tmp
            if tmp.exists():
                os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def named_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """An OS error raised inside the block without a file name (a full disk seen by a buffered write, or by a
    library's own writer) is raised again naming `path`, so its one-line message says where it happened. So is
    the error of a writer written in Rust (safetensors, tokenizers), which is no `OSError` but carries the
    errno in its text ("No space left on device (os error 28)")."""
    try:
        yield
    except OSError as err:
        if getattr(err, "filename", None) is not None:
            raise
        code = err.errno if err.errno is not None else _errno_of(err)
        raise OSError(code, os.strerror(code) if code else str(err), str(path)) from err
    except Exception as err:
        found = _RUST_OS_ERROR.search(str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def _errno_of(err: OSError) -> int | None:
    """The errno of an error that carries it only in its text (Arrow's `IOError`s)."""
    text = str(err).lower()
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
        if os.strerror(code).lower() in text:
            return code
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class _Sink:
    """A file for `torch.save` that remembers the OS error of a failed write: torch's zip writer reports it only
    as a `RuntimeError` without an errno ("unexpected pos …")."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _canonical(obj):
    """`obj` with fresh dicts, lists and tuples and every string interned. Pickle writes an object met twice as a
    reference to the first, so the bytes of `torch.save` depend on which equal values happen to be one object
    (an optimizer's state keys are the code's own strings in a fresh run, loaded ones in a resumed run); in
    this form they depend on the values alone."""
    import sys

    if isinstance(obj, str):
        return sys.intern(str(obj))
    if type(obj) in (dict, collections.OrderedDict):
        return type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def torch_save_atomic(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically, in bytes that depend on the values alone (`_canonical`); a write that
    fails (a full disk) is one `OSError` naming `path`."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        sink = _Sink(fh)
        try:
            torch.save(_canonical(obj), sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None
    return Path(path)


def write_table(df, path: str | os.PathLike) -> Path:
    """Write a DataFrame as parquet or CSV, chosen by the extension, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _table_to(df, tmp, path)
    return path


def _table_to(df, tmp: Path, path: Path) -> None:
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    elif path.suffix in (".csv", ".tsv"):
        df.to_csv(tmp, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        from mice.errors import MiceError

        raise MiceError(f"{path}: unknown table extension {path.suffix!r} (use .parquet, .csv or .tsv)")


def write_together(items: list[tuple[str | os.PathLike, object]]) -> None:
    """Write several files (a DataFrame as a table, anything else as JSON) as one: each goes to a temporary file
    beside it, and only when all are written are they renamed into place, in the order given (so the last one's
    presence means the others are there). A failure, a full disk say, leaves none of them behind."""
    with contextlib.ExitStack() as stack:
        for path, obj in reversed(items):  # entered last-first, so renamed (on leaving) first-first
            tmp = stack.enter_context(atomic_path(path))
            with named_os_errors(path):
                if hasattr(obj, "to_parquet"):
                    _table_to(obj, tmp, Path(path))
                else:
                    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_table(path: str | os.PathLike):
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


def _read_journal(path: Path, fmt: str, job, mismatch: str) -> tuple[list, int]:
    """The records of a journal file and the length of its intact prefix (a torn last line is not read)."""
    records, good = [], 0
    data = path.read_bytes()
    for i, raw in enumerate(data.split(b"\n")[:-1]):  # whatever follows the last newline is torn
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            break
        if i == 0:
            if not isinstance(obj, dict) or obj.get("format") != fmt or obj.get("job") != job:
                from mice.errors import IdentityError
                from mice.identity import identity_diff

                obj = obj if isinstance(obj, dict) else {}
                diff = identity_diff(obj.get("job"), job) if obj.get("format") == fmt else "format"
                raise IdentityError(f"{path}: {mismatch}" + (f" [differs: {diff}]" if diff else ""))
        else:
            records.append(obj)
        good += len(raw) + 1
    return records, good


def read_journal(path, fmt: str, job, mismatch: str) -> list:
    """The records of a journal another process may still be appending to (read only, nothing truncated)."""
    path = Path(path)
    return _read_journal(path, fmt, job, mismatch)[0] if path.exists() else []


class JsonlJournal:
    """An append-only JSON-lines sidecar, so a long job killed half-way resumes where it stopped.

    The first line is a header ``{"format": fmt, "job": job}``; every later line is one record. On open, the
    records already on disk are read into `records`; a torn last line (killed mid-write) and anything after it
    is discarded by truncating to the last good byte. A header for another format or job raises IdentityError
    ``f"{path}: {mismatch} [differs: …]"`` naming the components that differ. Each `append` is flushed and fsynced
    before it returns.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, job: str, mismatch: str, restart: bool = False) -> None:
        path = Path(path)
        self.path, self.fmt, self.job = path, fmt, job
        self.records: list = []
        if path.exists() and restart:
            path.unlink()
        good = 0
        if path.exists():
            self.records, good = _read_journal(path, fmt, job, mismatch)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "r+b" if path.exists() else "wb", buffering=0)
        self._fh.truncate(good)
        self._fh.seek(good)
        if good == 0:
            self._write({"format": fmt, "job": job})

    def _write(self, obj) -> None:
        data = memoryview((json.dumps(obj) + "\n").encode("utf-8"))
        with named_os_errors(self.path):  # unbuffered: a full disk fails here, once, never again on close
            while data:
                data = data[self._fh.write(data) :]
            os.fsync(self._fh.fileno())

    def append(self, obj) -> None:
        """Write one record durably (it survives a kill right after this returns)."""
        self._write(obj)
        self.records.append(obj)

    def close(self) -> None:
        self._fh.close()

    def unlink(self) -> None:
        """Close and delete the sidecar (the job it journals is complete)."""
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)
