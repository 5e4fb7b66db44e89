"""Content-addressed identities for resumable jobs, and an exclusive lock per output.

A long job (re-ranking, a sweep, an index build, a training run, a demo stage) resumes from what it left on disk
only if everything that changes its output is the same as when it started. The identity is a dict of named
components, each a string computed from *content*, never from a spec string:

- `weights_fingerprint(folder)`: sha256 over the model's weight and config files (cached by path, size, mtime);
- `mask_identity(mask, mode)`: the resolved allow-tables, so `mask3:k=2` and the equivalent JSON agree and
  `mask2` and `mask3:k=2` differ;
- `file_hash(path)`: sha256 of a data file (run, qrels, pairs), cached the same way;
- plain settings (k, max length, batch size where it changes the output) as they are.

`job_identity(**parts)` turns the components into a canonical dict; `identity_diff(old, new)` names what differs,
so a refused resume says why in one line.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator, Mapping

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npy", ".npz")
CONFIG_NAMES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "merges.txt", "vocab.json",
                "special_tokens_map.json", "mice.json", "sentence_bert_config.json", "modules.json")

_HASH_CACHE: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), memoised per (absolute path, size, mtime) within the process."""
    path = Path(path)
    key = _stat_key(path)
    cached = _HASH_CACHE.get(key)
    if cached is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        cached = _HASH_CACHE[key] = h.hexdigest()
    return cached


def weights_fingerprint(name_or_path: str | os.PathLike) -> str:
    """sha256 over a model folder's weights and configuration (file names and content hashes).

    Changing any weight file in place, or its config/tokenizer, changes the fingerprint. A name that is not a
    local folder (a hub id) fingerprints as the name itself: it cannot change under us without a new revision.
    """
    from mice.models.backbone import resolve_model_path

    folder = Path(resolve_model_path(name_or_path))
    if not folder.is_dir():
        return "name:" + str(name_or_path)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES)
                   and not any(part.startswith(".") or part in ("checkpoints", "train_state") for part in
                               p.relative_to(folder).parts[:-1]))
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(b"\0")
        h.update(file_hash(p).encode())
        h.update(b"\1")
    return h.hexdigest()


def mask_identity(mask, mode: str | None = None) -> str:
    """The resolved allow-tables of an InteractionMask (None = no mask) and the knockout mode."""
    if mask is None:
        return "none"
    import numpy as np

    tables = np.ascontiguousarray(np.asarray(mask.tables, dtype=bool))
    h = hashlib.sha256(repr(tables.shape).encode() + tables.tobytes())
    return h.hexdigest()[:32] + (f":{mode}" if mode else "")


def _canonical(value: Any):
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def job_identity(**parts) -> dict:
    """Canonical identity dict (sorted keys, JSON-safe values)."""
    return _canonical(parts)


def identity_hash(identity: Mapping) -> str:
    return hashlib.sha256(json.dumps(_canonical(identity), sort_keys=True).encode()).hexdigest()


def identity_diff(old, new) -> str:
    """A short human description of what differs between two identities ('' when equal)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return "" if old == new else "the job description changed"
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if not changed:
        return ""

    def short(v):
        s = json.dumps(v) if not isinstance(v, str) else v
        return s if len(s) <= 24 else s[:21] + "..."

    return ", ".join(f"{k} ({short(old.get(k))} -> {short(new.get(k))})" for k in changed)


# --------------------------------------------------------------------------------------------- exclusive lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold `<path>.lock` exclusively while writing `path`.

    The lock file records pid and host. A lock left by a dead process on this host is taken over; a live one
    raises `LockError` naming the holder. The lock is removed on exit, also on exceptions.
    """
    from mice.errors import LockError

    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if not holder:  # torn lock file (killed between create and write): stale
                lock.unlink(missing_ok=True)
                continue
            raise LockError(f"{path}: locked by pid {pid} on {host} ({lock}); another job is writing this output")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    else:
        raise LockError(f"{path}: could not take the lock {lock}")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def module_fingerprint(module) -> str:
    """sha256 over a torch module's state dict (names, dtypes, shapes, bytes): the weights actually loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def dataset_identity(ds, splits=()) -> str:
    """sha256 over a dataset's content: the corpus, and the queries and qrels of `splits` (sorted, so the
    order files list them in does not matter). Unlike `Dataset.fingerprint` (which may key on file paths and
    mtimes), this changes exactly when the text or the judgements change."""
    h = hashlib.sha256()

    def put(*parts) -> None:
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\0")
        h.update(b"\1")

    for doc_id, text in sorted(ds.corpus().items()):
        put("d", doc_id, text)
    for split in splits:
        if split is None:
            continue
        for qid, text in sorted(ds.queries(split).items()):
            put("q", split, qid, text)
        qrels = ds.qrels(split)
        for row in sorted(zip(qrels["query_id"].astype(str), qrels["doc_id"].astype(str),
                              qrels["relevance"].astype(int))):
            put("r", split, *row)
    return h.hexdigest()
