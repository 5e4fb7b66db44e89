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
CONFIG_NAMES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "special_tokens_map.json",
    "mice.json",
    "sentence_bert_config.json",
    "modules.json",
)

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
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES)
        and not any(
            part.startswith(".") or part in ("checkpoints", "train_state") for part in p.relative_to(folder).parts[:-1]
        )
    )
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(b"\0")
        h.update(file_hash(p).encode())
        h.update(b"\1")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over what a tokenizer does to text: its full serialised pipeline where it has one (normaliser,
    pre-tokeniser, vocabulary, merges, post-processor), else its sorted vocabulary; its special tokens and the
    settings that change the ids it returns (lower-casing, sides, maximum length); and the ids of a probe text.
    A `tokenizer.json` with a few ids swapped fingerprints differently."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and callable(getattr(backend, "to_str", None)):
        state = json.loads(backend.to_str())
        for transient in ("truncation", "padding"):  # set afresh by every call that pads or truncates
            state.pop(transient, None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    settings = {
        k: str(getattr(tokenizer, k, None))
        for k in (
            "cls_token",
            "sep_token",
            "pad_token",
            "bos_token",
            "eos_token",
            "unk_token",
            "mask_token",
            "padding_side",
            "truncation_side",
            "model_max_length",
            "do_lower_case",
        )
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    probe = tokenizer(["Fingerprint \u00cbxample 123, ok?"], ["a document, with words"])["input_ids"]
    h.update(json.dumps([list(map(int, ids)) for ids in probe]).encode())
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
    except PermissionError:  # another user's live process
        return True
    return True


def _lock_holder(text: str) -> "tuple[int, str] | None":
    """(pid, host) of a well-formed lock record, else None (empty, torn, not JSON, a pid that is no pid)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    pid, host = obj.get("pid"), obj.get("host")
    if (
        not isinstance(pid, int)
        or isinstance(pid, bool)
        or not 0 < pid < 1 << 22
        or not isinstance(host, str)
        or not host
    ):
        return None
    return pid, host


def _refusal(path, lock: Path, holder: "tuple[int, str] | None", here: str) -> str:
    pid, host = holder or ("unknown", "this host")
    if holder and host != here:
        return (
            f"{path}: locked by pid {pid} on another host, {host} ({lock}); if no job runs there any more, "
            f"delete {lock} (--overwrite does not clear a lock)"
        )
    return (
        f"{path}: locked by pid {pid} on {host} ({lock}); another job is writing this output (a lock held by "
        f"a live process is never cleared, not even by --overwrite)"
    )


def _take(lock: Path, path, me: dict) -> int:
    """One attempt: an fd holding `lock` exclusively with our record in it, or -1 when the file we locked was
    replaced meanwhile (try again). Raises `LockError` when a live holder has it."""
    import fcntl

    from mice.errors import LockError

    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process on this machine holds it: the kernel says so, no guessing
            raise LockError(_refusal(path, lock, _lock_holder(_read_fd(fd)), me["host"])) from None
        try:
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:  # unlinked by its last holder after we opened it
                os.close(fd)
                return -1
        except FileNotFoundError:
            os.close(fd)
            return -1
        # we hold the kernel lock, so nobody else is deciding about this file now: what it says is either
        # stale (unreadable, a dead pid) or a record of a holder we cannot see (another host, or a live process
        # on this host that wrote it without the kernel lock)
        holder = _lock_holder(_read_fd(fd))
        if holder is not None and holder[1] != me["host"]:
            raise LockError(_refusal(path, lock, holder, me["host"]))
        if holder is not None and holder[0] != me["pid"] and _pid_alive(holder[0]):
            raise LockError(_refusal(path, lock, holder, me["host"]))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold `<path>.lock` exclusively while writing `path`.

    The lock is the kernel's (`fcntl.flock` on the open lock file): exactly one process holds it, whatever
    the timing, and it is released when its holder dies, however it dies. The file records pid and host for
    messages. Whatever a file left by a dead holder says (nothing, a torn record, a dead pid) is stale, decided
    only while holding the kernel lock, so two processes can never both take it over. A record naming another
    host (a shared file system, where the kernel lock may not reach) or a live process on this host raises
    `LockError` naming it. The lock file is removed on exit, also on exceptions.
    """
    from mice.errors import LockError

    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(50):
        fd = _take(lock, path, me)
        if fd >= 0:
            break
    else:
        raise LockError(f"{path}: could not take the lock {lock} (it keeps being replaced)")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a process that opened it meanwhile sees the inode change
        os.close(fd)


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


def dataset_identity(ds, splits=(), corpus: bool = True) -> str:
    """sha256 over a dataset's content: the corpus (unless `corpus` is false), and the queries and qrels of
    `splits` (sorted, so the order files list them in does not matter). Unlike `Dataset.fingerprint` (which may
    key on file paths and mtimes), this changes exactly when the text or the judgements change."""
    h = hashlib.sha256()

    def put(*parts) -> None:
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\0")
        h.update(b"\1")

    for doc_id, text in sorted(ds.corpus().items()) if corpus else ():
        put("d", doc_id, text)
    for split in splits:
        if split is None:
            continue
        for qid, text in sorted(ds.queries(split).items()):
            put("q", split, qid, text)
        qrels = ds.qrels(split)
        for row in sorted(
            zip(qrels["query_id"].astype(str), qrels["doc_id"].astype(str), qrels["relevance"].astype(int))
        ):
            put("r", split, *row)
    return h.hexdigest()
