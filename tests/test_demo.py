"""The main job end to end on the tiny preset (tiny random model, a few stdlib docstrings): every stage runs,
the report has every section, and a second run reuses every stage."""

import json
from pathlib import Path

import pytest

from mice.app.demo import demo_artifacts, run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_tiny_demo_end_to_end_and_cached():
    run = demo_artifacts(ROOT)  # builds <runs>/tiny once: $MICE_RUNS, the session's temporary folder (conftest.py)
    report = (run / "report.md").read_text()
    for section in (
        "## Effectiveness",
        "### Out-of-domain: other packages",
        "### Out-of-domain: distribution metadata",
        "## Knockouts",
        "## Derived interaction mask",
        "## Trained search",
        "Derived configuration (`search/derived.json`",
        "## MICE",
        "## Efficiency",
        "## Timings per stage",
        "Attribution vs exact knockouts",
        "Screen (attribution patching)",
        "structural cells removed",
        "MICE against the cross-encoder",
        "Zero-shot (the cross-encoder",
        "No external out-of-domain collection was given",
    ):
        assert section in report, section
    # the demo trains exactly what the search derived
    from mice.derived import DerivedConfig

    derived = DerivedConfig.load(run / "search" / "derived.json")
    assert derived.decision == "mice"  # the tiny preset's wide tolerance: a plumbing check, every stage runs
    mice_stage = json.loads((run / "mice" / "stage.json").read_text())["outputs"]
    assert (mice_stage["a"], mice_stage["b"]) == (derived.contextual_layers, derived.interaction_layers)
    # the cross-encoder and MICE re-ranked every test query of `every_query_domains` (in, ood), every model the
    # first `test_queries` (meta: those only)
    import pandas as pd

    results = pd.read_csv(run / "evaluate" / "results.csv")
    every = results[results["queries"] == "all"]
    assert set(every["domain"]) == {"in", "ood"}
    meta = results[results["domain"] == "meta"]
    assert set(meta["queries"]) == {"subset"} and {"bm25", "cross-encoder", "mice"} <= set(meta["run"])
    for domain, rows in every.groupby("domain"):
        assert {"bm25", "cross-encoder", "mice"} <= set(rows["run"])
        subset = results[(results["queries"] == "subset") & (results["domain"] == domain)]
        if len(subset):  # more test queries than the baselines' subset: only these three ran on all of them
            assert set(rows["run"]) == {"bm25", "cross-encoder", "mice"}
            assert rows["n_queries"].min() > subset["n_queries"].max()
    assert (results["queries"] == "subset").any()
    for fig in (
        "attention_paths",
        "knockout_heatmap",
        "derived_mask",
        "search_curve_mask",
        "search_curve_layers",
        "search_derived_mask",
        "latency_vs_ndcg",
        "attribution_heatmap",
        "attribution_heads",
        "attribution_vs_exact",
        "derivation_steps",
    ):
        assert (run / "figures" / f"{fig}.png").exists() and (run / "figures" / f"{fig}.pdf").exists(), fig
    # the second run reuses every stage: its timings say which ran (a clock would fail on a loaded machine)
    run_demo(run, json.loads((run / "preset.json").read_text())["name"])
    timings = (run / "timings.csv").read_text()
    assert "True" in timings and timings.count("False") == 1  # only the figures stage was redrawn


@pytest.mark.integration
def test_figures_regenerate_from_saved_results_only(tmp_path):
    run = demo_artifacts(ROOT)  # cached by the test above
    from typer.testing import CliRunner

    from mice.cli import app

    res = CliRunner().invoke(app, ["figures", "--from", str(run), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "knockout_heatmap.pdf").exists() and (tmp_path / "figs" / "latency.png").exists()


@pytest.mark.integration
def test_an_interrupted_training_stage_resumes_from_its_checkpoint(tmp_path):
    """A demo stage stopped after its training checkpoint (e.g. the full preset's hours-long cross-encoder)
    continues from `train/last` instead of training again from the start."""
    from safetensors.torch import load_file

    from mice.app.demo import Demo, get_preset

    demo = Demo(tmp_path / "run", get_preset("tiny"))
    folder = tmp_path / "run" / ".cross_encoder.partial"
    folder.mkdir(parents=True)
    backbone = demo._backbone(folder)
    best = demo._train(folder, "cross-encoder", 4, model=backbone)
    first = load_file(best / "model.safetensors")
    (folder / "train_result.json").unlink()  # as if the stage had been killed before it finished
    log = folder / "train" / "train.log"
    before = log.read_text()
    again = demo._train(folder, "cross-encoder", 4, model=backbone)
    assert "resuming from" in log.read_text()[len(before) :]
    second = load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)


def test_the_stop_rule_keys_the_cross_encoder_stage_only_where_it_is_used(tmp_path):
    """A cross-encoder trained until it beat its teacher under another stop rule is not reused; presets that do
    not use the rule keep their cached stages."""
    from mice.app.demo import BEAT_TEACHER_RULE, CACHE_VERSION, Demo, get_preset

    fields = ("ce_steps", "ce_until_beats_teacher", "ce_eval_every")
    full = Demo(tmp_path / "full", get_preset("full")).key(fields)
    quick = Demo(tmp_path / "quick", get_preset("quick")).key(fields)
    assert full["beat_teacher_rule"] == BEAT_TEACHER_RULE and full["ce_until_beats_teacher"] is True
    assert "beat_teacher_rule" not in quick and "ce_until_beats_teacher" not in quick
    # a random dev sample (every preset's) keys the stages; the first queries by id, the draw
    # before then, keep their earlier key; mined negatives and the Margin-MSE weight key them only where set
    more = ("dev_sample", "ce_negative_miner", "ce_distill_weight")
    assert Demo(tmp_path / "full", get_preset("full")).key(more) == {
        "version": CACHE_VERSION,
        "dev_sample": "random",
        "ce_distill_weight": 0.3,
    }
    assert get_preset("quick").dev_sample == "random"
    assert Demo(tmp_path / "quick", get_preset("quick")).key(more) == {"version": CACHE_VERSION, "dev_sample": "random"}
    legacy = Demo(tmp_path / "q", get_preset("quick", dev_sample="first")).key(more)
    assert legacy == {"version": CACHE_VERSION}
    # the search's promotion rule re-keys the search stage (and those after it) only: "best" was the earlier rule
    assert Demo(tmp_path / "quick", get_preset("quick")).key(("search_promote", "search_cls_cross")) == {
        "version": CACHE_VERSION,
        "search_promote": "efficient",
    }
    assert Demo(tmp_path / "q", get_preset("quick", search_promote="best")).key(("search_promote",)) == {
        "version": CACHE_VERSION
    }
    # the cut rule keys the full preset's search (cut only what a rung tells apart); the quick one keeps its key
    assert Demo(tmp_path / "quick", get_preset("quick")).key(("search_cut",)) == {"version": CACHE_VERSION}
    assert Demo(tmp_path / "full", get_preset("full")).key(("search_cut",)) == {
        "version": CACHE_VERSION,
        "search_cut": "significant",
    }
    mined = Demo(tmp_path / "m", get_preset("quick", ce_negative_miner="biencoder:packaged")).key(more)
    assert mined["ce_negative_miner"] == "biencoder:packaged"


def test_extra_training_sources_key_the_stages_by_content_and_reach_the_trainer(tmp_path):
    """`ce_train_extra` (the full preset's Debian packages) keys the cross-encoder stage by the extra collections'
    content, since the installed packages can change under the same spec; presets without it keep their keys.
    The trainer gets the mix to train on and the in-domain dataset to validate on."""
    from mice.data import load_dataset
    from mice.app.demo import CACHE_VERSION, Demo, get_preset
    from mice.identity import dataset_identity

    full = Demo(tmp_path / "full", get_preset("full"))
    assert full.key(("ce_train_extra", "ce_mix_alpha")) == {
        "version": CACHE_VERSION,
        "ce_train_extra": ("embedded:debian",),
        "ce_train_extra_content": [dataset_identity(load_dataset("embedded:debian"), ("train",))],
    }
    weighed = Demo(tmp_path / "w", get_preset("full", ce_mix_alpha=0.5))
    assert weighed.key(("ce_train_extra", "ce_mix_alpha"))["ce_mix_alpha"] == 0.5
    assert Demo(tmp_path / "q", get_preset("quick")).key(("ce_train_extra", "ce_mix_alpha")) == {
        "version": CACHE_VERSION
    }
    captured = {}

    class Stop(Exception):
        pass

    def train(folder, mode, steps, **overrides):
        captured.update(full.train_config(folder, mode, steps, **overrides).to_dict())
        raise Stop

    for demo, alpha in ((full, 1.0), (weighed, 0.5)):
        demo._train = train
        with pytest.raises(Stop):
            demo.stage_cross_encoder(tmp_path / "ce")
        assert captured["dataset"] == "mix:embedded:docs+embedded:debian"
        assert captured["dev_dataset"] == "embedded:docs" and captured["mix_alpha"] == alpha


@pytest.mark.integration
def test_the_cross_encoders_long_phase_trains_on_from_its_best_checkpoint_at_the_longer_length(tmp_path):
    """`long_length` + `ce_long_steps`: after its first phase the cross-encoder trains on from that phase's best
    checkpoint at the longer pair length, with the same data, loss and teacher and no stop rule; the stage re-ranks
    with it, and the models trained from it (masked, MICE, late interaction) read that length too."""
    from mice.app.demo import CACHE_VERSION, Demo, get_preset
    from mice.errors import MiceError
    from mice.models.loader import load
    from mice.train.config import TrainConfig

    # the quick recipe (distilled from the bi-encoder) on the tiny model, so that the first phase has a stop rule
    demo = Demo(
        tmp_path / "run",
        get_preset(
            "tiny",
            train_preset="quick",
            ce_steps=4,
            ce_eval_every=2,
            dev_queries=4,
            ce_until_beats_teacher=True,
            long_length=128,
            ce_long_steps=4,
        ),
    )
    (tmp_path / "run" / "bm25").mkdir(parents=True)
    demo.stage_bm25(tmp_path / "run" / "bm25")
    folder = tmp_path / "run" / "cross_encoder"
    folder.mkdir()
    out = demo.stage_cross_encoder(folder)
    assert out["model"] == "long/best" and demo.ce_path() == folder / "long" / "best"
    first = TrainConfig.from_dict(json.loads((folder / "train" / "train_config.json").read_text()))
    last = TrainConfig.from_dict(json.loads((folder / "long" / "train_config.json").read_text()))
    assert first.until_beats_teacher and not last.until_beats_teacher  # the last phase is a budget of steps
    assert last.model == str(folder / "train" / "best") and last.max_steps == 4
    assert (first.max_length, last.max_length) == (96, 128)
    same = ("dataset", "dev_dataset", "loss", "teacher", "distill_weight", "lr", "batch_size", "negatives")
    assert {f: getattr(last, f) for f in same} == {f: getattr(first, f) for f in same}
    assert json.loads((folder / "long_result.json").read_text())["steps"] == 4
    assert load(demo.ce_path()).max_length == 128  # the stage's runs are at the longer length
    for domain in demo.datasets():
        assert (folder / f"cross-encoder-{domain}.trec").exists()
    for mode in ("masked", "mice", "late-interaction"):
        assert demo.train_config(tmp_path / mode, mode, 4, model=str(demo.ce_path())).max_length == 128
    assert demo.key(("long_length", "ce_long_steps")) == {
        "version": CACHE_VERSION,
        "long_length": 128,
        "ce_long_steps": 4,
    }
    assert Demo(tmp_path / "q", get_preset("tiny")).key(("long_length", "ce_long_steps")) == {
        "version": CACHE_VERSION
    }  # presets without the phase keep their stages' keys
    with pytest.raises(MiceError, match="long_length and ce_long_steps go together"):
        Demo(tmp_path / "bad", get_preset("tiny", long_length=80))


def test_the_knockout_stages_draw_their_dev_queries_as_dev_sample_says(tmp_path):
    """The probe, attribution, sweep and search stages take their dev queries from `Demo.dev_candidates`: the first
    N by id under `first`, the first N of one seeded order under `random` (ids sort by package)."""
    from mice.app.demo import Demo, get_preset
    from probes.candidates import from_run

    first = Demo(tmp_path / "run", get_preset("tiny", dev_sample="first"))
    (tmp_path / "run" / "bm25").mkdir(parents=True)
    first.stage_bm25(tmp_path / "run" / "bm25")
    rand = Demo(tmp_path / "run", get_preset("tiny", dev_sample="random"))
    every = from_run(first.p.dataset, "dev", first.dev_run(), k=first.p.sweep_k).query_ids
    assert len(every) > 8
    assert first.dev_candidates(4).query_ids == every[:4]
    drawn = rand.dev_candidates(4)
    assert drawn.query_ids != every[:4] and drawn.source["sample"] == "random"
    assert set(drawn.query_ids) < set(rand.dev_candidates(8).query_ids)  # the exact sweep's are the screen's first


def test_demo_cli_refuses_an_unknown_dev_sample(tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app

    r = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path / "o"), "--dev-sample", "all"])
    assert r.exit_code != 0 and "--dev-sample 'all': expected first or random" in str(r.exception or r.output)
    assert not (tmp_path / "o").exists()  # refused before any stage ran


@pytest.mark.integration
def test_an_external_collection_is_evaluated_beside_the_built_in_ones(tmp_path):
    """`mice demo --external FOLDER`: a BEIR folder no stage knows about is re-ranked by every model, by the
    cross-encoder and MICE on every test query, and gets its own section in the report."""
    import pandas as pd
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import load_dataset, write_beir

    ext = write_beir("embedded:docs?packages=unittest,sqlite3&max_per_package=120", tmp_path / "ext")
    n_test = len(load_dataset(str(ext)).queries("test"))
    r = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path / "run"), "--external", str(ext)])
    assert r.exit_code == 0, r.output
    results = pd.read_csv(tmp_path / "run" / "evaluate" / "results.csv")
    every = results[(results["domain"] == "ext") & (results["queries"] == "all")]
    assert {"bm25", "cross-encoder", "mice"} <= set(every["run"]) and every["n_queries"].min() == n_test
    assert {"biencoder", "masked", "late-interaction"} <= set(results[results["domain"] == "ext"]["run"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"### Out-of-domain: an external collection (`{ext}`), all {n_test} test queries" in report
    assert "No external out-of-domain collection was given" not in report


def test_an_external_collection_without_a_test_split_is_refused_before_any_stage(tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.data import write_beir

    ext = write_beir("embedded:docs?packages=unittest&max_per_package=40", tmp_path / "ext")
    (ext / "qrels" / "test.tsv").unlink()
    r = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path / "o"), "--external", str(ext)])
    assert r.exit_code != 0 and f"external collection {ext}: no test split (it has dev, train)" in str(
        r.exception or r.output
    )
    assert not (tmp_path / "o").exists()


def test_training_stages_are_bounded_by_steps_never_by_the_train_presets_clock(tmp_path):
    """The full preset leaves the masked and late-interaction steps to the train preset (300; MICE gets 1,200),
    whose quick recipe also stops after 5.5 minutes: the demo drops that clock, and only the stages it changes are
    re-keyed."""
    from mice.app.demo import CACHE_VERSION, Demo, get_preset
    from mice.train.presets import preset

    full = Demo(tmp_path / "full", get_preset("full"))
    assert preset("quick", "masked").max_minutes is not None  # the clock the demo must not inherit
    for mode, steps in (("masked", None), ("mice", None), ("late-interaction", None), ("cross-encoder", 4000)):
        cfg = full.train_config(tmp_path / mode, mode, steps, model="packaged:minilm")
        assert cfg.max_minutes is None and cfg.max_steps == (steps or preset("quick", mode).max_steps), mode
    assert full.key(("masked_steps",))["train_budget"] == "steps"
    assert full.key(("mice_steps",)) == {"version": CACHE_VERSION, "mice_steps": 1200}
    assert "train_budget" not in full.key(("ce_steps", "dev_queries"))  # its 6,103-s cross-encoder stays valid
    assert full.key(("search_seeded_from",))["search_seeded_from"] == 1
    assert Demo(tmp_path / "q", get_preset("quick")).key(
        ("ce_steps", "masked_steps", "mice_steps", "search_seeded_from")
    ) == {"version": CACHE_VERSION, "ce_steps": 250, "masked_steps": 20, "mice_steps": 300}


def test_notebooks_never_read_a_demo_run_without_mice(tmp_path, monkeypatch):
    """`make demo` then `make test`: a user's demo run made before the demo always trained MICE (report.md, no
    MICE model) is not what notebooks read; nor is anything outside $MICE_RUNS."""
    from mice.app.demo import is_complete, runs_root

    monkeypatch.setenv("MICE_RUNS", str(tmp_path))
    assert runs_root(ROOT) == tmp_path
    old = tmp_path / "demo"
    (old / "masked").mkdir(parents=True)
    (old / "report.md").write_text("# an older demo run: a masked cross-encoder, no MICE\n")
    assert not is_complete(old)
    (old / "mice").mkdir()
    (old / "mice" / "mice.json").write_text("{}")
    assert is_complete(old)
    monkeypatch.delenv("MICE_RUNS")
    assert runs_root(ROOT) == ROOT / "runs"


def test_the_demo_trains_the_searchs_best_measured_mice_when_it_chose_none(tmp_path):
    """No MICE within the search's rule: the most effective measured MICE is trained, and says by how much it
    failed."""
    import pandas as pd

    from mice.app.demo import Demo, get_preset
    from mice.derived import DerivedConfig
    from mice.files import write_table

    demo = Demo(tmp_path, get_preset("tiny"))
    rows = [
        {
            "stage": "mask",
            "candidate": "mask3(k=1)",
            "trained": True,
            "collapsed": False,
            "rung": 1,
            "a": 1.0,
            "b": None,
            "ndcg@10": 0.50,
            "rel_loss": 0.0,
        },
        {
            "stage": "layers",
            "candidate": "MICE-l1+2",
            "trained": True,
            "collapsed": False,
            "rung": 1,
            "a": 1.0,
            "b": 2.0,
            "ndcg@10": 0.44,
            "rel_loss": 0.12,
        },
        {
            "stage": "layers",
            "candidate": "MICE-l1+3",
            "trained": True,
            "collapsed": False,
            "rung": 1,
            "a": 1.0,
            "b": 3.0,
            "ndcg@10": 0.46,
            "rel_loss": 0.08,
        },
        {
            "stage": "layers",
            "candidate": "MICE-l1+1",
            "trained": True,
            "collapsed": True,
            "rung": 1,
            "a": 1.0,
            "b": 1.0,
            "ndcg@10": 0.60,
            "rel_loss": -0.2,
        },
    ]
    (tmp_path / "search").mkdir()
    write_table(pd.DataFrame(rows), tmp_path / "search" / "search.parquet")
    derived = DerivedConfig(
        decision="masked",
        num_layers=4,
        mask={"format": "mice-mask/1", "name": "m", "num_layers": 4, "rules": []},
        tolerance=0.05,
        metric="ndcg@10",
    )
    info = demo.fallback_mice(derived)
    assert (info["a"], info["b"], info["chosen"]) == (1, 3, False)  # the collapsed b = 1 is never trained
    assert "8.0% below the best" in info["why"] and "tolerance 5%" in info["why"]
    # no layer stage ran: the best measured split that leaves two interaction layers (a = 3 would leave one, which
    # collapses; a collapsed mask row is never used)
    masks = [
        rows[0],
        {**rows[0], "candidate": "mask3(k=3)", "a": 3.0, "ndcg@10": 0.55},
        {**rows[0], "candidate": "mask3(k=2)", "a": 2.0, "ndcg@10": 0.60, "collapsed": True},
    ]
    write_table(pd.DataFrame(masks), tmp_path / "search" / "search.parquet")
    info = demo.fallback_mice(derived)
    assert (info["a"], info["b"]) == (1, 3) and "untested" in info["why"]


@pytest.mark.integration
def test_the_demos_search_is_scored_against_a_frontier_of_its_cross_encoder(tmp_path):
    """`mice demo --frontier F --validate-search N`: N draws of the demo's own search (draw 0 is the search the
    demo ran, reused; the others sample other dev queries and train other seeds), each pick and the MICE the demo
    trains from it scored against the frontier, beside the fixed rule; the report shows it."""
    import shutil

    import pandas as pd

    from ablations.frontier import FrontierConfig, frontier
    from mice.app.demo import Demo, get_preset

    run = tmp_path / "demo"
    shutil.copytree(demo_artifacts(ROOT), run, symlinks=True)
    p = get_preset("tiny")
    ce = Demo(run, p).ce_path()
    front = tmp_path / "frontier"
    frontier(
        FrontierConfig(
            model=str(ce),
            dataset=p.dataset,
            tests=(("in", p.dataset),),
            test_k=6,
            fidelity=(),
            fidelity_queries=6,
            k=6,
            steps=2,
            seeds=(0,),
            train_preset="tiny",
            train={"batch_size": 2},
            late_interaction=False,
        ),
        front,
    )
    report = run_demo(run, "tiny", frontier=front, validate=2).read_text()
    folder = run / "search-validation"
    picks = pd.read_csv(folder / "validation.csv")
    own = json.loads((run / "search" / "search.json").read_text())
    searched = picks[picks["procedure"] == "the demo's search"].set_index("draw")
    assert list(searched.index) == [0, 1]
    assert searched.loc[0, "steps"] == own["steps_total"]  # draw 0 is the demo's search, nothing retrained
    first = json.loads((folder / "draw-0" / "search.json").read_text())
    assert first["steps_trained_this_run"] == 0 and first["candidates_fingerprint"] == own["candidates_fingerprint"]
    fronts = json.loads((front / "frontier.json").read_text())
    assert searched["compute_share"].tolist() == pytest.approx((searched["steps"] / fronts["steps_total"]).tolist())
    again = json.loads((folder / "draw-1" / "search.json").read_text())
    assert again["candidates_fingerprint"] != own["candidates_fingerprint"]  # other dev queries
    assert again["config"]["draw"] == 1 and again["steps_trained_this_run"] > 0
    trained = picks[picks["procedure"].str.startswith("the demo's MICE")]
    assert len(trained) == 2 and trained["b"].notna().all()  # the demo always trains a MICE model
    assert "fixed l[L/3]+3" in set(picks["procedure"])
    assert "## The search scored against the frontier" in report
    summary = pd.read_csv(folder / "validation_summary.csv").set_index("procedure")
    assert summary.loc["the demo's search", "replicates"] == 2


def test_the_demo_can_decide_by_the_joint_search(tmp_path, monkeypatch):
    """`mice demo --search joint`: the joint search replaces the staged one (every stage before it reused), the
    demo trains what it derived, the report shows its rungs, decision and labelled confirmation, and the
    notebooks that read the search and the MICE model run on it."""
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from mice.cli import app
    from mice.derived import DerivedConfig

    run = tmp_path / "demo"
    shutil.copytree(demo_artifacts(ROOT), run, symlinks=True)
    r = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(run), "--search", "joint"])
    assert r.exit_code == 0, r.output
    timings = pd.read_csv(run / "timings.csv").set_index("stage")
    assert timings.loc[["data", "cross_encoder", "sweep", "derive"], "cached"].all()
    assert not timings.loc[["search", "mice", "index", "bench"], "cached"].any()
    meta = json.loads((run / "search" / "joint.json").read_text())
    assert meta["config"]["fidelity"] == ["embedded:docs-ood?packages=http,xml&max_per_package=150@train"]
    ood = "embedded:docs-ood?packages=http,xml&max_per_package=150"
    assert meta["config"]["confirm_extra"] == [f"{ood}@dev", f"{ood}@train"]
    from mice.data import load_dataset

    sizes = {split: len(load_dataset(ood).queries(split)) for split in ("dev", "train")}
    # every dev query held out (21), then the out-of-domain labelled queries the screening pool (12) left
    assert meta["pools"]["screen"] == 12 and meta["pools"]["confirm"] == 21 + sizes["dev"] + sizes["train"] - 12
    derived = DerivedConfig.load(run / "search" / "derived.json")
    assert derived.budget["method"] == "joint" and derived.decision == "mice"  # the tiny preset's wide tolerance
    mice_stage = json.loads((run / "mice" / "stage.json").read_text())["outputs"]
    assert (mice_stage["a"], mice_stage["b"]) == (derived.contextual_layers, derived.interaction_layers)
    report = (run / "report.md").read_text()
    assert "## Joint search" in report and "## Trained search" not in report
    assert "Labelled effectiveness on the held-out queries" in report and "baseline-ft" in report
    assert f"{meta['pools']['confirm']:,} held-out labelled queries" in report
    assert (run / "figures" / "search_joint.png").exists() and "figures/search_joint.png" in report
    assert (run / "figures" / "search_derived_mask.png").exists()  # the derived mask, drawn for either search
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MICE_RUNS", str(tmp_path))  # the kernels read this run as the user's demo
    for name in ("03_derive_mask_and_train.ipynb", "04_mice_efficiency.ipynb"):
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert str(run) in printed, name  # it read the joint run, not a tiny demo of its own
    r = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path / "x"), "--search", "greedy"])
    assert r.exit_code != 0 and "search_method 'greedy': expected staged or joint" in str(r.exception or r.output)
    assert not (tmp_path / "x").exists()  # refused before any stage ran


def test_without_a_qualifying_split_the_demo_trains_the_joint_searchs_most_faithful_finalist(tmp_path):
    """A joint search that chose no MICE names its most faithful finalist; the demo trains that one and says by
    how much it failed non-inferiority."""
    from mice.app.demo import Demo, get_preset
    from mice.derived import DerivedConfig

    derived = DerivedConfig(
        decision="cross-encoder",
        num_layers=2,
        tolerance=0.05,
        metric="fidelity@10",
        budget={"method": "joint"},
        provenance={
            "fallback": {"a": 1, "b": 1, "loss": 0.071, "loss_upper": 0.093},
            "why": "no finalist is non-inferior to baseline-ft within 5%; the most faithful, MICE-ℓ1+1, loses 7.1% "
            "(up to 9.3%)",
        },
    )
    info = Demo(tmp_path, get_preset("tiny", search_method="joint")).fallback_mice(derived)
    assert (info["a"], info["b"], info["chosen"]) == (1, 1, False)
    assert info["why"] == f"MICE-ℓ1+1 trained instead: {derived.provenance['why']}"  # the search's reason, once


def test_the_joint_searchs_fields_key_the_stages_only_when_it_decides(tmp_path):
    """The staged search's cached stages keep their key whatever the joint fields say; the joint search keys the
    search stage (and the stages after it) by its method and schedule."""
    from mice.app.demo import CACHE_VERSION, Demo, get_preset

    fields = ("search_steps", "search_method", "joint_steps", "joint_screen_queries")
    staged = Demo(tmp_path / "s", get_preset("tiny")).key(fields)
    assert staged == {"version": CACHE_VERSION, "search_steps": 2}  # tiny sets joint_steps, which keys nothing here
    joint = Demo(tmp_path / "j", get_preset("tiny", search_method="joint")).key(fields)
    assert joint == {
        "version": CACHE_VERSION,
        "search_steps": 2,
        "search_method": "joint",
        "joint_steps": 2,
        "joint_screen_queries": 12,
    }
    assert Demo(tmp_path / "q", get_preset("quick", search_method="joint")).key(("joint_steps",)) == {
        "version": CACHE_VERSION
    }  # at its default, like every field added within a cache version
