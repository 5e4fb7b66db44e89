"""The one loader: a model spec and options in, the right scorer out (`predict(pairs)`, `rank(query, docs)`).

`load(spec, ...)` returns
- a `HookedCrossEncoder` for any HF cross-encoder folder or hub name (under `mask` if given, else under the mask
  it was trained with, recorded in its config.json);
- a `MICEModel` for a MICE folder (config.json with a "mice" key), or a cross-encoder turned into MICE-ℓa+b
  on the spot with `arch="a+b"`; with `index=` a scorer reading documents from a document-state index;
- a `MaxSimScorer` for a trained late-interaction folder (`mice train --mode late-interaction`);
- a `BiEncoder` for `biencoder:<name>` (`biencoder:packaged` is the packaged MiniLM).

Every option is honoured or refused: an option the chosen scorer cannot apply raises `ModelError` naming it.
`dtype` ("fp32" | "bf16" | "fp16", `mice.models.precision`) applies to every scorer: its forward runs under autocast at
that precision (fp32: no autocast, today's scores exactly); a precision the device cannot run is a `SettingError`.
Folder problems (missing path, no config.json, unreadable weights) are `ModelError`s naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from mice.models.backbone import resolve_model_path
from mice.errors import ModelError

MASK_KEY = "mice_mask"  # config.json key under which a masked cross-encoder records its interaction mask
KINDS = ("any", "hooked", "mice")


def _config(path) -> dict:
    cfg = Path(str(path)) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_mice_folder(path) -> bool:
    return "mice" in _config(path)


def saved_mask(path):
    """The interaction mask a masked cross-encoder was trained under (None for a plain one)."""
    obj = _config(path).get(MASK_KEY)
    if obj is None:
        return None
    from mice.masks import InteractionMask

    return InteractionMask.from_dict(obj, f"{path}/config.json[{MASK_KEY}]")


def check_folder(spec: str) -> str:
    """Resolve a spec to a local folder or hub name; a local-looking path that is not a usable model folder is a
    `ModelError` naming what is missing (instead of HF's "Repo id must be in the form …")."""
    path = resolve_model_path(spec)
    p = Path(path)
    looks_local = (
        p.exists()
        or p.is_absolute()
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or path.endswith("/")
        or "\\" in path
    )
    if not looks_local:
        return path  # a hub name: HF resolves it (offline, a clear error follows from the loader)
    if not p.exists():
        raise ModelError(f"{spec}: no such model folder")
    if not p.is_dir():
        raise ModelError(f"{spec}: not a folder (a model is a folder with config.json and weights)")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{cfg}: missing (not a Hugging Face model folder)")
    try:
        json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{cfg}: not valid JSON ({err})") from None
    weights = [
        w for w in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json") if (p / w).exists()
    ]
    if not weights:
        raise ModelError(f"{p}: no weights (model.safetensors or pytorch_model.bin)")
    if not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise ModelError(
            f"{p}: no tokenizer ({' or '.join(TOKENIZER_FILES[:3])}); without it every word would be an unknown token"
        )
    return path


# any one of these makes a folder's tokenizer (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def check_device(device) -> None:
    """A device name that names a device this machine has, else one `SettingError` naming --device (not a
    model loading failure)."""
    if device is None:
        return
    import torch

    from mice.validate import SettingError

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1, mps)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"--device {device}: no CUDA device is available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise SettingError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise SettingError(f"--device {device}: MPS is not available on this machine")
    if d.type not in ("cpu", "cuda", "mps"):
        raise SettingError(f"--device {device}: unsupported device type {d.type!r} (cpu, cuda, mps)")


def load_error(spec, err: Exception) -> ModelError:
    """A loading failure as one line naming the folder's weights file where that is what failed."""
    p = Path(resolve_model_path(str(spec)))
    what = " ".join(str(err).split())[:200]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).exists() and any(
            s in type(err).__name__ + what
            for s in ("Safetensor", "safetensor", "header", "pickle", "zip", "EOF", "size")
        ):
            return ModelError(f"{p / name}: cannot be read ({type(err).__name__}: {what})")
    return ModelError(f"cannot load model {spec}: {type(err).__name__}: {what}")


def load(
    spec,
    *,
    mask=None,
    mode: str = "renorm",
    device=None,
    max_length: int | None = None,
    max_query_length: int | None = None,
    index=None,
    arch: str | None = None,
    kind: str = "any",
    use_kv="auto",
    batch_size: int = 64,
    dtype="fp32",
):
    """The scorer for `spec` (see the module docstring). `kind="hooked"` insists on a HookedCrossEncoder
    (probes and ablations), `kind="mice"` on a MICE model; `max_length` is the pair length of a cross-encoder,
    the document length of MICE (`max_query_length` its query length); `index` a document-state index folder
    (MICE only); `arch="a+b"` builds MICE-ℓa+b from a cross-encoder; `dtype` the compute precision (fp32, bf16,
    fp16 or a torch dtype), part of the scorer's `identity()`."""
    from mice.models.precision import normalise_precision

    from mice.distributed import rank_device

    from mice.models.adapters import MODES
    from mice.validate import SettingError

    if mode not in MODES:  # refused with or without --mask: a typo is never silently the default
        raise SettingError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    dtype = normalise_precision(dtype)  # a bad name fails before any weights load
    check_device(device)
    device = rank_device(device)
    scorer = _load(spec, mask, mode, device, max_length, max_query_length, index, arch, kind, use_kv, batch_size)
    return scorer.set_compute_dtype(dtype)


def _load(spec, mask, mode, device, max_length, max_query_length, index, arch, kind, use_kv, batch_size):
    from mice.validate import check_setting

    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r} ({', '.join(KINDS)})")
    check_setting("max_length", max_length)
    check_setting("max_query_length", max_query_length)
    s = str(spec)

    def refuse(option: str, why: str):
        raise ModelError(f"{s}: {option} does not apply ({why})")

    if s.startswith("biencoder:"):
        if kind != "any":
            refuse(f"a bi-encoder as a {kind} model", "it has no cross-attention to hook")
        for option, value in (
            ("--mask", mask),
            ("--index", index),
            ("--arch", arch),
            ("--max-query-length", max_query_length),
        ):
            if value is not None:
                refuse(option, "a bi-encoder encodes query and document apart")
        from mice.models.biencoder import BiEncoder

        name = s.split(":", 1)[1]
        return BiEncoder("packaged:minilm" if name in ("", "packaged") else name, device=device, max_length=max_length)

    path = check_folder(s)
    try:
        from mice.models.late_interaction import is_late_interaction_folder

        if is_late_interaction_folder(path):
            if kind != "any":
                refuse(f"a late-interaction model as a {kind} model", "it encodes query and document apart")
            for option, value in (("--mask", mask), ("--index", index), ("--arch", arch)):
                if value is not None:
                    refuse(option, "a late-interaction model encodes query and document apart")
            from mice.models.late_interaction import MaxSimScorer

            return MaxSimScorer.from_pretrained(
                path, max_query_length=max_query_length, max_doc_length=max_length, device=device
            )
        if is_mice_folder(path) or arch is not None:
            return _load_mice(
                s, path, mask, device, max_length, max_query_length, index, arch, kind, use_kv, batch_size
            )
        if kind == "mice":
            raise ModelError(
                f'{s} is not a MICE folder (config.json without a "mice" key); give --arch a+b '
                "to build MICE-ℓa+b from this cross-encoder"
            )
        if index is not None:
            refuse("--index", "only a MICE model reads a document-state index")
        if max_query_length is not None:
            refuse("--max-query-length", "a cross-encoder truncates the pair as a whole: use --max-length")
        from mice.models.hooked import HookedCrossEncoder

        model = HookedCrossEncoder.from_pretrained(path, max_length=max_length, device=device)
        mask = mask if mask is not None else saved_mask(path)
        if mask is not None:
            model.set_mask(mask, mode)
        return model
    except ModelError:
        raise
    except Exception as err:  # HF/safetensors failures on a bad folder -> one line naming the file
        from mice.errors import MiceError

        if isinstance(err, MiceError):
            raise
        raise load_error(s, err) from None


def _load_mice(s, path, mask, device, max_length, max_query_length, index, arch, kind, use_kv, batch_size):
    from mice.models.mice_model import MICEModel

    if kind == "hooked":
        raise ModelError(
            f"{s}: probes and ablations need a cross-encoder with hooks; a MICE model has its "
            "interaction pattern built in"
        )
    if mask is not None:
        raise ModelError(f"{s}: a MICE model has its interaction pattern built in; --mask does not apply")
    if arch is not None:
        if is_mice_folder(path):
            raise ModelError(f"{s} is a MICE model already; --arch does not apply")
        try:
            a, b = (int(x) for x in str(arch).split("+"))
        except ValueError:
            raise ModelError(f"--arch {arch!r}: expected a+b, e.g. 3+3") from None
        model = MICEModel.from_cross_encoder(
            path,
            contextual_layers=a,
            interaction_layers=b,
            max_query_length=max_query_length,
            max_doc_length=max_length,
            device=device,
        )
    else:
        model = MICEModel.from_pretrained(
            path, device=device, max_query_length=max_query_length, max_doc_length=max_length
        )
    if index is None:
        return model
    if max_length is not None:
        raise ModelError(
            f"{s}: --max-length does not apply with --index (documents were encoded when the index was built)"
        )
    from mice.index.fast_rerank import FastReranker, IndexScorer

    return IndexScorer(FastReranker(model, index, use_kv=use_kv, batch_size=batch_size))
