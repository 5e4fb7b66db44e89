"""`TrainConfig`: everything a training run depends on, in one dataclass that round-trips through JSON/TOML.

Values come, in increasing priority, from the dataclass defaults, a preset (`mice.train.presets`), a config
file (JSON or TOML, flat keys named like the fields) and explicit overrides (CLI flags).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from mice.errors import MiceError
from mice.train.devset import SAMPLES

MODES = ("cross-encoder", "masked", "mice", "late-interaction")
LOSS_TERMS = ("listwise", "bce", "margin-mse")
SAMPLINGS = ("groups", "triples")
SOURCE_TEACHER = "source"  # teacher = the model the student starts from (self-distillation: our cheap offline
# recipe; the paper distils from Hofstätter's ensemble-teacher scores instead, see presets.PAPER_RECIPE)


class ConfigError(MiceError, ValueError):
    """A training configuration is invalid; the message names the field."""


class TrainingDiverged(MiceError, RuntimeError):
    """The loss (or the gradient norm) became NaN/inf; the last good checkpoint was kept."""


def _bad(name, why):
    raise ConfigError(f"train config: {name}: {why}")


@dataclass
class TrainConfig:
    """A training run. `batch_size` counts training groups (1 query, 1 positive, `negatives` negatives) per
    process and step; under data parallelism the effective batch is `batch_size × processes`."""

    mode: str = "cross-encoder"
    model: str = "packaged:minilm"  # backbone (cross-encoder mode) or source cross-encoder (masked, mice,
    # late-interaction: its encoder is kept, its head dropped)
    dataset: str = "embedded:docs"
    train_split: str = "train"
    dev_split: str | None = "dev"
    dev_dataset: str | None = None  # default: `dataset` (ir_datasets collections hold one split each)
    output: str = "runs/train"

    # student
    max_length: int = 128  # pair length (cross-encoder, masked); document length (mice, late-interaction)
    max_query_length: int = 32  # mice, late-interaction (saved in the model; `from_pretrained(max_query_length=)`)
    cls_cross_attention: str = "none"  # mice: none (the paper's text) | uniform (the authors' code)
    mask: str | None = None  # masked: preset spec (mask2, mask3:k=2) or mask .json
    mask_mode: str = "renorm"
    contextual_layers: int = 3  # mice: a
    interaction_layers: int = 3  # mice: b

    # training groups
    negatives: int = 3
    bm25_depth: int = 20  # hard negatives come from BM25's top-`bm25_depth`, judged-relevant removed
    # ... and, when set, also from this bi-encoder's top-`bm25_depth` (mice.train.mining): the documents it
    # confuses with the positive
    negative_miner: str | None = None
    # a mix (`mix:A+B`): each part is drawn in proportion to its training queries ** mix_alpha. 1 = by size (every
    # query equally often), 0 = every part equally often, 0.5 = between (the temperature sampling of multilingual
    # pre-training): a small second kind of text is seen more often than its size alone would give
    mix_alpha: float = 1.0
    # groups: per step a query, one of its positives and `negatives` drawn candidates (BM25's, or a teacher file's
    # pairs); triples (the authors' sampler): the teacher file's (query, positive, negative) triples, each once per
    # epoch in a seeded order, with that triple's own teacher scores (needs a teacher file and negatives = 1)
    sampling: str = "groups"

    # loss: '+'-joined terms among listwise, bce, margin-mse
    loss: str = "listwise"
    teacher: str | None = None  # model spec, "source", or a file of `score_pos score_neg qid pos neg` lines
    teacher_scale: float = 1.0  # teacher scores are multiplied by this (cosine → logit-like range)
    teacher_max_length: int | None = None  # default: max_length
    teacher_cache: str | None = None  # parquet path; default: under the mice cache, keyed by teacher + data
    teacher_batch_size: int = 64
    distill_weight: float = 1.0  # weight of margin-mse when combined with a ranking term

    # optimisation
    batch_size: int = 4
    lr: float = 3e-5
    head_lr: float | None = None  # pooler + classifier (a fresh head learns faster); default: lr
    weight_decay: float = 0.01
    warmup_steps: int = 0
    # linear: decay to 0 at max_steps; constant: flat after warmup, so a run resumed to more steps is the run
    # trained that long from the start (the trained search continues its candidates rung by rung)
    lr_schedule: str = "linear"
    max_steps: int = 1000
    max_minutes: float | None = None  # wall-clock budget (stops early, keeps the best checkpoint)
    # stop at the first evaluation whose dev RR@10 beats the teacher's own on the same dev candidates (the
    # teacher model scored once); max_steps stays the cap. A distilled student that cannot pass its teacher
    # says so (stopped by max_steps) instead of training on
    until_beats_teacher: bool = False
    # ... and only a significant win counts: a one-sided paired t-test over the dev queries' RR@10 below this p
    # (a first-above-the-teacher rule stops on noise, e.g. +0.001 on 200 dev queries). It is the level over
    # the whole run: the rule looks at every planned evaluation, so each look tests at p / looks (Bonferroni)
    beat_teacher_p: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (`mice train --dtype fp32|bf16|fp16`); fp16 needs a GPU
    num_threads: int | None = None  # CPU threads for torch (None: torch's default; 1 is faster on a busy machine)

    # validation, logging, checkpoints
    eval_every: int = 200
    eval_at_start: bool = True  # also evaluate the untrained model (step 0)
    dev_queries: int | None = 200  # N dev queries (see dev_sample); None = all
    dev_sample: str = "first"  # first: the first N by id; random: N drawn under dev_seed (the paper: 500)
    dev_seed: int = 0  # the dev sample is the same for every training seed
    dev_exclude: str | None = None  # query ids never used for validation: a dataset spec (its queries) or a
    # file of ids, one per line (the paper: msmarco-passage/dev/small, its test set)
    dev_top_k: int = 20
    eval_batch_size: int = 64
    log_every: int = 10
    save_every: int = 200
    resume: bool = False
    overwrite: bool = False

    # ------------------------------------------------------------------------------------------------ utils
    @property
    def loss_terms(self) -> list[str]:
        return [t.strip() for t in self.loss.split("+") if t.strip()]

    @property
    def beat_teacher_looks(self) -> int:
        """The evaluations planned over the run (the Bonferroni count of `until_beats_teacher`)."""
        return max(1, math.ceil(self.max_steps / self.eval_every))

    @property
    def beat_teacher_threshold(self) -> float:
        """The p one evaluation must reach to stop `until_beats_teacher`: `beat_teacher_p` over the planned looks."""
        return self.beat_teacher_p / self.beat_teacher_looks

    @property
    def needs_teacher(self) -> bool:
        return "margin-mse" in self.loss_terms

    def validate(self) -> "TrainConfig":
        self._check_mode_loss_and_counts()
        self._check_training_settings()
        return self

    def _check_mode_loss_and_counts(self) -> None:
        """`validate`, first part: the mode, the loss terms, teacher and mask, the counts that must be >= 1."""
        if self.mode not in MODES:
            _bad("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        terms = self.loss_terms
        if not terms:
            _bad("loss", "empty")
        for t in terms:
            if t not in LOSS_TERMS:
                _bad("loss", f"unknown term {t!r} (terms: {', '.join(LOSS_TERMS)}, joined with '+')")
        if self.needs_teacher and not self.teacher:
            _bad("teacher", "margin-mse needs a teacher (a model spec, 'source', or a teacher score file)")
        if self.mode == "masked" and not self.mask:
            _bad("mask", "masked mode needs a mask (a preset such as mask2 or mask3:k=2, or a mask .json)")
        if self.mask:
            _check_mask_spec(self.mask)
        if self.mode != "masked" and self.mask:
            _bad("mask", f"a mask applies to masked mode, not {self.mode} (use --mode masked)")
        for name in (
            "negatives",
            "batch_size",
            "max_steps",
            "bm25_depth",
            "dev_top_k",
            "eval_every",
            "log_every",
            "save_every",
            "max_length",
            "max_query_length",
            "eval_batch_size",
            "teacher_batch_size",
        ):
            if int(getattr(self, name)) < 1:
                _bad(name, f"must be >= 1, got {getattr(self, name)}")

    def _check_training_settings(self) -> None:
        """`validate`, second part: sampling, rates, schedules and the other settings, in that order."""
        terms = self.loss_terms
        if "listwise" in terms and "bce" in terms:
            _bad("loss", "listwise and bce are alternatives; pick one")
        if self.bm25_depth <= 1:
            _bad("bm25_depth", "needs room for negatives")
        if self.negative_miner is not None and not str(self.negative_miner).startswith("biencoder:"):
            _bad(
                "negative_miner",
                f"{self.negative_miner!r} is not a bi-encoder spec (biencoder:packaged or biencoder:<folder>)",
            )
        if self.sampling not in SAMPLINGS:
            _bad("sampling", f"{self.sampling!r} ({', '.join(SAMPLINGS)})")
        if self.sampling == "triples" and not (self.needs_teacher and self.teacher and self.teacher != SOURCE_TEACHER):
            _bad(
                "sampling",
                "triples walks a teacher file's triples: needs a margin-mse loss and --teacher FILE "
                "(or hofstatter-ensemble)",
            )
        if self.sampling == "triples" and int(self.negatives) != 1:
            _bad(
                "negatives",
                f"sampling: triples gives one negative per triple; set negatives to 1, got {self.negatives}",
            )
        if not (0 <= float(self.mix_alpha) <= 1):
            _bad("mix_alpha", f"must be in [0, 1], got {self.mix_alpha}")
        for name in ("lr", "max_grad_norm"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                _bad(name, f"must be a positive number, got {v}")
        if self.head_lr is not None and not float(self.head_lr) > 0:
            _bad("head_lr", f"must be positive, got {self.head_lr}")
        if self.warmup_steps < 0:
            _bad("warmup_steps", "must be >= 0")
        if self.until_beats_teacher and not (self.needs_teacher and self.dev_split):
            _bad("until_beats_teacher", "needs a teacher model (a margin-mse loss) and a dev split")
        if not 0 < self.beat_teacher_p <= 1:
            _bad("beat_teacher_p", f"must be in (0, 1], got {self.beat_teacher_p}")
        if self.max_minutes is not None and not float(self.max_minutes) > 0:
            _bad("max_minutes", f"must be positive, got {self.max_minutes}")
        if self.mode == "mice" and (self.contextual_layers < 0 or self.interaction_layers < 1):
            _bad("interaction_layers", "MICE needs a >= 0 contextual and b >= 1 interaction layers")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            _bad("mixed_precision", f"{self.mixed_precision!r} (no, fp16, bf16)")
        if self.dev_sample not in SAMPLES:
            _bad("dev_sample", f"{self.dev_sample!r} (first, random)")
        from mice.models.mice_model import CLS_CROSS_MODES

        if self.cls_cross_attention not in CLS_CROSS_MODES:
            _bad("cls_cross_attention", f"{self.cls_cross_attention!r} ({', '.join(CLS_CROSS_MODES)})")
        if self.mode != "mice" and self.cls_cross_attention != "none":
            _bad("cls_cross_attention", "applies to mice mode only")
        if not float(self.weight_decay) >= 0:
            _bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.lr_schedule not in ("linear", "constant"):
            _bad("lr_schedule", f"{self.lr_schedule!r} (linear, constant)")
        if self.mask_mode not in ("renorm", "zero"):
            _bad("mask_mode", f"{self.mask_mode!r} (renorm, zero)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict, source: str = "<dict>") -> "TrainConfig":
        return cls().updated(obj, source)

    def updated(self, changes: dict, source: str = "<overrides>") -> "TrainConfig":
        """A copy with `changes` applied (keys may use '-' or '_'); unknown keys are an error naming them."""
        names = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in changes.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise ConfigError(f"{source}: unknown setting {key!r} (settings: {', '.join(names)})")
            clean[k] = _coerce(k, value, getattr(self, k), source)
        return replace(self, **clean)

    def settings(self) -> dict:
        """Every setting but `resume` and `overwrite`, which say what to do with the output folder this once: what
        train_config.json and a checkpoint record (saved, a config reused through --config would resume or wipe
        another run's folder; and a run resumed writes the settings an uninterrupted run writes)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("resume", "overwrite")}

    def save(self, path) -> Path:
        from mice.files import write_json_atomic

        return write_json_atomic(path, self.settings())


def _check_mask_spec(spec: str) -> None:
    """Fail early (before any model loads) on a mask that is neither a file nor a known preset."""
    from mice.masks import PRESETS

    s = str(spec).strip()
    if s.endswith(".json") or Path(s).exists():
        if not Path(s).is_file():
            raise ConfigError(f"train config: mask: {s}: file not found")
        return
    base = s.split("(", 1)[0].split(":", 1)[0].strip().lower()
    if base not in PRESETS:
        raise ConfigError(
            f"train config: mask: unknown preset {base!r} (presets: {', '.join(PRESETS)}; or a mask .json file)"
        )


_OPTIONAL_TYPES = {
    "dev_split": str,
    "dev_dataset": str,
    "mask": str,
    "teacher": str,
    "teacher_max_length": int,
    "teacher_cache": str,
    "negative_miner": str,
    "head_lr": float,
    "max_minutes": float,
    "dev_queries": int,
    "dev_exclude": str,
    "num_threads": int,
}


def _coerce(name: str, value, current, source: str):
    """Strings from `--set key=value` and TOML/JSON values to the field's type."""
    if name == "cls_cross_attention" and isinstance(value, str) and value.lower() == "none":
        return "none"  # a value of its own here, not "unset"
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if name in _OPTIONAL_TYPES:
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")
    target = _OPTIONAL_TYPES.get(name) or type(current)
    try:
        if target is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if target is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name}={value!r} is not a valid {target.__name__}") from None


def read_config_file(path) -> dict:
    """A flat mapping of settings from a .json or .toml file (a TOML `[train]` table is accepted too)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: malformed TOML ({err})") from None
    elif path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from None
    else:
        raise ConfigError(f"{path}: config files are .json or .toml")
    if isinstance(obj, dict) and isinstance(obj.get("train"), dict):
        obj = obj["train"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a table/object of settings")
    return obj
