"""The MICE frontier: ground truth for the decision, computed once and cached.

Every feasible MICE-ℓa+b of a cross-encoder (a >= 1, b >= 1, a + b <= L), "Baseline ft" (the cross-encoder
fine-tuned the same steps under no mask, the paper's control) and the late-interaction model, each trained at one
budget (`steps`) under every seed, and measured on every test query of every test set (nDCG@10, RR@10; paired
CIs of the relative loss against Baseline ft) and on the label-free fidelity pool of the joint search. A search
is then scored against it (`ablations.validate`): regret, stability, compute.

Work is ordered seed by seed, cheapest configuration first, so that an interrupted frontier is a complete
one-seed frontier early; every (configuration, seed) trains in a content-keyed folder and caches its
measurements, and `frontier.parquet` is rewritten after each, so a SIGKILL loses at most one run's work.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ablations.decision import mean_ci, relative_loss
from ablations.joint import CONTROL, JointConfig, JointSearch, _pool, grid
from ablations.regret import fidelity_validity
from ablations.search import Candidate
from mice.errors import MiceError

LATE = "late-interaction"
# the columns a reader sees first, in the command's output and the demo's report
COLUMNS = (
    "configuration",
    "domain",
    "seeds",
    "fidelity",
    "ndcg@10",
    "ndcg@10_low",
    "ndcg@10_high",
    "loss_high",
    "collapsed",
    "pareto",
)
DEFAULT_TESTS = (("in", "embedded:docs"), ("ood", "embedded:docs-ood"), ("meta", "embedded:meta"))


@dataclass
class FrontierConfig:
    model: str
    dataset: str = "embedded:docs"  # training data of every configuration (and the dev split of the pool)
    # (domain, dataset spec): every query of its test split (or of `spec@split`)
    tests: tuple[tuple[str, str], ...] = DEFAULT_TESTS
    test_k: int = 20  # candidates re-ranked per test query (BM25 top k)
    fidelity: tuple[str, ...] = ("embedded:docs-ood@train",)
    fidelity_queries: int = 1000
    k: int = 10
    steps: int = 300
    seeds: tuple[int, ...] = (0, 1, 2)
    train_preset: str = "quick"
    train: dict = field(default_factory=dict)
    late_interaction: bool = True
    batch_size: int = 64

    def validate(self) -> "FrontierConfig":
        if self.steps < 1 or self.test_k < 1 or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise MiceError(
                f"frontier: steps and test_k >= 1 and distinct seeds (got {self.steps}, "
                f"{self.test_k}, {list(self.seeds)})"
            )
        if not self.tests or len({d for d, _ in self.tests}) != len(self.tests):
            raise MiceError(f"frontier: test sets need distinct domain names (got {list(self.tests)})")
        return self


class Frontier(JointSearch):
    """Train and measure every configuration into `out`: frontier.parquet (one row per configuration and test
    set), frontier.per_query.parquet and frontier.json."""

    def __init__(self, config: FrontierConfig, out, log: Callable[[str], None] | None = None):
        self.fcfg = config.validate()
        joint = JointConfig(
            model=config.model,
            dataset=config.dataset,
            fidelity=tuple(config.fidelity),
            fidelity_queries=config.fidelity_queries,
            confirm_queries=1,
            k=config.k,
            train_preset=config.train_preset,
            train=dict(config.train),
            steps=config.steps,
            seeds=tuple(config.seeds),
            batch_size=config.batch_size,
        )
        super().__init__(joint, out, log=log, check=False)

    def seeds(self) -> list[int]:
        return [int(s) for s in self.fcfg.seeds]

    def _setup(self) -> None:
        super()._setup()  # the screening pool (draw 0) and the control
        del self.pools["confirm"]
        for domain, spec in self.fcfg.tests:
            name, split = spec.rsplit("@", 1) if "@" in spec else (spec, "test")
            self.pools[f"test-{domain}"] = _pool([(name, split, None)], lambda s, sp: "bm25", self.fcfg.test_k)
        self.fps = {name: pool.fingerprint()[:12] for name, pool in self.pools.items()}

    def configurations(self) -> list[Candidate]:
        out = [self.control, *grid(self.num_layers)]
        if self.fcfg.late_interaction:
            out.append(Candidate("frontier", LATE, LATE, None, None, None, (0,)))
        return out

    # -------------------------------------------------------------------------------------------- run
    def run(self, max_runs: int | None = None):
        """Train and measure every (configuration, seed), seed by seed; `max_runs` stops after that many new
        (configuration, seed) runs (a partial frontier). Returns (table, meta).

        Several processes (or machines sharing the folder) may run the same frontier at once: each
        (configuration, seed) is taken under its own lock, a worker skips the runs another holds and, at the
        end, waits for them, so every worker returns the whole frontier and no run trains twice."""
        self.out.mkdir(parents=True, exist_ok=True)
        with _waiting_lock(self.out / "frontier.json", self.log):
            self._setup()
            self._references()
        done, skipped = 0, []
        for seed in self.seeds():
            for cand in self.configurations():
                if max_runs is not None and done >= max_runs:
                    return self._write_shared()
                ran = self._run_one(cand, seed, wait=False)
                done += ran is True
                if ran is None:
                    skipped.append((cand, seed))
        for cand, seed in skipped:
            if max_runs is not None and done >= max_runs:
                break
            done += self._run_one(cand, seed, wait=True) is True
        return self._write_shared()

    def _run_one(self, cand: Candidate, seed: int, wait: bool) -> bool | None:
        """Train and measure one run under its lock: True when it ran here, False when it was already
        finished, None when another worker holds it (and `wait` is off)."""
        from mice.errors import LockError
        from mice.identity import output_lock

        if self._finished(cand, seed):
            return False
        lock = self.folder(cand) / f"seed-{seed}" / "run"
        try:
            with _waiting_lock(lock, self.log) if wait else output_lock(lock):
                if self._finished(cand, seed):  # another worker finished it meanwhile
                    return False
                t0 = time.perf_counter()
                for pool in self.pools:
                    self.measured(cand, seed, self.fcfg.steps, pool)
                self._prune([cand], [seed])  # measured on every pool: its weights are all a reader needs
                self.log(f"  {cand.name} seed {seed}: {time.perf_counter() - t0:.0f} s")
        except LockError:
            self.log(f"  {cand.name} seed {seed}: another worker has it, going on")
            return None
        self._write_shared()
        return True

    def _write_shared(self):
        with _waiting_lock(self.out / "frontier.json", self.log):
            return self.write()

    def _finished(self, cand: Candidate, seed: int) -> bool:
        return all(self._record_path(cand, seed, pool).exists() for pool in self.pools)

    def _record_path(self, cand: Candidate, seed: int, pool: str) -> Path:
        return self.folder(cand) / f"seed-{seed}" / f"{pool}-{self.fcfg.steps}-{self.fps[pool]}.json"

    def _records(self, cand: Candidate, pool: str) -> list[dict]:
        return [json.loads(p.read_text()) for s in self.seeds() if (p := self._record_path(cand, s, pool)).exists()]

    # ----------------------------------------------------------------------------------------- tables
    def _kind(self, cand: Candidate) -> str:
        return "mice" if cand.mode == "mice" else LATE if cand.name == LATE else "control"

    def cost(self, cand: Candidate) -> int:
        """Query-time interaction layers: b for MICE, L for the control (a cross-encoder), 0 for late
        interaction (its query-time cost is MaxSim over stored vectors, not a layer)."""
        return int(cand.b) if cand.mode == "mice" else 0 if cand.name == LATE else int(self.num_layers)

    def write(self):
        from mice.files import write_json_atomic, write_table

        rows, long, per_query = [], [], {}
        ctrl = {pool: self._records(self.control, pool) for pool in self.pools}
        for cand in self.configurations():
            recs = {pool: self._records(cand, pool) for pool in self.pools}
            if not all(recs.values()):
                continue
            fid = np.mean([r["fidelity"] for r in recs["screen"]], axis=0)
            collapsed = bool(np.mean([r["constant"] for r in recs["screen"]]) > 0.5)
            per_query[cand.name] = {"fidelity": fid} | {
                pool.removeprefix("test-"): np.mean([r["ndcg@10"] for r in rs], axis=0)
                for pool, rs in recs.items()
                if pool != "screen"
            }
            for pool, rs in recs.items():
                if pool == "screen":
                    continue
                row, pq = self._row(cand, pool, rs, ctrl[pool], fid)
                row["collapsed"] = collapsed
                rows.append(row)
                long.append(pq)
        rows += self._reference_rows()
        table = pd.DataFrame(rows)
        if len(table):
            table["pareto"] = pareto(table)
        write_table(table, self.out / "frontier.parquet")
        validity = fidelity_validity(table, per_query) if len(table) else pd.DataFrame()
        if long:
            write_table(pd.concat(long, ignore_index=True), self.out / "frontier.per_query.parquet")
        meta = {
            "config": asdict(self.fcfg),
            "num_layers": self.num_layers,
            "pools": {n: len(self.groups[n]) for n in self.pools},
            "configurations": len(self.configurations()),
            "runs_finished": int(sum(self._finished(c, s) for c in self.configurations() for s in self.seeds())),
            "runs_total": len(self.configurations()) * len(self.seeds()),
            "steps_total": self.fcfg.steps * len(self.configurations()) * len(self.seeds()),
            # Spearman rho of fidelity against test nDCG@10 across configurations, per test set
            "fidelity_validity": validity.replace({np.nan: None}).to_dict("records"),
        }
        write_json_atomic(self.out / "frontier.json", meta)
        return table, meta

    def _row(self, cand, pool, recs, ctrl_recs, fid) -> tuple[dict, pd.DataFrame]:
        nd = np.mean([r["ndcg@10"] for r in recs], axis=0)
        rr = np.mean([r["rr@10"] for r in recs], axis=0)
        row = {
            "configuration": cand.name,
            "kind": self._kind(cand),
            "a": cand.a,
            "b": cand.b,
            "cost": self.cost(cand),
            "domain": pool.removeprefix("test-"),
            "seeds": len(recs),
            "steps": self.fcfg.steps,
            "queries": len(nd),
            "fidelity": float(fid.mean()),
            **_mean_ci("ndcg@10", nd),
            **_mean_ci("rr@10", rr),
            # spread between seeds (the CI above is over queries, of the seeds' mean)
            "ndcg@10_seed_sd": float(np.std([np.mean(r["ndcg@10"]) for r in recs], ddof=1))
            if len(recs) > 1
            else np.nan,
        }
        if ctrl_recs and cand.name != CONTROL:
            loss = relative_loss(nd, np.mean([r["ndcg@10"] for r in ctrl_recs], axis=0))
            row.update(loss=loss.mean, loss_low=loss.lower, loss_high=loss.upper)
        qids = list(dict.fromkeys(self.pools[pool].frame["query_id"]))
        pq = pd.DataFrame(
            {"configuration": cand.name, "domain": row["domain"], "query_id": qids, "ndcg@10": nd, "rr@10": rr}
        )
        return row, pq

    def _reference_rows(self) -> list[dict]:
        """The cross-encoder itself (untrained further) on every test set: where the frontier starts from."""
        out = []
        for pool in self.pools:
            if pool == "screen":
                continue
            m = self._labelled(self.pools[pool], self.ref[pool])
            out.append(
                {
                    "configuration": "cross-encoder",
                    "kind": "cross-encoder",
                    "a": None,
                    "b": None,
                    "cost": int(self.num_layers),
                    "domain": pool.removeprefix("test-"),
                    "seeds": 0,
                    "steps": 0,
                    "queries": len(m["ndcg@10"]),
                    "fidelity": 1.0,
                    "collapsed": False,
                    **_mean_ci("ndcg@10", np.asarray(m["ndcg@10"])),
                    **_mean_ci("rr@10", np.asarray(m["rr@10"])),
                }
            )
        return out


@contextlib.contextmanager
def _waiting_lock(path: Path, log: Callable[[str], None], poll: float = 0.5):
    """`output_lock(path)`, waiting while another live process holds it (the kernel lock frees it when its
    holder dies, however it dies)."""
    from mice.errors import LockError
    from mice.identity import output_lock

    said = False
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(output_lock(path))
        except LockError:
            if not said:
                log(f"  waiting for the worker that holds {path.name}")
                said = True
            time.sleep(poll)
            continue
        break
    with stack:
        yield


def _mean_ci(name: str, values: np.ndarray) -> dict:
    mean, low, high = mean_ci(values)
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


def pareto(table: pd.DataFrame, metric: str = "ndcg@10") -> pd.Series:
    """Per test set, the trained configurations no other beats at equal or lower query-time cost (MICE and the
    control; ties at equal cost keep the better one). Collapsed configurations (they do not re-rank) are off it."""
    on = pd.Series(False, index=table.index)
    collapsed = table["collapsed"].fillna(False).astype(bool) if "collapsed" in table else False
    usable = table["kind"].isin(["mice", "control"]) & ~collapsed
    for _, t in table[usable].groupby("domain"):
        for i, r in t.iterrows():
            others = t.drop(index=i)
            dominated = (
                (others["cost"] <= r["cost"])
                & (others[metric] >= r[metric])
                & ((others["cost"] < r["cost"]) | (others[metric] > r[metric]))
            ).any()
            on[i] = not dominated
    return on


def frontier(config: FrontierConfig, out, log: Callable[[str], None] | None = None, max_runs: int | None = None):
    """Run (or resume) a frontier; returns (table, meta)."""
    return Frontier(config, out, log=log).run(max_runs=max_runs)
