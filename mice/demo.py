"""`mice demo`: the whole method on the offline default, one cached stage at a time.

data → BM25 → bi-encoder → demo cross-encoder → probes → knockout sweep → derived mask + merge layer →
masked cross-encoder and MICE (split point from the merge-layer search) → the late-interaction baseline (ColBERT-
style, distilled from the same cross-encoder) → evaluation in- and out-of-domain →
MICE index → latency benchmark → figures → report.md. Every arrow is a file under `--out`; a finished stage is
never redone (its folder holds `stage.json`), and an interrupted one leaves nothing behind.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from .files import write_table
from .pipeline import Pipeline

ZERO_SHOT = ("mask0", "mask1", "mask2", "mask3")
TINY_BACKBONES = {"tiny": "bert", "tiny-modernbert": "modernbert"}  # random models built in-process
CACHE_VERSION = 1  # bump when a stage's code changes what it produces


@dataclass
class DemoPreset:
    """Sizes of one demo run. `quick`: under 20 minutes from nothing on 2 idle CPU cores (measured, README);
    `tiny`: about a minute; `full`: every test query, the train presets' own budgets."""

    name: str = "quick"
    dataset: str = "embedded:docs"
    dataset_ood: str = "embedded:docs-ood"
    first_stage_k: int = 20  # candidates re-ranked per query (BM25 top-k)
    test_queries: int | None = 40  # first N test queries by id (None = all; the full preset)
    # pair length when re-ranking and knocking out with cross-encoders; None = the length each model was trained
    # at (saved with it), so every model, MICE included, is compared at its own training length
    rerank_max_length: int | None = None
    train_preset: str = "quick"
    backbone: str = "packaged:minilm"  # "tiny" / "tiny-modernbert" = a tiny random model built in-process
    # training steps per model (None: the train preset's own). Steps, not a wall clock, so that a loaded
    # machine gives the same models, only later; on 2 idle cores they fit the 20-minute budget.
    ce_steps: int | None = 250
    masked_steps: int | None = 40  # starts from the cross-encoder: adapting to the mask is quick
    mice_steps: int | None = 300  # the train preset's own MICE budget
    layer_drop_steps: int | None = 50  # the MICE with one interaction layer fewer (a curve point, not a model)
    # the late-interaction baseline (MaxSim). Not MICE's 300: a step costs ~1.7x a MICE step (measured: 40 steps
    # in 54 s, 350 MICE steps in 273 s), which the 20-minute budget cannot hold; fewer steps can only understate
    # it. `mice train --preset quick --mode late-interaction` gives it MICE's own budget (300 steps)
    late_steps: int | None = 40
    dev_queries: int | None = 30  # dev queries of the training runs' evaluations (None: the train preset's)
    interaction_layers: int = 4  # MICE b (capped by the layers left above the split point)
    probe_queries: int = 20
    # dev queries screened by attribution patching (every layer x head x path) and swept exactly (layer x path):
    # 100 queries give per-knockout CIs narrow enough to rank the knockouts on the sensitive measure
    sweep_queries: int = 100
    # the first of those swept exactly (layer x path) for the exact heatmap and to check the screen. Exact
    # knockouts cost a forward each: on the shared 2-core machine 30 queries took 824 s against 310 s for the
    # whole head-level screen of 100; 10 keep the exact sweep at the old demo's size
    exact_queries: int = 10
    check_queries: int = 30  # further dev queries, held out, on which derived masks are re-checked exactly
    merge_queries: int = 30  # dev queries of the merge-layer search
    sweep_k: int = 10
    # largest relative nDCG@10 loss a derived mask may cost on the held-out dev queries: on 20 queries one
    # relevant document moving one rank shifts nDCG@10 by 1-3%, so a tighter tolerance rejects on noise
    tolerance: float = 0.02
    derive_patience: int = 8  # rejected paths in a row before the greedy derivation stops
    derive_max_steps: int | None = 12  # exact re-checks at most (structural cells need none)
    bench_docs: int = 32  # one batch; `mice bench latency` defaults to 100, the demo keeps its budget
    bench_doc_lens: tuple[int, ...] = (128,)  # the demo's documents' length; `mice bench latency` measures 512
    bench_repeats: int = 2
    seed: int = 0


PRESETS = {
    "quick": DemoPreset(),
    "full": DemoPreset(name="full", test_queries=None, first_stage_k=100, ce_steps=None, masked_steps=None,
                       mice_steps=None, layer_drop_steps=None, late_steps=None, dev_queries=None,
                       train_preset="quick", sweep_queries=200, exact_queries=100, check_queries=100,
                       merge_queries=100, derive_max_steps=48, bench_docs=100, bench_doc_lens=(128, 512),
                       bench_repeats=10),
    "tiny": DemoPreset(name="tiny", dataset="embedded:docs?packages=json,csv,argparse,logging,email&max_per_package=200",
                       dataset_ood="embedded:docs-ood?packages=http,xml&max_per_package=150",
                       first_stage_k=8, test_queries=20, train_preset="tiny", backbone="tiny",
                       ce_steps=None, masked_steps=None, mice_steps=None, layer_drop_steps=None, late_steps=None,
                       dev_queries=None, interaction_layers=2, check_queries=8, probe_queries=4, merge_queries=16,
                       exact_queries=8,
                       sweep_queries=8, sweep_k=6, bench_docs=8, bench_doc_lens=(32,), bench_repeats=2),
}


def get_preset(name: str, **overrides) -> DemoPreset:
    from .errors import MiceError

    if name not in PRESETS:
        raise MiceError(f"unknown demo preset {name!r} (presets: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------- helpers
def _subset_queries(ds, split: str, n: int | None) -> list[str]:
    ids = sorted(ds.queries(split))
    return ids if n is None else ids[:n]


def _restrict(run: pd.DataFrame, qids) -> pd.DataFrame:
    return run[run["query_id"].isin(set(qids))].reset_index(drop=True)


class Demo:
    """Holds the preset, the output root and the stage runner; each `stage_*` method is one stage."""

    def __init__(self, out, preset: DemoPreset, console=None):
        self.out = Path(out)
        self.p = preset
        self.console = console
        self.pipe = Pipeline(self.out, console=console, fingerprint={"preset": asdict(preset)})

    def key(self, fields) -> dict:
        """What a stage depends on: the preset fields it (or a stage before it) reads, and the code version."""
        values = asdict(self.p)
        return {"version": CACHE_VERSION, **{f: values[f] for f in fields}}

    # ---- paths of artefacts produced by earlier stages
    def path(self, stage: str, *parts: str) -> Path:
        return self.out / stage / Path(*parts)

    def datasets(self) -> dict[str, str]:
        return {"in": self.p.dataset, "ood": self.p.dataset_ood}

    # ---- stages
    def stage_data(self, folder: Path) -> dict:
        from .data import load_dataset

        rows = []
        for domain, spec in self.datasets().items():
            ds = load_dataset(spec)
            for split in ds.splits:
                rows.append({"domain": domain, "dataset": spec, "split": split, "queries": len(ds.queries(split))})
            rows.append({"domain": domain, "dataset": spec, "split": "corpus", "queries": len(ds.corpus())})
        write_table(pd.DataFrame(rows), folder / "sizes.csv")
        ds = load_dataset(self.p.dataset)
        q = ds.queries("test")
        qrels = ds.qrels("test")
        examples = []
        for qid in sorted(q)[:3]:
            doc = qrels[qrels.query_id == qid].doc_id.iloc[0]
            examples.append({"query_id": qid, "query": q[qid], "document": ds.corpus()[doc][:300]})
        (folder / "examples.json").write_text(json.dumps(examples, indent=2))
        return {"sizes": "sizes.csv"}

    def stage_bm25(self, folder: Path) -> dict:
        from .retrieval import bm25_run
        from .runs import write_run

        from .data import load_dataset

        for domain, spec in self.datasets().items():
            ds = load_dataset(spec)
            write_run(bm25_run(ds, "test", k=max(self.p.first_stage_k, 100)), folder / f"{domain}.trec", tag="bm25")
            dev = bm25_run(ds, "dev", k=self.p.first_stage_k) if domain == "in" else None
            if dev is not None:
                write_run(dev, folder / "in-dev.trec", tag="bm25")
        return {}

    def _rerank(self, scorer, domain: str, folder: Path, name: str) -> Path:
        from .rerank import rerank

        from .data import load_dataset

        out = folder / f"{name}-{domain}.trec"
        ds = load_dataset(self.datasets()[domain])
        rerank(scorer, ds, "test", self.path("bm25", f"{domain}.trec"), k=self.p.first_stage_k,
               batch_size=32, out=out, show_progress_bar=self.console is not None, tag=name,
               query_ids=_subset_queries(ds, "test", self.p.test_queries))
        return out

    def stage_biencoder(self, folder: Path) -> dict:
        from .biencoder import BiEncoder

        scorer = BiEncoder()
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "biencoder")
        return {}

    def _backbone(self, folder: Path) -> str:
        if self.p.backbone not in TINY_BACKBONES:
            return self.p.backbone
        from .testing import tiny_cross_encoder

        # tiny-modernbert: layers global, local, local, global, a 16-token window that the demo's pairs exceed
        return str(tiny_cross_encoder(folder / "tiny-backbone", family=TINY_BACKBONES[self.p.backbone], num_layers=4,
                                      hidden=64, heads=4, intermediate=128, local_attention=16, global_every=3))

    def _train(self, folder: Path, mode: str, steps: int | None, **overrides) -> Path:
        from .train import Trainer
        from .train.presets import preset

        if (folder / "train_result.json").exists() and (folder / "train" / "best").exists():
            return folder / "train" / "best"  # finished before the stage was interrupted
        if self.p.dev_queries:
            overrides["dev_queries"] = self.p.dev_queries
        cfg = preset(self.p.train_preset, mode, dataset=self.p.dataset, output=str(folder / "train"),
                     seed=self.p.seed, overwrite=True, **overrides)
        if steps:  # the schedule decays to 0 at `steps`: evaluate once, at the end; checkpoint half-way too
            cfg = cfg.updated({"max_steps": steps, "max_minutes": None, "eval_every": steps,
                               "save_every": max(1, steps // 2), "warmup_steps": min(cfg.warmup_steps, steps // 10)})
        result = Trainer(cfg, quiet=self.console is None).train()
        (folder / "train_result.json").write_text(json.dumps(
            {k: v for k, v in asdict(result).items() if isinstance(v, (int, float, str, dict, type(None)))},
            indent=2, default=str))
        return folder / "train" / "best"

    def stage_cross_encoder(self, folder: Path) -> dict:
        from .models import load_scorer

        best = self._train(folder, "cross-encoder", self.p.ce_steps, model=self._backbone(folder))
        scorer = load_scorer(best, max_length=self.p.rerank_max_length)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "cross-encoder")
        return {"model": str(best.relative_to(folder))}

    def ce_path(self) -> Path:
        return self.path("cross_encoder", "train", "best")

    def stage_zero_shot(self, folder: Path) -> dict:
        """The paper's masks applied to the trained cross-encoder without retraining."""
        from .models import load_scorer

        model = load_scorer(self.ce_path(), max_length=self.p.rerank_max_length)
        for name in ZERO_SHOT:
            with model.using_mask(name):
                for domain in self.datasets():
                    self._rerank(model, domain, folder, f"zero-shot-{name}")
        return {}

    def dev_run(self) -> str:
        return str(self.path("bm25", "in-dev.trec"))

    def stage_probe(self, folder: Path) -> dict:
        from probes import probe_attention

        probe_attention(str(self.ce_path()), self.p.dataset, folder / "probe.parquet", split="dev", run=self.dev_run(),
                        k=self.p.sweep_k, max_queries=self.p.probe_queries, examples=2)
        return {}

    def _knockout_model(self):
        """The cross-encoder as the knockout stages see it: pairs cut at the re-ranking length, as it is used."""
        from probes.attention import hooked_model

        return hooked_model(str(self.ce_path()), max_length=self.p.rerank_max_length)

    def stage_attribute(self, folder: Path) -> dict:
        """Attribution patching: every layer x head x path knockout estimated on the first dev queries."""
        from ablations.attribution import attribute

        res = attribute(self._knockout_model(), self.p.dataset, split="dev", run=self.dev_run(), k=self.p.sweep_k,
                        max_queries=self.p.sweep_queries, heads=True, modes=("renorm",),
                        out=folder / "attribution.parquet", show_progress_bar=self.console is not None)
        return {"cells": int(len(res.table)), "structural": int((res.table["status"] == "structural").sum()),
                "seconds": res.meta["elapsed_s"]}

    def stage_sweep(self, folder: Path) -> dict:
        """Every single path knocked out exactly in every layer, on the first `exact_queries` of the attribution
        screen's dev queries (the rest of the split stays held out), and the screen checked against it on those
        same queries (Spearman rho)."""
        from ablations import ablate_masks, sweep
        from ablations.attribution import compare_tables, spearman

        from .files import read_table, write_json_atomic

        n = min(self.p.exact_queries, self.p.sweep_queries)
        res = sweep(self._knockout_model(), self.p.dataset, split="dev", run=self.dev_run(), k=self.p.sweep_k,
                    max_queries=n, mode="renorm", out=folder / "sweep.parquet",
                    show_progress_bar=self.console is not None, n_resamples=1000)
        ablate_masks(self._knockout_model(), self.p.dataset, split="dev", run=self.dev_run(), k=self.p.sweep_k,
                     max_queries=n, out=folder / "presets.csv")
        check = compare_tables(read_table(self.path("attribute", "attribution.parquet")), res.table,
                               per_query=read_table(self.path("attribute", "attribution.per_query.parquet")),
                               query_ids=res.meta["query_ids"])
        write_table(check, folder / "attribution_check.csv")
        rho = {"cells": len(check), "rho_mean_dscore": spearman(check), "rho_mean_abs_dscore": spearman(check, "abs")}
        if "exact_delta_margin" in check:
            rho["rho_delta_margin"] = spearman(check, "delta_margin")
        write_json_atomic(folder / "attribution_check.json", rho)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in rho.items()}

    def stage_derive(self, folder: Path) -> dict:
        """Greedy mask ordered by attribution (structural cells free, re-checked on held-out dev queries) and
        the merge-layer search."""
        from ablations import derive_mask, merge_layer_search

        from .files import write_json_atomic

        derivation = derive_mask(self.path("attribute", "attribution.parquet"), tolerance=self.p.tolerance,
                                 check_queries=self.p.check_queries, patience=self.p.derive_patience,
                                 max_steps=self.p.derive_max_steps, name="derived",
                                 show_progress_bar=self.console is not None)
        derivation.save(folder / "mask.json")
        ce = str(self.ce_path())
        merge = merge_layer_search(ce, self.p.dataset, "dev", self.dev_run(), k=self.p.sweep_k, base="mask2",
                                   tolerance=self.p.tolerance, max_queries=self.p.merge_queries)
        write_table(merge.table, folder / "merge_layer.csv")
        merge.mask.save(folder / "merge_mask.json")
        write_json_atomic(folder / "merge_layer.json", {"k": merge.chosen_k, "num_layers": merge.mask.num_layers,
                                                        "tolerance": self.p.tolerance, **merge.meta})
        return {"removed_paths": int(derivation.mask.to_frame()["allowed"].eq(False).sum()), "merge_k": merge.chosen_k,
                "re_checks": derivation.meta["re_checks"], "structural": len(derivation.meta["structural"])}

    def stage_masked(self, folder: Path) -> dict:
        from .models import load_scorer

        mask = self.path("derive", "mask.json")
        best = self._train(folder, "masked", self.p.masked_steps, model=str(self.ce_path()), mask=str(mask))
        scorer = load_scorer(best, max_length=self.p.rerank_max_length)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "masked")
        return {"model": str(best.relative_to(folder))}

    def mice_layers(self) -> tuple[int, int]:
        merge = json.loads(self.path("derive", "merge_layer.json").read_text())
        n_layers = int(merge["num_layers"])
        a = max(1, min(int(merge["k"]), n_layers - 2))  # at least one contextual and two interaction layers
        b = max(2, min(self.p.interaction_layers, n_layers - a))
        return a, b

    def stage_mice(self, folder: Path) -> dict:
        from .models import load_scorer

        a, b = self.mice_layers()
        best = self._train(folder, "mice", self.p.mice_steps, model=str(self.ce_path()), contextual_layers=a,
                           interaction_layers=b)
        scorer = load_scorer(best)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "mice")
        return {"model": str(best.relative_to(folder)), "a": a, "b": b}

    def stage_late_interaction(self, folder: Path) -> dict:
        """The trained late-interaction baseline: the cross-encoder's encoder + a 128-d projection, MaxSim,
        distilled from the cross-encoder with Margin-MSE like MICE (same teacher scores, cached)."""
        from .maxsim import MaxSimScorer

        best = self._train(folder, "late-interaction", self.p.late_steps, model=str(self.ce_path()))
        scorer = MaxSimScorer.from_pretrained(best)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "late-interaction")
        return {"model": str(best.relative_to(folder))}

    def stage_layer_drop(self, folder: Path) -> dict:
        """MICE with fewer interaction layers: b = 1 untrained (the collapse: its score ignores the document,
        whatever the training) and a shorter-trained b - 1, beside the main model (on the in-domain test)."""
        from .data import load_dataset
        from .evaluation import evaluate
        from .mice_model import MICEModel
        from .models import load_scorer
        from .runs import read_run

        a, b = self.mice_layers()
        ds = load_dataset(self.p.dataset)
        qids = _subset_queries(ds, "test", self.p.test_queries)
        qrels = ds.qrels("test")
        qrels = qrels[qrels.query_id.isin(set(qids))]
        runs = {b: read_run(self.path("mice", "mice-in.trec"))}
        steps = {b: json.loads(self.path("mice", "train_result.json").read_text())["steps"], 1: 0}
        collapsed = MICEModel.from_cross_encoder(str(self.ce_path()), contextual_layers=a, interaction_layers=1)
        runs[1] = read_run(self._rerank(collapsed, "in", folder, "mice-b1"))
        if b - 1 > 1:
            best = self._train(folder, "mice", self.p.layer_drop_steps, model=str(self.ce_path()), contextual_layers=a,
                               interaction_layers=b - 1)
            runs[b - 1] = read_run(self._rerank(load_scorer(best), "in", folder, f"mice-b{b - 1}"))
            steps[b - 1] = json.loads((folder / "train_result.json").read_text())["steps"]
        ev = evaluate(qrels, {str(k): v for k, v in sorted(runs.items())}, metrics=["nDCG@10", "RR@10"])
        ce = evaluate(qrels, {"ce": read_run(self.path("cross_encoder", "cross-encoder-in.trec"))},
                      metrics=["nDCG@10", "RR@10"]).set_index("measure")["value"]
        table = pd.DataFrame({"contextual_layers": a, "interaction_layers": ev["run"].astype(int),
                              "metric": ev["measure"], "value": ev["value"],
                              "reference": [float(ce[m]) for m in ev["measure"]],
                              "trained": [int(r) != 1 for r in ev["run"]],
                              "train_steps": [steps[int(r)] for r in ev["run"]]})
        write_table(table, folder / "layer_drop.csv")
        return {}

    def stage_index(self, folder: Path) -> dict:
        """MICE document states on disk (fp16), re-ranking from them, checked against the on-the-fly model."""
        import numpy as np
        from scipy import stats

        from .data import load_dataset
        from .evaluation import evaluate
        from .fast_rerank import FastReranker, IndexScorer
        from .index import IndexConfig, build_index
        from .models import load_scorer
        from .rerank import rerank
        from .runs import read_run

        model = load_scorer(self.path("mice", "train", "best"))
        ds = load_dataset(self.p.dataset)
        run = _restrict(read_run(self.path("bm25", "in.trec")), _subset_queries(ds, "test", self.p.test_queries))
        needed = set(run.groupby("query_id").head(self.p.first_stage_k)["doc_id"])
        corpus = {d: t for d, t in ds.corpus().items() if d in needed}
        t0 = time.perf_counter()
        build_index(model, corpus, folder / "index", IndexConfig(dtype="float16"))
        build_s = time.perf_counter() - t0
        scorer = IndexScorer(FastReranker(model, folder / "index"))
        t0 = time.perf_counter()
        from_index = rerank(scorer, ds, "test", run, k=self.p.first_stage_k, out=folder / "mice-index-in.trec",
                            tag="mice-index")
        rerank_s = time.perf_counter() - t0
        on_the_fly = read_run(self.path("mice", "mice-in.trec"))
        merged = on_the_fly.merge(from_index, on=["query_id", "doc_id"], suffixes=("_fly", "_index"))
        taus = [stats.kendalltau(g.score_fly, g.score_index).statistic for _, g in merged.groupby("query_id")
                if len(g) > 1]
        qrels = ds.qrels("test")
        qrels = qrels[qrels.query_id.isin(set(run["query_id"]))]  # the evaluated subset, not the whole split
        ev = evaluate(qrels, {"mice": on_the_fly, "mice-index": from_index}, metrics=["nDCG@10"])
        ndcg = ev.set_index("run")["value"]
        check = {"documents": len(corpus), "build_seconds": round(build_s, 2), "rerank_seconds": round(rerank_s, 2),
                 "kendall_tau_mean": float(np.nanmean(taus)), "kendall_tau_min": float(np.nanmin(taus)),
                 "max_abs_score_diff": float((merged.score_fly - merged.score_index).abs().max()),
                 "ndcg10_on_the_fly": float(ndcg["mice"]), "ndcg10_from_index": float(ndcg["mice-index"])}
        (folder / "index_check.json").write_text(json.dumps(check, indent=2))
        import shutil

        shutil.rmtree(folder / "index")  # the states are a cache: the check and timings are what we keep
        return check

    def stage_evaluate(self, folder: Path) -> dict:
        from .data import load_dataset
        from .evaluation import evaluate
        from .runs import read_run

        tables = []
        for domain, spec in self.datasets().items():
            ds = load_dataset(spec)
            qids = _subset_queries(ds, "test", self.p.test_queries)
            qrels = ds.qrels("test")
            qrels = qrels[qrels.query_id.isin(set(qids))]
            runs = {"bm25": _restrict(read_run(self.path("bm25", f"{domain}.trec")), qids)}
            sources = [("biencoder", "biencoder"), ("cross-encoder", "cross_encoder")]
            sources += [(f"zero-shot-{m}", "zero_shot") for m in ZERO_SHOT]
            sources += [("masked", "masked"), ("mice", "mice"), ("late-interaction", "late_interaction")]
            for name, stage in sources:
                runs[name] = _restrict(read_run(self.path(stage, f"{name}-{domain}.trec")), qids)
            per_query: dict = {}
            res = evaluate(qrels, runs, metrics=["nDCG@10", "RR@10"], per_query_out=per_query)
            res.insert(0, "domain", domain)
            tables.append(res)
            pq = pd.concat([t.assign(run=name) for name, t in per_query.items()], ignore_index=True)
            write_table(pq, folder / f"per_query-{domain}.parquet")
        table = pd.concat(tables, ignore_index=True)
        write_table(table, folder / "results.csv")
        return {}

    def stage_bench(self, folder: Path) -> dict:
        from .bench import LatencyConfig, add_ratios, run_latency

        a, b = self.mice_layers()
        cfg = LatencyConfig(docs=self.p.bench_docs, doc_lens=self.p.bench_doc_lens, repeats=self.p.bench_repeats,
                            model=str(self.ce_path()), layers=(a, b), workdir=str(folder / "work"),
                            late_interaction=str(self.path("late_interaction", "train", "best")))
        df = add_ratios(run_latency(cfg, log=(self.console.print if self.console else (lambda s: None))))
        write_table(df, folder / "bench.csv")
        import shutil

        shutil.rmtree(folder / "work", ignore_errors=True)
        return {}


    def stage_figures(self, folder: Path) -> dict:
        from figures.make import make_all

        made = make_all(self.out, folder)
        return {"figures": len(made)}

    def run(self) -> Path:
        from .files import write_json_atomic
        from .report import write_report

        p = self.pipe
        write_json_atomic(self.out / "preset.json", asdict(self.p))
        write_json_atomic(self.out / "environment.json", environment())
        data = ("dataset", "dataset_ood")
        runs = data + ("first_stage_k", "test_queries", "rerank_max_length")
        ce = runs + ("train_preset", "backbone", "ce_steps", "dev_queries", "seed")
        sweep = ce + ("sweep_queries", "exact_queries", "sweep_k")
        derived = sweep + ("check_queries", "merge_queries", "tolerance", "derive_patience", "derive_max_steps")
        mice = derived + ("mice_steps", "interaction_layers")
        stages = [
            ("data", self.stage_data, "build the embedded collections", data),
            ("bm25", self.stage_bm25, "BM25 first stage", data + ("first_stage_k",)),
            ("biencoder", self.stage_biencoder, "untuned bi-encoder re-ranking", runs),
            ("cross_encoder", self.stage_cross_encoder, "train the demo cross-encoder", ce),
            ("zero_shot", self.stage_zero_shot, "paper masks zero-shot on the cross-encoder", ce),
            ("probe", self.stage_probe, "probe attention paths", ce + ("probe_queries", "sweep_k")),
            ("attribute", self.stage_attribute, "attribution patching (layer x head x path)", sweep),
            ("sweep", self.stage_sweep, "exact knockout sweep (layer x path) + attribution check", sweep),
            ("derive", self.stage_derive, "derive the mask + merge-layer search", derived),
            ("masked", self.stage_masked, "train the masked cross-encoder", derived + ("masked_steps",)),
            ("mice", self.stage_mice, "train MICE", mice),
            ("layer_drop", self.stage_layer_drop, "layer-drop: fewer interaction layers",
             mice + ("layer_drop_steps",)),
            ("late_interaction", self.stage_late_interaction, "train the late-interaction baseline (MaxSim)",
             ce + ("late_steps",)),
            ("index", self.stage_index, "MICE document index (fp16) vs on the fly", mice),
            ("evaluate", self.stage_evaluate, "evaluate every run, in and out of domain",
             mice + ("masked_steps", "late_steps")),
            ("bench", self.stage_bench, "latency benchmark",
             mice + ("late_steps", "bench_docs", "bench_doc_lens", "bench_repeats")),
        ]
        for name, fn, title, fields in stages:
            p.run(name, fn, title, key=self.key(fields))
        # figures and report are cheap and always redrawn from the saved results
        import shutil

        shutil.rmtree(self.out / "figures", ignore_errors=True)
        p.run("figures", self.stage_figures, "figures from saved results", key={"drawn": time.time()})
        timings = p.timings()
        write_table(timings, self.out / "timings.csv")
        return write_report(self.out, timings=timings)


def run_demo(out="runs/demo", preset: str = "quick", console=None, **overrides) -> Path:
    """Run (or resume) the demo; returns the path of report.md."""
    return Demo(out, get_preset(preset, **overrides), console=console).run()


def environment() -> dict:
    import os

    import torch

    return {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def demo_artifacts(root=".", console=None) -> Path:
    """The folder notebooks read: `runs/demo` when a demo finished there, else a tiny demo (built once, cached)."""
    root = Path(root)
    full = root / "runs" / "demo"
    if (full / "report.md").exists():
        return full
    tiny = root / "runs" / "tiny"
    if not (tiny / "report.md").exists():
        run_demo(tiny, "tiny", console=console)
    return tiny
