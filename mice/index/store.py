"""A document-state index for MICE: every document encoded once to its layer-`a` states, stored on disk.

Layout of an index folder (all little-endian, memory-mapped when read):

    build.json                  settings of the build in progress (model fingerprint, dtype, shard size, ids hash)
    shard-00000.json            one per complete shard: doc ids, offsets, lengths, file sizes and sha256
    shard-00000.states.bin      [tokens, H] states (float16 | float32 | int8), or [tokens, code bytes] uint8 codes
                                (pq | residual: `mice.index.codec`)
    shard-00000.states.scale.bin  [tokens] float32 per-token scale (int8 only)
    shard-00000.kv.bin          optional [tokens, 2·(b-1), H] cross-attention keys/values of the live
                                interaction layers (order: layer 0 K, layer 0 V, layer 1 K, …)
    shard-00000.kv.scale.bin    [tokens, 2·(b-1)] float32 scales (int8 only)
    codec.json, codec.bin       pq | residual only: the codec's settings and checksum, its codebooks (float32);
                                trained by rank 0 on a seeded sample of the corpus's states before any shard
    manifest.json               written last and atomically: the index is usable only once it exists

A shard's data files are written under temporary names and renamed before its JSON is written, so a build
interrupted at any point restarts at the first incomplete shard. The manifest records the model fingerprint
(contextual-layer weights + tokenizer + a, see `MICEModel.fingerprint`), per-file checksums and its own
checksum; opening an index with another model, or with a corrupted shard, raises `mice.errors.IndexError_`.

A build is a resumable job with a content-addressed identity (`build_identity`): the document-side weights
fingerprint (and the K/V projections' with `kv`), the maximum document length, the corpus content (ids and
texts, or token ids), the storage dtype, the precision the states are computed at (the model's `compute_dtype`),
`kv` and the shard size. Rerunning a build:
- under the same identity resumes: every shard it keeps is verified against its sha256 (a damaged one is
  rebuilt), stray temporary files of an interrupted run are removed, and a finished index that fails its checks
  is repaired the same way;
- under another identity is refused with one line naming what differs, unless `overwrite`, which always starts
  afresh (also from a corrupted or half-written folder).
The output folder is locked (`mice.identity.output_lock`) while a build writes it, and progress goes to the
`mice.index.store` logger and `build.log` in the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mice.errors import IndexError_
from mice.files import named_os_errors, write_json_atomic

log = logging.getLogger("mice.index.store")
DEFAULT_BATCH_SIZE = 32

FORMAT = "mice-index/1"
BUILD_LOG = "build.log"
DTYPES = {"float16": np.float16, "float32": np.float32, "int8": np.int8, "pq": np.uint8, "residual": np.uint8}
CODECS = ("pq", "residual")  # storages whose states are codes decoded through codebooks (mice.index.codec)
_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "i8": "int8"}
_HASH_CHUNK = 1 << 22
_CODEC_BLOCK = 16384  # tokens encoded at once by a codec
MAX_MAPPED_BYTES = 4 << 30  # shard files a DocIndex keeps mapped at once (address space, not memory)


def normalise_dtype(dtype: str) -> str:
    d = _ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if d not in DTYPES:
        raise IndexError_(
            f"unknown index storage dtype {dtype!r} (--storage-dtype: float16, float32, int8, pq or "
            "residual; the precision the states are computed at is --dtype fp32|bf16|fp16)"
        )
    return d


@dataclass
class IndexConfig:
    """How to build an index. `kv` adds each live interaction layer's cross-attention keys/values per token
    (2·(b-1)·H more values per token) so that re-ranking skips their projections.

    Compressed storages (`dtype` pq or residual, `mice.index.codec`): codebooks trained on `train_tokens` token
    states of a seeded sample of the documents (`codec_seed`).
    - pq: `pq_m` sub-vectors of 8 bits (`pq_m` bytes per token), after a learnt rotation with `rotation`;
      `pq_refine` bytes more: a second stage on what the first leaves; with `anchors`, of what each state adds to
      its token's and position's anchor (2 bytes more: the token id; anchors fitted on up to `anchor_tokens`
      states, each token row shrunk by `anchor_shrink` pseudo-counts towards the mean).
    - residual: one of `centroids` centroids (2 bytes) + `bits` bits per dimension."""

    dtype: str = "float16"
    kv: bool = False
    shard_size: int = 4096
    batch_size: int = DEFAULT_BATCH_SIZE
    pq_m: int = 48
    pq_refine: int = 0
    rotation: bool = False
    anchors: bool = False
    anchor_tokens: int = 1 << 20
    anchor_shrink: float = 4.0
    centroids: int = 1024
    bits: int = 1
    train_tokens: int = 65536
    codec_seed: int = 0

    def __post_init__(self):
        self.dtype = normalise_dtype(self.dtype)
        if self.shard_size < 1 or self.batch_size < 1:
            raise IndexError_("shard_size and batch_size must be >= 1")
        if self.codec and self.kv:
            raise IndexError_(f"--kv stores uncompressed keys/values: not with --storage-dtype {self.dtype}")
        if (self.anchors or self.pq_refine) and self.dtype != "pq":
            raise IndexError_(f"anchors and --pq-refine are pq options, not ones of --storage {self.dtype}")
        if self.anchors and (self.anchor_tokens < self.train_tokens or self.anchor_shrink < 0):
            raise IndexError_(
                f"anchor_tokens {self.anchor_tokens} below train_tokens {self.train_tokens}, or anchor_shrink "
                f"{self.anchor_shrink} < 0"
            )
        if self.codec and self.train_tokens < 256:
            raise IndexError_(f"train_tokens {self.train_tokens}: a codec needs at least 256 training states")

    @property
    def codec(self) -> bool:
        return self.dtype in CODECS

    def codec_settings(self) -> dict | None:
        """What changes a codec's bytes (part of the build identity), None for plain storages."""
        if not self.codec:
            return None
        own = {
            "pq": {
                "pq_m": self.pq_m,
                "rotation": self.rotation,
                **({"pq_refine": self.pq_refine} if self.pq_refine else {}),
                **self._anchor_settings(),
            },
            "residual": {"centroids": self.centroids, "bits": self.bits},
        }[self.dtype]
        return {"kind": self.dtype, **own, "train_tokens": self.train_tokens, "seed": self.codec_seed}

    def _anchor_settings(self) -> dict:
        if not self.anchors:
            return {}
        return {"anchors": True, "anchor_tokens": self.anchor_tokens, "anchor_shrink": self.anchor_shrink}


# --------------------------------------------------------------------------------------------- storage
def quantize(x, dtype: str):
    """x: float array [T, S, H] -> (stored array, scale [T, S] float32 or None). int8: symmetric, per row."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "int8":
        amax = np.abs(x).max(axis=-1)
        scale = np.maximum(amax, 1e-12) / 127.0
        q = np.clip(np.rint(x / scale[..., None]), -127, 127).astype(np.int8)
        return q, scale.astype(np.float32)
    return x.astype(DTYPES[dtype]), None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _HashedFile:
    """A temporary file that hashes what is written to it; `commit` renames it onto its final name. A write that
    fails (a full disk) is an OS error naming the final name."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.f = open(self.tmp, "wb")
        self.h = hashlib.sha256()
        self.bytes = 0

    def write(self, arr: np.ndarray) -> None:
        b = np.ascontiguousarray(arr).tobytes()
        with named_os_errors(self.path):
            self.f.write(b)
        self.h.update(b)
        self.bytes += len(b)

    def commit(self) -> dict:
        with named_os_errors(self.path):
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)
        return {"bytes": self.bytes, "sha256": self.h.hexdigest()}

    def abort(self) -> None:
        """Remove the temporary file; closing it may fail again (the buffer still holds what did not fit), which
        must not keep it on disk."""
        try:
            with contextlib.suppress(OSError):
                if not self.f.closed:
                    self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _ids_hash(doc_ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in doc_ids:
        h.update(d.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def _manifest_checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- building
def _model_record(model, config: IndexConfig) -> dict:
    rec = {
        "fingerprint": model.fingerprint(),
        "name": model.name,
        "source": model.mice_config.source,
        "contextual_layers": model.contextual_layers,
        "interaction_layers": model.interaction_layers,
        "hidden_size": model.hidden_size,
        "max_doc_length": model.mice_config.max_doc_length,
        "model_type": model.config.model_type,
        "compute_dtype": _compute_dtype(model),
    }
    if config.kv:
        rec["kv_fingerprint"] = model.kv_fingerprint()
        rec["kv_layers"] = model.live_cross_layers
    return rec


def _compute_dtype(model) -> str:
    """The precision the states are encoded at (`MICEModel.compute_dtype`; the K/V of `kv=True` are projected
    from them in fp32)."""
    return getattr(model, "compute_dtype", "fp32")


def kv_projection(model):
    """(weight [2·(b-1)·H, H], bias) projecting layer-`a` states to the live cross-attention K/V, fused. Only
    for families whose keys/values are affine in the states themselves (not `adapter.kv_norm`)."""
    import torch

    if model.adapter.kv_norm:
        raise IndexError_(
            f"{model.adapter.family}: cross-attention keys read a per-layer normalisation of the "
            "states; use kv_projector"
        )
    ws, bs = [], []
    for block in list(model.cross)[: model.live_cross_layers]:
        for _, w, b in model.adapter.kv_weights(block):
            ws.append(w)
            bs.append(b if b is not None else w.new_zeros(w.shape[0]))
    if not ws:
        return None, None
    return torch.cat(ws).detach().float().contiguous(), torch.cat(bs).detach().float().contiguous()


def kv_projector(model) -> Callable:
    """states [L, H] → [L, 2·live, H]: each live cross-attention layer's keys and values (biases included), what
    an index with `kv` stores. One fused GEMM when keys/values are affine in the states, else per layer on
    the layer's own normalisation of them (ModernBERT)."""
    import torch
    import torch.nn.functional as F

    if not model.adapter.kv_norm:
        w, b = kv_projection(model)

        def fused(st):
            if w is None:
                return st.new_zeros(st.shape[0], 0, st.shape[1])
            return F.linear(st.to(w.device), w, b).view(st.shape[0], -1, st.shape[1])

        return fused
    ad, a = model.adapter, model.contextual_layers
    blocks = list(model.cross)[: model.live_cross_layers]

    @torch.no_grad()
    def per_layer(st):
        st = st.to(model.device)
        parts = [
            F.linear(ad.kv_input(a + j, st), w, b) for j, block in enumerate(blocks) for _, w, b in ad.kv_weights(block)
        ]
        return torch.stack(parts, dim=1) if parts else st.new_zeros(st.shape[0], 0, st.shape[1])

    return per_layer


def _write_shard(
    out: Path, s: int, items: Iterable[tuple[str, "object"]], config: IndexConfig, kv_project, codec=None
) -> dict:
    """Write one shard from (doc_id, states [L, H] tensor[, token ids [L]]) items; returns its JSON record.
    `kv_project`: `kv_projector(model)` when the index caches keys/values; `codec`: the trained codec of a
    pq/residual index (states are encoded `_CODEC_BLOCK` tokens at a time; a token's code depends on that token, its
    id and its position alone)."""
    name = _shard_name(s)
    files = {"states": _HashedFile(out / f"{name}.states.bin")}
    if config.dtype == "int8":
        files["states.scale"] = _HashedFile(out / f"{name}.states.scale.bin")
    if config.kv:
        files["kv"] = _HashedFile(out / f"{name}.kv.bin")
        if config.dtype == "int8":
            files["kv.scale"] = _HashedFile(out / f"{name}.kv.scale.bin")
    doc_ids, offsets, lengths = [], [], []
    tokens = 0
    pending: list[tuple] = []  # codec: (states, token ids, positions) waiting to be encoded

    def flush():
        if pending:
            x, ids, pos = (np.concatenate(part) for part in zip(*pending))
            files["states"].write(codec.encode(x, ids, pos))
            pending.clear()

    try:
        for doc_id, states, *token_ids in items:
            st = states.detach().float()
            if codec is not None:
                pending.append(_codec_rows(st, token_ids, anchored=getattr(codec, "anchors", None) is not None))
                if sum(len(p[0]) for p in pending) >= _CODEC_BLOCK:
                    flush()
            else:
                q, scale = quantize(st.cpu().numpy()[:, None, :], config.dtype)
                files["states"].write(q)
                if scale is not None:
                    files["states.scale"].write(scale)
            if config.kv:
                kv = kv_project(st).float().cpu().numpy()
                q, scale = quantize(kv, config.dtype)
                files["kv"].write(q)
                if scale is not None:
                    files["kv.scale"].write(scale)
            doc_ids.append(doc_id)
            offsets.append(tokens)
            lengths.append(int(st.shape[0]))
            tokens += int(st.shape[0])
        flush()
        record = {
            "name": name,
            "documents": len(doc_ids),
            "tokens": tokens,
            "doc_ids": doc_ids,
            "offsets": offsets,
            "lengths": lengths,
            "files": {k: {"file": f.path.name, **f.commit()} for k, f in files.items()},
        }
    except BaseException:
        for f in files.values():
            f.abort()
        raise
    write_json_atomic(out / f"{name}.json", record)
    return record


CODEC_JSON, CODEC_BIN = "codec.json", "codec.bin"


def _codec_rows(st, token_ids: list, anchored: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(states, token ids, positions in the document) of one document for a codec (ids -1 when not given, which
    an `anchored` codec refuses)."""
    n = int(st.shape[0])
    ids = np.asarray(token_ids[0].cpu() if hasattr(token_ids[0], "cpu") else token_ids[0]) if token_ids else None
    if ids is None and anchored:
        raise IndexError_("an anchored pq codec needs each document's token ids; this encoder yields states only")
    if ids is not None and len(ids) != n:
        raise IndexError_(f"{n} states but {len(ids)} token ids for one document")
    return st.cpu().numpy(), (ids if ids is not None else np.full(n, -1)).astype(np.int64), np.arange(n)


def _codec_sample(doc_ids: list[str], encode, config: IndexConfig):
    """The codec's training sample: documents in a seeded order until `train_tokens` states, then a seeded subset
    of their rows: (states, token ids, positions, anchors). With anchors, the documents go on until
    `anchor_tokens` states, added to the anchors' sums one document at a time (never held at once), and the
    states are what each adds to its anchor."""
    import torch

    from mice.index.codec import AnchorSums

    order = np.random.default_rng(config.codec_seed).permutation(len(doc_ids))
    sums, rows, n = None, [], 0
    for start in range(0, len(order), 256):
        for _, st, *token_ids in encode([doc_ids[i] for i in order[start : start + 256]]):
            st = st.detach().float()
            row = _codec_rows(st, token_ids, anchored=config.anchors)
            if config.anchors and (sums is None or sums.tokens < config.anchor_tokens):
                sums = sums or AnchorSums(st.shape[1])
                sums.add(torch.from_numpy(row[0]), torch.from_numpy(row[1]), torch.from_numpy(row[2]))
            if n < config.train_tokens:
                rows.append(row)
                n += len(row[0])
        if n >= config.train_tokens and (not config.anchors or sums.tokens >= config.anchor_tokens):
            break
    keep = np.arange(n)
    if n > config.train_tokens:
        keep = np.sort(np.random.default_rng(config.codec_seed + 1).choice(n, config.train_tokens, replace=False))
    x = torch.from_numpy(np.concatenate([r[0] for r in rows])[keep])
    if sums is None:
        return x, None, None, None
    ids, pos = (torch.from_numpy(np.concatenate([r[i] for r in rows])[keep]) for i in (1, 2))
    return x, ids, pos, sums.fit(shrink=config.anchor_shrink)


def _ensure_codec(doc_ids: list[str], encode, out: Path, config: IndexConfig):
    """Rank 0, before any shard: the build's codec, read back when codec.json/codec.bin hold it for these
    settings (and pass their checksum), else trained and written (codebooks first, then codec.json, atomically)."""
    from mice.files import atomic_path
    from mice.index.codec import train_codec

    try:
        return read_codec(out, config.codec_settings())
    except IndexError_ as err:
        if (out / CODEC_JSON).exists():
            log.warning("%s; training the codec again", err)
    t0 = time.perf_counter()
    x, token_ids, positions, anchors = _codec_sample(doc_ids, encode, config)
    codec = train_codec(
        config.dtype,
        x,
        pq_m=config.pq_m,
        rotation=config.rotation,
        centroids=config.centroids,
        bits=config.bits,
        seed=config.codec_seed,
        token_ids=token_ids,
        positions=positions,
        anchors=anchors,
        refine_m=config.pq_refine,
    )
    data = codec.to_bytes()
    with atomic_path(out / CODEC_BIN) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(
        out / CODEC_JSON,
        {
            "settings": config.codec_settings(),
            "spec": codec.spec(),
            "file": CODEC_BIN,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "train_states": len(x),
        },
    )
    log.info(
        "%s: %s codec trained on %d token states in %.1f s (%d B per token)",
        out,
        config.dtype,
        len(x),
        time.perf_counter() - t0,
        codec.code_bytes,
    )
    return codec


def read_codec(out: Path, settings: dict | None = None):
    """The codec stored in index folder `out` (checksum verified); with `settings`, only if trained under them."""
    from mice.index.codec import codec_from_spec

    cj = Path(out) / CODEC_JSON
    try:
        rec = json.loads(cj.read_text())
        data = (Path(out) / rec["file"]).read_bytes()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise IndexError_(f"{cj}: codec missing or unreadable ({type(err).__name__}); rebuild the index") from None
    if settings is not None and rec.get("settings") != settings:
        raise IndexError_(f"{cj}: codec trained with other settings")
    if len(data) != rec.get("bytes") or hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        raise IndexError_(
            f"{Path(out) / rec['file']}: corrupted codec (size or sha256 differs from {cj.name}); rebuild the index"
        )
    return codec_from_spec(rec["spec"], data)


def _shard_complete(out: Path, s: int, expected_ids: list[str]) -> dict | None:
    """The record of shard `s` if it is complete, holds `expected_ids` and every file matches its sha256."""
    path = out / f"{_shard_name(s)}.json"
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(rec, dict) or sorted(rec.get("doc_ids", [])) != sorted(expected_ids):  # sorted by length
        return None
    for f in rec.get("files", {}).values():
        p = out / f["file"]
        if not p.exists() or p.stat().st_size != f["bytes"] or _sha256_file(p) != f["sha256"]:
            log.warning(
                "%s: %s is damaged (size or sha256 differs from %s); rebuilding the shard", out, f["file"], path.name
            )
            return None
    return rec


def content_hash(items: Iterable[tuple[str, object]]) -> str:
    """sha256 over (doc id, content) pairs in order: texts, or token-id sequences."""
    h = hashlib.sha256()
    for doc_id, content in items:
        h.update(str(doc_id).encode())
        h.update(b"\0")
        h.update((content if isinstance(content, str) else json.dumps([int(t) for t in content])).encode())
        h.update(b"\1")
    return h.hexdigest()


def build_identity(model, config: IndexConfig, doc_ids: Sequence[str], content: str | None) -> dict:
    """Everything that changes the bytes of an index, each component computed from content."""
    from mice.identity import job_identity

    return job_identity(
        format=FORMAT,
        doc_states=model.fingerprint(),
        kv_weights=model.kv_fingerprint() if config.kv else None,
        max_doc_length=int(model.mice_config.max_doc_length),
        hidden_size=int(model.hidden_size),
        dtype=config.dtype,
        compute_dtype=_compute_dtype(model),
        kv=bool(config.kv),
        shard_size=int(config.shard_size),
        documents=_ids_hash(doc_ids),
        content=content,
        **({"codec": config.codec_settings()} if config.codec else {}),
        # documents are encoded in padded batches, so the batch size can change the stored bytes'
        # last bits; keyed when not the default, so indexes built before it was keyed keep theirs
        **({"batch_size": int(config.batch_size)} if config.batch_size != DEFAULT_BATCH_SIZE else {}),
    )


EncodeFn = Callable[[list[str]], Iterator[tuple[str, "object"]]]


def build_index_with(
    model,
    doc_ids: Sequence[str],
    encode: EncodeFn,
    out,
    config: IndexConfig | None = None,
    overwrite: bool = False,
    show_progress_bar: bool = False,
    content: str | None = None,
) -> "DocIndex":
    """Build (or resume) an index of `doc_ids`; `encode(ids)` yields (doc_id, states [L, H]) for those ids.

    Under N processes (`mice --nproc N index build …`, `mice.distributed`) shard s is written by rank s % N; rank 0
    prepares the folder, checks every shard's checksums after a barrier and only then writes the manifest. A
    shard depends only on its documents, so N processes write the index one process writes.

    `content`: a hash of the documents' content (`content_hash`), part of the build identity, so that a resume
    over changed texts is refused. The folder is locked while the build runs."""

    config = config or IndexConfig()
    out = Path(out)
    doc_ids = [str(d) for d in doc_ids]
    if len(set(doc_ids)) != len(doc_ids):
        raise IndexError_("duplicate document ids in the corpus")
    out.mkdir(parents=True, exist_ok=True)
    from mice.distributed import rank_lock, world

    from mice.logs import run_log

    with rank_lock(out):
        w = world()
        with run_log(
            out / (BUILD_LOG if w.main else f"{BUILD_LOG}.rank{w.rank}"),
            log.name,
            "%(asctime)s %(message)s",
            "%Y-%m-%d %H:%M:%S",
        ):
            return _build_locked(model, doc_ids, encode, out, config, overwrite, show_progress_bar, content)


def _build_locked(
    model,
    doc_ids,
    encode,
    out: Path,
    config: IndexConfig,
    overwrite: bool,
    show_progress_bar: bool,
    content: str | None,
) -> "DocIndex":
    from mice.identity import identity_diff

    identity = build_identity(model, config, doc_ids, content)
    settings = {
        "format": FORMAT,
        "identity": identity,
        "model": _model_record(model, config),
        "dtype": config.dtype,
        "kv": config.kv,
        "shard_size": config.shard_size,
        "documents": len(doc_ids),
        "ids_hash": _ids_hash(doc_ids),
    }
    build_file, manifest_file = out / "build.json", out / "manifest.json"
    from mice.distributed import world

    w = world()
    if not w.main:  # rank 0 checks, clears or repairs the folder and writes build.json; the others follow it
        w.barrier()
        w.barrier()
        previous = json.loads(build_file.read_text())
        if previous.get("identity") != identity:
            raise IndexError_(
                f"{out}: rank {w.rank} builds with other settings than rank 0 "
                f"[differs: {identity_diff(previous.get('identity'), identity)}]"
            )
        return _build_shards(model, doc_ids, encode, out, config, show_progress_bar, settings, w)
    w.barrier()  # (the first barrier lets rank 0 start before the others look at the folder)
    _remove_temporaries(out)
    if overwrite:
        _clear(out)  # always recovers: corrupted, half-written or foreign folders alike
    elif build_file.exists():
        try:
            previous = json.loads(build_file.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise IndexError_(
                f"{build_file}: corrupted build record; rebuild with overwrite=True (--overwrite)"
            ) from None
        old = previous.get("identity") if isinstance(previous, dict) else None
        diff = identity_diff(old, identity) if isinstance(old, dict) else "identity (none recorded)"
        if diff:
            raise IndexError_(
                f"{out}: holds an index built with other settings [differs: {diff}]; use another "
                "folder or overwrite=True (--overwrite)"
            )
    elif manifest_file.exists() or any(out.glob("shard-*")):
        raise IndexError_(f"{out}: not empty and not a resumable index build; use overwrite=True (--overwrite)")
    finished = False
    if manifest_file.exists() and build_file.exists():
        try:
            finished = DocIndex.open(out, model=model)
        except IndexError_ as err:  # same identity, damaged files: repair the shards that fail their checks
            log.warning("%s; repairing the index", err)
            manifest_file.unlink()
    else:
        write_json_atomic(build_file, settings)
    t0, codec_s = time.perf_counter(), 0.0
    if not finished and config.codec:
        _ensure_codec(doc_ids, encode, out, config)
        codec_s = time.perf_counter() - t0
    w.barrier()  # the folder is ready (codec included): the other ranks check build.json and write their shards
    if finished:
        return finished
    index = _build_shards(model, doc_ids, encode, out, config, show_progress_bar, settings, w)
    index.codec_s = codec_s  # this build's codebook fit (sample encoding included), for benchmarks; not stored
    return index


def _build_shards(
    model, doc_ids, encode, out: Path, config: IndexConfig, show_progress_bar: bool, settings: dict, w
) -> "DocIndex":
    """Write this rank's missing shards; rank 0 then verifies all shards and writes the manifest."""
    if (out / "manifest.json").exists():  # rank 0 found the index finished and whole
        return DocIndex.open(out, model=model, verify=False)
    kv_project = kv_projector(model) if config.kv else None
    codec = read_codec(out, config.codec_settings()) if config.codec else None
    n_shards = max(1, -(-len(doc_ids) // config.shard_size))
    mine = [s for s in range(n_shards) if w.owns(s)]
    from mice.logs import Progress

    built, recs = 0, {}
    label = f"indexing {len(doc_ids)} documents" + (f" (rank {w.rank} of {w.size})" if w.distributed else "")
    with Progress(len(mine), label, bar=show_progress_bar and w.main, logger=log.name) as bar:
        for s in mine:
            ids = doc_ids[s * config.shard_size : (s + 1) * config.shard_size]
            rec = _shard_complete(out, s, ids)
            if rec is None:
                rec = _write_shard(out, s, encode(ids), config, kv_project, codec)
                built += 1
                log.info(
                    "%s: shard %d/%d written (%d documents, %d tokens)",
                    out,
                    s + 1,
                    n_shards,
                    rec["documents"],
                    rec["tokens"],
                )
            else:
                log.info("%s: shard %d/%d kept (checksums verified)", out, s + 1, n_shards)
            recs[s] = rec
            bar.advance()  # the log line says the time left
    w.barrier()  # every rank's shards are on disk
    if not w.main:
        w.barrier()  # rank 0 writes the manifest
        return DocIndex.open(out, model=model, verify=False)
    records = []
    for s in range(n_shards):
        ids = doc_ids[s * config.shard_size : (s + 1) * config.shard_size]
        rec = recs[s] if s in recs else _shard_complete(out, s, ids)  # other ranks' shards: verified here
        if rec is None:
            raise IndexError_(f"{out}: shard {s} is missing or fails its checksums after every rank finished")
        records.append(rec)
    manifest = dict(settings)
    manifest_file = out / "manifest.json"
    n_tokens = sum(r["tokens"] for r in records)
    bytes_by_kind: dict[str, int] = {}
    for r in records:
        for k, f in r["files"].items():
            bytes_by_kind[k] = bytes_by_kind.get(k, 0) + f["bytes"]
    if config.codec:
        manifest["codec"] = json.loads((out / CODEC_JSON).read_text())
    manifest.update(
        {
            "tokens": n_tokens,
            "bytes": bytes_by_kind,
            "shards": [
                {"name": r["name"], "documents": r["documents"], "tokens": r["tokens"], "files": r["files"]}
                for r in records
            ],
        }
    )
    manifest["checksum"] = _manifest_checksum(manifest)
    write_json_atomic(manifest_file, manifest)
    log.info(
        "%s: index complete (%d documents, %d tokens, %d shards, %d built now by rank 0 of %d)",
        out,
        len(doc_ids),
        n_tokens,
        n_shards,
        built,
        w.size,
    )
    w.barrier()
    return DocIndex.open(out, model=model, verify=False)


def _mtime(path: Path) -> str:
    """When `path` was written. A manifest does not record it (older ones did): it holds nothing but what the
    index is, so two builds of one corpus with one model write the same bytes."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))


def _remove_temporaries(out: Path) -> None:
    """Temporary files an interrupted build left (shard data, JSON written atomically); we hold the lock."""
    for p in out.glob(".*.tmp"):
        if p.is_file():
            log.info("%s: removing %s left by an interrupted build", out, p.name)
            p.unlink()


def _clear(out: Path) -> None:
    for p in (
        [out / "manifest.json", out / "build.json", out / CODEC_JSON, out / CODEC_BIN]
        + list(out.glob("shard-*"))
        + list(out.glob(".shard-*"))
    ):
        if p.is_file():
            p.unlink()


def build_index(
    model,
    corpus: Mapping[str, str],
    out,
    config: IndexConfig | None = None,
    overwrite: bool = False,
    show_progress_bar: bool = False,
) -> "DocIndex":
    """Encode every document of `corpus` (doc_id -> text) once with `model`'s contextual layers and store the
    states in `out`. Resumable: rerunning after an interruption continues at the first incomplete shard."""
    config = config or IndexConfig()
    ids = list(corpus.keys())

    def encode(batch_ids: list[str]):
        texts = [corpus[d] for d in batch_ids]
        for pos, states, token_ids in model.iter_document_states(
            texts, batch_size=config.batch_size, with_token_ids=True
        ):
            yield batch_ids[pos], states, token_ids

    return build_index_with(
        model,
        ids,
        encode,
        out,
        config,
        overwrite=overwrite,
        show_progress_bar=show_progress_bar,
        content=content_hash((d, corpus[d]) for d in ids),
    )


def build_index_from_token_ids(
    model, docs: Mapping[str, Sequence[int]], out, config: IndexConfig | None = None, overwrite: bool = False
) -> "DocIndex":
    """Same as `build_index` from already tokenised documents (`[CLS] d [SEP]` ids), e.g. for benchmarks."""
    import torch

    config = config or IndexConfig()
    ids = list(docs.keys())
    tt = model.mice_config.doc_token_type

    def encode(batch_ids: list[str]):
        for start in range(0, len(batch_ids), config.batch_size):
            chunk = batch_ids[start : start + config.batch_size]
            seqs = [list(docs[d]) for d in chunk]
            width = max(len(s) for s in seqs)
            pad = model.tokenizer.pad_token_id or 0
            input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
            with torch.no_grad(), model.autocast():
                st = model.encode_doc_batch(
                    {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.full_like(input_ids, tt)}
                )
            for row, d in enumerate(chunk):
                yield d, st.hidden[row, : len(seqs[row])], seqs[row]

    was = model.training
    model.eval()
    try:
        return build_index_with(
            model, ids, encode, out, config, overwrite=overwrite, content=content_hash((d, docs[d]) for d in ids)
        )
    finally:
        model.train(was)


# ----------------------------------------------------------------------------------------------- reading
class DocIndex:
    """A built index, memory-mapped. `states(positions)` / `kv(positions)` give padded float32 batches.

    Shards are mapped when first read and unmapped, least recently used first, once the mapped files exceed
    `max_mapped_bytes`: an index larger than the address space a process may use (`ulimit -v`) can be re-ranked
    from (the pages themselves are the kernel's page cache, never the process's own memory)."""

    def __init__(self, path: Path, manifest: dict, max_mapped_bytes: int = MAX_MAPPED_BYTES):
        self.path = path
        self.manifest = manifest
        self.dtype = manifest["dtype"]
        self.hidden_size = int(manifest["model"]["hidden_size"])
        self.has_kv = bool(manifest.get("kv"))
        self.kv_slots = 2 * int(manifest["model"].get("kv_layers", 0)) if self.has_kv else 0
        self.doc_ids: list[str] = []
        shard_of, offsets, lengths = [], [], []
        self._files: list[dict] = []  # per shard: kind -> (path, dtype, shape)
        self._mapped: "OrderedDict[int, dict]" = OrderedDict()  # shard -> kind -> array, most recent last
        self.max_mapped_bytes = int(max_mapped_bytes)
        np_dtype = DTYPES[self.dtype]
        self.codec = read_codec(path) if self.dtype in CODECS else None
        self.codec_s = 0.0  # seconds the build that returned this object spent fitting the codec (benchmarks)
        width = self.codec.code_bytes if self.codec is not None else self.hidden_size
        for s, sh in enumerate(manifest["shards"]):
            rec = json.loads((path / f"{sh['name']}.json").read_text())
            self.doc_ids += rec["doc_ids"]
            shard_of += [s] * rec["documents"]
            offsets += rec["offsets"]
            lengths += rec["lengths"]
            t = rec["tokens"]
            files = sh["files"]
            shapes = {
                "states": (np_dtype, (t, width)),
                "states.scale": (np.float32, (t,)),
                "kv": (np_dtype, (t, self.kv_slots, self.hidden_size)),
                "kv.scale": (np.float32, (t, self.kv_slots)),
            }
            self._files.append({k: (path / files[k]["file"], *shapes[k]) for k in shapes if k in files})
        self.shard_of = np.asarray(shard_of, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._pos = {d: i for i, d in enumerate(self.doc_ids)}

    # -- opening and checking
    def _shard(self, s: int) -> dict:
        """kind -> memory-mapped array of shard `s` (mapped now if it is not; least recently used shards
        unmapped beyond `max_mapped_bytes`)."""
        arrays = self._mapped.pop(s, None)
        if arrays is None:
            arrays = {k: _memmap(p, dt, shape) for k, (p, dt, shape) in self._files[s].items()}
            mapped = sum(a.nbytes for m in self._mapped.values() for a in m.values())
            new = sum(a.nbytes for a in arrays.values())
            while self._mapped and mapped + new > self.max_mapped_bytes:
                _, old = self._mapped.popitem(last=False)
                mapped -= sum(a.nbytes for a in old.values())
        self._mapped[s] = arrays
        return arrays

    @classmethod
    def open(cls, path, model=None, verify: bool = True, max_mapped_bytes: int | None = None) -> "DocIndex":
        """Open the index at `path`; check its manifest and (with `verify`) every file's sha256; with `model`,
        refuse an index built by another model. `max_mapped_bytes`: shard files mapped at once (default
        `MAX_MAPPED_BYTES`)."""
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            if (path / "build.json").exists():
                raise IndexError_(f"{path}: index build not finished (no manifest.json); rerun the build to resume")
            raise IndexError_(f"{path}: not a MICE index (no manifest.json)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as err:
            raise IndexError_(f"{mf}: corrupted manifest ({err})") from None
        if manifest.get("format") != FORMAT:
            raise IndexError_(f"{mf}: unknown index format {manifest.get('format')!r} (expected {FORMAT!r})")
        if manifest.get("checksum") != _manifest_checksum(manifest):
            raise IndexError_(f"{mf}: manifest checksum mismatch (file edited or corrupted)")
        for sh in manifest["shards"]:
            for kind, f in sh["files"].items():
                p = path / f["file"]
                if not p.exists():
                    raise IndexError_(f"{path}: shard {sh['name']} is missing {f['file']}")
                if p.stat().st_size != f["bytes"]:
                    raise IndexError_(
                        f"{p}: corrupted shard {sh['name']} ({p.stat().st_size} bytes, "
                        f"manifest says {f['bytes']}); rebuild the index"
                    )
                if verify and _sha256_file(p) != f["sha256"]:
                    raise IndexError_(
                        f"{p}: corrupted shard {sh['name']} (sha256 checksum mismatch); rebuild the index"
                    )
            shard_json = path / f"{sh['name']}.json"
            if not shard_json.exists():
                raise IndexError_(f"{path}: shard {sh['name']} has no {shard_json.name}")
        if "codec" in manifest:
            rec = manifest["codec"]
            p = path / rec["file"]
            if not p.exists() or p.stat().st_size != rec["bytes"] or (verify and _sha256_file(p) != rec["sha256"]):
                raise IndexError_(
                    f"{p}: codec missing or corrupted (size or sha256 differs from the manifest); rebuild the index"
                )
        try:
            index = cls(path, manifest, max_mapped_bytes or MAX_MAPPED_BYTES)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise IndexError_(
                f"{path}: corrupted shard record ({type(err).__name__}: {err}); rebuild the index"
            ) from None
        if model is not None:
            index.check_model(model)
        return index

    def check_model(self, model, kv: bool = False) -> None:
        """Raise `IndexError_` unless `model` produces exactly the states stored here (and, with `kv`, the
        stored keys/values)."""
        rec = self.manifest["model"]
        fp = model.fingerprint()
        if fp != rec["fingerprint"]:
            raise IndexError_(
                f"{self.path}: index was built by another model ({rec.get('name')} from {rec.get('source')!r}, "
                f"fingerprint {rec['fingerprint'][:12]}) than {model.name} from {model.mice_config.source!r} "
                f"(fingerprint {fp[:12]}): contextual layers, tokenizer or a differ; rebuild the index"
            )
        if kv:
            if not self.has_kv:
                raise IndexError_(f"{self.path}: index has no cached keys/values (build it with kv=True / --kv)")
            if model.kv_fingerprint() != rec.get("kv_fingerprint"):
                raise IndexError_(
                    f"{self.path}: cached keys/values were computed with other cross-attention "
                    "weights than this model's; rebuild with --kv or score from states"
                )

    # -- sizes
    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["tokens"])

    def positions(self, doc_ids: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self._pos[str(d)] for d in doc_ids), dtype=np.int64, count=len(doc_ids))
        except KeyError as err:
            raise IndexError_(f"{self.path}: document {err.args[0]!r} is not in the index") from None

    def __contains__(self, doc_id) -> bool:
        return str(doc_id) in self._pos

    def bytes_per_token(self, kind: str = "all") -> float:
        by = self.manifest["bytes"]
        keys = {"states": ("states", "states.scale"), "kv": ("kv", "kv.scale")}.get(kind, tuple(by))
        return sum(by.get(k, 0) for k in keys) / max(1, self.n_tokens)

    def info(self) -> dict:
        m = self.manifest
        out = {
            "path": str(self.path),
            "model": m["model"]["name"],
            "source": m["model"]["source"],
            "fingerprint": m["model"]["fingerprint"],
            "dtype": self.dtype,
            "compute_dtype": m["model"].get("compute_dtype", "fp32"),
            "kv": self.has_kv,
            "documents": len(self),
            "tokens": self.n_tokens,
            "shards": len(m["shards"]),
            "bytes": int(sum(m["bytes"].values())),
            "bytes_per_token": round(self.bytes_per_token(), 2),
            "bytes_per_token_states": round(self.bytes_per_token("states"), 2),
            "mean_doc_tokens": round(self.n_tokens / max(1, len(self)), 1),
            "created": m.get("created") or _mtime(self.path / "manifest.json"),
        }
        if self.codec is not None:
            out["codec"] = ", ".join(f"{k} {v}" for k, v in self.codec.spec().items() if k != "hidden")
            out["codec_bytes"] = int(m["codec"]["bytes"])
            out["codec_train_states"] = int(m["codec"].get("train_states", 0))
        if self.has_kv:
            out["bytes_per_token_kv"] = round(self.bytes_per_token("kv"), 2)
            out["kv_layers"] = m["model"].get("kv_layers")
        return out

    # -- reading
    def _gather(self, positions, kind: str, width_shape, out=None, codec=None):
        """Copy (and dequantise to float32, or decode through `codec`) the rows of `positions` into a padded
        batch. `out`: a flat float32 buffer reused when large enough (the batch is a contiguous view of its
        start)."""
        import torch

        positions = np.asarray(positions, dtype=np.int64)
        lens = self.lengths[positions]
        width = int(lens.max()) if len(lens) else 0
        shape = (len(positions), width) + tuple(width_shape)
        needed = int(np.prod(shape))
        if out is not None and out.numel() >= needed and out.dtype == torch.float32:
            buf = out[:needed].view(shape)
        else:
            buf = torch.empty(shape, dtype=torch.float32)
        mask = torch.arange(width)[None, :] < torch.from_numpy(lens)[:, None]
        if codec is not None:  # every document's codes (copied out of the map), decoded in one call, then placed
            codes = (
                np.concatenate(
                    [
                        np.array(
                            self._shard(int(self.shard_of[p]))[kind][
                                int(self.offsets[p]) : int(self.offsets[p]) + int(n)
                            ]
                        )
                        for p, n in zip(positions, lens)
                    ]
                )
                if len(positions)
                else None
            )
            if codes is not None and len(codes):
                token_pos = mask.nonzero()[:, 1]  # each code's position in its document (row-major, as `codes`)
                if bool(mask.all()):
                    buf.view(-1, shape[-1]).copy_(codec.decode(codes, token_pos))
                else:
                    buf.zero_()
                    buf[mask] = codec.decode(codes, token_pos)
            return buf, mask
        for row, p in enumerate(positions):
            s, off, n = int(self.shard_of[p]), int(self.offsets[p]), int(lens[row])
            arrays = self._shard(s)
            chunk = torch.from_numpy(arrays[kind][off : off + n]).reshape((n,) + tuple(width_shape))
            if f"{kind}.scale" in arrays:
                sc = torch.from_numpy(arrays[f"{kind}.scale"][off : off + n]).reshape(
                    (n,) + tuple(width_shape[:-1]) + (1,)
                )
                torch.mul(chunk, sc, out=buf[row, :n])
            else:
                buf[row, :n].copy_(chunk)
            if n < width:
                buf[row, n:].zero_()
        return buf, mask

    def states(self, positions, out=None):
        """Padded float32 `DocStates` of the documents at `positions` (use `positions(doc_ids)`). `out`: a
        preallocated flat float32 buffer, reused when large enough."""
        from mice.models.mice_model import DocStates

        hidden, mask = self._gather(positions, "states", (self.hidden_size,), out, self.codec)
        return DocStates(hidden, mask)

    def kv(self, positions, out=None):
        """Padded float32 cached keys/values [N, L, 2·(b-1), H] and the mask [N, L]."""
        if not self.has_kv:
            raise IndexError_(f"{self.path}: index has no cached keys/values (build with kv=True / --kv)")
        return self._gather(positions, "kv", (self.kv_slots, self.hidden_size), out)


def _memmap(path: Path, dtype, shape) -> np.ndarray:
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    # copy-on-write keeps the mapping read-only on disk but gives torch a writable view without copying
    return np.memmap(path, dtype=dtype, mode="c", shape=shape)
