"""`Trainer`: the training loop shared by the three modes, data-parallel through `accelerate`.

One step: draw this process's share of the global batch (`GroupSampler`, stateless per step), score B×G pairs,
add the loss terms, backward, clip, check that loss and gradient norm are finite (on every process alike: both
are all-reduced), then AdamW and the linear warmup/decay schedule. Every `eval_every` steps the dev queries'
BM25 top-k is re-ranked (each process scores a slice; results are gathered) and the best checkpoint is kept.

Output folder:
- `best/`: the best model by dev RR@10, a plain folder `mice.models.loader.load` opens;
- `last/`: the latest checkpoint: the model folder plus `trainer_state.pt` (optimizer, scheduler, step, best,
  elapsed time, the loss not yet logged, the job identity) and `rng_state_<rank>.pt`; written to a temporary
  folder and swapped in, so a kill or a full disk at any moment leaves either the previous or the new
  checkpoint (and no temporary folder after a failed write). Both files hold only tensors and plain
  Python values and are read with `torch.load(..., weights_only=True)`: a checkpoint received from someone else
  cannot run code on `--resume` (a pickle that needs more is refused);
- `train_log.csv` (step, loss, lr, pairs_per_s, dev RR@10, …), `train.log` (every progress line, also when no
  terminal is attached), `summary.json`, `train_config.json`.

Resuming is allowed only under the same job identity (`Trainer.identity`): the settings that change what a step
computes, the content of the training/dev data, the start model's (and teacher's) weights and the resolved mask.
Anything else is refused with one line naming what differs; `--overwrite` starts afresh. The output folder is
locked (`mice.identity.output_lock`) while a run writes it.

On one process it behaves exactly like a plain PyTorch loop (no wrapping happens); under `accelerate launch`
gradients are averaged across processes, so R processes with batch B reproduce one process with batch R·B.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mice.errors import IdentityError
from mice.train.config import SOURCE_TEACHER, ConfigError, TrainConfig, TrainingDiverged

log = logging.getLogger("mice.train")

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = "mice-train-state/2"  # /1 was pickled (numpy RNG arrays): refused, it cannot be loaded safely
LOG_FILE = "train.log"
LOG_COLUMNS = ["step", "loss", "lr", "pairs_per_s", "elapsed_s", "dev_rr10", "dev_ndcg10", "p_vs_teacher"]
DEV_METRICS = ("RR@10", "nDCG@10")
# settings that may change when resuming (they do not change what a step computes; `max_steps` only under the
# constant schedule: `Trainer.identity` adds it back when the linear decay reads it)
_RESUME_FREE = {
    "output",
    "resume",
    "overwrite",
    "max_minutes",
    "until_beats_teacher",
    "beat_teacher_p",
    "num_threads",
    "eval_every",
    "save_every",
    "log_every",
    "eval_batch_size",
    "teacher_batch_size",
    "teacher_cache",
    "max_steps",
}
# settings whose *content* enters the identity instead of their spec string (see `Trainer.identity`)
_BY_CONTENT = {"model", "dataset", "dev_dataset", "teacher", "mask"}


class TrainStateError(ConfigError):
    """A checkpoint's state file cannot be loaded safely (pickled, foreign or corrupted)."""


def safe_load(path: Path):
    """`torch.load(path, weights_only=True)`: tensors and plain Python values only, never arbitrary pickle.

    Anything else (an old pickled state, a crafted payload, a torn file) becomes one `TrainStateError` line; the
    payload is never executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainStateError(f"{path}: missing from the checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainStateError(
            f"{path}: refused: not a plain-tensor training state ({first[:120]}); it was written by an older "
            "mice or tampered with, and loading it would need pickle, which can run code. Start over with "
            "--overwrite"
        ) from None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder in for `final` (the old one survives until the new one is in place)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _recover_dir(final: Path) -> None:
    """After a kill between the two renames of `_replace_dir`, the previous checkpoint is `.name.old`."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        old.rename(final)


def linear_schedule(warmup: int, total: int, decay: bool = True) -> Callable[[int], float]:
    """LR factor: linear warmup over `warmup` steps, then linear decay to 0 at step `total` (or, without
    `decay`, constant: the factor never depends on `total`)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0

    return factor


@dataclass
class TrainResult:
    output: Path
    steps: int
    best_step: int | None
    best_dev: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    stopped_by: str = "max_steps"
    summary: dict = field(default_factory=dict)


@dataclass
class _Window:
    """The loss summed, and the steps counted, since the last log step; `t` when the window opened (moved on by
    evaluation and checkpoint pauses, so pairs/s counts training time only)."""

    t: float
    loss: float = 0.0
    steps: int = 0

    def add(self, loss: float) -> None:
        self.loss += loss
        self.steps += 1

    def reset(self, t: float) -> None:
        self.t, self.loss, self.steps = t, 0.0, 0


class Trainer:
    """Train `config.mode` as configured. `train()` returns a `TrainResult` (also written to summary.json).

    `callbacks` are called as `fn(trainer, step)` after every optimizer step (after any checkpoint of that step).
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset=None,
        accelerator=None,
        callbacks: Sequence[Callable] = (),
        quiet: bool = False,
    ):
        self.config = config.validate()
        self.dataset = dataset
        self.accelerator = accelerator
        self.callbacks = list(callbacks)
        self.quiet = quiet
        self.step = 0
        self.log_rows: list[dict] = []

    # --------------------------------------------------------------------------------------------- setup
    @property
    def output(self) -> Path:
        return Path(self.config.output)

    def _print(self, message: str, console: bool = True) -> None:
        """One progress line: to the `mice.train` logger (hence `train.log`) and, unless quiet, the console."""
        if not self.acc.is_main_process:
            return
        from rich.text import Text

        log.info(Text.from_markup(message).plain)
        if console and not self.quiet:
            self.console.print(message, highlight=False)

    def _prepare_output(self) -> Path | None:
        """Decide between a fresh start and a resume; returns the checkpoint to resume from."""
        cfg, out = self.config, self.output
        last = out / "last"
        if self.acc.is_main_process:
            _recover_dir(last)
        self.acc.wait_for_everyone()
        has_ckpt = (last / STATE_FILE).exists()
        if has_ckpt and cfg.resume:
            return last
        if has_ckpt and not cfg.overwrite:
            raise ConfigError(
                f"{out} already holds a checkpoint (last/); pass --resume to continue it or --overwrite to start over"
            )
        if (out / "best").exists() and not cfg.overwrite and not cfg.resume:
            raise ConfigError(f"{out} already holds a trained model (best/); pass --overwrite to replace it")
        if self.acc.is_main_process:
            for name in ("last", "best", ".last.tmp", ".best.tmp", "train_log.csv", "summary.json"):
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.acc.wait_for_everyone()
        return None

    def _load_data(self):
        from mice.data import load_dataset
        from mice.train.samples import GroupSampler, pool_from_triples, shared_pool
        from mice.train.teacher import TeacherScores, default_cache_path, teacher_file

        cfg = self.config
        ds = load_dataset(self.dataset if self.dataset is not None else cfg.dataset)
        self.ds = ds
        triples = None
        self.teacher = None
        score_file = teacher_file(cfg.teacher) if cfg.needs_teacher else None
        if cfg.sampling == "triples":  # the file's triples in a seeded order, each with its own teacher scores
            if score_file is None:
                raise ConfigError(f"train config: sampling: triples walks a teacher file; {cfg.teacher!r} is not one")
            self.sampler, self.teacher = TeacherScores.for_triples(ds, score_file, cfg.seed)
        elif score_file is not None:
            self.teacher, triples = TeacherScores.from_file(score_file)
        with self.acc.main_process_first():  # the BM25 index is built (and cached) once
            pool = (
                None
                if cfg.sampling == "triples"
                else pool_from_triples(triples, ds)
                if triples is not None
                else shared_pool(
                    ds, cfg.train_split, cfg.bm25_depth, cfg.negative_miner, cfg.teacher_max_length or cfg.max_length
                )
            )
            dev_ds = load_dataset(cfg.dev_dataset) if cfg.dev_dataset else ds
            self.dev = self._dev_candidates(dev_ds) if cfg.dev_split else None
        if pool is not None:
            self.sampler = GroupSampler(pool, cfg.negatives, cfg.seed, cfg.mix_alpha)
        self.pool = pool if pool is not None else self.sampler  # len(): its training queries
        if cfg.mix_alpha != 1.0 and not getattr(self.sampler, "mixed", False):
            from mice.data.base import warn

            warn(
                f"mix_alpha {cfg.mix_alpha}: {ds.name} is not a mix of two or more parts with training queries; "
                "every query is drawn equally often"
            )
        if cfg.needs_teacher and self.teacher is None:
            spec = cfg.model if cfg.teacher == SOURCE_TEACHER else cfg.teacher
            tmax = cfg.teacher_max_length or cfg.max_length
            cache = Path(cfg.teacher_cache) if cfg.teacher_cache else default_cache_path(spec, tmax, ds)
            self.teacher = TeacherScores(
                spec, cache, max_length=tmax, batch_size=cfg.teacher_batch_size, device=self.acc.device
            )

    def _dev_candidates(self, ds) -> dict:
        from mice.rank.first_stage import BM25Index
        from mice.train.devset import excluded_query_ids, select_dev_queries
        from mice.train.samples import data_key, reused

        cfg = self.config
        queries = ds.queries(cfg.dev_split)
        qids = select_dev_queries(
            queries, cfg.dev_queries, cfg.dev_sample, cfg.dev_seed, excluded_query_ids(cfg.dev_exclude)
        )

        def build() -> dict:
            # only the chosen queries are retrieved (MS MARCO dev has ~55k judged queries; validation uses 500)
            run = BM25Index.for_dataset(ds).search({q: queries[q] for q in qids}, cfg.dev_top_k)
            corpus = ds.corpus()
            qrels = ds.qrels(cfg.dev_split)
            qrels = qrels[qrels["query_id"].isin(set(qids))]
            pairs = [(q, d, queries[q], corpus[d]) for q, d in zip(run["query_id"], run["doc_id"])]
            return {"pairs": pairs, "qrels": qrels, "bm25": run}

        # the same data, queries and depth give the same candidates: built once per process
        return reused(("dev", *data_key(ds, cfg.dev_split), tuple(qids), cfg.dev_top_k), build)

    # ----------------------------------------------------------------------------------------- evaluation
    def _dev_metrics(self, rows) -> dict[str, float]:
        """Mean dev RR@10 / nDCG@10 of scored (query_id, doc_id, score) rows; the per-query RR@10 of the last call
        is kept in `last_dev_rr` (the teacher comparison pairs it query by query)."""
        from mice.rank.evaluation import per_query

        run = pd.DataFrame(rows, columns=["query_id", "doc_id", "score"])
        values = per_query(self.dev["qrels"], run, DEV_METRICS)
        self.last_dev_rr = values[values["measure"] == "RR@10"].set_index("query_id")["value"]
        return {m: float(values.loc[values["measure"] == m, "value"].mean()) for m in DEV_METRICS}

    def p_vs_teacher(self) -> float:
        """One-sided paired t-test on the dev queries: p of 'the student's RR@10 is not above the teacher's'
        (1.0 when the two agree on every query)."""
        from scipy import stats

        student, teacher = self.last_dev_rr.align(self.teacher_dev_rr, join="inner")
        if len(student) < 2 or np.allclose(student.values, teacher.values):
            return 1.0
        p = stats.ttest_rel(student.values, teacher.values, alternative="greater").pvalue
        return float(p) if np.isfinite(p) else 1.0

    def teacher_dev(self) -> dict[str, float]:
        """The teacher model's dev RR@10 / nDCG@10 on the student's dev candidates (every process scores them
        all: the dev set is small, and no score enters the training cache)."""
        import torch

        pairs = self.dev["pairs"]
        with torch.no_grad():
            scores = self.teacher.scorer.predict(
                [(q, d) for _, _, q, d in pairs], batch_size=self.config.eval_batch_size
            )
        return self._dev_metrics([(qid, did, float(s)) for (qid, did, _, _), s in zip(pairs, scores)])

    def evaluate(self) -> dict[str, float]:
        """Dev RR@10 / nDCG@10 of the current model re-ranking BM25's top-k (sharded over processes)."""
        import torch
        from accelerate.utils import gather_object

        acc = self.acc
        pairs = self.dev["pairs"]
        mine = pairs[acc.process_index :: acc.num_processes]
        model = acc.unwrap_model(self.model)
        with torch.no_grad():
            scores = (
                model.predict([(q, d) for _, _, q, d in mine], batch_size=self.config.eval_batch_size)
                if mine
                else np.zeros(0)
            )
        return self._dev_metrics(gather_object([(qid, did, float(s)) for (qid, did, _, _), s in zip(mine, scores)]))

    # ----------------------------------------------------------------------------------------- checkpoints
    def _save_model(self, folder: Path) -> None:
        from mice.train.student import quiet_hf

        quiet_hf()
        self.acc.unwrap_model(self.model).save(folder)

    def _write_folder(self, name: str, write: Callable[[Path], None]) -> None:
        """`write(tmp)` fills `.name.tmp`, swapped in for `output/name` only once whole. A failure (a full disk)
        removes the temporary folder, so nothing half-written is left for a rerun to find, and is one OS error
        naming `output/name` (safetensors' and tokenizers' writers raise no `OSError` of their own)."""
        from mice.files import named_os_errors

        tmp, final = self.output / f".{name}.tmp", self.output / name
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            with named_os_errors(final):
                write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _replace_dir(tmp, final)

    def _write_best(self, metrics: dict) -> None:
        from mice.files import write_json_atomic

        def write(tmp: Path) -> None:
            self._save_model(tmp)
            write_json_atomic(tmp / "best.json", {"step": self.step, "dev": metrics})

        if self.acc.is_main_process:
            self._write_folder("best", write)
        self.acc.wait_for_everyone()

    def _flush_teacher(self) -> None:
        if self.teacher is None:
            return
        from accelerate.utils import gather_object

        rows = gather_object(self.teacher.take_new())
        if self.acc.is_main_process:
            self.teacher.write(rows)
        else:
            for q, d, s in rows:
                self.teacher.table[(q, d)] = s

    def _state(self) -> dict:
        """What `trainer_state.pt` holds (every value a tensor or a plain Python value)."""
        window = getattr(self, "_window", None)
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_dev": self.best_dev,
            "elapsed_s": self.elapsed(),
            "world_size": self.acc.num_processes,
            "config": self.config.settings(),
            "identity": self.job,
            # the loss summed since the last log step: a resumed run logs the mean an uninterrupted one logs
            "window": {"loss": window.loss, "steps": window.steps} if window is not None else None,
        }

    def save_checkpoint(self) -> None:
        """`last/` = model folder + optimizer, scheduler, step, best so far, elapsed time and RNG states. A failure
        (a full disk) leaves the previous checkpoint, and no temporary folder, behind."""
        from mice.files import named_os_errors, torch_save_atomic

        acc = self.acc
        t0 = time.perf_counter()
        self._flush_teacher()
        tmp = self.output / ".last.tmp"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            with named_os_errors(self.output / "last"):
                torch_save_atomic(_rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
                if acc.is_main_process:
                    self._save_model(tmp)
                    torch_save_atomic(self._state(), tmp / STATE_FILE)
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        if acc.is_main_process:  # the log first: a kill between the two leaves rows a resume drops, never a gap
            self._write_log()
            _replace_dir(tmp, self.output / "last")
        acc.wait_for_everyone()
        self._last_save_s = time.perf_counter() - t0

    def identity(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint: every setting that changes
        what a step computes, and by content (not by spec string) the training/dev data, the start model's
        weights, the teacher and the resolved mask. Call after the data is loaded."""
        from mice.identity import dataset_identity, file_hash, job_identity, weights_fingerprint
        from mice.train.teacher import is_score_file

        cfg = self.config
        settings = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE and k not in _BY_CONTENT}
        if settings.get("lr_schedule") == "linear":  # the default: identities written before it existed hold
            del settings["lr_schedule"]
        if settings.get("negative_miner") is None:  # likewise
            del settings["negative_miner"]
        if settings.get("mix_alpha") == 1.0:  # likewise
            del settings["mix_alpha"]
        if settings.get("sampling") == "groups":  # likewise
            del settings["sampling"]
        parts = {"config." + k: v for k, v in settings.items()}
        if cfg.lr_schedule == "linear":  # the decay reaches 0 at max_steps: another count is another schedule
            parts["config.max_steps"] = cfg.max_steps
        parts["start_model"] = weights_fingerprint(cfg.model)
        parts["data"] = dataset_identity(
            self.ds, [cfg.train_split] + ([cfg.dev_split] if cfg.dev_split and not cfg.dev_dataset else [])
        )
        if cfg.dev_dataset and cfg.dev_split:
            from mice.data import load_dataset

            parts["dev_data"] = dataset_identity(load_dataset(cfg.dev_dataset), [cfg.dev_split])
        if cfg.needs_teacher and cfg.teacher:
            if is_score_file(cfg.teacher):
                parts["teacher"] = "file:" + file_hash(cfg.teacher)
            else:
                parts["teacher"] = weights_fingerprint(cfg.model if cfg.teacher == SOURCE_TEACHER else cfg.teacher)
        if cfg.mode == "masked" and cfg.mask:
            parts["mask"] = _mask_identity(cfg)
        return job_identity(**parts)

    def _read_state(self, folder: Path) -> dict:
        """Load `folder`'s state safely and refuse it unless it was written under this run's identity."""
        state = safe_load(folder / STATE_FILE)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise TrainStateError(
                f"{folder / STATE_FILE}: unknown checkpoint format {fmt!r} (expected "
                f"{STATE_FORMAT!r}; older checkpoints cannot be resumed): start over with "
                "--overwrite"
            )
        from mice.identity import identity_diff

        diff = identity_diff(state.get("identity"), self.job)
        if diff:
            raise IdentityError(
                f"{self.output}: cannot resume, the checkpoint was trained under another job "
                f"[differs: {diff}]; pass --overwrite to start over"
            )
        return state

    def _load_checkpoint(self, folder: Path, state: dict) -> None:
        if state.get("world_size", 1) != self.acc.num_processes:
            self._print(
                f"[yellow]note:[/] resuming a {state.get('world_size')}-process run on "
                f"{self.acc.num_processes} process(es)"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]
        self.best_dev = state.get("best_dev") or {}
        self._elapsed_before = float(state["elapsed_s"])
        window = state.get("window")  # absent from checkpoints written before it was kept
        self._window_before = window if isinstance(window, dict) else {}
        rng_file = folder / f"rng_state_{self.acc.process_index}.pt"
        if rng_file.exists():
            _set_rng_state(safe_load(rng_file), rng_file)
        log_csv = self.output / "train_log.csv"
        if log_csv.exists():
            df = pd.read_csv(log_csv)
            self.log_rows = [r for r in df.to_dict("records") if r["step"] <= self.step]

    # ------------------------------------------------------------------------------------------- logging
    def elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._t0)

    def _write_log(self) -> None:
        from mice.files import write_table

        if self.acc.is_main_process:
            df = pd.DataFrame(self.log_rows, columns=LOG_COLUMNS)
            write_table(df, self.output / "train_log.csv")

    def _log(self, **row) -> None:
        full = {c: row.get(c, np.nan) for c in LOG_COLUMNS}
        if self.log_rows and self.log_rows[-1]["step"] == full["step"]:  # merge eval into the step's row
            prev = self.log_rows[-1]
            for k, v in full.items():
                if not (isinstance(v, float) and math.isnan(v)):
                    prev[k] = v
        else:
            self.log_rows.append(full)

    # ---------------------------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        """Run (or resume) training; the output folder is locked against a second writer meanwhile."""
        import contextlib

        from accelerate import Accelerator

        from mice.identity import output_lock
        from mice.logs import run_log
        from mice.models.precision import check_mixed_precision

        cfg = self.config
        self.acc = self.accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
        # refuse a precision the device cannot run before any work (accelerate would train fp16 on CPU in fp32
        # without a word); checked on the Accelerator's device: a PartialState made earlier breaks DDP ranks
        check_mixed_precision(cfg.mixed_precision, self.acc.device)
        main = self.acc.is_main_process
        lock = output_lock(self.output) if main else contextlib.nullcontext()
        with lock:
            if main:
                self.output.mkdir(parents=True, exist_ok=True)
            with run_log(
                self.output / LOG_FILE if main else None, "mice.train", "%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"
            ):
                return self._train()

    def _train(self) -> TrainResult:
        """Setup, the untrained model's evaluation (a fresh run only), the steps, then what closes the run."""
        start_step, resumed = self._setup()
        if self.dev is not None and not resumed and self.config.eval_at_start:
            self._evaluate_and_keep(loss=None)
        stopped_by = self._steps(start_step)
        return self._finish(start_step, stopped_by)

    def _setup(self) -> tuple[int, bool]:
        """Data, identity (a resume is refused before any work), student, optimizer and schedule; returns the step
        training starts from and whether it resumes."""
        import torch
        from rich.console import Console

        from mice.train.student import adamw, build_student, param_groups

        cfg, acc = self.config, self.acc
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.console = Console(stderr=False)
        self._t0 = time.perf_counter()
        self._elapsed_before = 0.0
        self._window_before = {}
        self._last_eval_s = self._last_save_s = 0.0
        resume_from = self._prepare_output()
        _seed_everything(cfg.seed)
        self._load_data()
        self.job = self.identity()
        state = self._read_state(resume_from) if resume_from is not None else None  # refuse before any work
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output / "train_config.json")

        student = build_student(cfg, source=str(resume_from) if resume_from else None)
        student.train()
        optimizer = adamw(param_groups(student, cfg.lr, cfg.head_lr, cfg.weight_decay), cfg.lr)
        schedule = linear_schedule(cfg.warmup_steps, cfg.max_steps, decay=cfg.lr_schedule == "linear")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.best_metric, self.best_step, self.best_dev = None, None, {}
        # the scheduler is stepped by hand, once per optimizer step (accelerate would step it once per process)
        self.model, self.optimizer = acc.prepare(student, optimizer)
        if resume_from is not None:
            self._load_checkpoint(resume_from, state)
            self._print(f"resuming from {resume_from} at step {self.step}")
        pairs_per_step = cfg.batch_size * (1 + cfg.negatives) * acc.num_processes
        self._print(
            f"[bold]mice train[/] {cfg.mode}: {cfg.model} on {self.ds.name}/{cfg.train_split} "
            f"({len(self.pool)} queries), {acc.num_processes} process(es), {pairs_per_step} pairs/step, "
            f"loss {cfg.loss}" + (f", teacher {self.teacher.spec or cfg.teacher}" if self.teacher else "")
        )
        self._teacher_goal()
        return self.step, resume_from is not None

    def _teacher_goal(self) -> None:
        """Under `until_beats_teacher`, score the teacher on the dev queries once: the bar the student must pass."""
        cfg = self.config
        self.teacher_dev_metrics = None
        if not cfg.until_beats_teacher:
            return
        if self.teacher is None or self.teacher.spec is None or self.dev is None:
            raise ConfigError("until_beats_teacher needs a teacher model (not a score file) and dev queries")
        self.teacher_dev_metrics = self.teacher_dev()
        self.teacher_dev_rr = self.last_dev_rr
        self._print(
            f"teacher on dev: RR@10 {self.teacher_dev_metrics['RR@10']:.4f}  nDCG@10 "
            f"{self.teacher_dev_metrics['nDCG@10']:.4f} (training stops once the student beats it, "
            f"one-sided paired t-test p < {cfg.beat_teacher_threshold:.3g}: {cfg.beat_teacher_p:g} over "
            f"{cfg.beat_teacher_looks} looks)"
        )

    def _steps(self, start_step: int) -> str:
        """Optimizer steps until `max_steps`, the time budget or a significant win over the teacher; evaluates and
        checkpoints on schedule. Returns what stopped it."""
        from mice.logs import progress

        cfg = self.config
        stopped_by = "max_steps"
        before = self._window_before  # resumed: the steps before the checkpoint that no log line has counted yet
        self._window = window = _Window(
            time.perf_counter(), float(before.get("loss", 0.0)), int(before.get("steps", 0))
        )
        with progress(
            cfg.max_steps,
            "training",
            enabled=not (self.quiet or not self.acc.is_main_process),
            done=self.step,
            console=self.console,
        ) as bar:
            while self.step < cfg.max_steps:
                global_loss, time_up = self._step()
                window.add(global_loss)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self._log_window(window, start_step, bar)
                bar.advance()
                if time_up:
                    stopped_by = "max_minutes"
                last_step = self.step == cfg.max_steps or stopped_by == "max_minutes"
                pause = time.perf_counter()
                if self._evaluate_on_schedule(global_loss, last_step):
                    stopped_by, last_step = "beat_teacher", True
                if self.step % cfg.save_every == 0 or last_step:
                    self.save_checkpoint()
                window.t += time.perf_counter() - pause  # pairs/s counts training time only
                for fn in self.callbacks:
                    fn(self, self.step)
                if stopped_by in ("max_minutes", "beat_teacher"):
                    break
        return stopped_by

    def _step(self) -> tuple[float, bool]:
        """One optimizer step on this process's share of the global batch; returns the loss averaged over the
        processes and whether any process found the time budget spent. A non-finite loss or gradient norm stops
        training (`_diverged`) before the optimizer moves."""
        import torch

        from mice.train.losses import combined_loss

        cfg, acc = self.config, self.acc
        world = acc.num_processes
        step_t0 = time.perf_counter()
        groups = self.sampler.batch(self.step, cfg.batch_size, acc.process_index, world)
        queries = [g.query for g in groups]
        docs = [d for g in groups for d in g.docs]
        teacher = None
        if self.teacher is not None:
            t = self.teacher.scores(groups) * cfg.teacher_scale
            teacher = torch.as_tensor(t, dtype=torch.float32, device=acc.device)
        scores = self.model(queries, docs)
        loss, _parts = combined_loss(cfg.loss_terms, scores, teacher, cfg.distill_weight)
        acc.backward(loss)
        norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        time_up = cfg.max_minutes is not None and self._time_up(time.perf_counter() - step_t0)
        stats = acc.reduce(torch.tensor([float(loss.detach()), float(time_up)], device=acc.device), "sum")
        global_loss = float(stats[0]) / world
        norm = float(norm) if norm is not None else 0.0
        if not math.isfinite(global_loss) or (not math.isfinite(norm) and cfg.mixed_precision != "fp16"):
            self._diverged(global_loss, norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return global_loss, bool(stats[1] > 0)

    def _log_window(self, window: "_Window", start_step: int, bar) -> None:
        """The mean loss and throughput since the last log step: a row of train_log.csv and one plain line (always
        to train.log; to the console when it is not a terminal, e.g. under nohup, where the bar would not show)."""
        cfg = self.config
        lr = self.scheduler.get_last_lr()[0]
        now = time.perf_counter()
        pairs_per_step = cfg.batch_size * (1 + cfg.negatives) * self.acc.num_processes
        loss = window.loss / window.steps
        rate = pairs_per_step * window.steps / max(now - window.t, 1e-9)
        self._log(step=self.step, loss=loss, lr=lr, pairs_per_s=rate, elapsed_s=self.elapsed())
        session = time.perf_counter() - self._t0
        left = session / (self.step - start_step) * (cfg.max_steps - self.step)
        self._print(
            f"step {self.step:>6}/{cfg.max_steps}  loss {loss:.4f}  "
            f"lr {lr:.2e}  {rate:.1f} pairs/s  [{self.elapsed():.0f} s, about {left:.0f} s "
            "left]",
            console=not self.console.is_terminal,
        )
        bar.info(
            f"loss {loss:.4f}  {rate:.0f} pairs/s"
            + (f"  best RR@10 {self.best_metric:.4f}" if self.best_metric is not None else "")
        )
        window.reset(now)

    def _evaluate_on_schedule(self, loss: float, last_step: bool) -> bool:
        """Evaluate when due (every `eval_every` steps and at the last); True when the student has now beaten the
        teacher significantly (`until_beats_teacher`)."""
        cfg = self.config
        if self.dev is None or not (self.step % cfg.eval_every == 0 or last_step):
            return False
        rr, p = self._evaluate_and_keep(loss=loss)
        return p is not None and rr > self.teacher_dev_metrics["RR@10"] and p < cfg.beat_teacher_threshold

    def _finish(self, start_step: int, stopped_by: str) -> TrainResult:
        """Leave the folder whole (a checkpoint, a best model even without dev queries) and write summary.json."""
        from mice.files import write_json_atomic

        acc = self.acc
        if self.step == start_step and not (self.output / "last").exists():
            self.save_checkpoint()  # resumed at max_steps or max_steps reached before: keep the folder whole
        self._flush_teacher()
        if self.dev is None and acc.is_main_process:  # no dev split: the final model is the one we keep
            self._write_folder("best", self._save_model)
            self.best_step = self.step
        acc.wait_for_everyone()
        wall = self.elapsed()
        summary = self._summary(start_step, stopped_by, wall)
        if acc.is_main_process:
            self._write_log()
            write_json_atomic(self.output / "summary.json", summary)
        self._print(
            f"done: {self.step} steps in {wall:.1f} s (stopped by {stopped_by})"
            + (
                f"; best dev RR@10 {self.best_metric:.4f} at step {self.best_step}"
                if self.best_metric is not None
                else ""
            )
            + f"; model in {self.output / 'best'}"
        )
        acc.wait_for_everyone()
        return TrainResult(self.output, self.step, self.best_step, self.best_dev, wall, stopped_by, summary)

    def _summary(self, start_step: int, stopped_by: str, wall: float) -> dict:
        cfg, world = self.config, self.acc.num_processes
        rates = [
            r["pairs_per_s"]
            for r in self.log_rows
            if r["step"] > start_step and not (isinstance(r["pairs_per_s"], float) and math.isnan(r["pairs_per_s"]))
        ]
        return {
            "status": "ok",
            "mode": cfg.mode,
            "model": cfg.model,
            "dataset": self.ds.name,
            "seed": cfg.seed,
            "steps": self.step,
            "max_steps": cfg.max_steps,
            "stopped_by": stopped_by,
            "wall_time_s": round(wall, 2),
            "this_session_s": round(time.perf_counter() - self._t0, 2),
            "pairs_per_s": round(float(np.mean(rates)), 2) if rates else None,
            "best_step": self.best_step,
            "best_dev": self.best_dev,
            "dev_metric": "RR@10",
            **({"teacher_dev": self.teacher_dev_metrics} if self.teacher_dev_metrics is not None else {}),
            "processes": world,
            "global_batch": cfg.batch_size * world,
            "teacher": None
            if self.teacher is None
            else {
                "spec": self.teacher.spec or cfg.teacher,
                "cache": str(self.teacher.cache_path or ""),
                "pairs_scored": self.teacher.n_scored,
                "pairs_from_cache": self.teacher.n_cached,
            },
            "output": str(self.output),
        }

    def _time_up(self, step_s: float) -> bool:
        """Stop now if one more step plus the closing evaluation and checkpoint would overrun `max_minutes`."""
        eval_s = self._last_eval_s
        if not eval_s and self.dev is not None:  # no evaluation yet: scoring a pair costs ~1/3 of training on it
            pairs = self.config.batch_size * (1 + self.config.negatives)
            eval_s = len(self.dev["pairs"]) / max(1, self.acc.num_processes) * step_s / pairs / 3
        reserve = step_s + eval_s + self._last_save_s
        return self.elapsed() + reserve >= self.config.max_minutes * 60

    def _evaluate_and_keep(self, loss) -> tuple[float, float | None]:
        """Evaluate on dev, log, keep the best checkpoint; returns (RR@10, p vs the teacher or None without one)."""
        t0 = time.perf_counter()
        metrics = self.evaluate()
        rr = metrics["RR@10"]
        better = self.best_metric is None or rr > self.best_metric
        vs = {"p_vs_teacher": self.p_vs_teacher()} if self.teacher_dev_metrics is not None else {}
        self._log(
            step=self.step,
            dev_rr10=rr,
            dev_ndcg10=metrics["nDCG@10"],
            elapsed_s=self.elapsed(),
            **({"loss": loss} if loss is not None else {}),
            **vs,
        )
        self._print(
            f"step {self.step:>6}/{self.config.max_steps}  "
            + (f"loss {loss:.4f}  " if loss is not None else "")
            + f"dev RR@10 {rr:.4f}  nDCG@10 {metrics['nDCG@10']:.4f}  "
            + (f"(vs teacher p {vs['p_vs_teacher']:.3g})  " if vs else "")
            + f"[{self.elapsed():.0f} s]"
            + ("  [green]best[/]" if better else "")
        )
        if better:
            self.best_metric, self.best_step, self.best_dev = rr, self.step, metrics
            self._write_best(metrics)
        if self.acc.is_main_process:
            self._write_log()
        self._last_eval_s = time.perf_counter() - t0
        return rr, vs.get("p_vs_teacher")

    def _diverged(self, loss: float, norm: float) -> None:
        from mice.files import write_json_atomic

        last = self.output / "last"
        kept = (
            f"the last good checkpoint is kept in {last} (step {_checkpoint_step(last)})"
            if (last / STATE_FILE).exists()
            else "no checkpoint had been written"
        )
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        message = (
            f"training diverged at step {self.step + 1}: {what}; {kept}. Lower the learning rate "
            f"(--set lr=…, now {self.config.lr:g}), check the teacher scores, or resume from the checkpoint."
        )
        if self.acc.is_main_process:
            self._write_log()
            write_json_atomic(
                self.output / "summary.json", {"status": "diverged", "step": self.step + 1, "message": message}
            )
        raise TrainingDiverged(message)


def _checkpoint_step(folder: Path):
    try:
        return int(safe_load(folder / STATE_FILE)["step"])
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def _mask_identity(cfg: TrainConfig) -> str:
    """The resolved allow-tables of the masked run's mask (a preset spec and the equivalent file agree)."""
    from transformers import AutoConfig

    from mice.models.backbone import resolve_model_path
    from mice.models.hf import quiet_hf
    from mice.identity import mask_identity
    from mice.masks import InteractionMask

    quiet_hf()
    n_layers = int(AutoConfig.from_pretrained(resolve_model_path(cfg.model)).num_hidden_layers)
    return mask_identity(InteractionMask.parse(str(cfg.mask), n_layers), cfg.mask_mode)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain values (loads with `weights_only=True`; no numpy arrays)."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, path: Path | str = "rng state") -> None:
    import torch

    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        npst = state["numpy"]
        np.random.set_state(
            (
                npst["name"],
                npst["keys"].numpy().astype(np.uint32),
                npst["pos"],
                npst["has_gauss"],
                npst["cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise TrainStateError(
            f"{path}: malformed RNG state ({type(err).__name__}: {err}); start over with --overwrite"
        ) from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_seeds(
    config: TrainConfig, seeds: Sequence[int], dataset=None, quiet: bool = False, accelerator=None
) -> pd.DataFrame:
    """One run per seed in `<output>/seed-<s>/`; writes and returns a table of the runs (seeds.csv) with their
    mean and standard deviation (seeds_summary.json). The teacher cache is shared between seeds."""
    from mice.files import write_json_atomic, write_table

    rows = []
    root = Path(config.output)
    for s in seeds:
        cfg = config.updated({"seed": int(s), "output": str(root / f"seed-{s}")})
        res = Trainer(cfg, dataset=dataset, quiet=quiet, accelerator=accelerator).train()
        rows.append(
            {
                "seed": int(s),
                "steps": res.steps,
                "best_step": res.best_step,
                "dev_rr10": res.best_dev.get("RR@10"),
                "dev_ndcg10": res.best_dev.get("nDCG@10"),
                "wall_time_s": round(res.wall_time_s, 2),
                "stopped_by": res.stopped_by,
            }
        )
    table = pd.DataFrame(rows)
    stats = {}
    for col in ("dev_rr10", "dev_ndcg10", "wall_time_s"):
        vals = pd.to_numeric(table[col], errors="coerce").dropna()
        if len(vals):
            stats[col] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    is_main = accelerator is None or accelerator.is_main_process
    try:
        from accelerate import PartialState

        is_main = is_main and PartialState().is_main_process
    except Exception:  # noqa: BLE001
        pass
    if is_main:
        write_table(table, root / "seeds.csv")
        write_json_atomic(
            root / "seeds_summary.json", {"seeds": [int(s) for s in seeds], "runs": rows, "mean_std": stats}
        )
    return table
