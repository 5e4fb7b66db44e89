"""Trained search for the MICE configuration: decide like the paper, on a budget of steps.

Zero-shot knockouts understate what training absorbs (docs: concepts), so each candidate configuration is a short
fine-tune from the cross-encoder, distilled from it (Margin-MSE, the train preset's recipe), then scored on dev
queries against the cross-encoder with per-query measures, bootstrap CIs and paired tests.

- **Stages.** `mask`: the paper's steps mask0 → mask1 → mask2 → mask3(k) for k in [1, L) (mask3(0) is mask2),
  plus any mask files proposed by the attribution screen. The chosen mask fixes the split a (its merge layer,
  when it blocks `d->q` everywhere, i.e. the document is query-independent). `layers`: MICE-ℓa+b for each b,
  under each `[CLS]` cross-attention of `cls_cross` (none: the paper's text, where the last interaction layer's
  cross-attention cannot reach the score; uniform: the authors' code, `[CLS]` reads the document's mean).
- **Budget: successive halving, in steps.** Every candidate gets `steps` steps; the better 1/`eta` continues to
  `eta` times as many, and so on until `finalists` remain; with a `max_rungs` cap, the best `finalists` go on to
  the last rung. Those train the same number of steps under every seed of
  `seeds`. Curves are drawn from one rung only (`curve`), so every point of a curve had the same steps.
- **Equal finals** (`equal_finals`, default). The layer stage's choice is measured against the mask stage's
  finalists too, so both stages' finals train the same steps (`finals`): the longest final rung either stage's
  halving can reach, found from the candidate counts before either runs. Without it, four layer candidates reach
  their finalists after one rung (50 steps in the full demo) and are judged against masks trained 200.
- **Promotion** (`promote`). `efficient` (default): the rung's best, then every candidate within `tolerance` of
  it from the most efficient down, then the rest by effectiveness, so that the candidate the final rule would
  choose reaches the finalists (ranking by effectiveness alone sends the most effective, i.e. least restrictive,
  masks on and cuts the efficient ones that are within tolerance); `best`: by effectiveness only.
- **Cut** (`cut`). `halving` (default): whoever successive halving does not promote is cut. `significant`: a
  candidate is cut only when the rung tells it apart from the rung's best (paired t-test over dev queries,
  p < `cut_alpha`, and below it); the others go on too, beside the halving count. The rung schedule (steps, rungs,
  equal finals) stays halving's, so the budget is bounded by every candidate reaching the final rung. The test is
  over queries: at a one-seed rung it does not see seed noise, so pair it with `seeded_from`. Every rung row
  records `p_vs_best`, so a cut can be read for what it was (the full demo's 25-step rung cut MICE-ℓ1+3 at
  0.2400 against 0.2670, a gap within noise).
- **Choice.** Among finalists (seed-averaged), the most efficient (mask stage: largest a, then the most
  restrictive step; layer stage: smallest b) whose dev effectiveness is within `tolerance` (relative) of the
  best trained finalist (the layer stage: of both stages). Trained rows are compared with trained rows because
  the short fine-tune itself costs effectiveness (a fine-tuned mask0 loses to its untouched teacher); the
  cross-encoder is the reference only for a layer stage run alone, and every finalist is tested against it
  (paired t-test, CI). Nothing within tolerance: the search says so and the derived configuration keeps the
  cross-encoder. Never a fallback.
- **Cache.** Each candidate x seed trains in a folder named by a content-keyed identity (cross-encoder weights,
  training data, settings, the resolved mask or a/b), with a constant LR after warmup: a rung continues the
  previous one, and a model resumed to 2s steps is the model trained 2s steps. A rerun, an interrupted run or a
  widened search (more k, more b, more seeds) reuses every finished candidate; evaluations are keyed by the
  dev candidates' fingerprint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mice.errors import MiceError
from mice.results import curve  # noqa: F401 (moved to mice.results, which figures may import)
from mice.train.devset import SAMPLES

STAGES = ("mask", "layers")
MEASURES = ("ndcg@10", "rr@10", "delta_ndcg@10", "delta_rr@10", "delta_margin", "kendall_tau")
STEP_NAMES = ("mask0", "mask1", "mask2")  # the paper's steps before the merge layer
PROMOTE = ("efficient", "best")
CUTS = ("halving", "significant")


@dataclass
class SearchConfig:
    """One trained search. Budgets are steps; `queries` x `k` dev pairs score each candidate."""

    model: str  # the cross-encoder: start point and teacher of every candidate
    dataset: str = "embedded:docs"
    split: str = "dev"
    run: str = "bm25"  # first-stage run of the dev queries (a file or "bm25")
    k: int = 10
    queries: int = 50  # N dev queries: the first N by id, or N at random (`sample`)
    sample: str = "first"  # first | random (probes.candidates.from_run; drawn under seed 0)
    train_preset: str = "quick"
    train: dict = field(default_factory=dict)  # TrainConfig settings on top of the preset, for every candidate
    steps: int = 10  # s: the first rung's steps; rung r trains s * eta**r
    eta: int = 2
    finalists: int = 2
    max_rungs: int | None = None  # stop halving after this many rungs: whoever is left is a finalist
    seeds: tuple[int, ...] = (0, 1)
    # promote on every seed from this rung on (None: the finalists only). One seed's score moves by as much as the
    # tolerance (the full demo's search cut MICE's a = 1 at 100 steps on one seed), so a cut can be noise
    seeded_from: int | None = None
    tolerance: float = 0.02
    metric: str = "ndcg@10"
    promote: str = "efficient"  # efficient | best (see the module docstring)
    cut: str = "halving"  # halving | significant: cut only candidates the rung tells apart from its best
    cut_alpha: float = 0.05  # `significant`: the paired test's level
    stages: tuple[str, ...] = STAGES
    merge_layers: tuple[int, ...] | None = None  # k of mask3(k) (default: 1..L-1)
    extra_masks: tuple[str, ...] = ()  # mask files (e.g. the attribution screen's derived mask)
    contextual_layers: int | None = None  # a for the layer stage when the mask stage is not run
    max_interaction_layers: int | None = None
    # the layer stage's `[CLS]` cross-attention modes (`MICEModel`): each b is a candidate under each. Same cost per
    # b, so among equally efficient candidates within tolerance the more effective one is chosen
    cls_cross: tuple[str, ...] = ("none",)
    # both stages' finalists train the same steps: the longest final rung either stage can reach (`final_steps`)
    equal_finals: bool = True
    batch_size: int = 32
    # a replicate: draw r samples its random dev queries under seed r and trains seeds + 1000 r (0: the search)
    draw: int = 0

    def validate(self) -> "SearchConfig":
        def bad(name, why):
            raise MiceError(f"search config: {name}: {why}")

        if not set(self.stages) <= set(STAGES) or not self.stages:
            bad("stages", f"{list(self.stages)} (stages: {', '.join(STAGES)})")
        if "mask" not in self.stages and self.contextual_layers is None:
            bad("contextual_layers", "the layer stage without the mask stage needs a (contextual_layers)")
        for name in ("k", "queries", "steps", "finalists", "batch_size"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.sample not in SAMPLES:
            bad("sample", f"expected first or random, got {self.sample!r}")
        if self.seeded_from is not None and self.seeded_from < 0:
            bad("seeded_from", f"must be >= 0, got {self.seeded_from}")
        if self.draw < 0 or (self.draw and self.sample != "random"):
            bad("draw", f"a replicate draws its dev queries at random (sample random, draw >= 0; got {self.draw})")
        if self.max_rungs is not None and self.max_rungs < 1:
            bad("max_rungs", f"must be >= 1, got {self.max_rungs}")
        if self.eta < 2:
            bad("eta", f"must be >= 2, got {self.eta}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            bad("seeds", f"expected distinct seeds, got {list(self.seeds)}")
        if self.finalists > 1 and len(self.seeds) < 2:
            bad("seeds", "finalists get >= 2 seeds")
        if not 0 <= self.tolerance < 1:
            bad("tolerance", f"must be in [0, 1), got {self.tolerance}")
        if self.metric not in ("ndcg@10", "rr@10"):
            bad("metric", f"{self.metric!r} (ndcg@10, rr@10)")
        if self.promote not in PROMOTE:
            bad("promote", f"{self.promote!r} ({', '.join(PROMOTE)})")
        if self.cut not in CUTS:
            bad("cut", f"{self.cut!r} ({', '.join(CUTS)})")
        if not 0 < self.cut_alpha <= 1:
            bad("cut_alpha", f"must be in (0, 1], got {self.cut_alpha}")
        from mice.models.mice_model import CLS_CROSS_MODES

        if (
            not self.cls_cross
            or len(set(self.cls_cross)) != len(self.cls_cross)
            or not set(self.cls_cross) <= set(CLS_CROSS_MODES)
        ):
            bad("cls_cross", f"expected distinct modes among {', '.join(CLS_CROSS_MODES)}, got {list(self.cls_cross)}")
        return self


@dataclass(frozen=True)
class Candidate:
    """One configuration: a mask for a masked cross-encoder, or MICE-ℓa+b. `efficiency` orders candidates of a
    stage (higher = cheaper at query time); `a` is the split the candidate allows (None: d->q is kept)."""

    stage: str
    name: str
    mode: str  # masked | mice
    mask: str | None
    a: int | None
    b: int | None
    efficiency: tuple
    cls_cross: str = "none"  # MICE's `[CLS]` cross-attention (layer stage)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")


def mask_split(mask) -> int | None:
    """The MICE split a mask allows: the first layer where `q->d` is allowed, if `d->q` is blocked in every
    layer (document states query-independent); None when the document reads the query somewhere."""
    if any(mask.allowed(layer, "d->q") for layer in range(mask.num_layers)):
        return None
    return next((layer for layer in range(mask.num_layers) if mask.allowed(layer, "q->d")), mask.num_layers)


def mask_candidates(
    num_layers: int, merge_layers: Sequence[int] | None = None, extra_masks: Sequence[str] = ()
) -> list[Candidate]:
    from mice.masks import InteractionMask

    out = [Candidate("mask", n, "masked", n, None if i < 2 else 0, None, (0, i)) for i, n in enumerate(STEP_NAMES)]
    ks = range(1, num_layers) if merge_layers is None else merge_layers
    for k in sorted(set(int(x) for x in ks)):
        if not 1 <= k < num_layers:
            raise MiceError(f"merge layer k={k} is outside [1, {num_layers})")
        out.append(Candidate("mask", f"mask3(k={k})", "masked", f"mask3:k={k}", k, None, (k, 3)))
    for path in extra_masks:
        m = InteractionMask.load(path)
        if m.num_layers != num_layers:
            raise MiceError(f"{path}: mask is for {m.num_layers} layers, the model has {num_layers}")
        a = mask_split(m)
        out.append(
            Candidate(
                "mask",
                f"{m.name} ({Path(path).name})",
                "masked",
                str(Path(path).resolve()),
                a,
                None,
                (a if a is not None else 0, 2 if a is not None else -1),
            )
        )
    return out


def layer_candidates(
    a: int, num_layers: int, max_b: int | None = None, cls_cross: Sequence[str] = ("none",)
) -> list[Candidate]:
    """MICE-ℓa+b for each b under each `[CLS]` cross-attention mode (named `MICE-l1+3` under none, the default,
    and `MICE-l1+3 (uniform)`)."""
    top = num_layers - a if max_b is None else min(max_b, num_layers - a)
    if top < 1:
        raise MiceError(f"no interaction layers left above a={a} in a {num_layers}-layer model")
    return [
        Candidate(
            "layers",
            f"MICE-l{a}+{b}" + ("" if mode == "none" else f" ({mode})"),
            "mice",
            None,
            a,
            b,
            (-b,),
            cls_cross=mode,
        )
        for b in range(1, top + 1)
        for mode in cls_cross
    ]


def _mode_settings(mode: str, mask, a, b, cls_cross: str) -> dict:
    """The TrainConfig settings that make a candidate of `mode` what it is."""
    if mode == "masked":
        return {"mask": mask}
    if mode == "mice":
        return {"contextual_layers": a, "interaction_layers": b, "cls_cross_attention": cls_cross}
    return {}  # late-interaction: the preset's own


@dataclass
class SearchResult:
    table: pd.DataFrame  # one row per (candidate, rung) and zero-shot point
    per_query: pd.DataFrame
    config: "object"  # mice.derived.DerivedConfig
    meta: dict


def constant_per_query(groups, scores: np.ndarray) -> list[float]:
    """1.0 for each query whose candidates all score alike (it is not re-ranked), else 0.0."""
    return [float(np.ptp(scores[g]) <= 1e-6 * (1 + np.abs(scores[g]).max())) if len(g) > 1 else 0.0 for g in groups]


def promoted_count(alive: int, rung: int, finalists: int, eta: int, max_rungs: int | None) -> int | None:
    """Successive halving's rule: how many of `alive` candidates at `rung` go on (None: they are the finalists)."""
    if alive <= finalists or (max_rungs is not None and rung == max_rungs - 1):
        return None
    if max_rungs is not None and rung + 1 == max_rungs - 1:
        return finalists  # the next rung is the last the budget allows: only the finalists go on
    return max(finalists, math.ceil(alive / eta))


def final_rung(n: int, finalists: int, eta: int, max_rungs: int | None) -> int:
    """The rung at which successive halving over `n` candidates reaches its finalists."""
    rung = 0
    while (n := promoted_count(n, rung, finalists, eta, max_rungs)) is not None:
        rung += 1
    return rung


def shown_columns(metric: str) -> list[str]:
    """The columns a search table is shown with, in the report and by `mice ablate search`."""
    m = metric
    return ["stage", "candidate", "rung", "steps", "seeds", m, f"{m}_ci_low", f"{m}_ci_high", f"delta_{m}"] + [
        f"p_delta_{m}",
        "kendall_tau",
        "collapsed",
        "rel_loss",
        "within_tolerance",
        "chosen",
    ]


def finals(table: pd.DataFrame) -> pd.DataFrame:
    """Every stage's trained finalists. Raises if they did not all train the same steps (the equal-finals rule:
    the layer stage's choice is measured against the mask stage's finalists)."""
    t = table[table["trained"] & table["finalist"].astype(bool)]
    if t["steps"].nunique() > 1:
        found = ", ".join(f"{s} {sorted(g['steps'].unique())}" for s, g in t.groupby("stage"))
        raise MiceError(f"finalists trained unequal steps ({found}): not comparable")
    return t.reset_index(drop=True)


def replicate_seeds(seeds, draw: int) -> list[int]:
    """The training seeds of replicate `draw` (0: `seeds` themselves); other draws never share a model."""
    return [int(s) + 1000 * int(draw) for s in seeds]


class Search:
    """Run (or resume) a trained search into `out`; `run()` returns a SearchResult and writes search.parquet,
    search.per_query.parquet, search.json and derived.json (mice-config/1)."""

    def __init__(self, config: SearchConfig, out, log: Callable[[str], None] | None = None):
        self.cfg = config.validate()
        self.out = Path(out)
        self.log = log or (lambda s: None)
        self.trained_steps = 0  # steps trained by this run (a resumed run counts only new ones)

    def seeds(self) -> list[int]:
        """Training seeds of this draw: replicates train their own models."""
        return replicate_seeds(self.cfg.seeds, self.cfg.draw)

    # ------------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        from transformers import AutoConfig

        from mice.models.backbone import resolve_model_path
        from mice.data import load_dataset
        from mice.models.hf import quiet_hf
        from mice.identity import dataset_identity, weights_fingerprint
        from probes.candidates import from_run

        from ablations.metrics import RankEffects

        quiet_hf()
        cfg = self.cfg
        self.num_layers = int(AutoConfig.from_pretrained(resolve_model_path(cfg.model)).num_hidden_layers)
        self.ds = load_dataset(cfg.dataset)
        self.cands = from_run(
            self.ds, cfg.split, cfg.run, k=cfg.k, max_queries=cfg.queries, sample=cfg.sample, seed=cfg.draw
        )
        self.cands_fp = self.cands.fingerprint()
        self.effects = RankEffects(self.cands.frame, self.cands.qrels)
        base = self._train_config("masked", "mask2", None, None, seed=0, steps=1, output="-")
        self.max_length = base.max_length
        self.base_identity = {
            "model": weights_fingerprint(cfg.model),
            "data": dataset_identity(self.ds, [base.train_split]),
        }

    def _train_config(self, mode, mask, a, b, seed: int, steps: int, output: str, cls_cross: str = "none"):
        from mice.train.presets import preset

        cfg = self.cfg
        settings = {
            "model": cfg.model,
            "dataset": cfg.dataset,
            "output": output,
            "seed": seed,
            "dev_split": None,
            "lr_schedule": "constant",
            "max_minutes": None,
            "max_steps": steps,
            "save_every": steps,
            "eval_every": steps,
            "resume": True,
            "overwrite": False,
            **_mode_settings(mode, mask, a, b, cls_cross),
        }
        tc = preset(cfg.train_preset, mode, **{k: v for k, v in cfg.train.items() if k not in settings})
        # warmup is part of every rung's schedule: at most half the first rung
        return tc.updated({**settings, "warmup_steps": min(tc.warmup_steps, cfg.steps // 2)})

    def _key(self, cand: Candidate) -> str:
        from mice.identity import identity_hash, mask_identity
        from mice.masks import InteractionMask
        from mice.train.loop import _BY_CONTENT, _RESUME_FREE

        tc = self._train_config(
            cand.mode, cand.mask, cand.a, cand.b, seed=0, steps=1, output="-", cls_cross=cand.cls_cross
        )
        settings = {
            k: v for k, v in tc.to_dict().items() if k not in _RESUME_FREE and k not in _BY_CONTENT and k != "seed"
        }
        what = {"mode": cand.mode}
        if cand.mode == "masked":
            what["mask"] = mask_identity(InteractionMask.parse(cand.mask, self.num_layers), tc.mask_mode)
        elif cand.mode == "mice":
            what.update(a=cand.a, b=cand.b)
        return identity_hash({**self.base_identity, "settings": settings, "candidate": what})[:12]

    def untrained_mice(self, cand: Candidate):
        """MICE-ℓa+b built from the cross-encoder with no training, under the training preset's lengths."""
        from mice.models.mice_model import MICEModel

        tc = self._train_config("mice", None, cand.a, cand.b, 0, 1, "-", cls_cross=cand.cls_cross or "none")
        return MICEModel.from_cross_encoder(
            self.cfg.model,
            contextual_layers=cand.a,
            interaction_layers=cand.b,
            max_doc_length=tc.max_length,
            max_query_length=tc.max_query_length,
            cls_cross_attention=tc.cls_cross_attention,
        )

    def folder(self, cand: Candidate) -> Path:
        return self.out / "candidates" / f"{cand.slug}-{self._key(cand)}"

    # ------------------------------------------------------------------------------------- evaluation
    def _measure(self, scores: np.ndarray) -> dict[str, list[float]]:
        scores = np.asarray(scores, dtype=np.float64)
        pq = self.effects.per_query(self.reference, scores[None])
        out = {m: pq[m][0].tolist() for m in ("delta_ndcg@10", "delta_rr@10", "delta_margin", "kendall_tau")}
        # a query whose candidates all score alike is not re-ranked: its nDCG is the first stage's (ties keep
        # candidate order), e.g. MICE with b = 1, whose [CLS] never reads the document
        out["constant"] = constant_per_query(self.effects.groups, scores)
        out["ndcg@10"] = (np.asarray(self.ref_pq["ndcg@10"]) + pq["delta_ndcg@10"][0]).tolist()
        out["rr@10"] = (np.asarray(self.ref_pq["rr@10"]) + pq["delta_rr@10"][0]).tolist()
        return out

    def _score(self, scorer) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.asarray(scorer.predict(self.cands.pairs, batch_size=self.cfg.batch_size), dtype=np.float64)

    def _cached(self, path: Path, compute: Callable[[], dict], key: dict | None = None) -> dict:
        """`path`'s record if it was computed on these candidates (and under `key`), else a fresh one."""
        from mice.files import write_json_atomic

        key = {"candidates": self.cands_fp, **(key or {})}
        if path.exists():
            rec = json.loads(path.read_text())
            if isinstance(rec, dict) and all(rec.get(k) == v for k, v in key.items()):
                return rec
        rec = {**key, **compute()}
        write_json_atomic(path, rec)
        return rec

    def _reference(self) -> None:
        """The cross-encoder's own scores on the dev candidates (the point every candidate is measured from)."""
        from mice.models.loader import load

        def compute():
            t0 = time.perf_counter()
            scores = self._score(load(self.cfg.model, max_length=self.max_length))
            return {"scores": scores.tolist(), "seconds": round(time.perf_counter() - t0, 2)}

        # keyed by the reference model's weights and length too: another model's scores are never reused
        rec = self._cached(
            self.out / "reference.json",
            compute,
            key={"model": self.base_identity["model"], "max_length": self.max_length},
        )
        self.reference = np.asarray(rec["scores"])
        rel, idcg = self.effects.rel, self.effects.idcg
        rr, nd = [], []
        for i, g in enumerate(self.effects.groups):
            r, n = self.effects._rank_metrics(self.reference[g][None], rel[g], idcg[i])
            rr.append(float(r[0]))
            nd.append(float(n[0]))
        self.ref_pq = {"ndcg@10": nd, "rr@10": rr}

    def zero_shot(self, cand: Candidate) -> dict:
        """The candidate without training: the cross-encoder under the mask, or MICE built from it."""

        def compute():
            t0 = time.perf_counter()
            if cand.mode == "masked":
                from mice.models.loader import load

                scorer = load(self.cfg.model, mask=cand.mask, max_length=self.max_length)
            else:
                scorer = self.untrained_mice(cand)
            m = self._measure(self._score(scorer))
            return {"candidate": cand.name, "steps": 0, "measures": m, "score_s": round(time.perf_counter() - t0, 2)}

        return self._cached(self.folder(cand) / "zero-shot.json", compute)

    def train_to(self, cand: Candidate, seed: int, steps: int) -> Path:
        """Train `cand` under `seed` to `steps`, continuing its last checkpoint (a constant LR after warmup makes
        a model resumed to 2s steps the model trained 2s steps); returns the checkpoint folder."""
        from mice.train import Trainer
        from mice.train.loop import STATE_FILE, _checkpoint_step

        folder = self.folder(cand) / f"seed-{seed}"
        tc = self._train_config(
            cand.mode, cand.mask, cand.a, cand.b, seed, steps, str(folder / "train"), cls_cross=cand.cls_cross
        )
        last = folder / "train" / "last"
        done = _checkpoint_step(last) if (last / STATE_FILE).exists() else 0
        if not isinstance(done, int) or done > steps:  # a later rung of another search: retrain to `steps`
            tc = tc.updated({"resume": False, "overwrite": True})
            done = 0
        if done == steps:
            return last
        self.log(f"  train {cand.name} seed {seed}: steps {done} -> {steps}")
        res = Trainer(tc, dataset=self.ds, quiet=True).train()
        self.trained_steps += steps - done
        if res.steps != steps:
            raise MiceError(f"{cand.name} seed {seed}: stopped at step {res.steps} of {steps} ({res.stopped_by})")
        return last

    def prune(self, cand: Candidate, seed: int) -> None:
        """Free a (candidate, seed) the search will not train again: keep `last/`'s weights (what it scores and
        what a user loads) and drop `best/` (a copy: training here has no dev split) and the optimizer state
        (it only continues a later rung; a rerun that needs one trains from the start)."""
        from mice.train.loop import STATE_FILE

        train = self.folder(cand) / f"seed-{seed}" / "train"
        shutil.rmtree(train / "best", ignore_errors=True)
        (train / "last" / STATE_FILE).unlink(missing_ok=True)

    def trained(self, cand: Candidate, seed: int, steps: int) -> dict:
        """Train `cand` under `seed` to `steps` (continuing its last rung) and score it; cached."""

        def compute():
            from mice.models.loader import load

            t0 = time.perf_counter()
            last = self.train_to(cand, seed, steps)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = self._measure(self._score(load(last)))
            return {
                "candidate": cand.name,
                "seed": seed,
                "steps": steps,
                "measures": m,
                "train_s": round(train_s, 2),
                "score_s": round(time.perf_counter() - t0, 2),
            }

        return self._cached(self.folder(cand) / f"seed-{seed}" / f"eval-{steps}.json", compute)

    # ---------------------------------------------------------------------------------------- halving
    def _row(self, cand: Candidate, recs: list[dict], rung: int | None, trained: bool) -> tuple[dict, dict]:
        """A summary row (seed-averaged per query, bootstrap CI over queries, paired t-test against the
        cross-encoder) and the per-query arrays."""
        pq = {m: np.mean([r["measures"][m] for r in recs], axis=0)[None] for m in MEASURES}
        s = self.effects.summarize(pq, n_boot=1000, seed=0).iloc[0].to_dict()
        row = {
            "stage": cand.stage,
            "candidate": cand.name,
            "mode": cand.mode,
            "mask": cand.mask,
            "a": cand.a,
            "b": cand.b,
            "cls_cross": cand.cls_cross if cand.mode == "mice" else None,
            "efficiency": json.dumps(list(cand.efficiency)),
            "trained": trained,
            "rung": -1 if rung is None else rung,
            "steps": int(recs[0]["steps"]),
            "seeds": ",".join(str(r["seed"]) for r in recs) if trained else "",
            "n_seeds": len(recs) if trained else 0,
            "queries": len(self.effects.qids),
            "collapsed": bool(np.mean([np.mean(r["measures"]["constant"]) for r in recs]) > 0.5),
        }
        for m in MEASURES:
            for suffix in ("", "_ci_low", "_ci_high"):
                row[m + suffix] = float(s[m + suffix])
            if f"p_{m}" in s:
                row[f"p_{m}"] = float(s[f"p_{m}"])
        return row, {m: v[0] for m, v in pq.items()}

    def final_steps(self, mask_cands: Sequence[Candidate]) -> int | None:
        """The steps every finalist trains under `equal_finals`: the longest final rung of the mask stage (over
        `mask_cands`) and of the layer stage under any split a the mask stage can choose. None: each stage's own."""
        cfg = self.cfg
        if not cfg.equal_finals:
            return None
        counts = [len(mask_cands)] if "mask" in cfg.stages else []
        if "layers" in cfg.stages:
            splits = {c.a for c in mask_cands if c.a is not None} if "mask" in cfg.stages else {cfg.contextual_layers}
            counts += [
                len(layer_candidates(a, self.num_layers, cfg.max_interaction_layers, cfg.cls_cross))
                for a in splits
                if a < self.num_layers
            ]
        # no split leaves a layer above it (a >= L): no counts, and the layer stage raises its own clear error
        rung = max((final_rung(n, cfg.finalists, cfg.eta, cfg.max_rungs) for n in counts), default=0)
        return cfg.steps * cfg.eta**rung

    def _stage(
        self, cands: list[Candidate], rows: list, per_query: list, final_steps: int | None = None
    ) -> list[tuple[Candidate, dict]]:
        """Zero-shot points, then successive halving; returns the finalists with their seed-averaged rows. The
        final rung trains `final_steps` when that is more than its own (`equal_finals`)."""
        cfg = self.cfg
        for cand in cands:
            row, pq = self._row(cand, [self.zero_shot(cand)], None, trained=False)
            rows.append(row)
            per_query.append((row, pq))
        alive, rung = list(cands), 0
        scheduled = len(alive)  # halving's count: it fixes the rungs even when `cut` keeps more alive
        while True:
            steps = cfg.steps * cfg.eta**rung
            keep = promoted_count(scheduled, rung, cfg.finalists, cfg.eta, cfg.max_rungs)
            final = keep is None
            if final and final_steps:
                steps = max(steps, final_steps)
            scored, pqs = [], {}
            seeded = final or (cfg.seeded_from is not None and rung >= cfg.seeded_from)
            for cand in alive:
                seeds = self.seeds() if seeded else self.seeds()[:1]
                recs = [self.trained(cand, seed, steps) for seed in seeds]
                row, pq = self._row(cand, recs, rung, trained=True)
                row["finalist"] = final
                rows.append(row)
                per_query.append((row, pq))
                scored.append((cand, row))
                pqs[cand.name] = pq[cfg.metric]
            if final:
                return scored
            promoted = self._promote(scored, pqs, keep)
            self.log(f"  rung {rung} ({steps} steps): promoted " + ", ".join(c.name for c in promoted))
            alive, scheduled, rung = promoted, keep, rung + 1

    def _promote(self, scored: list[tuple[Candidate, dict]], pqs: dict[str, np.ndarray], keep: int) -> list[Candidate]:
        """Who goes on from a rung: the first `keep` of `_promotion_order`, and under `cut="significant"` every
        other non-collapsed candidate whose paired test against the rung's best (per dev query) does not tell them
        apart. Marks each row's `promoted`, `p_vs_best` and `tie` (promoted beyond the halving count)."""
        from scipy import stats

        ranked = self._promotion_order(scored)
        best = ranked[0][0].name
        for cand, row in scored:
            diff = np.asarray(pqs[cand.name]) - np.asarray(pqs[best])
            if cand.name == best or len(diff) < 2:
                row["p_vs_best"] = float("nan")
            else:  # identical per-query scores: nothing tells them apart
                row["p_vs_best"] = float(stats.ttest_1samp(diff, 0.0).pvalue) if diff.any() else 1.0
        out = [c for c, _ in ranked[:keep]]
        if self.cfg.cut == "significant":
            for cand, row in ranked[keep:]:
                told_apart = row["p_vs_best"] < self.cfg.cut_alpha and np.mean(pqs[cand.name]) < np.mean(pqs[best])
                if not row["collapsed"] and not told_apart:
                    out.append(cand)
                    row["tie"] = True
        names = {c.name for c in out}
        for c, r in scored:
            r["promoted"] = c.name in names
        return out

    def _promotion_order(self, scored: list[tuple[Candidate, dict]]) -> list[tuple[Candidate, dict]]:
        """Who goes on first (`promote`): by effectiveness (`best`); or (`efficient`) the rung's best, then the
        candidates within tolerance of it from the most efficient down, then the rest by effectiveness. Collapsed
        candidates go last either way."""
        from ablations.metrics import relative_loss

        m = self.cfg.metric
        ranked = sorted(scored, key=lambda cr: (cr[1]["collapsed"], -cr[1][m], [-e for e in cr[0].efficiency]))
        if self.cfg.promote == "best" or not ranked or ranked[0][1]["collapsed"]:
            return ranked
        best = ranked[0][1][m]
        within = [
            cr
            for cr in ranked[1:]
            if not cr[1]["collapsed"] and relative_loss(best, cr[1][m]) <= self.cfg.tolerance + 1e-12
        ]
        within.sort(key=lambda cr: (cr[0].efficiency, cr[1][m]), reverse=True)
        names = {ranked[0][0].name} | {c.name for c, _ in within}
        return [ranked[0], *within, *[cr for cr in ranked if cr[0].name not in names]]

    def _choose(
        self, finalists: list[tuple[Candidate, dict]], controls: Sequence[dict] = (), with_reference: bool = False
    ) -> tuple[Candidate | None, dict]:
        """The most efficient non-collapsed finalist within `tolerance` of the best trained configuration.

        The best is taken over trained rows only (this stage's finalists and `controls`, the earlier stages'
        finalists), all fine-tuned on the same budget: the fine-tune itself moves a model away from its teacher
        (mask0, the cross-encoder's own attention, loses to the untouched cross-encoder after a short fine-tune),
        so the untouched cross-encoder joins the best only `with_reference` (a layer stage run without the mask
        stage, which has no trained control). Every finalist is still tested against the cross-encoder (delta,
        CI, p)."""
        from ablations.metrics import relative_loss

        m = self.cfg.metric
        ref = float(np.mean(self.ref_pq[m]))
        trained = [r[m] for _, r in finalists if not r["collapsed"]] + [r[m] for r in controls if not r["collapsed"]]
        best = max(trained + ([ref] if with_reference else []), default=ref)
        ok = []
        for cand, row in finalists:
            row["rel_loss"] = relative_loss(best, row[m])
            # a collapsed candidate does not re-rank (it keeps the first stage's order): never chosen
            row["within_tolerance"] = row["rel_loss"] <= self.cfg.tolerance + 1e-12 and not row["collapsed"]
            if row["within_tolerance"]:
                ok.append((cand, row))
        # equally efficient (one b under two [CLS] modes): the more effective
        chosen = max(ok, key=lambda cr: (cr[0].efficiency, cr[1][m])) if ok else None
        for cand, row in finalists:
            row["chosen"] = chosen is not None and cand.name == chosen[0].name
        return (chosen[0] if chosen else None), {
            "best": best,
            "reference": ref,
            "best_is_reference": bool(with_reference and best == ref),
        }

    # ------------------------------------------------------------------------------------------- run
    def run(self) -> SearchResult:
        from mice.files import write_json_atomic, write_table
        from mice.identity import output_lock

        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with output_lock(self.out / "search.json"):  # the folder itself may be held by a demo stage
            self._setup()
            self._reference()
            rows, per_query, decisions, mask_choice, layer_choice, a, final_steps = self._stages()
            table = self._table(rows)
            pq_table = self._per_query_table(per_query)
            write_table(table, self.out / "search.parquet")
            write_table(pq_table, self.out / "search.per_query.parquet")
            why = self._why(table, mask_choice, layer_choice, decisions)
            meta = {
                "config": asdict(self.cfg),
                "num_layers": self.num_layers,
                "queries": len(self.effects.qids),
                "candidates_fingerprint": self.cands_fp,
                "reference": {m: float(np.mean(v)) for m, v in self.ref_pq.items()},
                "decisions": decisions,
                "steps_trained_this_run": self.trained_steps,
                "steps_total": self._steps_total(table),
                "elapsed_s": round(time.perf_counter() - t0, 2),
                "why": why,
            }
            derived = self._derived(table, meta, mask_choice, layer_choice, a, final_steps)
            write_json_atomic(self.out / "search.json", meta)
            derived.save(self.out / "derived.json")
        return SearchResult(table, pq_table, derived, meta)

    def _stages(self):
        """The mask stage, then the layer stage under the split it chose; returns everything the files need."""
        cfg = self.cfg
        rows: list[dict] = []
        per_query: list = []
        decisions: dict = {}
        a, mask_choice, mask_finalists = cfg.contextual_layers, None, []
        mask_cands = mask_candidates(self.num_layers, cfg.merge_layers, cfg.extra_masks) if "mask" in cfg.stages else []
        final_steps = self.final_steps(mask_cands)
        if final_steps:
            self.log(f"finalists of every stage train {final_steps} steps (equal finals)")
        if "mask" in cfg.stages:
            self.log(f"mask stage ({self.num_layers} layers)")
            fin = self._stage(mask_cands, rows, per_query, final_steps)
            mask_choice, decisions["mask"] = self._choose(fin)
            mask_finalists = [r for _, r in fin]
            a = None if mask_choice is None else mask_choice.a
        layer_choice = None
        if "layers" in cfg.stages and a is not None and ("mask" not in cfg.stages or mask_choice is not None):
            self.log(f"layer stage (a = {a})")
            fin = self._stage(
                layer_candidates(a, self.num_layers, cfg.max_interaction_layers, cfg.cls_cross),
                rows,
                per_query,
                final_steps,
            )
            layer_choice, decisions["layers"] = self._choose(
                fin, controls=mask_finalists, with_reference="mask" not in cfg.stages
            )
        return rows, per_query, decisions, mask_choice, layer_choice, a, final_steps

    def _table(self, rows: list[dict]) -> pd.DataFrame:
        """The summary rows with every flag column typed, checked against the equal-steps rules."""
        table = pd.DataFrame(rows)
        for col, default in (
            ("finalist", False),
            ("promoted", False),
            ("tie", False),
            ("chosen", False),
            ("within_tolerance", False),
            ("rel_loss", float("nan")),
            ("p_vs_best", float("nan")),
        ):
            table[col] = table[col].astype(object).fillna(default) if col in table else default
            table[col] = table[col].astype(type(default))
        for stage in table["stage"].unique():
            curve(table, stage)  # the equal-steps rule, asserted before anything is written
        if self.cfg.equal_finals:
            finals(table)
        return table

    def _per_query_table(self, per_query: list) -> pd.DataFrame:
        long = []
        for row, pq in per_query:
            frame = pd.DataFrame({"query_id": self.effects.qids, **pq})
            for key in ("stage", "candidate", "rung", "steps", "seeds", "trained"):
                frame.insert(0, key, row[key])
            long.append(frame)
        return pd.concat(long, ignore_index=True)

    def _derived(self, table, meta, mask_choice, layer_choice, a, final_steps):
        """The decision file: what to train, a, b, the mask, and the evidence behind them."""
        from mice.derived import DerivedConfig
        from mice.masks import InteractionMask

        cfg = self.cfg
        mask = None
        if mask_choice is not None:
            mask = InteractionMask.parse(mask_choice.mask, self.num_layers)
        elif "mask" not in cfg.stages and a is not None:
            mask = InteractionMask.parse(f"mask3:k={a}" if a else "mask2", self.num_layers)
        decision = (
            "mice"
            if layer_choice is not None
            else "masked"
            if mask is not None and "mask" in cfg.stages
            else "cross-encoder"
        )
        if decision == "cross-encoder":
            mask = None
        chosen_rows = table[table["chosen"]]
        return DerivedConfig(
            decision=decision,
            num_layers=self.num_layers,
            contextual_layers=a if decision == "mice" else None,
            interaction_layers=layer_choice.b if layer_choice is not None else None,
            cls_cross_attention=layer_choice.cls_cross if layer_choice is not None else None,
            mask=None
            if mask is None
            else InteractionMask(
                mask.num_layers, mask.rules, name=mask.name, provenance={"method": "trained search"}
            ).to_dict(),
            source_model=str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
            tolerance=cfg.tolerance,
            metric=cfg.metric,
            budget=self._budget(meta, final_steps),
            provenance={
                "why": meta["why"],
                "reference": meta["reference"],
                "decisions": meta["decisions"],
                "chosen": json.loads(chosen_rows.to_json(orient="records")),
                "table": "search.parquet",
                "dataset": cfg.dataset,
                "split": cfg.split,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )

    def _budget(self, meta: dict, final_steps) -> dict:
        cfg = self.cfg
        return {
            "first_rung_steps": cfg.steps,
            "eta": cfg.eta,
            "finalists": cfg.finalists,
            "promote": cfg.promote,
            "max_rungs": cfg.max_rungs,
            "final_steps": final_steps,
            **({"seeded_from": cfg.seeded_from} if cfg.seeded_from is not None else {}),
            **({"cut": cfg.cut, "cut_alpha": cfg.cut_alpha} if cfg.cut != "halving" else {}),
            "seeds": self.seeds(),
            "dev_queries": len(self.effects.qids),
            "k": cfg.k,
            "steps_total": meta["steps_total"],
            "train_preset": cfg.train_preset,
        }

    @staticmethod
    def _steps_total(table: pd.DataFrame) -> int:
        """Training steps the search's table stands for: a seed, once used, continues to its candidate's last
        rung, so each candidate costs its last rung's steps times that rung's seeds."""
        t = table[table["trained"]]
        last = t.loc[t.groupby(["stage", "candidate"])["rung"].idxmax()]
        return int((last["steps"] * last["n_seeds"]).sum())

    def _why(self, table, mask_choice, layer_choice, decisions) -> str:
        m, tol = self.cfg.metric, self.cfg.tolerance

        def say(stage, choice):
            d = decisions.get(stage)
            if d is None:
                return ""
            if choice is None:
                return (
                    f"{stage}: no finalist within {tol:.0%} of the best dev {m} ({d['best']:.4f}; the "
                    f"cross-encoder: {d['reference']:.4f})"
                )
            r = table[(table["stage"] == stage) & table["chosen"]].iloc[0]
            return (
                f"{stage}: {choice.name}, the most efficient finalist within {tol:.0%} of the best ({m} "
                f"{r[m]:.4f} [{r[m + '_ci_low']:.4f}, {r[m + '_ci_high']:.4f}] vs {d['best']:.4f}; against "
                f"the cross-encoder {r['delta_' + m]:+.4f}, p {r['p_delta_' + m]:.3g}; {int(r['steps'])} "
                f"steps x {int(r['n_seeds'])} seeds)"
            )

        parts = [say("mask", mask_choice), say("layers", layer_choice)]
        if mask_choice is not None and mask_choice.a is None:
            parts.append(f"{mask_choice.name} keeps d->q: documents are not query-independent, so no MICE split")
        return "; ".join(p for p in parts if p)


def search(config: SearchConfig, out, log: Callable[[str], None] | None = None) -> SearchResult:
    """Run (or resume) a trained search; see the module docstring."""
    return Search(config, out, log=log).run()
