"""The derived MICE configuration as a file (`mice-config/1`): what the trained search decided, and why.

It holds the split point a (contextual layers), the number of interaction layers b, the mask for a masked
cross-encoder, the tolerance and budget the decision was made under, and its provenance (the curves, seeds,
confidence intervals and p-values). `mice train --mode mice|masked --config derived.json` trains from it and
`mice mask show derived.json` renders it. A search that found nothing within tolerance still writes the file,
with `decision: "cross-encoder"` and no a/b/mask: training from it is refused with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mice.errors import MiceError

FORMAT = "mice-config/1"
DECISIONS = ("mice", "masked", "cross-encoder")


class ConfigFileError(MiceError, ValueError):
    """A mice-config file is malformed or cannot serve the requested mode; the message names the file."""


@dataclass
class DerivedConfig:
    """What to train. `decision`: the most efficient model the evidence supports (`mice`: a, b and the mask;
    `masked`: a mask but no MICE split, because blocking `d->q` cost too much; `cross-encoder`: nothing)."""

    decision: str
    num_layers: int
    contextual_layers: int | None = None  # a
    interaction_layers: int | None = None  # b
    # MICE's `[CLS]` cross-attention (none | uniform, `MICEModel`); None in files written before it was searched
    cls_cross_attention: str | None = None
    mask: dict | None = None  # a mice-mask/2 object
    source_model: str | None = None  # the cross-encoder the search fine-tuned from (and distilled)
    tolerance: float | None = None
    metric: str = "nDCG@10"
    budget: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    name: str = "derived"

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ConfigFileError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if self.decision == "mice" and (self.contextual_layers is None or not self.interaction_layers):
            raise ConfigFileError("decision 'mice' needs contextual_layers (a) and interaction_layers (b)")
        if self.decision in ("mice", "masked") and self.mask is None:
            raise ConfigFileError(f"decision {self.decision!r} needs a mask")
        if isinstance(self.mask, dict) and self.mask.get("num_layers") != self.num_layers:
            raise ConfigFileError(
                f"num_layers is {self.num_layers!r} but the mask is for {self.mask.get('num_layers')!r} layers"
            )
        if self.cls_cross_attention is not None:
            from mice.models.mice_model import CLS_CROSS_MODES

            if self.cls_cross_attention not in CLS_CROSS_MODES:
                raise ConfigFileError(
                    f"cls_cross_attention {self.cls_cross_attention!r} is not one of {', '.join(CLS_CROSS_MODES)}"
                )

    # ------------------------------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path) -> Path:
        from mice.files import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict, source: str = "<dict>") -> "DerivedConfig":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ConfigFileError(f"{source}: format {fmt!r} is not {FORMAT!r}")
        known = {k: v for k, v in obj.items() if k != "format"}
        unknown = sorted(set(known) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigFileError(f"{source}: unknown key {unknown[0]!r}")
        if "decision" not in known or "num_layers" not in known:
            raise ConfigFileError(f"{source}: missing key {'decision' if 'decision' not in known else 'num_layers'!r}")
        try:
            return cls(**known)
        except ConfigFileError as err:
            raise ConfigFileError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path) -> "DerivedConfig":
        from mice.files import strict_json

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigFileError(f"{path}: cannot read ({err.strerror})") from None
        except UnicodeDecodeError as err:
            raise ConfigFileError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
        return cls.from_dict(strict_json(text, path, ConfigFileError), str(path))

    # ---------------------------------------------------------------------------------------- use
    def interaction_mask(self):
        from mice.masks import InteractionMask

        return None if self.mask is None else InteractionMask.from_dict(self.mask, f"{self.name} (mask)")

    def train_settings(self, mode: str, path) -> dict:
        """The TrainConfig settings this file gives a run of `mode` (flat, as a config file would)."""
        if mode not in ("mice", "masked"):
            raise ConfigFileError(f"{path}: a {FORMAT} file configures --mode mice or masked, not {mode}")
        if self.decision == "cross-encoder":
            raise ConfigFileError(
                f"{path}: the search found no configuration within tolerance "
                f"({self.tolerance}); it keeps the cross-encoder, there is nothing to train"
            )
        if mode == "mice" and self.decision != "mice":
            raise ConfigFileError(
                f"{path}: the evidence supports a masked cross-encoder only (blocking d->q "
                "was not within tolerance), not MICE"
            )
        settings: dict = {"mode": mode}
        if self.source_model and Path(self.source_model).exists():
            settings["model"] = self.source_model
        if mode == "mice":
            settings.update(contextual_layers=self.contextual_layers, interaction_layers=self.interaction_layers)
            if self.cls_cross_attention:
                settings["cls_cross_attention"] = self.cls_cross_attention
        else:
            settings["mask"] = str(path)
        return settings

    def render(self) -> str:
        lines = [f"{self.name}: {FORMAT}, decision {self.decision}"]
        if self.decision == "mice":
            lines.append(
                f"MICE-ℓ{self.contextual_layers}+{self.interaction_layers}: a = {self.contextual_layers} "
                f"contextual layers, b = {self.interaction_layers} interaction layers"
                + (f", [CLS] cross-attention {self.cls_cross_attention}" if self.cls_cross_attention else "")
            )
        lines.append(f"tolerance {self.tolerance} on dev {self.metric}; source {self.source_model}")
        if self.budget:
            lines.append("budget: " + ", ".join(f"{k} {v}" for k, v in self.budget.items()))
        why = self.provenance.get("why")
        if why:
            lines.append(f"why: {why}")
        mask = self.interaction_mask()
        if mask is not None:
            lines += ["", mask.render()]
        return "\n".join(lines)


def is_config_file(path) -> bool:
    """True for a JSON file whose `format` is mice-config/1 (read only as far as needed)."""
    p = Path(str(path))
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):  # the mask reader says what is wrong
        return False
