"""ModernBERT in the hooked cross-encoder: parity with plain Hugging Face (eager and sdpa), knockouts by hook vs
by mask, masked scoring vs an independent computation, fast vs naive sweeps, and the CLI.

Tiny random ModernBERTs (4 layers: global, local, local, global; a window of ±8 tokens) on pairs longer than the
window, so padding, the window and the interaction mask all meet in the local layers.
"""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from mice import HookedCrossEncoder, InteractionMask
from parity_checks import PAIRS, assert_hook_equals_mask

from ablations.engine import SweepEngine
from ablations.knockouts import Knockout, check_knockout, knockout_set

pytestmark = pytest.mark.usefixtures("one_thread")

POOLINGS = ["cls", "mean"]
PRESETS = ["mask0", "mask1", "mask2", "mask3:k=2", "prettr:k=1", "sparse_ce"]


@pytest.fixture(scope="module")
def tiny_mb(tmp_path_factory):
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("modernbert")
    return {
        p: tiny_cross_encoder(
            root / p,
            family="modernbert",
            num_layers=4,
            hidden=64,
            heads=4,
            intermediate=96,
            pooling=p,
            local_attention=16,
        )
        for p in POOLINGS
    }


def _plain(folder, impl="eager", **config):
    return AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation=impl, **config).eval()


def _exceeds_window(model, batch) -> None:
    cfg = model.config
    assert cfg.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert (batch["attention_mask"] == 0).any()  # mixed lengths: padding is really exercised
    assert int(batch["attention_mask"].sum(1).max()) > 2 * cfg.sliding_window + 1  # and the window


@pytest.mark.parametrize("pooling", POOLINGS)
def test_hooked_equals_plain_hf_eager_and_sdpa(tiny_mb, pooling):
    model = HookedCrossEncoder.from_pretrained(tiny_mb[pooling])
    batch = model.tokenize(PAIRS)
    _exceeds_window(model, batch)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ours = model(batch)
        through_hf = model.model(**kw).logits[:, 0]  # HF's own forward, through our attention and mask functions
        refs = {impl: _plain(tiny_mb[pooling], impl)(**kw).logits[:, 0] for impl in ("eager", "sdpa")}
        no_window = _plain(tiny_mb[pooling], local_attention=1024)(**kw).logits[:, 0]
    for impl, ref in refs.items():
        assert (ours - ref).abs().max() <= 1e-5, impl
        assert (through_hf - ref).abs().max() <= 1e-5, impl
    assert (no_window - refs["eager"]).abs().max() > 1e-3  # the window really matters on these pairs
    _, cache = model.run_with_cache(batch)
    B, T = batch["input_ids"].shape
    assert cache["blocks.1.attn.hook_pattern"].shape == (B, model.n_heads, T, T)
    assert cache["blocks.1.attn.hook_z"].shape == (B, T, model.n_heads, 64 // model.n_heads)
    n = int(batch["attention_mask"][0].sum())
    far = cache["blocks.1.attn.hook_pattern"][0, :, 0, 9:]  # local layer: [CLS] cannot see 9 tokens away
    assert far.abs().max() == 0 and cache["blocks.0.attn.hook_pattern"][0, :, 0, 9:n].min() > 0  # global can


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("mode", ["renorm", "zero"])
@pytest.mark.parametrize("preset", PRESETS)
def test_knockout_by_hook_equals_knockout_by_mask(tiny_mb, pooling, mode, preset):
    assert_hook_equals_mask(tiny_mb[pooling], PAIRS, preset, mode)


def _independent(folder, batch, mask, window=True) -> torch.Tensor:
    """Plain HF eager modules, layer by layer, each given a 4-D additive mask built here: the interaction mask
    of that layer AND padding AND (on local layers) the window. No mice code but the mask's allow-table."""
    hf = _plain(folder)
    base, cfg = hf.model, hf.config
    amask, seg = batch["attention_mask"].bool(), batch["segment_ids"]
    T = amask.shape[1]
    pos = torch.arange(T)
    in_window = (pos[:, None] - pos[None, :]).abs() <= cfg.sliding_window
    with torch.no_grad():
        h = base.embeddings(input_ids=batch["input_ids"])
        for l, layer in enumerate(base.layers):
            keep = amask[:, None, :].expand(-1, T, -1).clone()  # [B, T, T]
            if mask is not None:
                keep &= mask.compile(seg, l)
            if window and cfg.layer_types[l] == "sliding_attention":
                keep &= in_window
            additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)[:, None]
            rope = base.rotary_emb(h, pos[None], cfg.layer_types[l])
            h = layer(h, attention_mask=additive, position_embeddings=rope)
        h = base.final_norm(h)
        if cfg.classifier_pooling == "cls":
            pooled = h[:, 0]
        else:
            m = amask.float()[..., None]
            pooled = (h * m).sum(1) / m.sum(1)
        return hf.classifier(hf.drop(hf.head(pooled)))[:, 0]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("preset", ["mask0", "mask2", "mask3:k=2"])
def test_masked_predict_equals_independent_computation(tiny_mb, pooling, preset):
    model = HookedCrossEncoder.from_pretrained(tiny_mb[pooling])
    batch = model.tokenize(PAIRS)
    _exceeds_window(model, batch)
    mask = InteractionMask.parse(preset, model.n_layers)
    got = torch.as_tensor(model.predict(PAIRS, mask=preset))
    ref = _independent(tiny_mb[pooling], batch, mask)
    assert (got - ref).abs().max() <= 1e-5
    assert (_independent(tiny_mb[pooling], batch, None) - ref).abs().max() > 1e-3  # the mask matters
    assert (_independent(tiny_mb[pooling], batch, mask, window=False) - ref).abs().max() > 1e-3  # so does the window


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("mode", ["renorm", "zero"])
def test_fast_sweep_equals_naive(tiny_mb, pooling, mode):
    model = HookedCrossEncoder.from_pretrained(tiny_mb[pooling])
    batch = model.tokenize(PAIRS)
    full = InteractionMask.full(model.n_layers)
    kos = knockout_set(model.n_layers, model.n_heads, paths="q->d,d->q,cls->q,cls->d,d->d,sep1->sep1", heads=[1])
    kos = [ko for ko in kos if check_knockout(ko, full) is None]
    assert {ko.layer for ko in kos} == {0, 1, 2, 3} and any(ko.head == 1 for ko in kos)
    for base in (None, "mask0"):
        ref = SweepEngine(model, mode, base=base, strategy="naive")
        kept = [ko for ko in kos if check_knockout(ko, ref.base_mask) is None]
        st = ref.prepare(batch)
        expected = ref.score(st, kept)
        for strategy in ("fast", "replicate"):
            eng = SweepEngine(model, mode, base=base, strategy=strategy)
            got = eng.score(eng.prepare(batch), kept)
            assert (got - expected).abs().max().item() <= 1e-5, (strategy, base)
        changed = (expected - st.clean).abs().amax(1) > 1e-4
        assert changed.float().mean() > 0.5  # the knockouts really do something
    assert SweepEngine(model, mode).strategy == "fast"
    # a last-layer knockout of rows other than [CLS]: no effect under cls pooling, an effect under mean pooling
    eng = SweepEngine(model, mode)
    st = eng.prepare(batch)
    moved = (eng.score(st, [Knockout(3, "d->q")])[0] - st.clean).abs().max()
    assert (moved == 0) if pooling == "cls" else (moved > 1e-4)


def test_cli_score_and_sweep(tiny_mb, tmp_path):
    from typer.testing import CliRunner

    from ablations.planted import planted_dataset
    from mice.cli import app
    from mice.data import write_beir
    from mice.rank.runs import write_run

    folder = tiny_mb["cls"]
    r = CliRunner()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{q}\t{d}\n" for q, d in PAIRS))
    plain = r.invoke(app, ["score", "--model", str(folder), str(pairs)])
    masked = r.invoke(app, ["score", "--model", str(folder), "--mask", "mask2", str(pairs)])
    assert plain.exit_code == 0 and masked.exit_code == 0, plain.output + masked.output
    a = torch.tensor([float(x) for x in plain.output.split()])
    b = torch.tensor([float(x) for x in masked.output.split()])
    kw = HookedCrossEncoder.from_pretrained(folder).tokenize(PAIRS)
    with torch.no_grad():
        ref = _plain(folder)(input_ids=kw["input_ids"], attention_mask=kw["attention_mask"]).logits[:, 0]
    assert (a - ref).abs().max() <= 1e-4 and (a - b).abs().max() > 1e-3  # printed scores are rounded

    ds, run = planted_dataset()
    write_beir(ds, tmp_path / "beir")
    write_run(run, tmp_path / "run.trec")
    res = r.invoke(
        app,
        [
            "ablate",
            "sweep",
            "--model",
            str(folder),
            "--dataset",
            str(tmp_path / "beir"),
            "--split",
            "test",
            "--run",
            str(tmp_path / "run.trec"),
            "--k",
            "8",
            "--max-queries",
            "4",
            "--out",
            str(tmp_path / "sw.csv"),
            "--layers",
            "1:3",
            "--paths",
            "q->d,cls->q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 knockouts" in res.output
    meta = json.loads((tmp_path / "sw.meta.json").read_text())
    assert meta["model_spec"] == str(folder)


# ---------------------------------------------------------------------- MICE from ModernBERT
def _corpus(n=24, seed=0):
    import random

    from mice.models.testing import _WORDS

    rng = random.Random(seed)
    return {f"doc{i}": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 40))) for i in range(n)}


CORPUS = _corpus()
QUERIES = ["sort an array", "mean of values along the axis", "plot a line"]


@pytest.mark.parametrize("cls_cross", ["none", "uniform"])
def test_mice_from_index_equals_on_the_fly(tiny_mb, tmp_path, cls_cross):
    from mice import MICEModel
    from mice.errors import IndexError_
    from mice.index.fast_rerank import FastMICE, FastReranker
    from mice.index.store import IndexConfig, build_index

    # contextual layers 0 (global) and 1 (local: documents exceed its window), interaction layers 2 (local), 3
    m = MICEModel.from_cross_encoder(
        tiny_mb["cls"], contextual_layers=2, interaction_layers=2, cls_cross_attention=cls_cross
    )
    ids = list(CORPUS)
    idx = build_index(m, CORPUS, tmp_path / "idx", IndexConfig(dtype="float32", kv=True, shard_size=8, batch_size=5))
    readers = [FastReranker(m, idx.path, use_kv=use_kv, batch_size=7) for use_kv in (False, True)]
    states = m.encode_documents([CORPUS[d] for d in ids])
    assert int(states.lengths.max()) > 2 * m.config.sliding_window + 1
    fast = FastMICE(m)
    worst = 0.0
    for q in QUERIES:
        ref = torch.as_tensor(m.predict([(q, CORPUS[d]) for d in ids]))
        worst = max(
            worst,
            (fast.score_states(fast.prepare(q), states) - ref).abs().max().item(),
            *[(torch.as_tensor(rr.score(q, ids)) - ref).abs().max().item() for rr in readers],
        )
        assert ref.std() > 1e-3  # documents matter
    assert worst <= 1e-5
    assert idx.has_kv and readers[1].use_kv
    # cached keys/values depend on the interaction layers' attention norms: another norm, another index
    with torch.no_grad():
        m.layers[2].attn_norm.weight.add_(0.01)
    with pytest.raises(IndexError_):
        FastReranker(m, idx.path, use_kv=True)


def test_mice_contextual_layers_equal_plain_hf(tiny_mb):
    """A document's layer-a states are the plain HF model's hidden states after layer a-1 on the document alone
    (window, rotary and padding as HF builds them)."""
    from mice import MICEModel

    m = MICEModel.from_cross_encoder(tiny_mb["cls"], contextual_layers=2, interaction_layers=2)
    docs = [CORPUS[d] for d in list(CORPUS)[:6]]
    batch = m.tokenize_documents(docs)
    hf = _plain(tiny_mb["cls"])
    with torch.no_grad():
        ours = m.encode_doc_batch(batch)
        ref = hf.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states[2]
    keep = ours.mask
    assert (ours.hidden[keep] - ref[keep]).abs().max() <= 1e-5


def test_mice_modernbert_cross_attention_follows_the_authors(tiny_mb, tmp_path):
    """q/k/v split from Wqkv, Wo copied; saved and loaded, the same scores; b = 1 collapses under `none`."""
    import numpy as np

    from mice import MICEModel
    from mice.errors import ModelError

    m = MICEModel.from_cross_encoder(tiny_mb["cls"], contextual_layers=2, interaction_layers=2)
    H = m.hidden_size
    for j in range(2):
        attn = m.layers[2 + j].attn
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            assert torch.equal(getattr(m.cross[j], name).weight, attn.Wqkv.weight[i * H : (i + 1) * H])
        assert torch.equal(m.cross[j].Wo.weight, attn.Wo.weight)
        assert m.cross[j].Wo.weight.data_ptr() != attn.Wo.weight.data_ptr()
    pairs = [(QUERIES[0], CORPUS[d]) for d in list(CORPUS)[:8]]
    m.save_pretrained(tmp_path / "mice")
    again = MICEModel.from_pretrained(tmp_path / "mice")
    np.testing.assert_allclose(again.predict(pairs), m.predict(pairs), atol=1e-6, rtol=0)
    one = MICEModel.from_cross_encoder(tiny_mb["cls"], contextual_layers=3, interaction_layers=1)
    assert np.ptp(one.predict(pairs)) < 1e-5  # [CLS] reads the query before the query reads the document
    assert np.ptp(m.predict(pairs)) > 1e-4
    uni = MICEModel.from_cross_encoder(
        tiny_mb["cls"], contextual_layers=3, interaction_layers=1, cls_cross_attention="uniform"
    )
    assert np.ptp(uni.predict(pairs)) > 1e-4  # the authors' variant: [CLS] reads the document's mean value
    with pytest.raises(ModelError, match="pools by 'mean'"):
        MICEModel.from_cross_encoder(tiny_mb["mean"], contextual_layers=2, interaction_layers=2)


@pytest.mark.parametrize("mode", ["cross-encoder", "masked", "mice"])
def test_training_smoke_each_mode(tmp_path, monkeypatch, mode):
    """`mice train` in each mode on a tiny 3-layer ModernBERT (global, local, local); the saved model scores."""
    import numpy as np
    from test_train import run_cli, write_beir  # the tiny BEIR folder of the training tests

    from mice.models.loader import load
    from mice.models.testing import tiny_cross_encoder

    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "data")
    student = tiny_cross_encoder(
        tmp_path / "student", family="modernbert", num_layers=3, hidden=64, heads=4, intermediate=96
    )
    out = tmp_path / "out"
    result = run_cli(
        "--preset",
        "tiny",
        "--mode",
        mode,
        "--model",
        student,
        "--dataset",
        data,
        "-o",
        out,
        "--max-steps",
        3,
        "--quiet",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "summary.json").read_text())["status"] == "ok"
    scorer = load(out / "best")
    scores = scorer.predict([("sort an array", "return a sorted copy of an array"), ("plot", "a line plot")])
    assert np.isfinite(scores).all() and scores.shape == (2,) and abs(scores[0] - scores[1]) > 1e-6
    assert type(scorer).__name__ == ("MICEModel" if mode == "mice" else "HookedCrossEncoder")
    if mode == "masked":
        assert scorer._default_mask[0] is not None  # the saved mask is in force


def test_cli_commands_on_modernbert_folders(tiny_mb, tmp_path):
    """rerank, probe attention, ablate attribute|presets on the cross-encoder; index build, rerank --index and
    bench latency on MICE built from it: each does its job (exit 0, its output written)."""
    import pandas as pd
    from typer.testing import CliRunner

    from ablations.planted import planted_dataset
    from mice import MICEModel
    from mice.cli import app
    from mice.data import write_beir
    from mice.rank.runs import read_run, write_run

    folder = tiny_mb["cls"]
    ds, run = planted_dataset()
    write_beir(ds, tmp_path / "beir")
    write_run(run, tmp_path / "run.trec")
    data = ["--dataset", str(tmp_path / "beir"), "--split", "test", "--run", str(tmp_path / "run.trec"), "--k", "8"]
    mice_dir = tmp_path / "mice"
    MICEModel.from_cross_encoder(folder, contextual_layers=2, interaction_layers=2).save_pretrained(mice_dir)
    r = CliRunner()
    out = {name: tmp_path / name for name in ("r.trec", "p.parquet", "a.parquet", "pr.csv", "idx", "ri.trec", "b.csv")}
    commands = _cli_commands(folder, mice_dir, data, tmp_path, out)
    for command in commands:
        res = r.invoke(app, command)
        assert res.exit_code == 0, (command[:2], res.output, repr(res.exception))
    assert all(p.exists() for p in out.values())
    res = r.invoke(app, ["rerank", "--model", str(mice_dir), *data, "--out", str(tmp_path / "fly.trec")])
    assert res.exit_code == 0, res.output
    fly = read_run(tmp_path / "fly.trec").set_index(["query_id", "doc_id"])["score"]
    indexed = read_run(out["ri.trec"]).set_index(["query_id", "doc_id"])["score"]
    assert len(fly) == len(indexed) == 16 * 8
    assert (fly - indexed.loc[fly.index]).abs().max() <= 1e-5  # MICE from the index = MICE on the fly
    bench = pd.read_csv(out["b.csv"])
    assert {"cross-encoder", "mice", "mice-index", "mice-kv"} <= set(bench["method"])


def _cli_commands(folder, mice_dir, data, tmp_path, out) -> list[list[str]]:
    """The commands `test_cli_commands_on_modernbert_folders` runs, each writing its file of `out`."""
    return [
        ["rerank", "--model", str(folder), *data, "--out", str(out["r.trec"])],
        ["probe", "attention", "--model", str(folder), *data, "--max-queries", "4", "--out", str(out["p.parquet"])],
        [
            "ablate",
            "attribute",
            "--model",
            str(folder),
            *data,
            "--modes",
            "renorm",
            "--max-queries",
            "4",
            "--out",
            str(out["a.parquet"]),
        ],
        [
            "ablate",
            "presets",
            "--model",
            str(folder),
            *data,
            "--presets",
            "mask0,mask2",
            "--max-queries",
            "4",
            "--out",
            str(out["pr.csv"]),
        ],
        [
            "index",
            "build",
            "--model",
            str(mice_dir),
            "--dataset",
            str(tmp_path / "beir"),
            "--out",
            str(out["idx"]),
            "--shard-size",
            "8",
            "--storage-dtype",
            "float32",
        ],
        ["rerank", "--model", str(mice_dir), "--index", str(out["idx"]), *data, "--out", str(out["ri.trec"])],
        [
            "bench",
            "latency",
            "--model",
            str(folder),
            "--arch",
            "2+2",
            "--docs",
            "3",
            "--query-len",
            "8",
            "--doc-len",
            "24",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--out",
            str(out["b.csv"]),
        ],
    ]


@pytest.mark.integration
def test_demo_runs_end_to_end_on_a_tiny_modernbert(tmp_path):
    """`mice demo --preset tiny --backbone tiny-modernbert`: every stage (training in the three modes, probes,
    attribution, sweeps, derivation, MICE and its index, late interaction, latency) on a ModernBERT backbone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "MICE_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "mice", "demo", "--preset", "tiny", "--backbone", "tiny-modernbert", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("cross_encoder", "masked", "mice"):
        config = json.loads((out / stage / "train" / "best" / "config.json").read_text())
        assert config["model_type"] == "modernbert", stage
    report = (out / "report.md").read_text()
    assert "## MICE" in report and "## Knockouts" in report
    index = json.loads((out / "index" / "index_check.json").read_text())
    assert index["max_abs_score_diff"] < 1e-2 and index["kendall_tau_min"] > 0.99  # fp16 index vs on the fly
