"""Interaction masks: which segment may attend which, layer by layer.

A path `a->b` means tokens of group `a` attend to tokens of group `b` (row a, column b of the attention
matrix; information flows from b into a). A mask is an ordered list of allow/block rules applied to a table
that starts all-allowed; `pad` is never attended. The JSON form (`mice-mask/2`; `/1` files still load) is what
users exchange.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mice.errors import MaskError
from mice.segments import REAL_SEGMENTS, SEG, SEGMENTS

FORMAT = "mice-mask/2"
FORMATS = ("mice-mask/1", "mice-mask/2")  # /1 read a two-element `layers` list as [start, end); /2 never does
N_SEG = len(SEGMENTS)
PRESETS = ("none", "mask0", "mask1", "mask2", "mask3", "prettr", "sparse_ce")


def parse_path(path: str, where: str = "") -> tuple[list[int], list[int]]:
    """`'q->d'` → ([q], [d]); `'*'` stands for every real segment."""
    if not isinstance(path, str) or "->" not in path:
        raise MaskError(f"{where}malformed path {path!r}: expected 'from->to', e.g. 'q->d'")
    src, dst = (p.strip() for p in path.split("->", 1))

    def side(name: str) -> list[int]:
        if name == "*":
            return [SEG[s] for s in REAL_SEGMENTS]
        if name not in SEG or name == "pad":
            raise MaskError(
                f"{where}unknown segment {name!r} in path {path!r} (segments: {', '.join(REAL_SEGMENTS)}, or *)"
            )
        return [SEG[name]]

    return side(src), side(dst)


def all_paths() -> list[str]:
    """Every single path between real segments, in a stable order (the knockout sweep's default set)."""
    return [f"{a}->{b}" for a in REAL_SEGMENTS for b in REAL_SEGMENTS]


def _layers(spec, num_layers: int, where: str) -> list[int]:
    """One layer convention everywhere: `"all"`, an int, an explicit list of layers, or a half-open range written
    with explicit keys, `{"start": s, "end": e}` (a Python `range` in the API). A list is always a list."""
    if spec == "all" or spec is None:
        return list(range(num_layers))
    if isinstance(spec, range):
        spec = {"start": spec.start, "end": spec.stop} if spec.step == 1 else list(spec)
    if isinstance(spec, bool):
        raise MaskError(f"{where}bad layers {spec!r}")
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, dict):
        if set(spec) != {"start", "end"} or not all(
            isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("start", "end")
        ):
            raise MaskError(f'{where}bad layer range {spec!r}: expected {{"start": int, "end": int}}')
        start, end = spec["start"], spec["end"]
        if start >= end:
            raise MaskError(f"{where}empty layer range [{start}, {end})")
        layers = list(range(start, end))
    elif isinstance(spec, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in spec):
        layers = list(spec)
        if not layers:
            raise MaskError(f"{where}empty layer list")
    else:
        raise MaskError(f'{where}bad layers {spec!r}: use "all", a layer, a list of layers or {{"start": s, "end": e}}')
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise MaskError(f"{where}layer(s) {bad} outside the model's {num_layers} layers (0..{num_layers - 1})")
    return layers


def _layers_to_json(layers: Sequence[int], num_layers: int):
    layers = sorted(set(layers))
    if layers == list(range(num_layers)):
        return "all"
    if len(layers) == 1:
        return layers[0]
    if layers == list(range(layers[0], layers[-1] + 1)):
        return {"start": layers[0], "end": layers[-1] + 1}
    return None  # non-contiguous: caller splits into several rules


def _v1_rule(rule):
    """A mice-mask/1 rule in /2 terms: its two-element `layers` list meant [start, end)."""
    if isinstance(rule, dict) and isinstance(rule.get("layers"), list) and len(rule["layers"]) == 2:
        start, end = rule["layers"]
        return {**rule, "layers": {"start": start, "end": end}}
    return rule


@dataclass(frozen=True, eq=False)
class InteractionMask:
    """Per-layer allow-table over (from-segment, to-segment), built from ordered rules.

    Immutable: `rules` is a tuple (copied on construction) and `tables` a read-only array, so the tables can
    never go stale; derive a new mask with `with_blocked` or a new constructor call.
    """

    num_layers: int
    rules: tuple = ()
    name: str = "custom"
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        from mice.validate import MAX_LAYERS

        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise MaskError(f"num_layers must be a positive int, got {self.num_layers!r}")
        if self.num_layers > MAX_LAYERS:  # checked before a table per layer is built
            raise MaskError(f"num_layers {self.num_layers} is more than any model has (at most {MAX_LAYERS})")
        if not isinstance(self.rules, (list, tuple)):
            raise MaskError(f"rules must be a list of rules, got {type(self.rules).__name__}")
        if not isinstance(self.name, str):
            raise MaskError(f"name must be a string, got {self.name!r}")
        if not isinstance(self.provenance, dict):
            raise MaskError(f"provenance must be an object, got {type(self.provenance).__name__}")
        object.__setattr__(self, "rules", tuple(json.loads(json.dumps(r)) if _jsonable(r) else r for r in self.rules))
        tables = self._build()
        tables.flags.writeable = False
        object.__setattr__(self, "tables", tables)

    # ------------------------------------------------------------------ building and checking
    def _build(self) -> np.ndarray:
        t = np.ones((self.num_layers, N_SEG, N_SEG), dtype=bool)
        t[:, :, SEG["pad"]] = False  # pad is never attended
        for i, rule in enumerate(self.rules):
            where = f"rule {i} ({json.dumps(rule)}): "
            if not isinstance(rule, dict):
                raise MaskError(f"{where}a rule must be an object with 'allow' or 'block'")
            kinds = [k for k in ("allow", "block") if k in rule]
            extra = set(rule) - {"allow", "block", "layers"}
            if len(kinds) != 1 or extra:
                raise MaskError(
                    f"{where}a rule needs exactly one of 'allow'/'block' (and optional 'layers')"
                    + (f"; unknown keys {sorted(extra)}" if extra else "")
                )
            paths = rule[kinds[0]]
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                raise MaskError(f"{where}'{kinds[0]}' must be a path or a non-empty list of paths like 'q->d'")
            layers = _layers(rule.get("layers", "all"), self.num_layers, where)
            for p in paths:
                src, dst = parse_path(p, where)
                for a in src:
                    for b in dst:
                        t[layers, a, b] = kinds[0] == "allow"
        t[:, :, SEG["pad"]] = False
        for layer in range(self.num_layers):
            for s in REAL_SEGMENTS:
                if not t[layer, SEG[s], : SEG["pad"]].any():
                    culprit = self._last_rule_touching(s, layer)
                    raise MaskError(
                        f"rule {culprit}: segment {s!r} is left with nothing to attend to in "
                        f"layer {layer} (softmax over nothing is NaN)"
                    )
        # pad rows (never read by anyone) attend like HF: every real token; keeps them finite.
        t[:, SEG["pad"], : SEG["pad"]] = True
        return t

    def _last_rule_touching(self, seg: str, layer: int) -> int:
        for i in range(len(self.rules) - 1, -1, -1):
            rule = self.rules[i]
            paths = rule.get("block", [])
            paths = [paths] if isinstance(paths, str) else paths
            if any(p.split("->")[0].strip() in (seg, "*") for p in paths):
                if layer in _layers(rule.get("layers", "all"), self.num_layers, ""):
                    return i
        return len(self.rules) - 1

    # ------------------------------------------------------------------ constructors
    @classmethod
    def full(cls, num_layers: int) -> "InteractionMask":
        return cls(num_layers, [], name="none")

    @classmethod
    def from_preset(cls, name: str, num_layers: int, **params) -> "InteractionMask":
        """Paper masks and baselines (cumulative: mask1 = mask0 + …). `k` = number of leading layers."""
        base = name.strip().lower()
        k = params.pop("k", None)
        if params:
            raise MaskError(f"preset {name!r}: unknown parameter(s) {sorted(params)}")
        if base not in PRESETS:
            raise MaskError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
        if base in ("mask3", "prettr"):
            k = num_layers // 2 if k is None else int(k)
            if not 0 <= k <= num_layers:
                raise MaskError(f"preset {base}: k={k} outside 0..{num_layers}")
        rules: list[dict] = []
        if base in ("mask0", "mask1", "mask2", "mask3"):
            rules += [
                {"block": ["q->cls", "sep1->*", "d->cls", "sep2->*", "q->sep2", "d->sep1"], "layers": "all"},
                {"allow": ["sep1->sep1", "sep2->sep2"], "layers": "all"},
            ]
        if base in ("mask1", "mask2", "mask3"):
            rules.append({"block": ["cls->d", "cls->sep2"], "layers": "all"})
        if base in ("mask2", "mask3"):
            rules.append({"block": ["d->q"], "layers": "all"})
        if base == "mask3" and k > 0:
            rules.append({"block": ["q->d"], "layers": {"start": 0, "end": k}})
        if base == "prettr" and k > 0:
            rules.append(
                {
                    "block": [
                        "cls->d",
                        "cls->sep2",
                        "q->d",
                        "q->sep2",
                        "sep1->d",
                        "sep1->sep2",
                        "d->cls",
                        "d->q",
                        "d->sep1",
                        "sep2->cls",
                        "sep2->q",
                        "sep2->sep1",
                    ],
                    "layers": {"start": 0, "end": k},
                }
            )
        if base == "sparse_ce":
            rules.append(
                {"block": ["q->cls", "q->d", "q->sep2", "sep1->cls", "sep1->d", "sep1->sep2"], "layers": "all"}
            )
        label = f"{base}(k={k})" if base in ("mask3", "prettr") else base
        return cls(num_layers, rules, name=label, provenance={"preset": base, **({"k": k} if k is not None else {})})

    @classmethod
    def parse(cls, spec: str, num_layers: int) -> "InteractionMask":
        """A preset spec (`mask2`, `mask3:k=2`, `mask3(2)`) or a path to a JSON file."""
        s = str(spec).strip()
        if s.endswith(".json") or Path(s).is_file():
            mask = cls.load(s)
            if mask.num_layers != num_layers:
                raise MaskError(f"{s}: mask is for {mask.num_layers} layers, the model has {num_layers}")
            return mask
        params = {}
        try:
            if "(" in s and s.endswith(")"):
                s, arg = s[:-1].split("(", 1)
                params["k"] = int(arg.split("=")[-1])
            elif ":" in s:
                s, arg = s.split(":", 1)
                for kv in arg.split(","):
                    key, _, val = kv.partition("=")
                    params[key.strip()] = int(val)
        except ValueError:
            raise MaskError(f"mask spec {spec!r}: parameters must be integers, e.g. mask3:k=2") from None
        return cls.from_preset(s, num_layers, **params)

    @classmethod
    def from_dict(cls, obj: dict, source: str = "<dict>") -> "InteractionMask":
        if not isinstance(obj, dict):
            raise MaskError(f"{source}: a mask must be a JSON object")
        fmt = obj.get("format")
        if fmt == "mice-config/1":  # a derived configuration (mice.derived) carries its mask
            if not isinstance(obj.get("mask"), dict):
                raise MaskError(f"{source}: this configuration holds no mask (decision: {obj.get('decision')})")
            inner = obj["mask"].get("num_layers")
            if "num_layers" in obj and obj["num_layers"] != inner:
                raise MaskError(f"{source}: num_layers is {obj['num_layers']!r} but its mask is for {inner!r} layers")
            return cls.from_dict(obj["mask"], source)
        if fmt not in FORMATS:
            raise MaskError(f"{source}: format {fmt!r} is not supported (expected {FORMAT!r})")
        for key in ("num_layers", "rules"):
            if key not in obj:
                raise MaskError(f"{source}: missing key {key!r}")
        if not isinstance(obj["rules"], list):
            raise MaskError(f"{source}: 'rules' must be a list")
        rules = [_v1_rule(r) for r in obj["rules"]] if fmt == "mice-mask/1" else list(obj["rules"])
        if not isinstance(obj.get("provenance", {}), dict):
            raise MaskError(f"{source}: 'provenance' must be an object")
        try:
            return cls(
                obj["num_layers"],
                rules,
                name=str(obj.get("name", Path(source).stem)),
                provenance=dict(obj.get("provenance", {})),
            )
        except MaskError as err:
            raise MaskError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path) -> "InteractionMask":
        from mice.files import MAX_JSON_BYTES, strict_json

        path = Path(path)
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                raise MaskError(f"{path}: {path.stat().st_size} bytes, too large for a mask file")
            data = path.read_bytes()
        except OSError as err:
            raise MaskError(f"{path}: cannot read mask file ({err.strerror})") from None
        if data.startswith(b"\xef\xbb\xbf"):
            raise MaskError(f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise MaskError(f"{path}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})") from None
        return cls.from_dict(strict_json(text, path, MaskError), str(path))

    @classmethod
    def from_tables(cls, tables: np.ndarray, name: str = "derived", provenance: dict | None = None):
        """Rules (one block rule per path and layer group) reproducing a boolean [L, 6, 6] table."""
        tables = np.asarray(tables, dtype=bool)
        num_layers = tables.shape[0]
        rules = []
        for a in REAL_SEGMENTS:
            for b in REAL_SEGMENTS:
                blocked = [l for l in range(num_layers) if not tables[l, SEG[a], SEG[b]]]
                for group in _contiguous_groups(blocked):
                    rules.append({"block": [f"{a}->{b}"], "layers": _layers_to_json(group, num_layers)})
        return cls(num_layers, rules, name=name, provenance=provenance or {})

    # ------------------------------------------------------------------ derived masks and output
    def with_blocked(self, paths: Iterable[str] | str, layers=None, name: str | None = None) -> "InteractionMask":
        """A copy with one more block rule; `layers`: None (all), an int, a range, [start, end) or a list."""
        paths = [paths] if isinstance(paths, str) else list(paths)
        if layers is None:
            spec = "all"
        elif isinstance(layers, range) and layers.step == 1:
            spec = {"start": layers.start, "end": layers.stop}
        else:
            spec = list(layers) if isinstance(layers, range) else layers
        rule = {"block": paths, "layers": spec}
        return InteractionMask(
            self.num_layers, [*self.rules, rule], name=name or f"{self.name}+block", provenance=dict(self.provenance)
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "num_layers": self.num_layers,
            "rules": [dict(r) for r in self.rules],
            "provenance": self.provenance,
        }

    def save(self, path) -> Path:
        from mice.files import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    def allowed(self, layer: int, path: str) -> bool:
        src, dst = parse_path(path)
        return bool(self.tables[layer][np.ix_(src, dst)].all())

    def is_full(self) -> bool:
        return bool(np.array_equal(self.tables, InteractionMask.full(self.num_layers).tables))

    def layer_table(self, layer: int):
        """One layer as a DataFrame: rows attend (from), columns are attended (to)."""
        import pandas as pd

        n = SEG["pad"]
        return pd.DataFrame(
            self.tables[layer, :n, :n],
            index=pd.Index(REAL_SEGMENTS, name="from"),
            columns=pd.Index(REAL_SEGMENTS, name="to"),
        )

    def to_frame(self):
        """Tidy allow-table: one row per (layer, from, to)."""
        import pandas as pd

        rows = [
            {"layer": l, "from": a, "to": b, "path": f"{a}->{b}", "allowed": bool(self.tables[l, SEG[a], SEG[b]])}
            for l in range(self.num_layers)
            for a in REAL_SEGMENTS
            for b in REAL_SEGMENTS
        ]
        return pd.DataFrame(rows)

    def render(self) -> str:
        """Text form of the per-layer table; identical consecutive layers are grouped."""
        lines = [
            f"mask {self.name!r} ({self.num_layers} layers) — row a, column b: a->b (a attends b); # allowed, . blocked"
        ]
        groups: list[list[int]] = []
        for l in range(self.num_layers):
            if groups and np.array_equal(self.tables[groups[-1][0]], self.tables[l]):
                groups[-1].append(l)
            else:
                groups.append([l])
        width = max(len(s) for s in REAL_SEGMENTS) + 1
        for g in groups:
            label = f"layer {g[0]}" if len(g) == 1 else f"layers {g[0]}-{g[-1]}"
            lines.append("")
            lines.append(f"{label}:")
            lines.append(" " * (width + 4) + " ".join(s.rjust(width) for s in REAL_SEGMENTS))
            for a in REAL_SEGMENTS:
                cells = " ".join(
                    ("#" if self.tables[g[0], SEG[a], SEG[b]] else ".").rjust(width) for b in REAL_SEGMENTS
                )
                lines.append(f"    {a.ljust(width)}{cells}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __eq__(self, other) -> bool:
        return isinstance(other, InteractionMask) and np.array_equal(self.tables, other.tables)

    # ------------------------------------------------------------------ compilation
    def compile(self, segment_ids, layer: int):
        """Boolean allow-matrix [B, T, T] for one layer of a batch (True = may attend)."""
        import torch

        table = torch.tensor(self.tables[layer], device=segment_ids.device)  # a copy: tables are read-only
        return table[segment_ids.unsqueeze(2), segment_ids.unsqueeze(1)]


def _jsonable(obj) -> bool:
    try:
        json.dumps(obj)
        return True
    except (TypeError, ValueError):
        return False


def _contiguous_groups(layers: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for l in layers:
        if groups and l == groups[-1][-1] + 1:
            groups[-1].append(l)
        else:
            groups.append([l])
    # a 2-layer non-contiguous pair would read as a range in JSON, so groups stay contiguous here
    return groups
