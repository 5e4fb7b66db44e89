"""Single knockouts (one path, one layer, all heads or one head) and which of them a sweep can run.

Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`; knocking it out removes the
columns of `b` from the attention rows of `a`, in `renorm` mode (-inf before the softmax, the rest
renormalised) or `zero` mode (weights zeroed after the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

from mice.errors import MaskError
from mice.masks import InteractionMask, all_paths, parse_path

ALL_HEADS = -1


@dataclass(frozen=True)
class Knockout:
    """Remove `path` in `layer`, in every head (`head == -1`) or in one head."""

    layer: int
    path: str
    head: int = ALL_HEADS

    @property
    def key(self) -> str:
        return f"{self.layer}|{self.head}|{self.path}"

    @property
    def src(self) -> list[int]:
        return parse_path(self.path)[0]

    @property
    def dst(self) -> list[int]:
        return parse_path(self.path)[1]

    def mask(self, base: InteractionMask) -> InteractionMask:
        """`base` with this path blocked in this layer (all heads); raises MaskError if that is invalid."""
        return base.with_blocked([self.path], [self.layer], name=f"{base.name}-{self.path}@{self.layer}")

    def __str__(self) -> str:
        return f"{self.path}@{self.layer}" + (f".h{self.head}" if self.head != ALL_HEADS else "")


def parse_layers(spec, num_layers: int) -> list[int]:
    """`None`/"all" -> every layer; "1,3" or "2" (layers), "0:3" (the half-open range [0, 3), as Python slices it),
    a list of ints or a `range`. One convention with masks: a list is a list, a range is explicit."""
    if spec is None or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, (list, tuple, range)):
        layers = [int(x) for x in spec]
    else:
        layers = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part.lstrip("-"):
                raise MaskError(
                    f"bad layer spec {spec!r}: write a range as start:end (half-open, e.g. 0:6 for "
                    "layers 0 to 5) or list the layers (1,3)"
                )
            try:
                if ":" in part:
                    a, b = part.split(":", 1)
                    if int(a) >= int(b):
                        raise MaskError(f"bad layer spec {spec!r}: empty range {part} (start:end is half-open)")
                    layers.extend(range(int(a), int(b)))
                else:
                    layers.append(int(part))
            except ValueError:
                raise MaskError(f"bad layer spec {spec!r}: use e.g. 0:6, 1,3 or all") from None
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise MaskError(f"layer(s) {bad} outside the model's {num_layers} layers (0..{num_layers - 1})")
    return sorted(dict.fromkeys(layers))


def parse_paths(spec) -> list[str]:
    """`None` -> every single path between real segments; else "q->d,d->q" or a list (validated)."""
    if spec is None or spec == "all":
        return all_paths()
    paths = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in spec]
    paths = [p for p in paths if p]
    for p in paths:
        parse_path(p)
    if not paths:
        raise MaskError("no paths given")
    return list(dict.fromkeys(paths))


def knockout_set(num_layers: int, n_heads: int, paths=None, layers=None, heads=False) -> list[Knockout]:
    """Knockouts over (layer x path), and, with `heads` (True or a list of heads), (layer x head x path)."""
    paths = parse_paths(paths)
    layers = parse_layers(layers, num_layers)
    if heads is True:
        head_list = list(range(n_heads))
    elif heads:
        head_list = sorted(set(int(h) for h in heads))
        bad = [h for h in head_list if not 0 <= h < n_heads]
        if bad:
            raise MaskError(f"head(s) {bad} outside the model's {n_heads} heads")
    else:
        head_list = []
    out = [Knockout(l, p) for l in layers for p in paths]
    out += [Knockout(l, p, h) for l in layers for h in head_list for p in paths]
    return out


def check_knockout(ko: Knockout, base: InteractionMask) -> str | None:
    """Why `ko` cannot run on top of `base` (None if it can): already blocked, or a segment left with nothing
    to attend to (validated by InteractionMask, as for any mask)."""
    src, dst = parse_path(ko.path)
    if not base.tables[ko.layer][src][:, dst].any():
        return "already blocked by the base mask"
    try:
        ko.mask(base)
    except MaskError as err:
        msg = str(err)
        return "invalid: " + msg.split(": ", 1)[1] if ": " in msg else "invalid: " + msg
    return None
