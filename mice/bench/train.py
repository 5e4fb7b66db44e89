"""`mice bench train`: what one training step of each mode of `mice train` costs, phase by phase, as a ratio to
the cross-encoder's step.

Every mode on one backbone in one process, with a train preset's settings (the quick preset: 4 queries × (1
positive + 3 negatives) per step, 96 tokens, mask2, MICE-ℓ2+4, Margin-MSE; the cross-encoder distilled from the
packaged bi-encoder, the others from the cross-encoder they start from). The steps are interleaved (a
cross-encoder step, a masked one, a MICE one, a late-interaction one, then again), so a change of machine load
hits every mode alike: the ratios hold where the absolute times do not. A step is `Trainer._step`'s work:

- `data`: the step's groups drawn from the training pool;
- `teacher`: the mode's teacher scoring the step's pairs without gradients (`mice.train.teacher.TeacherScores`,
  no disk cache: every pair is new to it, as in a run's first epoch);
- `forward`: tokenisation, the student's forward and the loss;
- `backward`; `optimizer`: gradient clipping and AdamW (`mice.train.student.adamw`);
- `student`: data + forward + backward + optimizer; `step`: that plus the teacher;
- `eval`: re-ranking 600 pairs with the student's `predict` (what a dev evaluation of 30 queries × top 20 costs),
  measured on `eval_pairs` pairs and scaled.

Ratios are medians over `steps` steps after `warmup` untimed ones, divided by the cross-encoder's median
`student` time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

MODES = ("cross-encoder", "masked", "mice", "late-interaction")
PHASES = ("data", "teacher", "forward", "backward", "optimizer", "student", "step", "eval")
STUDENT = ("data", "forward", "backward", "optimizer")
EVAL_UNIT = 600  # pairs: eval rows are the time to re-rank this many
COLUMNS = ["mode", "phase", "median_ms", "ratio_vs_ce_step", "runs", "model", "dataset", "threads", "device", "torch"]


@dataclass
class TrainBenchConfig:
    model: str = "packaged:minilm"
    dataset: str = "embedded:docs"
    split: str = "train"
    preset: str = "quick"
    modes: tuple[str, ...] = MODES
    mask: str | None = None  # default: the preset's
    layers: tuple[int, int] | None = None  # MICE a+b; default: the preset's
    steps: int = 8
    warmup: int = 1
    eval_pairs: int = 64
    eval_every: int = 2  # evaluate every this many steps (it costs as much as several steps)
    threads: int | None = None
    device: str = "cpu"


def _mode_config(config: TrainBenchConfig, mode: str):
    from mice.train.presets import preset

    over: dict = {"model": config.model, "dataset": config.dataset, "train_split": config.split}
    if mode == "masked" and config.mask:
        over["mask"] = config.mask
    if mode == "mice" and config.layers:
        over["contextual_layers"], over["interaction_layers"] = config.layers
    return preset(config.preset, mode, **over)


class _Mode:
    """One mode's student, optimizer and teacher, as `Trainer` sets them up."""

    def __init__(self, config: TrainBenchConfig, mode: str):
        from mice.train.config import SOURCE_TEACHER
        from mice.train.student import adamw, build_student, param_groups
        from mice.train.teacher import TeacherScores

        cfg = self.cfg = _mode_config(config, mode)
        self.student = build_student(cfg, device=config.device).train()
        self.optimizer = adamw(param_groups(self.student, cfg.lr, cfg.head_lr, cfg.weight_decay), cfg.lr)
        spec = None
        if cfg.needs_teacher:
            spec = cfg.model if cfg.teacher == SOURCE_TEACHER else cfg.teacher
        tmax = cfg.teacher_max_length or cfg.max_length
        self.teacher = TeacherScores(spec, None, tmax, cfg.teacher_batch_size, device=config.device) if spec else None

    def step(self, sampler, index: int) -> dict[str, float]:
        """One training step on the groups of step `index`; seconds per phase."""
        import torch

        from mice.train.losses import combined_loss

        cfg, out = self.cfg, {}
        t = time.perf_counter()
        groups = sampler.batch(index, cfg.batch_size)
        queries, docs = [g.query for g in groups], [d for g in groups for d in g.docs]
        out["data"], t = _lap(t)
        teacher = None
        if self.teacher is not None:
            scores = self.teacher.scores(groups) * cfg.teacher_scale
            teacher = torch.as_tensor(scores, dtype=torch.float32, device=self.student_device)
        out["teacher"], t = _lap(t)
        loss, _ = combined_loss(cfg.loss_terms, self.student(queries, docs), teacher, cfg.distill_weight)
        out["forward"], t = _lap(t)
        loss.backward()
        out["backward"], t = _lap(t)
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out["optimizer"], _ = _lap(t)
        return out

    @property
    def student_device(self):
        return next(self.student.parameters()).device

    def evaluate(self, pairs) -> float:
        """Seconds to re-rank `EVAL_UNIT` pairs (measured on `pairs`)."""
        t = time.perf_counter()
        self.student.predict(pairs, batch_size=self.cfg.eval_batch_size)
        self.student.train()
        return (time.perf_counter() - t) / len(pairs) * EVAL_UNIT


def _lap(t: float) -> tuple[float, float]:
    now = _sync_time()
    return now - t, now


def _sync_time() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def run_train_bench(config: TrainBenchConfig, log: Callable[[str], None] = print):
    """Interleaved steps of every mode; returns the DataFrame of `COLUMNS` (one row per mode and phase)."""
    import torch

    from mice.data import load_dataset
    from mice.errors import MiceError
    from mice.train.samples import GroupSampler, shared_pool

    unknown = set(config.modes) - set(MODES)
    if unknown or not config.modes:
        raise MiceError(f"--modes: expected some of {', '.join(MODES)} (got {', '.join(config.modes) or 'none'})")
    if config.steps < 1 or config.warmup < 0 or config.eval_pairs < 1 or config.eval_every < 1:
        raise MiceError("train bench: steps, eval pairs and eval every must be >= 1, warmup >= 0")
    if config.threads:
        torch.set_num_threads(int(config.threads))
    first = _mode_config(config, config.modes[0])
    ds = load_dataset(config.dataset)
    sampler = GroupSampler(shared_pool(ds, config.split, first.bm25_depth), first.negatives, first.seed)
    pairs = _eval_pairs(sampler, config.eval_pairs)
    modes = {m: _Mode(config, m) for m in config.modes}
    times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PHASES} for m in modes}
    for index in range(config.warmup + config.steps):
        for mode, state in modes.items():
            phases = state.step(sampler, index)
            if index >= config.warmup and (index - config.warmup) % config.eval_every == 0:
                phases["eval"] = state.evaluate(pairs)
            if index < config.warmup:
                continue
            phases["student"] = sum(phases[p] for p in STUDENT)
            phases["step"] = phases["student"] + phases["teacher"]
            for phase, seconds in phases.items():
                times[mode][phase].append(seconds)
        log(f"  step {index + 1}/{config.warmup + config.steps}" + ("  (warm-up)" if index < config.warmup else ""))
    return _frame(config, times)


def _eval_pairs(sampler, n: int) -> list[tuple[str, str]]:
    """`n` (query, document) pairs of groups far beyond the training steps' (a query with its candidates)."""
    pairs: list[tuple[str, str]] = []
    index = 10**6
    while len(pairs) < n:
        group = sampler.group(index)
        pairs += [(group.query, d) for d in group.docs]
        index += 1
    return pairs[:n]


def _frame(config: TrainBenchConfig, times: dict):
    import pandas as pd
    import torch

    medians = {m: {p: statistics.median(v) for p, v in phases.items() if v} for m, phases in times.items()}
    base = medians.get("cross-encoder", {}).get("student")
    rows = [
        {
            "mode": mode,
            "phase": phase,
            "median_ms": 1000 * seconds,
            "ratio_vs_ce_step": seconds / base if base else float("nan"),
            "runs": len(times[mode][phase]),
            "model": config.model,
            "dataset": config.dataset,
            "threads": torch.get_num_threads(),
            "device": config.device,
            "torch": torch.__version__,
        }
        for mode, phases in medians.items()
        for phase, seconds in phases.items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def table(df) -> str:
    """The ratios as a plain-text table: one row per mode, one column per phase."""
    wide = df.pivot(index="mode", columns="phase", values="ratio_vs_ce_step")
    wide = wide.reindex(index=[m for m in MODES if m in wide.index], columns=[p for p in PHASES if p in wide.columns])
    head = f"{'mode':18}" + "".join(f"{p:>10}" for p in wide.columns)
    lines = [head] + [f"{m:18}" + "".join(f"{v:10.2f}" for v in row) for m, row in wide.iterrows()]
    return "\n".join(lines)
