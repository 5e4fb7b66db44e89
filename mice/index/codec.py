"""Compressed storage of layer-`a` document states: codebooks trained on a sample of the corpus's token states.

Two codecs, each turning a float vector of H values into a fixed number of bytes per token:
- `pq` (product quantization): the vector is cut into `m` sub-vectors of H/m values; each is replaced by the id of
  its nearest of 256 centroids (k-means on that sub-space), 1 byte: m bytes per token (48 B at m = 48 for H = 384,
  16× below float16; 32 B at m = 32). With `rotation`, an orthogonal rotation learnt as in OPQ (Ge et al. 2013:
  alternate PQ training and the orthogonal Procrustes solution) is applied first and undone at decoding.
  With `anchors`, the codes describe only what the context adds to a token: each state minus its anchor, the
  mean state of its token id plus the mean offset of its position in the document (`Anchors`), and the code
  starts with the token id (2 bytes more per token). In a first contextual layer the token's identity and position
  carry most of the state, so the anchors remove most of the squared error of the states they were fitted on; a
  token id the sample never saw falls back to the mean, and its residual is large (docs/results.md measures both).
- `residual` (as ColBERTv2/PLAID): the id of the nearest of `centroids` k-means centroids (2 bytes) plus `bits` bits
  per dimension of the residual, each dimension quantised to 2^bits buckets at that dimension's quantiles, decoded
  to the bucket's mean: 2 + H·bits/8 bytes per token (50 B at 1 bit, H = 384).

Decoding is a table look-up (`decode`, given each token's position in its document when anchored), run on the fly
by `mice.index.store.DocIndex.states` batch by batch.

Reproducibility: a codec is trained once (rank 0 of a build) under one torch thread, and encoding computes every
distance without matrix products (exact differences), so the codes of a shard are the same bytes whatever the
number of processes or threads that write it. A codec is saved as raw little-endian float32 arrays (`to_bytes`)
whose shapes are in its `spec`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from mice.errors import IndexError_

KINDS = ("pq", "residual")
_CHUNK = 4096  # tokens per distance block when encoding


@contextlib.contextmanager
def single_thread():
    """torch on one thread inside the block: training gives the same codebook bytes in any process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _nearest(x: torch.Tensor, c: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """Index of the nearest row of `c` [k, d] for every row of `x` [n, d]. `exact`: from the differences
    themselves, no matrix product, so a row's result never depends on threads or blocking (encoding); else
    through a matrix product (k-means training, always on one thread)."""
    out = torch.empty(x.shape[0], dtype=torch.long)
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist"
    for s in range(0, x.shape[0], _CHUNK):
        out[s : s + _CHUNK] = torch.cdist(x[s : s + _CHUNK], c, compute_mode=mode).argmin(dim=1)
    return out


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Lloyd's k-means from `k` distinct sample rows chosen under `seed`; an emptied cluster takes the point
    farthest from its centroid. Returns centroids [k, d] float32."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    c = x[torch.from_numpy(rng.choice(n, size=k, replace=n < k))].clone()
    for _ in range(iters):
        assign = _nearest(x, c, exact=False)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            order = ((x - new[assign]) ** 2).sum(1).argsort(descending=True)
            far = order[torch.arange(len(empty)) % n]  # (fewer points than clusters: duplicates)
            new[empty] = x[far]
        c = new
    return c.float()


@dataclass
class Anchors:
    """A token's state before its context is known: `token[id] + position[pos]`, fitted by alternating means
    (token rows = mean of state - position row over that id; position rows = mean of state - token row over that
    position) from `AnchorSums`. A token row is shrunk towards the mean over all tokens by `shrink` pseudo-counts,
    so that a rare id's row is not one context's state; an id absent from the sample takes the last `token` row
    (that mean), a position beyond the sample's longest document no position row."""

    ids: torch.Tensor  # [r] sorted token ids that have a row
    token: torch.Tensor  # [r + 1, H]: the rows of `ids`, then the row of every other id
    position: torch.Tensor  # [p, H]

    @classmethod
    def fit(cls, x: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor, shrink: float = 0.0) -> "Anchors":
        sums = AnchorSums(x.shape[1])
        sums.add(x, token_ids, positions)
        return sums.fit(shrink=shrink)

    def __post_init__(self):
        # look-up tables for decoding: id -> token row (the last row for an id without one), and the position rows
        # followed by a zero row taken by every position beyond them
        self._row_of = torch.full((int(self.ids.max()) + 2 if len(self.ids) else 1,), len(self.ids), dtype=torch.long)
        self._row_of[self.ids.long()] = torch.arange(len(self.ids))
        self._position = torch.cat([self.position, self.position.new_zeros(1, self.position.shape[1])])

    def rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Row of `token` for each id (the last row for an id without one)."""
        return self._row_of[token_ids.long().clamp(max=len(self._row_of) - 1)]

    def __call__(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pos = positions.long().clamp(max=len(self.position))
        return self.token[self.rows(token_ids)] + self._position[pos]

    def arrays(self) -> list[torch.Tensor]:
        return [self.ids.float(), self.token, self.position]  # ids < 65536: exact in float32

    @classmethod
    def from_arrays(cls, ids: np.ndarray, token: np.ndarray, position: np.ndarray) -> "Anchors":
        ids_t = torch.from_numpy(ids.astype(np.int64))
        return cls(ids_t, torch.from_numpy(token.copy()), torch.from_numpy(position.copy()))


class AnchorSums:
    """What `Anchors` are fitted from, added document by document so that a sample of millions of token states is
    never held at once: per token id and per position the sum of the states and the count, and the count of every
    (id, position) pair. float64 sums: the same bytes whatever the order of documents within a batch of adds."""

    def __init__(self, hidden: int, vocab: int = 4096, positions: int = 128):
        self.tok = torch.zeros(vocab, hidden, dtype=torch.float64)
        self.pos = torch.zeros(positions, hidden, dtype=torch.float64)
        self.cross = torch.zeros(vocab, positions, dtype=torch.float64)  # tokens of id i at position p
        self.tokens = 0

    def _grow(self, vocab: int, positions: int) -> None:
        v, p = self.cross.shape
        if vocab > v or positions > p:
            v2, p2 = max(v, _pow2(vocab)), max(p, _pow2(positions))
            self.tok = torch.cat([self.tok, self.tok.new_zeros(v2 - v, self.tok.shape[1])])
            self.pos = torch.cat([self.pos, self.pos.new_zeros(p2 - p, self.pos.shape[1])])
            self.cross = torch.nn.functional.pad(self.cross, (0, p2 - p, 0, v2 - v))

    def add(self, x: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor) -> None:
        ids, pos = _anchor_inputs(len(x), token_ids, positions)
        if not len(ids):
            return
        self._grow(int(ids.max()) + 1, int(pos.max()) + 1)
        x = x.double()
        self.tok.index_add_(0, ids, x)
        self.pos.index_add_(0, pos, x)
        self.cross.index_put_((ids, pos), torch.ones(len(ids), dtype=torch.float64), accumulate=True)
        self.tokens += len(ids)

    def fit(self, rounds: int = 4, shrink: float = 0.0) -> Anchors:
        if not self.tokens:
            raise IndexError_("anchors: no token states to fit them on")
        seen = (self.cross.sum(1) > 0).nonzero().flatten()
        C, S_tok = self.cross[seen], self.tok[seen]
        n_tok, n_pos = C.sum(1), self.cross.sum(0)
        last = int((n_pos > 0).nonzero().max()) + 1
        C, n_pos, S_pos = C[:, :last], n_pos[:last], self.pos[:last]
        P = torch.zeros_like(S_pos)
        for _ in range(rounds + 1):
            other = (S_tok.sum(0) - n_pos @ P) / self.tokens  # mean of (state - its position row)
            T = (S_tok - C @ P + shrink * other) / (n_tok + shrink)[:, None]
            P = (S_pos - C.T @ T) / n_pos.clamp(min=1)[:, None]
        return Anchors(seen, torch.cat([T, other[None]]).float(), P.float())


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _sub_codes(x: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
    """[n, H] -> [n, m] uint8: each of the m sub-vectors' nearest of its 256 centroids ([m, 256, H/m])."""
    sub = x.reshape(x.shape[0], centroids.shape[0], -1)
    codes = torch.stack([_nearest(sub[:, j].contiguous(), centroids[j]) for j in range(centroids.shape[0])], dim=1)
    return codes.to(torch.uint8).numpy()


def _sub_values(codes, centroids: torch.Tensor) -> torch.Tensor:
    """[n, m] uint8 -> [n, H]: the centroids the codes name, side by side."""
    codes = torch.as_tensor(np.asarray(codes)).long()
    m, _, d = centroids.shape
    idx = codes + torch.arange(m)[None, :] * 256
    return torch.nn.functional.embedding(idx, centroids.reshape(-1, d)).view(codes.shape[0], m * d)


def _id_bytes(ids: torch.Tensor) -> np.ndarray:
    """[n] ids < 65536 -> [n, 2] uint8, little-endian: the head of an anchored pq or a residual code."""
    return ids.numpy().astype("<u2").view(np.uint8).reshape(-1, 2)


def _split_ids(codes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(ids, the rest) of codes whose first 2 bytes are a little-endian id (`_id_bytes`)."""
    codes = np.ascontiguousarray(np.asarray(codes, dtype=np.uint8))
    ids = torch.from_numpy(codes[:, :2].copy().view("<u2").astype(np.int64).reshape(-1))
    return ids, codes[:, 2:]


def _anchor_inputs(n: int, token_ids, positions) -> tuple[torch.Tensor, torch.Tensor]:
    if token_ids is None or positions is None:
        raise IndexError_("this codec is anchored on token ids and positions: pass both (the encoder gave none)")
    ids, pos = torch.as_tensor(np.asarray(token_ids)).long().reshape(-1), torch.as_tensor(np.asarray(positions)).long()
    if len(ids) != n or len(pos.reshape(-1)) != n:
        raise IndexError_(f"{n} states but {len(ids)} token ids and {pos.numel()} positions")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) > 65535):
        raise IndexError_("anchors: token ids outside 0..65535 do not fit the code's 2 bytes")
    return ids, pos.reshape(-1)


@dataclass
class PQCodec:
    """m sub-quantizers of 256 centroids over H/m dims each, after an optional orthogonal rotation, of the states
    or (with `anchors`) of what each state adds to its anchor."""

    centroids: torch.Tensor  # [m, 256, H/m]
    rotation: torch.Tensor | None = None  # [H, H]: codes describe x @ rotation
    anchors: Anchors | None = None
    refine: torch.Tensor | None = None  # [m2, 256, H/m2]: a second stage on what the first leaves (no rotation)

    kind = "pq"

    @property
    def m(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.centroids.shape[0] * self.centroids.shape[2])

    @property
    def refine_m(self) -> int:
        return int(self.refine.shape[0]) if self.refine is not None else 0

    @property
    def code_bytes(self) -> int:
        return self.m + self.refine_m + (2 if self.anchors is not None else 0)

    @classmethod
    def train(
        cls,
        x: torch.Tensor,
        m: int = 48,
        iters: int = 12,
        seed: int = 0,
        rotation: bool = False,
        opq_iters: int = 4,
        token_ids=None,
        positions=None,
        anchors: Anchors | None = None,
        refine_m: int = 0,
    ) -> "PQCodec":
        """Codebooks for states `x` [n, H]; with `token_ids` and `positions` (each [n]) anchored: on `anchors`
        (fitted on a larger sample by `AnchorSums`), else on anchors fitted on `x`. `refine_m` > 0: a second
        stage of that many sub-vectors codes what the first stage leaves (refine_m bytes more per token)."""
        H = x.shape[1]
        if m < 1 or H % m:
            raise IndexError_(f"pq: {m} sub-vectors do not divide the hidden size {H} (--pq-m)")
        if refine_m < 0 or (refine_m and H % refine_m):
            raise IndexError_(f"pq: {refine_m} refining sub-vectors do not divide the hidden size {H} (--pq-refine)")
        x = x.float()
        if anchors is None and (token_ids is not None or positions is not None):
            with single_thread():
                anchors = Anchors.fit(x, *_anchor_inputs(len(x), token_ids, positions))
        if anchors is not None:
            x = x - anchors(*_anchor_inputs(len(x), token_ids, positions))
        codec = cls._train_pq(x, m, iters, seed, rotation, opq_iters)
        codec.anchors = anchors
        if refine_m:
            left = x - codec._decode(codec._encode(x))
            with single_thread():
                sub = left.reshape(-1, refine_m, H // refine_m)
                codec.refine = torch.stack(
                    [kmeans(sub[:, j].contiguous(), 256, iters, seed + 7919 + j) for j in range(refine_m)]
                )
        return codec

    @classmethod
    def _train_pq(cls, x: torch.Tensor, m: int, iters: int, seed: int, rotation: bool, opq_iters: int) -> "PQCodec":
        H = x.shape[1]
        with single_thread():
            R = torch.eye(H) if rotation else None
            for it in range(opq_iters if rotation else 1):
                xr = x @ R if R is not None else x
                sub = xr.reshape(-1, m, H // m)
                cents = torch.stack([kmeans(sub[:, j].contiguous(), 256, iters, seed + j) for j in range(m)])
                codec = cls(cents, R)
                if R is None or it == opq_iters - 1:
                    break
                y = codec._decode_rotated(codec._encode(x))  # reconstruction in the rotated space
                u, _, vt = torch.linalg.svd(x.T.double() @ y.double())  # argmin_R ||xR - y||, R orthogonal
                R = (u @ vt).float()
        return codec

    def encode(self, x, token_ids=None, positions=None) -> np.ndarray:
        """[n, H] float -> [n, code_bytes] uint8: the token id first when anchored (needs `token_ids` and each
        token's `positions` in its document), then m bytes, then refine_m bytes when refined."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        parts = []
        if self.anchors is not None:
            ids, pos = _anchor_inputs(len(x), token_ids, positions)
            parts.append(_id_bytes(ids))
            x = x - self.anchors(ids, pos)
        codes = self._encode(x)
        parts.append(codes)
        if self.refine is not None:
            parts.append(_sub_codes(x - self._decode(codes), self.refine))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else codes

    def _encode(self, x: torch.Tensor) -> np.ndarray:
        return _sub_codes(x @ self.rotation if self.rotation is not None else x, self.centroids)

    def _decode_rotated(self, codes) -> torch.Tensor:
        return _sub_values(codes, self.centroids)

    def decode(self, codes, positions=None) -> torch.Tensor:
        """[n, code_bytes] uint8 -> [n, H] float32 (`positions`: each token's in its document, when anchored)."""
        codes = np.ascontiguousarray(np.asarray(codes, dtype=np.uint8))
        ids = None
        if self.anchors is not None:
            ids, codes = _split_ids(codes)
        y = self._decode(codes[:, : self.m])
        if self.refine is not None:
            y = y + _sub_values(codes[:, self.m :], self.refine)
        if ids is not None:
            y = y + self.anchors(*_anchor_inputs(len(ids), ids, positions))
        return y

    def _decode(self, codes) -> torch.Tensor:
        y = self._decode_rotated(codes)
        return y @ self.rotation.T if self.rotation is not None else y

    def spec(self) -> dict:
        return {
            "kind": "pq",
            "m": self.m,
            "bits": 8,
            "hidden": self.hidden,
            "rotation": self.rotation is not None,
            "code_bytes": self.code_bytes,
            **({"refine_m": self.refine_m} if self.refine is not None else {}),
            **(
                {"anchors": {"tokens": len(self.anchors.ids), "positions": len(self.anchors.position)}}
                if self.anchors is not None
                else {}
            ),
        }

    def to_bytes(self) -> bytes:
        parts = [self.centroids, *(t for t in (self.rotation, self.refine) if t is not None)]
        parts += self.anchors.arrays() if self.anchors is not None else []
        return b"".join(t.float().contiguous().numpy().astype("<f4").tobytes() for t in parts)

    @classmethod
    def from_bytes(cls, spec: dict, data: bytes) -> "PQCodec":
        m, H = int(spec["m"]), int(spec["hidden"])
        arr = np.frombuffer(data, dtype="<f4")
        n_c, n_r = m * 256 * (H // m), (H * H if spec["rotation"] else 0)
        m2 = int(spec.get("refine_m", 0))
        anchored = spec.get("anchors")
        r, p = (int(anchored["tokens"]), int(anchored["positions"])) if anchored else (0, 0)
        sizes = [n_c, n_r, m2 * 256 * (H // m2 if m2 else 0), *([r, (r + 1) * H, p * H] if anchored else [])]
        if arr.size != sum(sizes):
            raise IndexError_(f"pq codec: {arr.size} values stored, {sum(sizes)} expected")
        parts = np.split(arr, np.cumsum(sizes)[:-1])
        cents = torch.from_numpy(parts[0].copy()).view(m, 256, H // m)
        rot = torch.from_numpy(parts[1].copy()).view(H, H) if spec["rotation"] else None
        refine = torch.from_numpy(parts[2].copy()).view(m2, 256, H // m2) if m2 else None
        anchors = (
            Anchors.from_arrays(parts[3], parts[4].reshape(r + 1, H), parts[5].reshape(p, H)) if anchored else None
        )
        return cls(cents, rot, anchors, refine)


@dataclass
class ResidualCodec:
    """A centroid id (uint16) + `bits` bits per dimension of the residual (per-dimension quantile buckets)."""

    centroids: torch.Tensor  # [k, H]
    cutoffs: torch.Tensor  # [H, 2^bits - 1] bucket boundaries of the residual, per dimension
    weights: torch.Tensor  # [H, 2^bits] the value each bucket decodes to, per dimension

    kind = "residual"

    @property
    def bits(self) -> int:
        return int(self.weights.shape[1]).bit_length() - 1

    @property
    def hidden(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def code_bytes(self) -> int:
        return 2 + self.hidden * self.bits // 8

    @classmethod
    def train(
        cls, x: torch.Tensor, centroids: int = 1024, bits: int = 1, iters: int = 8, seed: int = 0
    ) -> "ResidualCodec":
        H = x.shape[1]
        if bits not in (1, 2, 4, 8) or (H * bits) % 8:
            raise IndexError_(f"residual: {bits} bits per dimension (1, 2, 4 or 8, H·bits a multiple of 8)")
        if not 1 <= centroids <= 65536:
            raise IndexError_(f"residual: {centroids} centroids (1 to 65536: the id is 2 bytes)")
        x = x.float()
        with single_thread():
            c = kmeans(x, min(centroids, len(x)), iters, seed)  # a corpus smaller than the codebook: one per state
            r = x - c[_nearest(x, c)]
            q = torch.linspace(0, 1, 2**bits + 1)[1:-1]
            cutoffs = torch.quantile(r.double(), q.double(), dim=0).T.float().contiguous()  # [H, 2^b - 1]
            bucket = _bucketize(r, cutoffs)
            sums = torch.zeros(H, 2**bits, dtype=torch.float64).scatter_add_(1, bucket.T, r.T.double())
            counts = torch.zeros(H, 2**bits, dtype=torch.float64).scatter_add_(
                1, bucket.T, torch.ones_like(r.T, dtype=torch.float64)
            )
            weights = (sums / counts.clamp(min=1)).float()
        return cls(c, cutoffs, weights)

    def encode(self, x, token_ids=None, positions=None) -> np.ndarray:
        """[n, H] float -> [n, 2 + H·bits/8] uint8 (little-endian centroid id, then the packed buckets)."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        ids = _nearest(x, self.centroids)
        bucket = _bucketize(x - self.centroids[ids], self.cutoffs).numpy().astype(np.uint8)  # [n, H]
        packed = _pack(bucket, self.bits)
        return np.concatenate([_id_bytes(ids), packed], axis=1)

    def decode(self, codes, positions=None) -> torch.Tensor:
        ids, rest = _split_ids(codes)
        bucket = torch.from_numpy(_unpack(rest, self.bits, self.hidden).astype(np.int64))
        res = self.weights[torch.arange(self.hidden)[None, :], bucket]  # each dimension's bucket value
        return self.centroids[ids] + res

    def spec(self) -> dict:
        return {
            "kind": "residual",
            "centroids": int(self.centroids.shape[0]),
            "bits": self.bits,
            "hidden": self.hidden,
            "code_bytes": self.code_bytes,
        }

    def to_bytes(self) -> bytes:
        return b"".join(
            t.float().contiguous().numpy().astype("<f4").tobytes() for t in (self.centroids, self.cutoffs, self.weights)
        )

    @classmethod
    def from_bytes(cls, spec: dict, data: bytes) -> "ResidualCodec":
        k, H, b = int(spec["centroids"]), int(spec["hidden"]), int(spec["bits"])
        arr = np.frombuffer(data, dtype="<f4")
        sizes = [k * H, H * (2**b - 1), H * 2**b]
        if arr.size != sum(sizes):
            raise IndexError_(f"residual codec: {arr.size} values stored, {sum(sizes)} expected")
        c, cut, w = np.split(arr, np.cumsum(sizes)[:-1])
        return cls(
            torch.from_numpy(c.copy()).view(k, H),
            torch.from_numpy(cut.copy()).view(H, 2**b - 1),
            torch.from_numpy(w.copy()).view(H, 2**b),
        )


def _bucketize(r: torch.Tensor, cutoffs: torch.Tensor) -> torch.Tensor:
    """Bucket [n, H] of each residual value under its dimension's cutoffs [H, B-1]."""
    return (r[:, :, None] > cutoffs[None]).sum(-1)


def _pack(bucket: np.ndarray, bits: int) -> np.ndarray:
    """[n, H] values < 2^bits -> [n, H·bits/8] bytes, little-bit-endian within each byte."""
    n, H = bucket.shape
    if bits == 8:
        return bucket
    per = 8 // bits
    b = bucket.reshape(n, H // per, per).astype(np.uint16)
    shifts = (np.arange(per) * bits).astype(np.uint16)
    return (b << shifts).sum(-1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, H: int) -> np.ndarray:
    if bits == 8:
        return packed
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return ((packed[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], H)


def codec_from_spec(spec: dict, data: bytes):
    kind = spec.get("kind")
    if kind == "pq":
        return PQCodec.from_bytes(spec, data)
    if kind == "residual":
        return ResidualCodec.from_bytes(spec, data)
    raise IndexError_(f"unknown codec {kind!r} ({', '.join(KINDS)})")


def train_codec(
    kind: str,
    x: torch.Tensor,
    pq_m: int = 48,
    rotation: bool = False,
    centroids: int = 1024,
    bits: int = 1,
    seed: int = 0,
    token_ids=None,
    positions=None,
    anchors: Anchors | None = None,
    refine_m: int = 0,
):
    """A codec of `kind` trained on token states `x` [n, H] (pq: anchored when given `token_ids` and
    `positions`, on `anchors` when given; refined by a second stage of `refine_m` bytes)."""
    if kind == "pq":
        return PQCodec.train(
            x,
            m=pq_m,
            seed=seed,
            rotation=rotation,
            token_ids=token_ids,
            positions=positions,
            anchors=anchors,
            refine_m=refine_m,
        )
    if kind == "residual":
        return ResidualCodec.train(x, centroids=centroids, bits=bits, seed=seed)
    raise IndexError_(f"unknown codec {kind!r} ({', '.join(KINDS)})")
