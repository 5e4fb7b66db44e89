"""Compute precision of inference (`--dtype fp32|bf16|fp16`): one autocast helper shared by every scorer.

Weights stay in float32. Under `bf16`/`fp16` a scorer's forward runs inside `torch.autocast` on the model's
device, so matrix products and attention run in the low precision while softmax, layer norms and reductions stay
in float32 (autocast's own op lists). The scoring head (pooler, classifier, MaxSim's sum) runs in float32
(`full_precision`): it costs nothing, and a logit rounded to bf16's 8-bit mantissa (steps of 1/16 near 10) would
tie close candidates. Scores come back as float32 as always. `fp32` enters no autocast at all, so it is
bit-identical to a scorer that never heard of the option.

The precision is part of a scorer's `identity()` (`compute_dtype`), so a resumed re-ranking job never mixes
scores computed at two precisions. Training uses the same names (`mice train --dtype`, mapped onto accelerate's
`mixed_precision` by `mixed_precision()`; `check_mixed_precision` refuses what the device cannot run).
"""

from __future__ import annotations

import contextlib

from mice.validate import CHOICES, SettingError

PRECISIONS = CHOICES["compute_dtype"]  # ("fp32", "bf16", "fp16")
HELP = (
    "Compute precision: fp32 (default), bf16 or fp16 (matmuls and attention under torch.autocast; weights and "
    "scores stay float32)"
)  # `--dtype` of score and rerank
_TORCH_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def normalise_precision(dtype, flag: str = "--dtype") -> str:
    """ "fp32" | "bf16" | "fp16" from those names, None (fp32), or a torch dtype (`torch.bfloat16`)."""
    if dtype is None:
        return "fp32"
    name = str(dtype).removeprefix("torch.")
    name = _TORCH_NAMES.get(name, name)
    if name not in PRECISIONS:
        raise SettingError(f"{flag} must be one of {', '.join(PRECISIONS)} (got {dtype!r})")
    return name


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision(dtype, device, flag: str = "--dtype") -> str:
    """The normalised precision if `device` can run it under autocast, else a one-line `SettingError` naming the
    option and the device. (torch 2.13 autocasts both bf16 and fp16 on CPU; CUDA needs bf16 hardware support.)"""
    import torch

    precision = normalise_precision(dtype, flag)
    if precision == "fp32":
        return precision
    kind = torch.device(device if device is not None else "cpu").type
    if not torch.amp.is_autocast_available(kind):
        raise SettingError(f"{flag} {precision}: torch has no autocast on {kind} devices; use fp32")
    if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SettingError(f"{flag} bf16: this CUDA device has no bfloat16 support; use fp16 or fp32")
    return precision


def autocast(precision: str, device, enabled: bool = True):
    """The context every scorer's forward runs in: `torch.autocast` for bf16/fp16, nothing for fp32.
    `enabled=False`: autocast switched off inside an autocast region (the scoring head)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=_torch_dtype(precision), enabled=enabled)


_WARNED: set = set()


def _warn_slow_fp16(device, flag: str) -> None:
    """fp16 autocast works on CPU but, without fp16 instructions, ran 3x (cross-encoder) to 4.5x (MICE) slower
    than fp32 on our AVX512-BF16 CPU: say so once, since a user asking for fp16 wants speed."""
    import torch

    if torch.device(device).type == "cpu" and "cpu" not in _WARNED:
        _WARNED.add("cpu")
        import logging

        logging.getLogger("mice").warning(
            "%s fp16 on CPU is correct but usually slower than fp32 (few CPUs have "
            "fp16 arithmetic); bf16 is the fast choice on CPU",
            flag,
        )


class ComputePrecision:
    """Mixin of every scorer: `compute_dtype` (default fp32), `set_compute_dtype` (checked against the device the
    model is on), and `autocast()`, the context its forward passes run in."""

    compute_dtype: str = "fp32"

    def set_compute_dtype(self, dtype, flag: str = "--dtype"):
        self.compute_dtype = check_precision(dtype, self.device, flag)
        if self.compute_dtype == "fp16":
            _warn_slow_fp16(self.device, flag)
        return self

    def autocast(self):
        return autocast(self.compute_dtype, self.device)

    def full_precision(self):
        """float32 inside `autocast()` (the scoring head); give it float32 inputs (`.float()`)."""
        return autocast(self.compute_dtype, self.device, enabled=False)


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --dtype -> accelerate's mixed_precision


def mixed_precision(dtype) -> str:
    """accelerate's `mixed_precision` ("no" | "bf16" | "fp16") for `mice train --dtype fp32|bf16|fp16`."""
    return MIXED_PRECISION[normalise_precision(dtype)]


def check_mixed_precision(mixed: str, device) -> None:
    """Refuse a training precision the device cannot honour, before accelerate fixes it for the process. fp16 on
    CPU is refused: accelerate enables fp16 autocast and loss scaling on GPUs only and would train in fp32."""
    import torch

    precision = {v: k for k, v in MIXED_PRECISION.items()}.get(mixed, mixed)
    check_precision(precision, device)
    if precision == "fp16" and torch.device(device if device is not None else "cpu").type == "cpu":
        raise SettingError(
            "--dtype fp16 trains on a GPU only (accelerate would silently train in fp32 on CPU); on CPU use bf16"
        )
