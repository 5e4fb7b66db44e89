"""The joint search: MICE-ℓa+b over the whole (a, b) grid at once, screened by label-free fidelity, decided by
non-inferiority against a control trained the same steps, confirmed on held-out dev queries.

Why this and not the staged search (`ablations.search`): there, a comes from Mask3(k), which lets the document
evolve through every layer, and only then is b searched under a hand-set cap; its rule compares means on 40-100
labelled dev queries. Here:
- **Candidates**: every MICE-ℓa+b with a >= 1, b >= 1, a + b <= L, and the control "Baseline ft" (the
  cross-encoder fine-tuned the same steps with no mask, the paper's control), trained at every rung.
- **Measure**: fidelity to the cross-encoder (`ablations.decision.fidelity_per_query`) on a screening pool of
  unlabelled queries no candidate trained on (the dev split minus the held-out part, plus `fidelity` sets).
- **Budget**: successive halving in steps (`steps`, `eta`, `finalists`, `max_rungs`); at each rung the non-inferior
  candidates go on first, cheapest first, then the rest by fidelity; the finalists and the control train `seeds`.
  Learning curves cross: at 20 steps the splits with a large a (least changed from the cross-encoder) lead on
  fidelity, by 60 steps the ones that end up best do, so a first rung long enough to rank (`max_rungs=2`: one
  rung for every split, then the finals) is worth its steps.
- **Choice**: `ablations.decision.choose`: the cheapest finalist (smallest b, then largest a) whose one-sided 95%
  upper bound of the relative fidelity loss against the control is within `tolerance`, confirmed on the held-out
  labelled dev queries by the same rule on `confirm_metric` (nDCG@10: fidelity ranks configurations well, but
  its scale is not the labels', so the tolerance is checked in the labels' units where they exist). Labelled dev
  nDCG@10 and RR@10 on those queries are reported beside it. Nothing qualifies: the derived file says so, and
  names the most faithful MICE measured.
- **Before training**: configurations whose untrained scores are constant per query (the [CLS] never reads the
  document) are recorded as collapsed and not trained; `rung_queries` screens early rungs on a random part of
  the pool, since they only rank.
- **Replicates**: `draw` changes which dev queries are held out, the screening sample and the training seeds, so
  a replicate is an independent run of the whole procedure.
Every (candidate, seed) trains in the staged search's content-keyed folders, so both searches and the frontier
(`ablations.frontier`) share trained models.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ablations.decision import choose, cost_key, fidelity_per_query, mean_ci, relative_loss
from ablations.search import (
    Candidate,
    Search,
    SearchConfig,
    constant_per_query,
    promoted_count,
    replicate_seeds,
)
from mice.errors import MiceError

CONTROL = "baseline-ft"


@dataclass
class JointConfig:
    """One joint search. Budgets are steps; pools are query counts."""

    model: str
    dataset: str = "embedded:docs"
    split: str = "dev"
    run: str = "bm25"  # first-stage run of the dev split (a file or "bm25")
    fidelity: tuple[str, ...] = ()  # further unlabelled query sets, "dataset@split", none used in training
    fidelity_queries: int = 1000  # the screening pool (dev minus the held-out part, then `fidelity` sets)
    confirm_queries: int | None = 150  # held-out labelled dev queries, used only to confirm (None: all of dev)
    confirm_extra: tuple[str, ...] = ()  # further labelled sets that confirm, "dataset@split", none used in training
    confirm_extra_queries: int | None = None  # queries taken from `confirm_extra`, in order (None: every one)
    rung_queries: int | None = None  # screening queries before the final rung (None: the whole pool)
    confirm_metric: str = "ndcg@10"  # labelled measure of the confirmation
    k: int = 10  # candidates per query (first-stage top k)
    train_preset: str = "quick"
    train: dict = field(default_factory=dict)
    steps: int = 20
    eta: int = 3
    finalists: int = 2
    max_rungs: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    tolerance: float = 0.05
    alpha: float = 0.05
    min_a: int = 1
    max_b: int | None = None  # None: every b the model allows
    draw: int = 0
    batch_size: int = 64
    keep_checkpoints: bool = False  # False: runs the search is done with keep their weights only (Search.prune)

    def validate(self) -> "JointConfig":
        names = ("fidelity_queries", "confirm_queries", "confirm_extra_queries", "rung_queries", "k", "steps")
        names += ("finalists", "max_rungs")
        for name in (*names, "batch_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise MiceError(f"joint search: {name} must be >= 1, got {getattr(self, name)}")
        if self.eta < 2:
            raise MiceError(f"joint search: eta must be >= 2, got {self.eta}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise MiceError(f"joint search: finalists need >= 2 distinct seeds, got {list(self.seeds)}")
        if not 0 <= self.tolerance < 1 or not 0 < self.alpha < 0.5:
            raise MiceError(
                f"joint search: tolerance in [0, 1) and alpha in (0, 0.5) (got {self.tolerance}, {self.alpha})"
            )
        if int(self.min_a) < 1:
            raise MiceError(f"joint search: min_a must be >= 1, got {self.min_a}")
        if self.confirm_metric not in ("ndcg@10", "rr@10", "fidelity"):
            raise MiceError(f"joint search: confirm_metric is ndcg@10, rr@10 or fidelity, got {self.confirm_metric!r}")
        if f"{self.dataset}@{self.split}" in self.confirm_extra:
            raise MiceError(
                f"joint search: confirm set {self.dataset}@{self.split} is the split whose held-out part confirms"
            )
        for kind, specs in (("fidelity", self.fidelity), ("confirm", self.confirm_extra)):
            for spec in specs:
                if "@" not in spec:
                    raise MiceError(f"joint search: {kind} set {spec!r} is not dataset@split")
        return self


def grid(num_layers: int, min_a: int = 1, max_b: int | None = None) -> list[Candidate]:
    """Every MICE-ℓa+b with a >= min_a, b >= 1, a + b <= L (and b <= max_b), cheapest first."""
    out = [
        Candidate("joint", f"MICE-l{a}+{b}", "mice", None, a, b, (-b, a))
        for a in range(min_a, num_layers)
        for b in range(1, num_layers - a + 1)
        if max_b is None or b <= max_b
    ]
    if not out:
        raise MiceError(f"no MICE-ℓa+b with a >= {min_a} fits a {num_layers}-layer model")
    return sorted(out, key=lambda c: cost_key(c.b, c.a))


def control_candidate(folder, num_layers: int) -> Candidate:
    """Baseline ft: the cross-encoder fine-tuned under the full mask (`none`, saved as a file in `folder`: a
    training config reads the word none as "no mask")."""
    from mice.masks import InteractionMask

    path = Path(folder) / "mask-none.json"
    if not path.exists():
        from mice.files import write_json_atomic

        write_json_atomic(path, InteractionMask.full(num_layers).to_dict())
    return Candidate("joint", CONTROL, "masked", str(path.resolve()), None, None, (0,))


def _with_candidates(dataset: str, split: str, k: int, qids: list[str]) -> list[str]:
    """`qids` in their order, less the queries BM25 returns nothing for (an unlabelled set is used as it is)."""
    from mice.data import load_dataset
    from mice.rank.rerank import candidates as top_k
    from probes.candidates import resolve_run

    ds = load_dataset(dataset)
    have = top_k(resolve_run(ds, split, "bm25", k), ds.queries(split), k)
    return [q for q in qids if str(q) in have]


def _pool(specs: list[tuple[str, str, list[str] | None]], run_for, k: int):
    """One Candidates frame over several (dataset, split, query ids) parts; ids prefixed by their part."""
    from probes.candidates import Candidates, from_run

    frames, qrels = [], []
    for spec, split, qids in specs:
        c = from_run(spec, split, run_for(spec, split), k=k, query_ids=qids)
        prefix = f"{spec}@{split}:"
        frames.append(c.frame.assign(query_id=prefix + c.frame["query_id"].astype(str)))
        qrels.append(c.qrels.assign(query_id=prefix + c.qrels["query_id"].astype(str)))
    return Candidates(pd.concat(frames, ignore_index=True), pd.concat(qrels, ignore_index=True))


class JointSearch(Search):
    """Run (or resume) a joint search into `out`: joint.parquet, joint.json and derived.json."""

    def __init__(self, config: JointConfig, out, log: Callable[[str], None] | None = None, check: bool = True):
        self.jcfg = config.validate() if check else config
        self._orders: dict[str, tuple[str, str, list[str]]] = {}
        staged = SearchConfig(
            model=config.model,
            dataset=config.dataset,
            split=config.split,
            run=config.run,
            k=config.k,
            queries=1,
            train_preset=config.train_preset,
            train=dict(config.train),
            steps=config.steps,
            eta=config.eta,
            finalists=1,
            seeds=tuple(config.seeds),
            tolerance=config.tolerance,
            batch_size=config.batch_size,
        )
        super().__init__(staged, out, log=log)

    # ------------------------------------------------------------------------------------------ pools
    def _setup(self) -> None:
        super()._setup()
        from mice.data import load_dataset
        from mice.train.devset import query_order

        cfg = self.jcfg
        dev = query_order(load_dataset(cfg.dataset).queries(cfg.split), "random", cfg.draw)
        n_held = len(dev) if cfg.confirm_queries is None else cfg.confirm_queries
        if cfg.confirm_queries is not None and len(dev) <= n_held:
            raise MiceError(
                f"{cfg.dataset}/{cfg.split}: {len(dev)} queries, not more than the {n_held} held out for confirmation"
            )
        held, rest = dev[:n_held], dev[n_held:]
        parts = [(cfg.dataset, cfg.split, rest)] if rest else []
        parts += [self._ordered(spec) for spec in cfg.fidelity]
        if not parts:
            raise MiceError(
                "joint search: the screening pool is empty (every dev query is held out for confirmation): "
                "name unlabelled query sets with --fidelity"
            )

        def run_for(spec, split):
            return cfg.run if (spec, split) == (cfg.dataset, cfg.split) else "bm25"

        screened = self._trim(parts, cfg.fidelity_queries)
        self.screen = _pool(screened, run_for, cfg.k)
        extra = self._trim(self._unscreened(cfg.confirm_extra, screened), cfg.confirm_extra_queries)
        self.confirm_pool = _pool([(cfg.dataset, cfg.split, held), *extra], run_for, cfg.k)
        self.pools = {"screen": self.screen, "confirm": self.confirm_pool}
        if cfg.rung_queries is not None and cfg.rung_queries < cfg.fidelity_queries:
            # early rungs only rank candidates: a random part of the pool does, at a fraction of the scoring
            part = self._trim(parts, cfg.rung_queries)
            self.pools["rung"] = self.screen.subset([f"{s}@{sp}:{q}" for s, sp, qids in part for q in qids])
        self.fps = {name: pool.fingerprint()[:12] for name, pool in self.pools.items()}
        self.control = control_candidate(self.out, self.num_layers)

    def _ordered(self, spec: str) -> tuple[str, str, list[str]]:
        """`D@split`'s queries in this draw's random order, less those BM25 finds nothing for; computed once, since
        a set may both screen and confirm."""
        if spec not in self._orders:
            from mice.data import load_dataset
            from mice.train.devset import query_order

            name, split = spec.rsplit("@", 1)
            order = query_order(load_dataset(name).queries(split), "random", self.jcfg.draw)
            self._orders[spec] = (name, split, _with_candidates(name, split, self.jcfg.k, order))
        return self._orders[spec]

    def _unscreened(self, specs, screened) -> list[tuple[str, str, list[str]]]:
        """The labelled sets that confirm beside the held-out dev queries, each in this draw's random order, less
        the queries the screening pool took from the same set (a set may serve both, on disjoint queries)."""
        taken = {(spec, split): set(qids) for spec, split, qids in screened}
        out = []
        for name, split, qids in map(self._ordered, specs):
            used = taken.get((name, split), set())
            out.append((name, split, [q for q in qids if q not in used]))
        return out

    @staticmethod
    def _trim(parts, n: int | None):
        """The first `n` queries (every query when None) over the parts in order (dev first), each part's own
        random order kept."""
        out, left = [], sum(len(qids) for _, _, qids in parts) if n is None else n
        for spec, split, qids in parts:
            if left <= 0:
                break
            if not len(qids):
                continue
            out.append((spec, split, sorted(qids[:left])))
            left -= len(out[-1][2])
        return out

    def _groups(self, pool) -> list[np.ndarray]:
        codes = pd.Categorical(pool.frame["query_id"], categories=list(dict.fromkeys(pool.frame["query_id"])))
        return [np.flatnonzero(codes.codes == i) for i in range(len(codes.categories))]

    def _pool_scores(self, scorer, pool) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.asarray(scorer.predict(pool.pairs, batch_size=self.cfg.batch_size), dtype=np.float64)

    def _references(self) -> None:
        from mice.files import write_json_atomic
        from mice.models.loader import load

        self.ref = {}
        scorer = None
        for name, pool in self.pools.items():
            if name == "rung":  # part of the screening pool: its reference scores are those pairs' scores
                rows = pd.MultiIndex.from_frame(self.screen.frame[["query_id", "doc_id"]])
                at = rows.get_indexer(pd.MultiIndex.from_frame(pool.frame[["query_id", "doc_id"]]))
                self.ref[name] = self.ref["screen"][at]
                continue
            path = self.out / f"reference-{name}-{self.fps[name]}.json"
            if path.exists():
                self.ref[name] = np.asarray(json.loads(path.read_text())["scores"])
                continue
            scorer = scorer or load(self.cfg.model, max_length=self.max_length)
            self.ref[name] = self._pool_scores(scorer, pool)
            write_json_atomic(path, {"model": self.base_identity["model"], "scores": self.ref[name].tolist()})
        self.groups = {name: self._groups(pool) for name, pool in self.pools.items()}

    # ------------------------------------------------------------------------------------- measuring
    def measured(self, cand: Candidate, seed: int, steps: int, pool: str) -> dict:
        """Per-query fidelity (and, on the labelled confirm pool, nDCG@10 and RR@10) of `cand` trained to
        `steps` under `seed`; cached beside the checkpoint, keyed by the pool's fingerprint."""
        from mice.files import write_json_atomic
        from mice.models.loader import load

        path = self.folder(cand) / f"seed-{seed}" / f"{pool}-{steps}-{self.fps[pool]}.json"
        if path.exists():
            return json.loads(path.read_text())
        last = self.train_to(cand, seed, steps)
        t0 = time.perf_counter()
        scores = self._pool_scores(load(last), self.pools[pool])
        rec = {
            "candidate": cand.name,
            "seed": seed,
            "steps": steps,
            "pool": pool,
            "score_s": round(time.perf_counter() - t0, 2),
            "fidelity": fidelity_per_query(self.groups[pool], self.ref[pool], scores).tolist(),
            # a query whose candidates all score alike is not re-ranked (MICE with b = 1: its [CLS] never
            # reads the document): such a candidate keeps the first stage's order and is never chosen
            "constant": constant_per_query(self.groups[pool], scores),
        }
        if pool != "screen":  # labelled pools: held-out dev, test sets
            rec.update(self._labelled(self.pools[pool], scores))
        write_json_atomic(path, rec)
        return rec

    @staticmethod
    def _labelled(pool, scores: np.ndarray) -> dict:
        from ablations.metrics import RankEffects

        eff = RankEffects(pool.frame, pool.qrels)
        rr, nd = zip(*[eff._rank_metrics(scores[g][None], eff.rel[g], eff.idcg[i]) for i, g in enumerate(eff.groups)])
        return {"ndcg@10": [float(x[0]) for x in nd], "rr@10": [float(x[0]) for x in rr]}

    def _values(self, cand: Candidate, seeds, steps: int, pool: str, measure: str = "fidelity") -> np.ndarray:
        return np.mean([self.measured(cand, s, steps, pool)[measure] for s in seeds], axis=0)

    # ---------------------------------------------------------------------------------------- halving
    def seeds(self) -> list[int]:
        """Training seeds of this draw: replicates train their own models."""
        return replicate_seeds(self.jcfg.seeds, self.jcfg.draw)

    def _rung_row(self, cand: Candidate, rung: int, steps: int, seeds, values, control, pool: str) -> dict:
        loss = relative_loss(values, control, alpha=self.jcfg.alpha) if cand.name != CONTROL else None
        collapsed = bool(np.mean(self._values(cand, seeds, steps, pool, "constant")) > 0.5)
        return {
            "collapsed": collapsed,
            "candidate": cand.name,
            "a": cand.a,
            "b": cand.b,
            "rung": rung,
            "steps": steps,
            "seeds": ",".join(map(str, seeds)),
            "n_seeds": len(seeds),
            "queries": len(values),
            "pool": pool,
            "fidelity": float(np.mean(values)),
            "loss": np.nan if loss is None else loss.mean,
            "loss_upper": np.nan if loss is None else loss.upper,
            "qualifies": bool(loss is not None and not collapsed and loss.qualifies(self.jcfg.tolerance)),
        }

    def _order(self, rows: dict[str, dict], alive: list[Candidate]) -> list[Candidate]:
        """Who goes on first: non-inferior candidates cheapest first, then the rest by fidelity."""
        grid_alive = [c for c in alive if c.name != CONTROL]
        ok = sorted([c for c in grid_alive if rows[c.name]["qualifies"]], key=lambda c: cost_key(c.b, c.a))
        rest = sorted(
            [c for c in grid_alive if not rows[c.name]["qualifies"]],
            key=lambda c: (rows[c.name]["collapsed"], -rows[c.name]["fidelity"]),
        )
        return ok + rest

    def halving(self, table: list[dict]) -> tuple[list[Candidate], int]:
        """Successive halving over the grid with the control at every rung; returns the finalists and their
        steps. Each rung appends its rows to `table`; early rungs rank on the `rung` pool where there is one."""
        cfg, control = self.jcfg, self.control
        alive, rung = self.trainable(table), 0
        while True:
            steps = cfg.steps * cfg.eta**rung
            keep = promoted_count(len(alive), rung, cfg.finalists, cfg.eta, cfg.max_rungs)
            seeds = self.seeds() if keep is None else self.seeds()[:1]
            pool = "rung" if keep is not None and "rung" in self.pools else "screen"
            ctrl = self._values(control, seeds, steps, pool)
            rows = {
                c.name: self._rung_row(c, rung, steps, seeds, self._values(c, seeds, steps, pool), ctrl, pool)
                for c in alive
            }
            rows[CONTROL] = self._rung_row(control, rung, steps, seeds, ctrl, ctrl, pool)
            order = self._order(rows, alive)
            promoted = {c.name for c in order[:keep]} if keep is not None else set()
            for name, row in rows.items():
                table.append({**row, "finalist": keep is None, "promoted": name in promoted})
            if keep is not None:
                self._prune([c for c in alive if c.name not in promoted], seeds)
            if keep is None:
                return alive, steps
            self.log(f"  rung {rung} ({steps} steps): promoted " + ", ".join(c.name for c in order[:keep]))
            alive, rung = order[:keep], rung + 1

    def _prune(self, cands: list[Candidate], seeds) -> None:
        """Checkpoints of runs this search is done with (see `Search.prune`), unless `keep_checkpoints`."""
        if not self.jcfg.keep_checkpoints:
            for cand in cands:
                for seed in seeds:
                    self.prune(cand, seed)

    def trainable(self, table: list[dict], probe_queries: int = 8) -> list[Candidate]:
        """The grid less the configurations that cannot re-rank whatever their training: untrained, their
        scores are constant within each of the first `probe_queries` screening queries (the [CLS] never reads
        the document, as in MICE with b = 1 and no [CLS] cross-attention). Those get a row and no training."""
        from mice.files import write_json_atomic

        groups = self.groups["screen"][:probe_queries]
        every = self.screen.pairs
        rows = np.concatenate(groups)
        local = np.split(np.arange(len(rows)), np.cumsum([len(g) for g in groups])[:-1])
        keep = []
        for cand in grid(self.num_layers, self.jcfg.min_a, self.jcfg.max_b):
            path = self.folder(cand) / f"untrained-{probe_queries}-{self.fps['screen']}.json"
            if path.exists():  # a resumed or revalidated search does not rebuild every untrained model
                flat = json.loads(path.read_text())["constant"]
            else:
                model = self.untrained_mice(cand)
                pairs = [every[i] for i in rows]
                flat = constant_per_query(local, np.asarray(model.predict(pairs, batch_size=self.cfg.batch_size)))
                write_json_atomic(path, {"candidate": cand.name, "constant": flat})
            if np.mean(flat) > 0.5:
                table.append({"collapsed": True, "candidate": cand.name, "a": cand.a, "b": cand.b, "rung": 0})
                table[-1].update(steps=0, seeds="", n_seeds=0, queries=len(groups), pool="screen")
                table[-1].update(qualifies=False, finalist=False, promoted=False)
                self.log(f"  {cand.name}: scores constant before training, not trained")
                continue
            keep.append(cand)
        return keep

    # -------------------------------------------------------------------------------------------- run
    def decide(self, finalists: list[Candidate], steps: int):
        cfg, control, seeds = self.jcfg, self.control, self.seeds()
        by_name = {c.name: c for c in finalists}
        cands = [
            {
                "name": c.name,
                "a": c.a,
                "b": c.b,
                "values": self._values(c, seeds, steps, "screen"),
                "collapsed": bool(np.mean(self._values(c, seeds, steps, "screen", "constant")) > 0.5),
            }
            for c in finalists
        ]
        measure = cfg.confirm_metric
        held_ctrl = self._values(control, seeds, steps, "confirm", measure)
        choice = choose(
            cands,
            self._values(control, seeds, steps, "screen"),
            cfg.tolerance,
            confirm=lambda c: (self._values(by_name[c["name"]], seeds, steps, "confirm", measure), held_ctrl),
            alpha=cfg.alpha,
        )
        labelled = {}
        for cand in [*finalists, control]:
            labelled[cand.name] = {
                m: list(mean_ci(self._values(cand, seeds, steps, "confirm", m))) for m in ("ndcg@10", "rr@10")
            }
        return choice, labelled

    def run(self):
        from mice.files import write_json_atomic, write_table
        from mice.identity import output_lock

        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with output_lock(self.out / "joint.json"):
            self._setup()
            self._references()
            rows: list[dict] = []
            finalists, steps = self.halving(rows)
            choice, labelled = self.decide(finalists, steps)
            self._prune([*finalists, self.control], self.seeds())
            table = pd.DataFrame(rows)
            write_table(table, self.out / "joint.parquet")
            meta = {
                "config": asdict(self.jcfg),
                "num_layers": self.num_layers,
                "pools": {name: len(self.groups[name]) for name in self.pools},
                "final_steps": steps,
                "decision": choice.records,
                "chosen": choice.chosen,
                "labelled": labelled,
                "steps_total": joint_steps_total(table),
                "steps_trained_this_run": self.trained_steps,
                "elapsed_s": round(time.perf_counter() - t0, 2),
            }
            meta["ci_width"] = self._ci_width(finalists, steps)
            write_json_atomic(self.out / "joint.json", meta)
            derived = self.derived_config(choice, meta)
            derived.save(self.out / "derived.json")
        return table, meta, derived

    def _ci_width(self, finalists, steps) -> float:
        """Mean width of the finalists' two-sided 90% CI of relative loss: the resolution beside `tolerance`."""
        ctrl = self._values(self.control, self.seeds(), steps, "screen")
        widths = [
            relative_loss(self._values(c, self.seeds(), steps, "screen"), ctrl, alpha=self.jcfg.alpha)
            for c in finalists
        ]
        return float(np.mean([w.upper - w.lower for w in widths]))

    def derived_config(self, choice, meta: dict):
        from mice.derived import DerivedConfig
        from mice.masks import InteractionMask

        cfg = self.jcfg
        recs = {r["name"]: r for r in choice.records}
        budget = {
            "method": "joint",
            "first_rung_steps": cfg.steps,
            "eta": cfg.eta,
            "finalists": cfg.finalists,
            "final_steps": meta["final_steps"],
            "seeds": self.seeds(),
            "screen_queries": meta["pools"]["screen"],
            "confirm_queries": meta["pools"]["confirm"],
            "k": cfg.k,
            "steps_total": meta["steps_total"],
            "train_preset": cfg.train_preset,
            "alpha": cfg.alpha,
        }
        prov = {
            "decision": choice.records,
            "labelled_confirm": meta["labelled"],
            "table": "joint.parquet",
            "dataset": cfg.dataset,
            "control": CONTROL,
            "ci_width": meta["ci_width"],
        }
        source = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
        common = dict(
            num_layers=self.num_layers,
            source_model=source,
            tolerance=cfg.tolerance,
            metric="fidelity@10",
            budget=budget,
        )
        if choice.chosen is None:
            usable = [r for r in choice.records if not r["collapsed"]] or choice.records
            best = min(usable, key=lambda r: r["loss"])
            prov["fallback"] = {"a": best["a"], "b": best["b"], "loss": best["loss"], "loss_upper": best["loss_upper"]}
            prov["why"] = (
                f"no finalist is non-inferior to {CONTROL} within {cfg.tolerance:.0%} (one-sided "
                f"{1 - cfg.alpha:.0%} upper bound of the relative fidelity loss) and confirmed; the most faithful, "
                f"MICE-ℓ{best['a']}+{best['b']}, loses {best['loss']:.1%} (up to {best['loss_upper']:.1%})"
            )
            failed = [x for x in choice.records if x.get("confirmed") is False]
            prov["why"] += "".join(
                f"; {x['name']} qualified on fidelity but failed confirmation on {meta['pools']['confirm']} "
                f"held-out labelled queries by {cfg.confirm_metric} ({x['confirm_loss']:.1%}, upper "
                f"{x['confirm_upper']:.1%})"
                for x in failed
            )
            return DerivedConfig(decision="cross-encoder", provenance=prov, **common)
        r = recs[choice.chosen]
        prov["why"] = (
            f"{choice.chosen}: the cheapest finalist (smallest b, then largest a) non-inferior to "
            f"{CONTROL}: relative fidelity loss {r['loss']:.1%} (upper {r['loss_upper']:.1%} <= "
            f"{cfg.tolerance:.0%}), confirmed on {meta['pools']['confirm']} held-out labelled queries by "
            f"{cfg.confirm_metric} ({r.get('confirm_loss', float('nan')):.1%}, upper "
            f"{r.get('confirm_upper', float('nan')):.1%})"
        )
        mask = InteractionMask.parse(f"mask3:k={r['a']}", self.num_layers)
        mask = InteractionMask(mask.num_layers, mask.rules, name=mask.name, provenance={"method": "joint search"})
        return DerivedConfig(
            decision="mice",
            contextual_layers=r["a"],
            interaction_layers=r["b"],
            cls_cross_attention="none",
            mask=mask.to_dict(),
            provenance=prov,
            **common,
        )


def joint_steps_total(table: pd.DataFrame) -> int:
    """Training steps the search stands for: each candidate's last rung's steps times that rung's seeds."""
    last = table.loc[table.groupby("candidate")["rung"].idxmax()]
    return int((last["steps"] * last["n_seeds"]).sum())


def joint_search(config: JointConfig, out, log: Callable[[str], None] | None = None):
    """Run (or resume) a joint search; returns (table, meta, derived config)."""
    return JointSearch(config, out, log=log).run()


# ---------------------------------------------------------------------------------------- validation
def zero_shot_table(search: JointSearch) -> pd.DataFrame:
    """Every grid configuration built from the cross-encoder without training, its fidelity loss against the
    cross-encoder itself on the screening pool (cached in `zero-shot.parquet`)."""
    from mice.files import read_table, write_table

    path = search.out / f"zero-shot-{search.fps['screen']}.parquet"
    if path.exists():
        return read_table(path)
    ones = np.ones(len(search.groups["screen"]))
    rows = []
    for cand in grid(search.num_layers, search.jcfg.min_a, search.jcfg.max_b):
        scores = search._pool_scores(search.untrained_mice(cand), search.screen)
        fid = fidelity_per_query(search.groups["screen"], search.ref["screen"], scores)
        const = constant_per_query(search.groups["screen"], scores)
        loss = relative_loss(fid, ones, alpha=search.jcfg.alpha)
        rows.append(
            {
                "a": cand.a,
                "b": cand.b,
                "fidelity": float(fid.mean()),
                "loss": loss.mean,
                "loss_upper": loss.upper,
                "collapsed": bool(np.mean(const) > 0.5),
            }
        )
    table = pd.DataFrame(rows)
    write_table(table, path)
    return table


def validate_search(
    config: JointConfig,
    frontier_folder,
    out,
    replicates: int = 5,
    screen_a: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the joint search `replicates` times (draws 0..R-1: other held-out dev queries, screening samples and
    seeds) and score every pick, and the simple rules', against the frontier. Writes validation.csv (one row per
    pick) and validation_summary.csv into `out`."""
    from dataclasses import replace

    from ablations.regret import simple_rules, validate_replicates

    out = Path(out)
    searches = {}

    def replicate(r: int):
        searches[r] = JointSearch(replace(config, draw=r), out / f"draw-{r}", log=log)
        _, meta, derived = searches[r].run()
        mice = derived.decision == "mice"
        a, b = (derived.contextual_layers, derived.interaction_layers) if mice else (None, None)
        return a, b, meta["steps_total"]

    def rules():
        last = searches[replicates - 1]
        return simple_rules(last.num_layers, zero_shot_table(last), screen_a, config.tolerance)

    return validate_replicates("joint search", replicate, frontier_folder, out, replicates, rules, config.tolerance)
