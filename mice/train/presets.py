"""Named starting points for `mice train --preset NAME` (flags and config files override them).

- `tiny`: seconds, for tests and notebooks (tiny models, a handful of steps);
- `quick`: this laptop-class machine (2 CPU cores): the demo cross-encoder from the packaged MiniLM on
  `embedded:docs` in about 5 minutes, and a masked (mask2) or MICE-ℓ2+4 model distilled from it (teacher: that
  cross-encoder, Margin-MSE) in about 5 minutes; each stops by wall clock (`max_minutes`) as well as steps. The
  cross-encoder recipe is the measured one: listwise CE + Margin-MSE against the packaged
  bi-encoder's cosine ×10, lr 6e-5 (encoder) / 1e-3 (fresh pooler + classifier), max length 96. Distilling the
  student from the cross-encoder it starts from (`teacher: source`) is a cheaper recipe of ours, not the paper's;
- `paper-*`: one preset per model of the MICE paper (Vast et al. 2026), each fixing its mode (see
  `PAPER_MODELS`). Every one starts from the *untuned* encoder (`microsoft/MiniLM-L12-H384-uncased`,
  `jhu-clsp/ettin-encoder-17m`/`-32m`), learns Margin-MSE from Hofstätter's ensemble-teacher triples
  (`hofstatter-ensemble`, see `mice.train.teacher`) walking the file's triples in a seeded order (`sampling:
  triples`), with AdamW lr 7e-6, weight decay 0, batch 32, 1 negative,
  5k warmup steps, 125k steps, 512 tokens per side; it validates every 10k steps on 500 random MS MARCO dev
  queries with dev.small excluded (RR@10 re-ranking BM25's top 100). `paper-minilm-ce` is "Baseline ft".
  These are GPU runs on `irds:` data; offline, point `--dataset` and `--set dev_dataset=…`, `dev_exclude=…` and
  `teacher=…` at local files of the same shape (the tests do).
"""

from __future__ import annotations

from mice.errors import MiceError
from mice.train.config import SOURCE_TEACHER, TrainConfig

_COMMON = {
    "tiny": {
        "max_steps": 8,
        "batch_size": 2,
        "negatives": 2,
        "bm25_depth": 10,
        "max_length": 64,
        "max_query_length": 24,
        "lr": 1e-4,
        "eval_every": 4,
        "save_every": 4,
        "log_every": 2,
        "dev_queries": 10,
        "dev_top_k": 10,
        "warmup_steps": 1,
    },
    "quick": {
        "dataset": "embedded:docs",
        "batch_size": 4,
        "negatives": 3,
        "bm25_depth": 20,
        "max_length": 96,
        "max_query_length": 32,
        "dev_queries": 50,
        "dev_top_k": 20,
        "log_every": 10,
        "max_minutes": 5.5,
        "eval_batch_size": 64,
    },
}

# The paper's recipe, shared by every paper-* preset (xpmir/mice: src/ir_training/**/*.yaml and
# src/midFusion_training/*.yaml; `steps_per_epoch` 100 × `max_epochs` 1250 = 125k steps).
PAPER_RECIPE = {
    "loss": "margin-mse",
    "teacher": "hofstatter-ensemble",
    "teacher_scale": 1.0,
    "sampling": "triples",
    "batch_size": 32,
    "negatives": 1,
    "lr": 7e-6,
    "head_lr": None,
    "weight_decay": 0.0,
    "warmup_steps": 5000,
    "max_steps": 125_000,
    "max_grad_norm": 1.0,
    "max_length": 512,
    "max_query_length": 512,
    "dataset": "irds:msmarco-passage/train?split=train",
    "train_split": "train",
    "dev_dataset": "irds:msmarco-passage/dev?split=dev",
    "dev_split": "dev",
    "dev_exclude": "irds:msmarco-passage/dev/small",
    "dev_queries": 500,
    "dev_sample": "random",
    "dev_top_k": 100,
    "bm25_depth": 100,
    "eval_every": 10_000,
    "save_every": 10_000,
    "log_every": 100,
    "eval_at_start": False,
    "eval_batch_size": 128,
}

MINILM = "microsoft/MiniLM-L12-H384-uncased"
ETTIN17 = "jhu-clsp/ettin-encoder-17m"
ETTIN32 = "jhu-clsp/ettin-encoder-32m"


def _ce(model, **kw):
    return {"mode": "cross-encoder", "model": model, **kw}


def _masked(model, mask):
    return {"mode": "masked", "model": model, "mask": mask}


def _mice(model, a, b, **kw):
    return {"mode": "mice", "model": model, "contextual_layers": a, "interaction_layers": b, **kw}


# name → (the paper's label, settings on top of PAPER_RECIPE). Ettin MICE runs on the ModernBERT adapter when the
# head pools `[CLS]`; a mean-pooling config stops with a clear ModelError when the model is built.
PAPER_MODELS: dict[str, tuple[str, dict]] = {
    "paper-minilm-ce": ("Baseline ft (MiniLM-L12)", _ce(MINILM)),
    "paper-minilm-mask0": ("Mask0", _masked(MINILM, "mask0")),
    "paper-minilm-mask1": ("Mask1", _masked(MINILM, "mask1")),
    "paper-minilm-mask2": ("Mask2", _masked(MINILM, "mask2")),
    "paper-minilm-mask3-l4": ("Mask3-ℓ4", _masked(MINILM, "mask3:k=4")),
    "paper-minilm-mask3-l6": ("Mask3-ℓ6", _masked(MINILM, "mask3:k=6")),
    "paper-minilm-prettr-l4": ("PreTTR ℓ4", _masked(MINILM, "prettr:k=4")),
    "paper-minilm-prettr-l6": ("PreTTR ℓ6", _masked(MINILM, "prettr:k=6")),
    "paper-minilm-sparse-ce": ("Sparse CE", _masked(MINILM, "sparse_ce")),
    "paper-minilm-mice-l4+3": ("MICE-ℓ4+3", _mice(MINILM, 4, 3)),
    "paper-minilm-mice-l4+8": ("MICE-ℓ4+8", _mice(MINILM, 4, 8)),
    "paper-minilm-mice-l6+4": ("MICE-ℓ6+4", _mice(MINILM, 6, 4)),
    # the paper's late-interaction baseline (xpmir/mice src/ir_training/reproductions/bm25_minilm_ColBERT.yaml):
    # ours is the small ColBERT-style model of mice.models.late_interaction, not PyLate's ColBERT (see its docstring)
    "paper-minilm-colbert": ("ColBERT (MiniLM-L12)", {"mode": "late-interaction", "model": MINILM}),
    "paper-ettin17m-ce": ("Baseline ft (Ettin-17M)", _ce(ETTIN17)),
    "paper-ettin17m-mice-l3+2": ("Ettin-17M MICE-ℓ3+2", _mice(ETTIN17, 3, 2)),
    "paper-ettin17m-mice-l3+3": ("Ettin-17M MICE-ℓ3+3", _mice(ETTIN17, 3, 3)),
    "paper-ettin32m-ce": ("Baseline ft (Ettin-32M)", _ce(ETTIN32)),
    "paper-ettin32m-mice-l6+2": ("Ettin-32M MICE-ℓ6+2", _mice(ETTIN32, 6, 2)),
    "paper-ettin32m-mice-l6+3": ("Ettin-32M MICE-ℓ6+3", _mice(ETTIN32, 6, 3)),
    "paper-ettin32m-mice-l4+3": ("Ettin-32M MICE-ℓ4+3", _mice(ETTIN32, 4, 3)),
}

_BY_MODE = {
    ("tiny", "cross-encoder"): {"loss": "listwise"},
    ("tiny", "masked"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER, "mask": "mask2"},
    ("tiny", "mice"): {
        "loss": "margin-mse",
        "teacher": SOURCE_TEACHER,
        "contextual_layers": 1,
        "interaction_layers": 2,
    },  # a tiny model needs >= 3 layers
    ("tiny", "late-interaction"): {"loss": "margin-mse", "teacher": SOURCE_TEACHER},
    ("quick", "cross-encoder"): {
        "model": "packaged:minilm",
        "loss": "listwise+margin-mse",
        "teacher": "biencoder:packaged",
        "teacher_scale": 10.0,
        "lr": 6e-5,
        "head_lr": 1e-3,
        "warmup_steps": 30,
        "max_steps": 300,
        "eval_every": 75,
        "save_every": 75,
        "eval_at_start": False,
    },
    ("quick", "masked"): {
        "loss": "margin-mse",
        "teacher": SOURCE_TEACHER,
        "mask": "mask2",
        "lr": 5e-5,
        "warmup_steps": 20,
        "max_steps": 300,
        "eval_every": 75,
        "save_every": 75,
        "eval_at_start": False,
    },
    # MICE-ℓ2+4: measured on embedded:docs, 300 steps from the demo cross-encoder reach its dev RR@10, while
    # ℓ3+3 (whose last cross-attention is dead weight, leaving two that read the document) is at ~75% after 400
    ("quick", "mice"): {
        "loss": "margin-mse",
        "teacher": SOURCE_TEACHER,
        "contextual_layers": 2,
        "interaction_layers": 4,
        "lr": 6e-5,
        "warmup_steps": 20,
        "max_steps": 300,
        "eval_every": 75,
        "save_every": 75,
        "eval_at_start": False,
    },  # untrained MICE ≈ random
    # the late-interaction baseline: MICE's recipe (same teacher, lr, steps), and a head lr for its fresh
    # projection as for the cross-encoder's fresh head
    ("quick", "late-interaction"): {
        "loss": "margin-mse",
        "teacher": SOURCE_TEACHER,
        "lr": 6e-5,
        "head_lr": 1e-3,
        "warmup_steps": 20,
        "max_steps": 300,
        "eval_every": 75,
        "save_every": 75,
        "eval_at_start": False,
    },
}

PRESETS = tuple(_COMMON) + tuple(PAPER_MODELS)


def preset_mode(name: str) -> str | None:
    """The mode a preset fixes (paper-* presets), or None (tiny, quick: any mode)."""
    return PAPER_MODELS[name][1]["mode"] if name in PAPER_MODELS else None


def preset_settings(name: str, mode: str | None = None) -> dict:
    """The settings a preset gives `mode` (a flat dict of TrainConfig fields). A paper-* preset fixes its mode:
    asking it for another one is an error."""
    if name in PAPER_MODELS:
        fixed = preset_mode(name)
        if mode is not None and mode != fixed:
            raise MiceError(f"preset {name} trains a {fixed} model; --mode {mode} contradicts it")
        return {**PAPER_RECIPE, **PAPER_MODELS[name][1]}
    if name == "paper":
        raise MiceError("preset 'paper' was replaced by one preset per paper model: " + ", ".join(PAPER_MODELS))
    if name not in _COMMON:
        raise MiceError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    mode = mode or "cross-encoder"
    return {**_COMMON[name], **_BY_MODE.get((name, mode), {}), "mode": mode}


def preset(name: str, mode: str | None = None, **overrides) -> TrainConfig:
    """A `TrainConfig` from a preset, with `overrides` applied (Python API)."""
    return TrainConfig().updated(preset_settings(name, mode), f"preset {name}").updated(overrides)
