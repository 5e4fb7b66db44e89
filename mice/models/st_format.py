"""sentence-transformers cross-encoder folders, loaded as the family's own HF `…ForSequenceClassification`.

Why: the Ettin rerankers (`cross-encoder/ettin-reranker-{17m,32m,68m,150m,400m,1b}-v1`, May 2026) are not
plain HF classifiers. Their config.json describes a bare `ModernBertModel`; the scoring head lives in
sentence-transformers modules next to it, so HF's `AutoModelForSequenceClassification` loads them with a
*random* head and no error. This module reads that head and puts it where the family's HF head is, so
adapters, hooks, MICE and `save_pretrained` keep seeing one kind of model.

What is published (sources: sentence-transformers 6.2.0, installed here, whose `CrossEncoder.save_pretrained`
was run on tiny models; its `cross_encoder/model.py` for the activation keys of older folders; the Ettin
reranker model cards on huggingface.co, section "Full Model Architecture"; sentence-transformers PR #3742
"Allow Dense as CrossEncoder scoring head", April 2026, which made the modular head a `CrossEncoder`):
- every folder a module-based `CrossEncoder.save_pretrained` writes (checked: 6.2.0) has `modules.json`,
  `config_sentence_transformers.json` (`activation_fn`, `prompts`, `default_prompt_name`) and, per module, a
  subfolder with `config.json` and `model.safetensors` (`1_Pooling/`, `2_Dense/`…). The `Transformer` module
  is saved in the root with its `sentence_bert_config.json` (`transformer_task`);
- plain: one `Transformer` with `transformer_task="sequence-classification"`. The root is an ordinary HF
  `…ForSequenceClassification` folder, loaded as is (so are older folders without modules.json: activation in
  config.json under `sentence_transformers.activation_fn`, or `sbert_ce_default_activation_function` before v4);
- modular: `Transformer` (feature-extraction, bare encoder) → `Pooling` → `Dense`/`LayerNorm`… → `Dense` with
  `module_output_name="scores"`. The Ettin rerankers: Pooling(cls) → Dense(H→H, no bias, GELU) → LayerNorm(H)
  → Dense(H→1, Identity).

Modular heads read here, exactly (anything else is a one-line `ModelError` naming the file and the module):
- ModernBERT: Pooling(cls|mean) → Dense(H→H, act) → LayerNorm(H) → Dense(H→n, Identity) = HF's
  `classifier_pooling` → `head.dense` → `head.act` → `head.norm` → `classifier`. The ST LayerNorm has a bias;
  an encoder configured without norm biases (`norm_bias=False`, ModernBERT's default) gets zero ones, which computes
  the same and lets HF reload what we save;
- BERT: Pooling(cls) → Dense(H→H, Tanh) → Dense(H→n, Identity) = `pooler` → `classifier`.

Scores: mice's `predict` returns the raw logit. sentence-transformers' `predict` applies `activation_fn`
(Sigmoid by default for one label), so its number is `activation_fn(mice score)`; rankings are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from mice.errors import ModelError
from mice.models.hf import quiet_transformers

MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
# sentence-transformers' saved activation (class path) -> the name HF's ACT2FN knows it by
ACTIVATIONS = {
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.SiLU": "silu",
    "torch.nn.modules.linear.Identity": "linear",
}
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin", "*/pytorch_model.bin"]


def _read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{file}: not readable JSON ({err})") from None


def local_folder(spec: str) -> str:
    """`spec` itself, or for a hub repo with `modules.json` the local snapshot of its weights and module
    folders (the head is in those folders; HF's loader would fetch only the root). Offline or not a
    sentence-transformers repo: `spec` unchanged, and HF's own loader reports what is missing."""
    if Path(spec).exists() or spec.count("/") != 1:
        return spec
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        hf_hub_download(spec, MODULES)
        return snapshot_download(spec, allow_patterns=HUB_FILES, ignore_patterns=["onnx/*", "openvino/*"])
    except Exception:  # noqa: BLE001 - no modules.json, or no network: the plain path decides
        return spec


class _Module:
    """One entry of modules.json: its kind (class name), folder, config and weights."""

    def __init__(self, folder: Path, entry: dict, where: str):
        self.kind = str(entry.get("type", "?")).rsplit(".", 1)[-1]
        self.where = where
        self.dir = folder / str(entry.get("path", ""))
        cfg = self.dir / ("sentence_bert_config.json" if self.kind == "Transformer" else "config.json")
        self.config = _read_json(cfg) if cfg.is_file() else {}

    def weights(self) -> dict:
        import torch

        for name in ("model.safetensors", "pytorch_model.bin"):
            file = self.dir / name
            if file.is_file():
                try:
                    if name.endswith(".safetensors"):
                        from safetensors.torch import load_file

                        return load_file(str(file))
                    return torch.load(str(file), map_location="cpu", weights_only=True)
                except Exception as err:  # noqa: BLE001 - a damaged file is the user's to know about
                    raise ModelError(f"{file}: cannot be read ({type(err).__name__})") from None
        raise ModelError(f"{self.dir}: no weights for {self.where} (model.safetensors or pytorch_model.bin)")

    def __str__(self) -> str:
        return f"{self.where} ({self.kind})"


def head_modules(folder) -> list[_Module] | None:
    """The head modules after the `Transformer` of a modular cross-encoder folder, or None for anything else:
    no modules.json, one sequence-classification `Transformer` (plain), or not a cross-encoder at all (a
    `SentenceTransformer` bi-encoder, whose encoder mice uses as a bare backbone). A folder is a cross-encoder
    when config_sentence_transformers.json says `model_type: CrossEncoder` or a module writes "scores".
    Settings mice cannot reproduce (a default prompt, lower-casing) and unsupported stacks are `ModelError`s."""
    folder = Path(str(folder))
    file = folder / MODULES
    if not file.is_file():
        return None
    st_cfg = folder / ST_CONFIG
    st = _read_json(st_cfg) if st_cfg.is_file() else {}
    entries = _read_json(file)
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"{file}: expected a list of modules")
    mods = [
        _Module(folder, e, f"module {e.get('idx', i)} {e.get('path') or '(root)'}")
        for i, e in enumerate(entries)
        if isinstance(e, dict)
    ]
    if st.get("model_type") != "CrossEncoder" and not any(
        m.config.get("module_output_name") == "scores" for m in mods[1:]
    ):
        return None  # a bi-encoder (e.g. the packaged MiniLM): its encoder is a bare backbone
    if st.get("default_prompt_name"):
        raise ModelError(f"{st_cfg}: default_prompt_name is set; mice does not prepend prompts to pairs")
    first = mods[0]
    if first.kind != "Transformer":
        raise ModelError(f"{file}: {first} is not a Transformer; mice reads HF encoders only")
    if first.dir != folder:
        raise ModelError(f"{file}: {first} is not saved in the folder's root")
    if first.config.get("do_lower_case"):
        raise ModelError(
            f"{first.dir / 'sentence_bert_config.json'}: do_lower_case is set; mice does not lower-case pairs"
        )
    task = first.config.get("transformer_task", "sequence-classification")
    if task == "sequence-classification" and len(mods) == 1:
        return None
    if task != "feature-extraction":
        extra = mods[1] if len(mods) > 1 else first
        raise ModelError(f"{file}: {extra} after a {task!r} Transformer is not supported")
    if first.config.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise ModelError(f"{file}: {first} does not output token_embeddings")
    return [m for m in mods[1:] if m.kind != "Dropout"]  # dropout: identity at inference


def _dense(m: _Module, hidden: int, out: int | None, act: str | None, scores: bool) -> dict:
    """The weights of a Dense module checked against the shape and role the family's head needs."""
    c = m.config
    bad = None
    if m.kind != "Dense":
        bad = "expected Dense"
    elif int(c.get("in_features", -1)) != hidden or (out is not None and int(c.get("out_features", -1)) != out):
        need = f"{hidden}→{out or 'labels'}"
        bad = f"shape {c.get('in_features')}→{c.get('out_features')} where the head needs {need}"
    elif c.get("use_residual"):
        bad = "use_residual is not part of the head"
    elif (
        c.get("module_input_name", "sentence_embedding") != "sentence_embedding"
        or (c.get("module_output_name") == "scores") != scores
    ):
        bad = "reads or writes an unexpected feature"
    elif act is not None and c.get("activation_function") != act:
        bad = f"activation {c.get('activation_function')} where the head needs {act}"
    elif act is None and c.get("activation_function") not in ACTIVATIONS:
        bad = f"activation {c.get('activation_function')} has no HF equivalent"
    if bad:
        raise ModelError(f"{m.dir / 'config.json'}: {m}: {bad}")
    w = m.weights()
    return {"weight": w["linear.weight"], "bias": w.get("linear.bias")}


def _pooling(m: _Module, modes: tuple[str, ...]) -> str:
    mode = m.config.get("pooling_mode", "mean") if m.kind == "Pooling" else None
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in modes:
        raise ModelError(f"{m.dir / 'config.json'}: {m}: expected Pooling {'|'.join(modes)}, got {mode}")
    return mode


def _stack_error(folder: Path, mods: list[_Module], family: str, shape: str) -> ModelError:
    names = " → ".join(m.kind for m in mods)
    return ModelError(f"{folder / MODULES}: head {names} is not a {family} head ({shape})")


def _modernbert(config, mods: list[_Module], folder: Path):
    shape = "Pooling(cls|mean) → Dense(H→H) → LayerNorm → Dense(H→labels)"
    if len(mods) != 4:
        raise _stack_error(folder, mods, "ModernBERT", shape)
    h = int(config.hidden_size)
    mode = _pooling(mods[0], ("cls", "mean"))
    dense = _dense(mods[1], h, h, None, scores=False)
    if mods[2].kind != "LayerNorm" or int(mods[2].config.get("dimension", -1)) != h:
        raise ModelError(f"{mods[2].dir / 'config.json'}: {mods[2]}: expected LayerNorm({h})")
    if abs(float(config.norm_eps) - 1e-5) > 1e-12:  # sentence-transformers' LayerNorm uses torch's default eps
        raise ModelError(
            f"{folder / 'config.json'}: norm_eps {config.norm_eps} differs from the LayerNorm module's 1e-5 ({mods[2]})"
        )
    norm = mods[2].weights()
    out = _dense(mods[3], h, None, "torch.nn.modules.linear.Identity", scores=True)
    config.classifier_pooling = mode
    config.classifier_bias = dense["bias"] is not None
    config.classifier_activation = ACTIVATIONS[mods[1].config["activation_function"]]
    config.norm_bias = True  # the head's norm has a bias; zero biases elsewhere compute what none did
    state = {
        "head.dense.weight": dense["weight"],
        "head.norm.weight": norm["norm.weight"],
        "head.norm.bias": norm["norm.bias"],
        "classifier.weight": out["weight"],
    }
    if dense["bias"] is not None:
        state["head.dense.bias"] = dense["bias"]
    return state, out, ("head.", "classifier.", "norm.bias")


def _bert(config, mods: list[_Module], folder: Path):
    shape = "Pooling(cls) → Dense(H→H, Tanh) → Dense(H→labels)"
    if len(mods) != 3:
        raise _stack_error(folder, mods, "BERT", shape)
    h = int(config.hidden_size)
    _pooling(mods[0], ("cls",))
    pooler = _dense(mods[1], h, h, "torch.nn.modules.activation.Tanh", scores=False)
    if pooler["bias"] is None:
        raise ModelError(f"{mods[1].dir / 'config.json'}: {mods[1]}: BERT's pooler needs a bias")
    out = _dense(mods[2], h, None, "torch.nn.modules.linear.Identity", scores=True)
    state = {
        "bert.pooler.dense.weight": pooler["weight"],
        "bert.pooler.dense.bias": pooler["bias"],
        "classifier.weight": out["weight"],
    }
    return state, out, ("bert.pooler.", "classifier.")


HEADS = {"modernbert": _modernbert, "bert": _bert}


def load_modular(folder, mods: list[_Module], **model_kwargs):
    """The HF `…ForSequenceClassification` model of a modular folder: the root's encoder weights, the head
    modules' weights in the family's head. No parameter is left at its random initialisation."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(str(folder))
    config = AutoConfig.from_pretrained(str(folder))
    build = HEADS.get(config.model_type)
    if build is None:
        raise ModelError(
            f"{folder / MODULES}: a {config.model_type} encoder with a sentence-transformers head "
            f"({' → '.join(m.kind for m in mods)}); mice reads such heads for "
            f"{', '.join(HEADS)} only"
        )
    state, out, fresh = build(config, mods, folder)
    labels = int(out["weight"].shape[0])
    config.num_labels = labels
    state["classifier.bias"] = out["bias"] if out["bias"] is not None else torch.zeros(labels)
    config.architectures = [type(config).__name__.replace("Config", "ForSequenceClassification")]
    with quiet_transformers():  # the head HF reports as missing is filled below
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), config=config, output_loading_info=True, **model_kwargs
        )
    own = model.state_dict()
    missing = [k for k in info["missing_keys"] if k not in state]
    stray = [k for k in missing if not any(k.startswith(p) or k.endswith(p) for p in fresh)]
    if stray:
        raise ModelError(f"{folder}: weights missing for {', '.join(stray[:3])} (not a saved {config.model_type})")
    with torch.no_grad():
        for k in missing:  # norm biases the encoder never had: zero is what it computed
            own[k].zero_()
        for k, v in state.items():
            if k not in own or own[k].shape != v.shape:
                raise ModelError(f"{folder}: head weight {k} does not fit the {config.model_type} head")
            own[k].copy_(v)
    model.eval()
    return model


def load_classifier(name_or_path, num_labels: int = 1, **model_kwargs):
    """Any cross-encoder as an HF `…ForSequenceClassification` model: a plain HF folder or hub name as is, a
    sentence-transformers modular folder with its own head, a bare encoder with a fresh `num_labels` head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = str(name_or_path)
    mods = head_modules(path) if Path(path).is_dir() else None
    if mods is not None:
        return load_modular(path, mods, **model_kwargs)
    config = AutoConfig.from_pretrained(path)
    bare = not any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if bare:
        config.num_labels = num_labels  # bare encoder: the classifier head starts fresh
    if not Path(path).is_dir():  # a hub name: HF's own checks
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, **model_kwargs)
    check_layer_count(Path(path), config)
    # what HF would log (or raise without naming the tensor) is read from the loading info and refused there
    kwargs = {"ignore_mismatched_sizes": True, **model_kwargs}
    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, output_loading_info=True, **kwargs
        )
    check_loading_info(Path(path), info, bare)
    check_finite(Path(path), model)
    return model


# heads a bare encoder's checkpoint may carry (pre-training) or lack (the fresh classifier): not errors then
_FRESH_HEAD = ("classifier.", "pooler.", "head.", "bert.pooler.", "roberta.pooler.", "electra.pooler.")
_PRETRAINING_HEADS = ("cls.", "lm_head.", "generator", "discriminator_predictions", "decoder.", "head.", "pooler.")


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (folder / name).exists():
            return folder / name
    return folder / "model.safetensors"


def _saved_names(folder: Path) -> list[str]:
    """Tensor names in the folder's safetensors weights (one file or an index), [] for other formats."""
    file = _weights_file(folder)
    if file.name == "model.safetensors.index.json":
        obj = _read_json(file)
        return list(obj.get("weight_map", {})) if isinstance(obj, dict) else []
    if file.name != "model.safetensors" or not file.exists():
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            return list(fh.keys())
    except Exception as err:  # a torn or foreign file: one line naming it
        raise ModelError(f"{file}: cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None


def check_layer_count(folder: Path, config) -> None:
    """config.json's layer count against the layers the weights hold (before any weights are built)."""
    import re

    want = getattr(config, "num_hidden_layers", None)
    found = {int(m.group(1)) for n in _saved_names(folder) for m in [re.search(r"\.layers?\.(\d+)\.", n)] if m}
    if want is None or not found:
        return
    have = max(found) + 1
    if have != want:
        raise ModelError(
            f"{folder / 'config.json'}: num_hidden_layers is {want}, but {_weights_file(folder).name} "
            f"holds {have} layers"
        )


def check_loading_info(folder: Path, info: dict, bare: bool) -> None:
    """Missing, unexpected or mis-shaped tensors (HF's loading report) as one `ModelError` naming file and
    tensor. A bare encoder may lack its fresh head and carry pre-training heads; nothing else may differ."""
    file = _weights_file(folder)
    missing = [k for k in info.get("missing_keys", []) if not (bare and any(p in k for p in _FRESH_HEAD))]
    unexpected = [
        k
        for k in info.get("unexpected_keys", [])
        if not (bare and any(k.startswith(p) or f".{p}" in k for p in _PRETRAINING_HEADS))
    ]
    mismatched = list(info.get("mismatched_keys", []))
    if mismatched:
        name, *shapes = mismatched[0] if isinstance(mismatched[0], (tuple, list)) else (mismatched[0],)
        raise ModelError(
            f"{file}: tensor {name} has the wrong shape for config.json"
            + (f" ({' vs '.join(map(str, shapes))})" if shapes else "")
        )
    if missing:
        raise ModelError(
            f"{file}: tensor {sorted(missing)[0]} is missing ({len(missing)} missing in all); "
            "the weights do not match config.json"
        )
    if unexpected:
        raise ModelError(
            f"{file}: tensor {sorted(unexpected)[0]} is not part of the model config.json describes "
            f"({len(unexpected)} unexpected in all)"
        )
    errors = [e for e in info.get("error_msgs", []) if e]
    if errors:
        raise ModelError(f"{file}: {' '.join(str(errors[0]).split())[:200]}")


def check_finite(folder: Path, model) -> None:
    """Every floating weight finite; the first NaN or inf one is named with its file."""
    import torch

    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{_weights_file(folder)}: tensor {name} holds NaN or inf values")
