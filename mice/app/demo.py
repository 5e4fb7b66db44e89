"""`mice demo`: the whole method on the offline default, one cached stage at a time.

data → BM25 → bi-encoder → demo cross-encoder → probes → attribution screen + exact knockout sweep → mask
derived from the screen → **trained search** (mask steps, merge layer a, interaction layers b: short distillation
fine-tunes under each candidate, successive halving, two seeds for the finalists; `ablations.search`) → the
derived configuration (`search/derived.json`, mice-config/1) → masked cross-encoder and MICE trained from it
(nothing within tolerance: the demo says so and keeps the cross-encoder) → the late-interaction baseline
(ColBERT-style, distilled from the same cross-encoder) → evaluation in domain and on three out-of-domain sets →
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

from mice.files import write_table
from mice.app.pipeline import Pipeline

TINY_BACKBONES = {"tiny": "bert", "tiny-modernbert": "modernbert"}  # random models built in-process
CACHE_VERSION = 2  # bump when a stage's code changes what it produces


@dataclass
class DemoPreset:
    """Sizes of one demo run; the named presets are data (`presets.toml`), each overriding these defaults (the
    quick preset's values)."""

    name: str = "quick"
    dataset: str = "embedded:docs"
    dataset_ood: str = "embedded:docs-ood"
    dataset_meta: str | None = "embedded:meta"  # a third out-of-domain set: distribution summary -> description
    dataset_external: str | None = None  # an external collection with a test split (`mice demo --external`)
    first_stage_k: int = 20  # candidates re-ranked per query (BM25 top-k)
    # first N test queries by id for the baselines' table (None = all); the cross-encoder and MICE re-rank every
    # test query of `every_query_domains`
    test_queries: int | None = 40
    every_query_domains: tuple[str, ...] = ("in", "ood")  # in, ood, meta
    rerank_max_length: int | None = None  # pair length when re-ranking (None: each model's training length)
    train_preset: str = "quick"
    backbone: str = "packaged:minilm"  # "tiny" / "tiny-modernbert" = a tiny random model built in-process
    # training steps per model (None: the train preset's own): steps, not a clock, so a loaded machine gives the
    # same models, only later
    ce_steps: int | None = 250
    # train the cross-encoder until its dev RR@10 beats its teacher's, checked every `ce_eval_every` steps
    ce_until_beats_teacher: bool = False
    ce_eval_every: int | None = None
    ce_negative_miner: str | None = None  # hard negatives from this bi-encoder as well as BM25 (mice.train.mining)
    ce_distill_weight: float | None = None  # TrainConfig.distill_weight (None: the train preset's)
    ce_train_extra: tuple[str, ...] = ()  # more training text: `mix:dataset+...` of these datasets' train splits
    ce_mix_alpha: float | None = None  # TrainConfig.mix_alpha (None: by size)
    # a last phase on longer pairs: `ce_long_steps` more steps from the best checkpoint at `long_length` tokens;
    # the masked model, MICE and late interaction then train at that length too
    long_length: int | None = None
    ce_long_steps: int | None = None
    masked_steps: int | None = 20  # from the cross-encoder: adapting to a mask is quick
    mice_steps: int | None = 300  # the train preset's own MICE budget
    # the late-interaction baseline: a step costs ~1.7x a MICE step, so fewer steps fit the demo's budget (which
    # can only understate it); `mice train --mode late-interaction` gives it MICE's budget
    late_steps: int | None = 30
    dev_queries: int | None = 30  # dev queries of the training runs' evaluations (None: the train preset's)
    # "first" N by id or "random" N: ids sort by package, so the first ones are a few packages only
    dev_sample: str = "random"
    max_interaction_layers: int | None = 4  # the largest b the staged search tries
    probe_queries: int = 20
    # dev queries of the attribution screen (every layer x head x path): enough for per-knockout CIs
    sweep_queries: int = 100
    exact_queries: int = 10  # the first of those swept exactly (a forward per knockout), to check the screen
    check_queries: int = 20  # further held-out dev queries on which derived masks are re-checked exactly
    sweep_k: int = 10
    # largest relative nDCG@10 loss a derived mask may cost on dev queries (one rank moves 20 queries' nDCG 1-3%)
    tolerance: float = 0.02
    # the staged search: first-rung steps, dev queries scored, its tolerance (share of effectiveness to keep),
    # finalists' seeds; rung r trains search_steps * eta**r steps
    search_steps: int = 10
    search_queries: int = 40
    search_tolerance: float = 0.05
    search_seeds: tuple[int, ...] = (0, 1)
    search_finalists: int = 2
    search_eta: int = 3
    search_rungs: int | None = 2
    search_seeded_from: int | None = None  # promote on every seed from this rung on (SearchConfig.seeded_from)
    search_promote: str = "efficient"  # SearchConfig.promote
    search_cut: str = "halving"  # SearchConfig.cut
    search_cls_cross: tuple[str, ...] = ("none",)  # MICE's [CLS] cross-attention modes tried for each b
    search_equal_finals: bool = True  # both stages' finalists train the same steps
    # which search decides: "staged" (the above: mask steps, then the merge layer, then b, on labelled dev queries)
    # or "joint" (`ablations.joint`: every MICE-ℓa+b at once, screened by fidelity on unlabelled queries, each
    # finalist non-inferior to Baseline ft by its CI, confirmed on held-out dev queries). The joint search's
    # seeds, finalists, eta and tolerance are the search_* fields; its schedule is the one scored against the
    # quick frontier (docs/results.md): about an hour of one CPU thread, so the quick demo does not run it by default
    search_method: str = "staged"
    joint_steps: int = 60  # first rung, every split: long enough to rank them (learning curves cross before)
    joint_max_rungs: int | None = 2  # one rung for every split, then the finals at joint_steps * search_eta
    joint_screen_queries: int = 300  # unlabelled screening queries, from dataset_ood's train split
    joint_rung_queries: int | None = 250  # screening queries of the first rung (None: all of them)
    joint_confirm_queries: int | None = None  # held-out dev queries that confirm the choice (None: every one)
    # dataset_ood's labelled splits that confirm beside them (its train split less the screening queries): no
    # candidate trains on them, and 448 dev queries alone leave a standard error of about 1.3% on a 5% tolerance
    joint_confirm_ood: tuple[str, ...] = ("dev", "train")
    joint_warmup_steps: int | None = 10  # warm-up of every candidate (None: the train preset's)
    derive_patience: int = 8  # rejected paths in a row before the greedy derivation stops
    derive_max_steps: int | None = 12  # exact re-checks at most (structural cells need none)
    bench_docs: int = 32  # one batch; `mice bench latency` defaults to 100
    bench_doc_lens: tuple[int, ...] = (128,)  # the demo's documents' length; `mice bench latency` measures 512
    bench_repeats: int = 2
    seed: int = 0


# the joint search's schedule (`Demo.joint_config`)
JOINT_FIELDS = (
    "joint_steps",
    "joint_max_rungs",
    "joint_screen_queries",
    "joint_rung_queries",
    "joint_confirm_queries",
    "joint_confirm_ood",
    "joint_warmup_steps",
)
# what a KEYED_WHEN_SET field is compared with when it is not its field's current default: the value stages were
# computed under before the field existed or changed (the demo once took the first dev queries by id)
KEYED_AGAINST = {
    "dev_sample": "first",
    "search_promote": "best",
    "search_equal_finals": False,
    "joint_confirm_ood": (),
}
KEYED_WHEN_SET = {
    "ce_until_beats_teacher",
    "ce_eval_every",
    "ce_negative_miner",
    "ce_distill_weight",
    "ce_train_extra",
    "ce_mix_alpha",
    "long_length",
    "ce_long_steps",
    "dev_sample",
    "dataset_external",
    "search_seeded_from",
    "search_cls_cross",
    "search_promote",
    "search_equal_finals",
    "search_cut",
    "search_method",
    *JOINT_FIELDS,
}  # see `Demo.key`
# the beat-the-teacher stop rule's version (`TrainConfig.beat_teacher_p`): 2 = a significant dev win, Bonferroni
# over the planned evaluations (1 was the first evaluation above the teacher, which stopped on noise)
BEAT_TEACHER_RULE = 2

PRESETS_FILE = Path(__file__).with_name("presets.toml")
SEARCH_METHODS = ("staged", "joint")
# the preset fields the search stage reads (either search; `Demo.key` drops the joint ones while the staged decides)
SEARCH_FIELDS = (
    "search_steps",
    "search_eta",
    "search_queries",
    "search_seeds",
    "search_finalists",
    "search_rungs",
    "search_seeded_from",
    "search_cls_cross",
    "search_promote",
    "search_equal_finals",
    "search_cut",
    "search_tolerance",
    "max_interaction_layers",
    "search_method",
    *JOINT_FIELDS,
)


def _preset_value(name: str, value):
    """A TOML value as the DemoPreset field holds it: "none" unset, lists as tuples."""
    if value == "none":
        return None
    return tuple(value) if isinstance(value, list) else value


def load_presets(path=PRESETS_FILE) -> dict[str, DemoPreset]:
    """The presets file (`presets.toml`): one table per preset, each overriding DemoPreset's defaults."""
    import tomllib

    from mice.errors import MiceError

    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    known = set(DemoPreset.__dataclass_fields__)
    out = {}
    for name, fields in data.items():
        unknown = sorted(set(fields) - known)
        if unknown:
            raise MiceError(f"{path}: preset {name!r}: unknown field {unknown[0]!r}")
        out[name] = DemoPreset(name=name, **{k: _preset_value(k, v) for k, v in fields.items()})
    return out


PRESETS = load_presets()


# stages whose work changed when the demo began to train MICE whatever the search decided (their key says so)
MICE_ALWAYS_STAGES = ("mice", "index", "evaluate", "bench")


def get_preset(name: str, **overrides) -> DemoPreset:
    from mice.errors import MiceError

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

    def __init__(self, out, preset: DemoPreset, console=None, frontier=None):
        self.out = Path(out)
        self.frontier = frontier  # a cached frontier folder of this cross-encoder, drawn in the report
        self.p = preset
        self.console = console
        if (preset.long_length is None) != (preset.ce_long_steps is None):
            from mice.errors import MiceError

            raise MiceError(
                f"demo preset {preset.name!r}: long_length and ce_long_steps go together (the cross-"
                f"encoder's last phase: steps at a longer pair length); got {preset.long_length} and "
                f"{preset.ce_long_steps}"
            )
        if preset.search_method not in SEARCH_METHODS:
            from mice.errors import MiceError

            raise MiceError(
                f"demo preset {preset.name!r}: search_method {preset.search_method!r}: expected "
                + " or ".join(SEARCH_METHODS)
            )
        self.external_fingerprint = self.check_external() if preset.dataset_external else None  # before any folder
        self.pipe = Pipeline(self.out, console=console, fingerprint={"preset": asdict(preset)})

    def key(self, fields) -> dict:
        """What a stage depends on: the preset fields it (or a stage before it) reads, and the code version."""
        values, defaults = asdict(self.p), {**asdict(DemoPreset()), **KEYED_AGAINST}
        # fields added within a cache version enter the key only when set away from their default, so that
        # finished stages of earlier runs stay valid (the identity of what they computed did not change)
        # the joint search's own fields key nothing while the staged search decides
        fields = [f for f in fields if values["search_method"] == "joint" or f not in JOINT_FIELDS]
        key = {
            "version": CACHE_VERSION,
            **{f: values[f] for f in fields if f not in KEYED_WHEN_SET or values[f] != defaults[f]},
        }
        if any(f in key and key[f] is None for f in ("ce_steps", "masked_steps", "mice_steps", "late_steps")):
            key["train_budget"] = "steps"  # the train preset's own steps, without its wall clock
        if key.get("ce_until_beats_teacher"):
            key["beat_teacher_rule"] = BEAT_TEACHER_RULE  # when the cross-encoder stops depends on the rule
        if key.get("ce_train_extra"):  # installed packages change these collections under the same spec: key
            from mice.data import load_dataset  # their training text (not the builder's source, as fingerprint() does)
            from mice.identity import dataset_identity

            key["ce_train_extra_content"] = [
                dataset_identity(load_dataset(x), ("train",)) for x in key["ce_train_extra"]
            ]
        if key.get("dataset_external"):  # a folder's spec stays the same when its files change: key its content
            key["dataset_external_fingerprint"] = self.external_fingerprint
        return key

    # ---- paths of artefacts produced by earlier stages
    def path(self, stage: str, *parts: str) -> Path:
        return self.out / stage / Path(*parts)

    def datasets(self) -> dict[str, str]:
        out = {"in": self.p.dataset, "ood": self.p.dataset_ood}
        if self.p.dataset_meta:
            out["meta"] = self.p.dataset_meta
        if self.p.dataset_external:
            out["ext"] = self.p.dataset_external
        return out

    def check_external(self) -> str:
        """Fail before any stage runs when the external collection cannot be evaluated (it needs a test split);
        else its content fingerprint, which keys the stages (loaded once per run)."""
        from mice.data import load_dataset
        from mice.errors import MiceError

        spec = self.p.dataset_external
        ds = load_dataset(spec)
        if "test" not in ds.splits:
            raise MiceError(f"external collection {spec}: no test split (it has {', '.join(ds.splits) or 'none'})")
        return ds.fingerprint()

    def every_query(self, domain: str) -> bool:
        """Whether the cross-encoder and MICE re-rank every test query of `domain`: the preset's domains, and
        always the external collection (where every model is compared with BM25)."""
        return domain in self.p.every_query_domains or domain == "ext"

    # ---- stages
    def stage_data(self, folder: Path) -> dict:
        from mice.data import load_dataset

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
        from mice.rank.first_stage import bm25_run
        from mice.rank.runs import write_run

        from mice.data import load_dataset

        for domain, spec in self.datasets().items():
            ds = load_dataset(spec)
            write_run(bm25_run(ds, "test", k=max(self.p.first_stage_k, 100)), folder / f"{domain}.trec", tag="bm25")
            dev = bm25_run(ds, "dev", k=self.p.first_stage_k) if domain == "in" else None
            if dev is not None:
                write_run(dev, folder / "in-dev.trec", tag="bm25")
        return {}

    def _rerank(self, scorer, domain: str, folder: Path, name: str, every_query: bool = False) -> Path:
        """Re-rank BM25's top-k of the `test_queries` subset, or of every test query (`every_query`)."""
        from mice.rank.rerank import rerank

        from mice.data import load_dataset

        out = folder / f"{name}-{domain}.trec"
        ds = load_dataset(self.datasets()[domain])
        rerank(
            scorer,
            ds,
            "test",
            self.path("bm25", f"{domain}.trec"),
            k=self.p.first_stage_k,
            batch_size=32,
            out=out,
            show_progress_bar=self.console is not None,
            tag=name,
            query_ids=_subset_queries(ds, "test", None if every_query else self.p.test_queries),
        )
        return out

    def stage_biencoder(self, folder: Path) -> dict:
        from mice.models.biencoder import BiEncoder

        scorer = BiEncoder()
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "biencoder")
        return {}

    def _backbone(self, folder: Path) -> str:
        if self.p.backbone not in TINY_BACKBONES:
            return self.p.backbone
        from mice.models.testing import tiny_cross_encoder

        # tiny-modernbert: layers global, local, local, global, a 16-token window that the demo's pairs exceed
        return str(
            tiny_cross_encoder(
                folder / "tiny-backbone",
                family=TINY_BACKBONES[self.p.backbone],
                num_layers=4,
                hidden=64,
                heads=4,
                intermediate=128,
                local_attention=16,
                global_every=3,
            )
        )

    def train_config(self, folder: Path, mode: str, steps: int | None, sub: str = "train", **overrides):
        """The TrainConfig of one training stage (its run in `folder/sub`): the train preset's recipe, the demo's
        steps and dev queries; the models trained from the cross-encoder read `long_length` tokens when it is set."""
        from mice.train.presets import preset

        if self.p.dev_queries:
            overrides["dev_queries"] = self.p.dev_queries
        overrides["dev_sample"] = self.p.dev_sample
        if self.p.long_length and mode != "cross-encoder":
            overrides.setdefault("max_length", self.p.long_length)
        # an interrupted stage's training resumes from its last checkpoint (the partial stage folder is kept only
        # under the same stage key, and the trainer refuses a checkpoint of other settings)
        resume = (folder / sub / "last").exists()
        overrides.setdefault("dataset", self.p.dataset)
        cfg = preset(
            self.p.train_preset,
            mode,
            output=str(folder / sub),
            seed=self.p.seed,
            overwrite=not resume,
            resume=resume,
            **overrides,
        )
        if steps:  # the schedule decays to 0 at `steps`: evaluate once, at the end (unless told); checkpoint half-way
            # no evaluation at step 0 either: it measures the start model (the search and evaluation stages do)
            cfg = cfg.updated(
                {
                    "max_steps": steps,
                    "eval_every": overrides.get("eval_every", steps),
                    "eval_at_start": False,
                    "save_every": max(1, steps // 2),
                    "warmup_steps": min(cfg.warmup_steps, steps // 10),
                }
            )
        # budgets are steps, never the train preset's wall clock: a loaded machine gives the same models, later
        # (the full preset's 300-step masked model once stopped at step 187 after the quick preset's 5.5 minutes)
        return cfg.updated({"max_minutes": None})

    def _train(self, folder: Path, mode: str, steps: int | None, sub: str = "train", **overrides) -> Path:
        from mice.train import Trainer

        result_file = folder / f"{sub}_result.json"  # train_result.json, long_result.json
        if result_file.exists() and (folder / sub / "best").exists():
            return folder / sub / "best"  # finished before the stage was interrupted
        cfg = self.train_config(folder, mode, steps, sub=sub, **overrides)
        result = Trainer(cfg, quiet=self.console is None).train()
        result_file.write_text(
            json.dumps(
                {k: v for k, v in asdict(result).items() if isinstance(v, (int, float, str, dict, type(None)))},
                indent=2,
                default=str,
            )
        )
        return folder / sub / "best"

    def stage_cross_encoder(self, folder: Path) -> dict:
        from mice.models.loader import load

        until = {"until_beats_teacher": True} if self.p.ce_until_beats_teacher else {}
        if self.p.ce_eval_every:
            until["eval_every"] = self.p.ce_eval_every
        if self.p.ce_negative_miner:
            until["negative_miner"] = self.p.ce_negative_miner
        if self.p.ce_distill_weight is not None:
            until["distill_weight"] = self.p.ce_distill_weight
        if self.p.ce_train_extra:
            until.update(
                dataset="mix:" + "+".join((self.p.dataset, *self.p.ce_train_extra)), dev_dataset=self.p.dataset
            )
            if self.p.ce_mix_alpha is not None:
                until["mix_alpha"] = self.p.ce_mix_alpha
        best = self._train(folder, "cross-encoder", self.p.ce_steps, model=self._backbone(folder), **until)
        if self.p.long_length:  # the last phase, on longer pairs: no stop rule, its budget is steps
            until.pop("until_beats_teacher", None)
            best = self._train(
                folder,
                "cross-encoder",
                self.p.ce_long_steps,
                sub="long",
                model=str(best),
                max_length=self.p.long_length,
                **until,
            )
        scorer = load(best, max_length=self.p.rerank_max_length)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "cross-encoder", every_query=self.every_query(domain))
        return {"model": str(best.relative_to(folder))}

    def ce_path(self) -> Path:
        return self.path("cross_encoder", "long" if self.p.long_length else "train", "best")

    def dev_run(self) -> str:
        return str(self.path("bm25", "in-dev.trec"))

    def dev_candidates(self, n: int):
        """N dev queries' BM25 candidates, drawn as `dev_sample` says (first N by id, or N at random). A random
        draw is one seeded order, so the exact sweep's queries are the first of the screen's, and the derivation's
        held-out queries are the rest of that order."""
        from probes.candidates import from_run

        return from_run(
            self.p.dataset, "dev", self.dev_run(), k=self.p.sweep_k, max_queries=n, sample=self.p.dev_sample
        )

    def stage_probe(self, folder: Path) -> dict:
        from probes import probe_attention

        probe_attention(
            str(self.ce_path()), self.dev_candidates(self.p.probe_queries), folder / "probe.parquet", examples=2
        )
        return {}

    def _knockout_model(self):
        """The cross-encoder as the knockout stages see it: pairs cut at the re-ranking length, as it is used."""
        from probes.attention import hooked_model

        return hooked_model(str(self.ce_path()), max_length=self.p.rerank_max_length)

    def stage_attribute(self, folder: Path) -> dict:
        """Attribution patching: every layer x head x path knockout estimated on the dev sample (`dev_sample`)."""
        from ablations.attribution import attribute

        res = attribute(
            self._knockout_model(),
            self.dev_candidates(self.p.sweep_queries),
            heads=True,
            modes=("renorm",),
            out=folder / "attribution.parquet",
            show_progress_bar=self.console is not None,
        )
        return {
            "cells": int(len(res.table)),
            "structural": int((res.table["status"] == "structural").sum()),
            "seconds": res.meta["elapsed_s"],
        }

    def stage_sweep(self, folder: Path) -> dict:
        """Every single path knocked out exactly in every layer, on the first `exact_queries` of the attribution
        screen's dev queries (the rest of the split stays held out), and the screen checked against it on those
        same queries (Spearman rho)."""
        from ablations import ablate_masks, sweep
        from ablations.attribution import compare_tables, spearman

        from mice.files import read_table, write_json_atomic

        cands = self.dev_candidates(min(self.p.exact_queries, self.p.sweep_queries))
        res = sweep(
            self._knockout_model(),
            cands,
            mode="renorm",
            out=folder / "sweep.parquet",
            show_progress_bar=self.console is not None,
            n_resamples=1000,
        )
        ablate_masks(self._knockout_model(), cands, out=folder / "presets.csv")
        check = compare_tables(
            read_table(self.path("attribute", "attribution.parquet")),
            res.table,
            per_query=read_table(self.path("attribute", "attribution.per_query.parquet")),
            query_ids=res.meta["query_ids"],
        )
        write_table(check, folder / "attribution_check.csv")
        rho = {"cells": len(check), "rho_mean_dscore": spearman(check), "rho_mean_abs_dscore": spearman(check, "abs")}
        if "exact_delta_margin" in check:
            rho["rho_delta_margin"] = spearman(check, "delta_margin")
        write_json_atomic(folder / "attribution_check.json", rho)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in rho.items()}

    def stage_derive(self, folder: Path) -> dict:
        """Greedy mask ordered by attribution (structural cells free, re-checked on held-out dev queries): the
        screen's proposal, one more candidate of the trained search."""
        from ablations import derive_mask

        derivation = derive_mask(
            self.path("attribute", "attribution.parquet"),
            tolerance=self.p.tolerance,
            check_queries=self.p.check_queries,
            patience=self.p.derive_patience,
            max_steps=self.p.derive_max_steps,
            name="derived",
            show_progress_bar=self.console is not None,
        )
        derivation.save(folder / "mask.json")
        return {
            "removed_paths": int(derivation.mask.to_frame()["allowed"].eq(False).sum()),
            "re_checks": derivation.meta["re_checks"],
            "structural": len(derivation.meta["structural"]),
        }

    def search_config(self, draw: int = 0):
        """The trained search's settings (`mice ablate search`): the paper's mask steps, every merge layer k and
        the screen's mask, then every b of MICE-ℓa+b; `draw` > 0 is a replicate (other dev queries and seeds)."""
        from ablations.search import SearchConfig

        train = {"dev_queries": self.p.dev_queries} if self.p.dev_queries else {}
        return SearchConfig(
            model=str(self.ce_path()),
            dataset=self.p.dataset,
            split="dev",
            run=self.dev_run(),
            k=self.p.sweep_k,
            queries=self.p.search_queries,
            sample=self.p.dev_sample,
            train_preset=self.p.train_preset,
            train=train,
            steps=self.p.search_steps,
            eta=self.p.search_eta,
            finalists=self.p.search_finalists,
            max_rungs=self.p.search_rungs,
            seeded_from=self.p.search_seeded_from,
            seeds=tuple(self.p.search_seeds),
            tolerance=self.p.search_tolerance,
            max_interaction_layers=self.p.max_interaction_layers,
            cls_cross=tuple(self.p.search_cls_cross),
            promote=self.p.search_promote,
            cut=self.p.search_cut,
            equal_finals=self.p.search_equal_finals,
            extra_masks=(str(self.path("derive", "mask.json")),),
            draw=draw,
        )

    def joint_config(self, draw: int = 0):
        """The joint search's settings (`mice ablate joint`): every MICE-ℓa+b and Baseline ft, screened on
        `dataset_ood`'s train split, confirmed on the dev split and `joint_confirm_ood`'s splits of `dataset_ood`
        (less the screening queries); `draw` > 0 is a replicate."""
        from ablations.joint import JointConfig

        p = self.p
        return JointConfig(
            model=str(self.ce_path()),
            dataset=p.dataset,
            split="dev",
            fidelity=(f"{p.dataset_ood}@train",),
            fidelity_queries=p.joint_screen_queries,
            confirm_queries=p.joint_confirm_queries,
            confirm_extra=tuple(f"{p.dataset_ood}@{split}" for split in p.joint_confirm_ood),
            rung_queries=p.joint_rung_queries,
            k=p.sweep_k,
            train_preset=p.train_preset,
            train={} if p.joint_warmup_steps is None else {"warmup_steps": p.joint_warmup_steps},
            steps=p.joint_steps,
            eta=p.search_eta,
            finalists=p.search_finalists,
            max_rungs=p.joint_max_rungs,
            seeds=tuple(p.search_seeds),
            tolerance=p.search_tolerance,
            draw=draw,
        )

    def stage_search(self, folder: Path) -> dict:
        """The trained search (staged or joint): each candidate a short distillation fine-tune from the
        cross-encoder."""
        self._adopt_candidates(folder)
        derived, meta, _ = self._search_draw(0, folder)
        return {
            "decision": derived.decision,
            "a": derived.contextual_layers,
            "b": derived.interaction_layers,
            "steps_total": meta["steps_total"],
        }

    def _adopt_candidates(self, folder: Path) -> None:
        """Move the trained candidates of an earlier search (a finished stage under another key, about to be
        replaced) into this one. Each candidate folder is named by a content-keyed identity (cross-encoder
        weights, data, settings, candidate), so a changed search setting reuses every candidate it shares."""
        old = self.path("search", "candidates")
        if not old.is_dir():
            return
        (folder / "candidates").mkdir(parents=True, exist_ok=True)
        for cand in sorted(old.iterdir()):
            if not (folder / "candidates" / cand.name).exists():
                cand.rename(folder / "candidates" / cand.name)

    def derived(self):
        from mice.derived import DerivedConfig

        return DerivedConfig.load(self.path("search", "derived.json"))

    def stage_masked(self, folder: Path) -> dict:
        """The masked cross-encoder under the derived configuration's mask (none: nothing to train)."""
        from mice.models.loader import load

        derived = self.derived()
        if derived.decision == "cross-encoder":
            return {"skipped": "the search found no configuration within tolerance"}
        best = self._train(
            folder,
            "masked",
            self.p.masked_steps,
            model=str(self.ce_path()),
            mask=str(self.path("search", "derived.json")),
        )
        scorer = load(best, max_length=self.p.rerank_max_length)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "masked")
        return {"model": str(best.relative_to(folder))}

    def mice_layers(self) -> tuple[int, int]:
        """(a, b) of the MICE model the demo trained: the search's choice, or its most effective measured MICE."""
        info = json.loads(self.path("mice", "mice.json").read_text())
        return int(info["a"]), int(info["b"])

    def fallback_mice(self, derived, table: Path | None = None) -> dict:
        """When the search chose no MICE: its most effective measured MICE configuration (the layer stage's
        finalists, else its best rung), or, when the layer stage never ran, MICE over the best split the mask
        stage measured with every layer above it. Says by how much it failed the search's rule. `table`: the
        search's search.parquet (default: this demo's)."""
        from mice.files import read_table

        fallback = derived.provenance.get("fallback")
        if derived.budget.get("method") == "joint" and fallback:  # the joint search names its most faithful MICE
            a, b = int(fallback["a"]), int(fallback["b"])
            why = f"MICE-ℓ{a}+{b} trained instead: {derived.provenance['why']}"  # the search's reason, once
            return {"a": a, "b": b, "cls_cross_attention": "none", "chosen": False, "why": why}
        t = read_table(table or self.path("search", "search.parquet"))
        m = derived.metric if derived.metric in t else "ndcg@10"
        layers = t[(t["stage"] == "layers") & t["trained"] & ~t["collapsed"].astype(bool)]
        if len(layers):
            top = layers[layers["rung"] == layers["rung"].max()].sort_values(m, ascending=False).iloc[0]
            a, b = int(top["a"]), int(top["b"])
            loss = float(top["rel_loss"]) if pd.notna(top.get("rel_loss")) else float("nan")
            why = (
                f"the search chose no MICE: its most effective measured MICE, MICE-ℓ{a}+{b}, was trained instead; "
                f"it failed the search's rule at {loss:.1%} below the best (tolerance {derived.tolerance:.0%})"
            )
        else:
            # b = L - a >= 2: with one interaction layer the [CLS] never reads the document (MICE-ℓa+1 collapses)
            masks = t[
                (t["stage"] == "mask")
                & t["trained"]
                & ~t["collapsed"].astype(bool)
                & t["a"].notna()
                & (t["a"] >= 1)
                & (t["a"] <= derived.num_layers - 2)
            ]
            if len(masks):
                a = int(masks.sort_values(m, ascending=False).iloc[0]["a"])
            else:
                a = 1
            b = derived.num_layers - a
            why = (
                f"the search chose no MICE and measured none (no document-independent mask within tolerance): "
                f"MICE-ℓ{a}+{b} (the best measured split, every layer above it) was trained instead, untested "
                f"by the search's rule"
            )
        return {"a": a, "b": b, "cls_cross_attention": "none", "chosen": False, "why": why}

    def stage_mice(self, folder: Path) -> dict:
        """MICE under the derived a and b; when the search chose none, its most effective measured MICE, so that
        the demo always ends with a MICE model, its index and its latency (report.md says which)."""
        from mice.files import write_json_atomic
        from mice.models.loader import load

        derived = self.derived()
        if derived.decision == "mice":
            info = {
                "a": derived.contextual_layers,
                "b": derived.interaction_layers,
                "chosen": True,
                "cls_cross_attention": derived.cls_cross_attention or "none",
                "why": derived.provenance.get("why", ""),
            }
        else:
            info = self.fallback_mice(derived)
        best = self._train(
            folder,
            "mice",
            self.p.mice_steps,
            model=str(self.ce_path()),
            contextual_layers=info["a"],
            interaction_layers=info["b"],
            cls_cross_attention=info["cls_cross_attention"],
        )
        write_json_atomic(folder / "mice.json", info)
        scorer = load(best)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "mice", every_query=self.every_query(domain))
        return {"model": str(best.relative_to(folder)), **info}

    def stage_late_interaction(self, folder: Path) -> dict:
        """The trained late-interaction baseline: the cross-encoder's encoder + a 128-d projection, MaxSim,
        distilled from the cross-encoder with Margin-MSE like MICE (same teacher scores, cached)."""
        from mice.models.late_interaction import MaxSimScorer

        best = self._train(folder, "late-interaction", self.p.late_steps, model=str(self.ce_path()))
        scorer = MaxSimScorer.from_pretrained(best)
        for domain in self.datasets():
            self._rerank(scorer, domain, folder, "late-interaction")
        return {"model": str(best.relative_to(folder))}

    def stage_index(self, folder: Path) -> dict:
        """MICE document states on disk (fp16), re-ranking from them, checked against the on-the-fly model."""
        import numpy as np
        from scipy import stats

        from mice.data import load_dataset
        from mice.rank.evaluation import evaluate
        from mice.index.fast_rerank import FastReranker, IndexScorer
        from mice.index.store import IndexConfig, build_index
        from mice.models.loader import load
        from mice.rank.rerank import rerank
        from mice.rank.runs import read_run

        model = load(self.path("mice", "train", "best"))
        ds = load_dataset(self.p.dataset)
        run = _restrict(read_run(self.path("bm25", "in.trec")), _subset_queries(ds, "test", self.p.test_queries))
        needed = set(run.groupby("query_id").head(self.p.first_stage_k)["doc_id"])
        corpus = {d: t for d, t in ds.corpus().items() if d in needed}
        t0 = time.perf_counter()
        build_index(model, corpus, folder / "index", IndexConfig(dtype="float16"))
        build_s = time.perf_counter() - t0
        scorer = IndexScorer(FastReranker(model, folder / "index"))
        t0 = time.perf_counter()
        from_index = rerank(
            scorer, ds, "test", run, k=self.p.first_stage_k, out=folder / "mice-index-in.trec", tag="mice-index"
        )
        rerank_s = time.perf_counter() - t0
        on_the_fly = _restrict(read_run(self.path("mice", "mice-in.trec")), set(run["query_id"]))
        merged = on_the_fly.merge(from_index, on=["query_id", "doc_id"], suffixes=("_fly", "_index"))
        taus = [
            stats.kendalltau(g.score_fly, g.score_index).statistic for _, g in merged.groupby("query_id") if len(g) > 1
        ]
        qrels = ds.qrels("test")
        qrels = qrels[qrels.query_id.isin(set(run["query_id"]))]  # the evaluated subset, not the whole split
        ev = evaluate(qrels, {"mice": on_the_fly, "mice-index": from_index}, metrics=["nDCG@10"])
        ndcg = ev.set_index("run")["value"]
        check = {
            "documents": len(corpus),
            "build_seconds": round(build_s, 2),
            "rerank_seconds": round(rerank_s, 2),
            "kendall_tau_mean": float(np.nanmean(taus)),
            "kendall_tau_min": float(np.nanmin(taus)),
            "max_abs_score_diff": float((merged.score_fly - merged.score_index).abs().max()),
            "ndcg10_on_the_fly": float(ndcg["mice"]),
            "ndcg10_from_index": float(ndcg["mice-index"]),
        }
        (folder / "index_check.json").write_text(json.dumps(check, indent=2))
        import shutil

        shutil.rmtree(folder / "index")  # the states are a cache: the check and timings are what we keep
        return check

    def stage_evaluate(self, folder: Path) -> dict:
        """Every run on the `test_queries` subset (query set `subset`); BM25, the cross-encoder and MICE also on
        every test query (`all`), where MICE is measured against the cross-encoder."""
        from mice.data import load_dataset
        from mice.rank.evaluation import evaluate
        from mice.rank.runs import read_run

        tables = []
        sources = [
            ("biencoder", "biencoder"),
            ("cross-encoder", "cross_encoder"),
            ("masked", "masked"),
            ("mice", "mice"),
            ("late-interaction", "late_interaction"),
        ]
        every = ("cross-encoder", "mice")
        for domain, spec in self.datasets().items():
            ds = load_dataset(spec)
            every_qid = _subset_queries(ds, "test", None)
            subset = _subset_queries(ds, "test", self.p.test_queries)
            if len(subset) == len(every_qid):
                sets = {"all": every_qid}
            elif self.every_query(domain):
                sets = {"subset": subset, "all": every_qid}
            else:  # the cross-encoder and MICE re-ranked the subset only
                sets = {"subset": subset}
            for name, qids in sets.items():
                qrels = ds.qrels("test")
                qrels = qrels[qrels.query_id.isin(set(qids))]
                runs = {"bm25": _restrict(read_run(self.path("bm25", f"{domain}.trec")), qids)}
                for run, stage in sources:
                    path = self.path(stage, f"{run}-{domain}.trec")
                    if path.exists() and (len(sets) == 1 or name == "subset" or run in every):
                        runs[run] = _restrict(read_run(path), qids)
                per_query: dict = {}
                res = evaluate(qrels, runs, metrics=["nDCG@10", "RR@10"], per_query_out=per_query)
                res.insert(0, "queries", name)
                res.insert(0, "domain", domain)
                tables.append(res)
                pq = pd.concat([t.assign(run=run) for run, t in per_query.items()], ignore_index=True)
                write_table(pq, folder / f"per_query-{domain}-{res['queries'].iloc[0]}.parquet")
        table = pd.concat(tables, ignore_index=True)
        write_table(table, folder / "results.csv")
        write_table(mice_vs_cross_encoder(folder), folder / "mice_vs_ce.csv")
        return {}

    def stage_bench(self, folder: Path) -> dict:
        from mice.bench.latency import LatencyConfig, add_ratios, run_latency

        a, b = self.mice_layers()
        cfg = LatencyConfig(
            docs=self.p.bench_docs,
            doc_lens=self.p.bench_doc_lens,
            repeats=self.p.bench_repeats,
            model=str(self.ce_path()),
            layers=(a, b),
            workdir=str(folder / "work"),
            late_interaction=str(self.path("late_interaction", "train", "best")),
        )
        df = add_ratios(run_latency(cfg, log=(self.console.print if self.console else (lambda s: None))))
        write_table(df, folder / "bench.csv")
        import shutil

        shutil.rmtree(folder / "work", ignore_errors=True)
        return {}

    def adopt_frontier(self, source) -> None:
        """Copy a cached frontier (`mice ablate frontier`) of this demo's cross-encoder into the run, for the
        report's frontier figure. A frontier of another cross-encoder is refused."""
        import shutil

        from mice.errors import MiceError
        from mice.identity import weights_fingerprint

        source = Path(source)
        meta_path = source / "frontier.json"
        if not meta_path.exists() or not (source / "frontier.parquet").exists():
            raise MiceError(f"{source}: not a frontier folder (no frontier.json / frontier.parquet)")
        model = json.loads(meta_path.read_text())["config"]["model"]
        if weights_fingerprint(model) != weights_fingerprint(self.ce_path()):
            raise MiceError(f"{source}: its frontier was computed for another cross-encoder ({model})")
        (self.out / "frontier").mkdir(parents=True, exist_ok=True)
        for name in ("frontier.parquet", "frontier.json"):
            shutil.copyfile(source / name, self.out / "frontier" / name)

    def validate_search(self, replicates: int):
        """The demo's search scored against the frontier (`frontier`, of this cross-encoder): `replicates` draws
        (draw 0 is the demo's own search; the others sample other dev queries and train other seeds). Each draw
        is scored twice: its pick (no MICE when it chose none) and the MICE the demo trains from it (the pick, or
        the search's most effective measured MICE); the fixed ℓ⌊L/3⌋+3 beside them. Writes
        search-validation/validation.csv and validation_summary.csv; returns (picks, summary)."""
        from ablations.regret import simple_rules, validate_replicates

        out = self.out / "search-validation"
        runs = {}

        def replicate(r: int):
            folder = out / f"draw-{r}"
            if r == 0 and not (folder / "candidates").exists():  # the demo's own search: its models, reused
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "candidates").symlink_to(self.path("search", "candidates").resolve())
            runs[r] = self._search_draw(r, folder)
            return self._split(runs[r][0]) + (runs[r][1]["steps_total"],)

        def trained(r: int):
            derived, meta, table = runs[r]
            return self._split(derived, fallback=True, table=table) + (meta["steps_total"],)

        return validate_replicates(
            "the demo's search",
            replicate,
            self.frontier,
            out,
            replicates,
            rules=lambda: simple_rules(runs[0][1]["num_layers"]),
            tolerance=self.p.search_tolerance,
            extra={"the demo's MICE (its pick, or the fallback)": trained},
        )

    def _search_draw(self, draw: int, folder: Path) -> tuple:
        """Draw `draw` of the demo's search into `folder`: (derived config, meta, its table for the fallback)."""
        say = self.console.print if self.console else None
        if self.p.search_method == "joint":
            from ablations.joint import joint_search

            _, meta, derived = joint_search(self.joint_config(draw=draw), folder, log=say)
            return derived, meta, None
        from ablations.search import search

        res = search(self.search_config(draw=draw), folder, log=say)
        return res.config, res.meta, folder / "search.parquet"

    def _split(self, derived, fallback: bool = False, table: Path | None = None) -> tuple:
        """(a, b) of a search's decision; (None, None) when it chose no MICE, unless `fallback`: then the MICE the
        demo trains instead (`fallback_mice`; `table`: the staged search's search.parquet)."""
        if derived.decision == "mice":
            return derived.contextual_layers, derived.interaction_layers
        if not fallback:
            return None, None
        info = self.fallback_mice(derived, table)
        return info["a"], info["b"]

    def stage_figures(self, folder: Path) -> dict:
        from figures.make import make_all

        made = make_all(self.out, folder)
        return {"figures": len(made)}

    def _stage_plan(self) -> list:
        """The demo's stages in order: (name, method, title, the preset fields its cache key holds)."""
        data = ("dataset", "dataset_ood", "dataset_meta", "dataset_external")
        runs = data + ("first_stage_k", "test_queries", "rerank_max_length")
        ce = runs + (
            "every_query_domains",
            "train_preset",
            "backbone",
            "ce_steps",
            "ce_until_beats_teacher",
            "ce_eval_every",
            "ce_negative_miner",
            "ce_distill_weight",
            "ce_train_extra",
            "ce_mix_alpha",
            "long_length",
            "ce_long_steps",
            "dev_queries",
            "dev_sample",
            "seed",
        )
        sweep = ce + ("sweep_queries", "exact_queries", "sweep_k")
        derived = sweep + ("check_queries", "tolerance", "derive_patience", "derive_max_steps")
        searched = derived + SEARCH_FIELDS
        mice = searched + ("mice_steps",)
        return [
            ("data", self.stage_data, "build the embedded collections", data),
            ("bm25", self.stage_bm25, "BM25 first stage", data + ("first_stage_k",)),
            ("biencoder", self.stage_biencoder, "untuned bi-encoder re-ranking", runs),
            ("cross_encoder", self.stage_cross_encoder, "train the demo cross-encoder", ce),
            ("probe", self.stage_probe, "probe attention paths", ce + ("probe_queries", "sweep_k")),
            ("attribute", self.stage_attribute, "attribution patching (layer x head x path)", sweep),
            ("sweep", self.stage_sweep, "exact knockout sweep (layer x path) + attribution check", sweep),
            ("derive", self.stage_derive, "derive a mask from the attribution screen", derived),
            ("search", self.stage_search, "trained search: mask steps, merge layer, interaction layers", searched),
            # MICE first: the model the demo exists for
            ("mice", self.stage_mice, "train MICE (derived a, b)", mice),
            (
                "masked",
                self.stage_masked,
                "train the masked cross-encoder (derived mask)",
                searched + ("masked_steps",),
            ),
            (
                "late_interaction",
                self.stage_late_interaction,
                "train the late-interaction baseline (MaxSim)",
                ce + ("late_steps",),
            ),
            ("index", self.stage_index, "MICE document index (fp16) vs on the fly", mice),
            (
                "evaluate",
                self.stage_evaluate,
                "evaluate every run, in domain and out of domain",
                mice + ("masked_steps", "late_steps"),
            ),
            (
                "bench",
                self.stage_bench,
                "latency benchmark",
                mice + ("late_steps", "bench_docs", "bench_doc_lens", "bench_repeats"),
            ),
        ]

    def run(self, validate: int = 0) -> Path:
        """Run (or resume) every stage, then the report; `validate` > 0 first scores that many draws of the
        search against the frontier (`validate_search`)."""
        from mice.files import write_json_atomic
        from mice.app.report import write_report

        p = self.pipe
        write_json_atomic(self.out / "preset.json", asdict(self.p))
        write_json_atomic(self.out / "environment.json", environment())
        stages = self._stage_plan()
        for name, fn, title, fields in stages:
            key = self.key(fields)
            if name in MICE_ALWAYS_STAGES:  # the demo trains a MICE model whatever the search decided
                key["mice_always"] = 1
            p.run(name, fn, title, key=key)
        if self.frontier is not None:
            self.adopt_frontier(self.frontier)
            if validate:
                self.validate_search(validate)
        # figures and report are cheap and always redrawn from the saved results
        import shutil

        shutil.rmtree(self.out / "figures", ignore_errors=True)
        p.run("figures", self.stage_figures, "figures from saved results", key={"drawn": time.time()})
        timings = p.timings()
        write_table(timings, self.out / "timings.csv")
        return write_report(self.out, timings=timings)


def mice_vs_cross_encoder(folder) -> pd.DataFrame:
    """MICE's nDCG@10 as a share of the cross-encoder's on each domain's largest query set, with a paired
    bootstrap CI of the share over queries and a paired t-test of the difference."""
    import numpy as np
    from scipy import stats

    from mice.files import read_table

    folder = Path(folder)
    rows = []
    for path in sorted(folder.glob("per_query-*.parquet")):
        domain, queries = path.stem.split("-")[1:3]
        pq = read_table(path)
        pq = pq[pq["measure"] == "nDCG@10"].pivot(index="query_id", columns="run", values="value")
        if not {"mice", "cross-encoder"} <= set(pq.columns):
            continue
        m, c = pq["mice"].to_numpy(float), pq["cross-encoder"].to_numpy(float)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(m), size=(2000, len(m)))
        share = m[idx].mean(1) / np.maximum(c[idx].mean(1), 1e-12)
        rows.append(
            {
                "domain": domain,
                "queries": queries,
                "n_queries": len(m),
                "mice": m.mean(),
                "cross_encoder": c.mean(),
                "share": m.mean() / c.mean() if c.mean() > 0 else float("nan"),
                "share_ci_low": float(np.quantile(share, 0.025)),
                "share_ci_high": float(np.quantile(share, 0.975)),
                "p_ttest": float(stats.ttest_rel(m, c).pvalue) if len(m) > 1 and np.any(m != c) else 1.0,
                "bm25": float(pq["bm25"].mean()) if "bm25" in pq else float("nan"),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "domain",
            "queries",
            "n_queries",
            "mice",
            "cross_encoder",
            "share",
            "share_ci_low",
            "share_ci_high",
            "p_ttest",
            "bm25",
        ],
    )


def run_demo(
    out="runs/demo", preset: str = "quick", console=None, frontier=None, validate: int = 0, **overrides
) -> Path:
    """Run (or resume) the demo; returns the path of report.md. `validate` > 0 (with `frontier`): score that many
    draws of the search against the frontier."""
    if validate and frontier is None:
        from mice.errors import MiceError

        raise MiceError("--validate-search: needs --frontier (the ground truth the search is scored against)")
    return Demo(out, get_preset(preset, **overrides), console=console, frontier=frontier).run(validate)


def environment() -> dict:
    import os

    import torch

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def runs_root(root=".") -> Path:
    """Where demo runs live: `$MICE_RUNS` when set (tests point it at a temporary folder), else `<root>/runs`."""
    import os

    env = os.environ.get("MICE_RUNS")
    return Path(env) if env else Path(root) / "runs"


def is_complete(run) -> bool:
    """A finished demo run with a MICE model (runs made before the demo always trained MICE have none)."""
    run = Path(run)
    return (run / "report.md").exists() and (run / "mice" / "mice.json").exists()


def demo_artifacts(root=".", console=None) -> Path:
    """The folder notebooks read: `<runs>/demo` when a demo finished there with a MICE model, else a tiny demo,
    run (or resumed and checked stage by stage against its cache keys) under `<runs>/tiny`."""
    runs = runs_root(root)
    if is_complete(runs / "demo"):
        return runs / "demo"
    tiny = runs / "tiny"
    run_demo(tiny, "tiny", console=console)
    return tiny
