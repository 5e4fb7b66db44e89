"""Compute precision (`--dtype fp32|bf16|fp16`, `mice.models.precision`): fp32 is today's scorer bit for bit; bf16 and
fp16 stay within stated tolerances of it for the cross-encoder, MICE on the fly and MICE from an index; the
precision is part of the resume identity; the CLI commands (rerank, index build, train) honour it."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from mice import load
from mice.data import load_dataset
from mice.models.hooked import HookedCrossEncoder
from mice.index.store import DocIndex, IndexConfig, build_index
from mice.models.mice_model import MICEModel
from mice.rank.rerank import CandidateBatch, rerank
from mice.rank.runs import make_run, read_run, write_run
from mice.models.testing import _WORDS, tiny_cross_encoder

from cli_checks import assert_one_error
from test_data import CORPUS, QRELS, write_beir_folder
from test_fuzz_inputs import run_main

# Tolerances against fp32 scores, on tiny random models whose scores span about 0.04..0.84 (magnitude ~0.5).
# bf16 keeps 8 mantissa bits (2-3 significant digits): measured on these 64 pairs (CPU, torch 2.13), max
# |bf16 - fp32| 0.0073 (cross-encoder), 0.0078 (MICE on the fly), 0.0076 (MICE from a bf16-built index), Kendall
# tau 0.983-0.989; fp16 keeps 11 bits: max |fp16 - fp32| <= 0.0017, tau >= 0.998. The bounds leave 3-6x room for
# other kernels (GPUs, other CPUs).
BF16_MAX_ABS = 0.05
FP16_MAX_ABS = 0.005
MIN_TAU = 0.9  # the ranking of a batch of pairs, low precision vs fp32
TOLERANCE = {"bf16": BF16_MAX_ABS, "fp16": FP16_MAX_ABS}

pytestmark = pytest.mark.usefixtures("one_thread")


def word_pairs(n_queries=8, n_docs=8, seed=0) -> list[tuple[str, str]]:
    """Every query against every document (64 pairs): a batch with a ranking worth comparing."""
    rng = random.Random(seed)
    queries = [" ".join(rng.sample(_WORDS, 3)) for _ in range(n_queries)]
    docs = [" ".join(rng.sample(_WORDS, 12)) for _ in range(n_docs)]
    return [(q, d) for q in queries for d in docs]


PAIRS = word_pairs()


def agreement(scores, reference) -> tuple[float, float]:
    """(max abs difference, Kendall tau) of low-precision scores against fp32 ones."""
    return float(np.abs(scores - reference).max()), float(kendalltau(scores, reference)[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    ce = tiny_cross_encoder(root / "ce", num_layers=3, seed=0)
    mice_dir = MICEModel.from_cross_encoder(ce, contextual_layers=1, interaction_layers=2).save_pretrained(
        root / "mice"
    )
    return {"root": root, "ce": str(ce), "mice": str(mice_dir)}


@pytest.fixture(scope="module")
def fp32_scores(models):
    return {which: load(models[which]).predict(PAIRS) for which in ("ce", "mice")}


def test_fp32_is_todays_scorer_bit_for_bit(models, fp32_scores):
    today = {
        "ce": HookedCrossEncoder.from_pretrained(models["ce"]).predict(PAIRS),
        "mice": MICEModel.from_pretrained(models["mice"]).predict(PAIRS),
    }
    for which in ("ce", "mice"):
        explicit = load(models[which], dtype="fp32")
        assert np.array_equal(explicit.predict(PAIRS), today[which]), which
        assert np.array_equal(fp32_scores[which], today[which]), which
        assert explicit.identity()["compute_dtype"] == "fp32"


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("which", ["ce", "mice"])
def test_low_precision_scores_within_tolerance(models, fp32_scores, which, dtype, caplog, monkeypatch):
    import mice.models.precision

    monkeypatch.setattr(mice.models.precision, "_WARNED", set())
    scorer = load(models[which], dtype=dtype)
    # fp16 runs on CPU (torch 2.13 autocasts it) but slowly: said once; bf16 says nothing
    assert ("bf16 is the fast choice on CPU" in caplog.text) == (dtype == "fp16")
    scores = scorer.predict(PAIRS)
    assert scores.dtype == np.float32
    assert not np.array_equal(scores, fp32_scores[which])  # it did run at the lower precision
    diff, tau = agreement(scores, fp32_scores[which])
    assert diff <= TOLERANCE[dtype] and tau >= MIN_TAU, (which, dtype, diff, tau)
    assert scorer.identity()["compute_dtype"] == dtype
    assert scorer.identity()["weights"] == load(models[which]).identity()["weights"]  # weights stay fp32


def test_mice_from_an_index_built_and_scored_in_bf16(models, fp32_scores, tmp_path):
    texts = list(dict.fromkeys(d for _, d in PAIRS))
    ids = {d: f"doc{i}" for i, d in enumerate(texts)}
    encoder = load(models["mice"], kind="mice", dtype="bf16")
    index = build_index(encoder, {ids[d]: d for d in texts}, tmp_path / "idx", IndexConfig(dtype="float32"))
    assert index.info()["compute_dtype"] == "bf16"
    batch = CandidateBatch(
        [q for q, _ in PAIRS], [ids[d] for _, d in PAIRS], [q for q, _ in PAIRS], [d for _, d in PAIRS]
    )
    scorer = load(models["mice"], index=tmp_path / "idx", dtype="bf16")
    diff, tau = agreement(scorer.predict_candidates(batch), fp32_scores["mice"])
    assert diff <= BF16_MAX_ABS and tau >= MIN_TAU, (diff, tau)
    assert scorer.identity()["compute_dtype"] == "bf16"
    # the same index read at fp32: only the states' bf16 encoding differs from the fp32 model on texts
    diff32, _ = agreement(load(models["mice"], index=tmp_path / "idx").predict_candidates(batch), fp32_scores["mice"])
    assert 0 < diff32 <= BF16_MAX_ABS


def test_rerank_cli_in_bf16_and_a_resume_at_another_dtype_is_refused(models, tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    beir = write_beir_folder(tmp_path / "beir")
    first = write_run(
        make_run([(q, d, float(10 - i)) for q, _, _ in QRELS["test"] for i, d in enumerate(sorted(CORPUS))]),
        tmp_path / "first.trec",
    )
    args = ["rerank", "-m", models["ce"], "-d", beir, "--run", first]
    out = tmp_path / "bf16.trec"
    code, err = run_main([*args, "--out", out, "--dtype", "bf16"])
    assert code in (None, 0), err
    got = read_run(out)
    ds = load_dataset(str(beir))
    queries, corpus = ds.queries("test"), ds.corpus()
    reference = load(models["ce"]).predict([(queries[q], corpus[d]) for q, d in zip(got["query_id"], got["doc_id"])])
    diff, _ = agreement(got["score"].to_numpy(), reference)
    assert diff <= BF16_MAX_ABS

    # the same job killed mid-way under bf16, then resumed with the default fp32: refused, naming the dtype
    killed = tmp_path / "killed.trec"
    scorer = load(models["ce"], dtype="bf16")

    def dies(pairs, batch_size=32, **kw):
        raise KeyboardInterrupt("killed")

    scorer.predict = dies
    with pytest.raises(KeyboardInterrupt):
        rerank(scorer, str(beir), "test", first, k=100, batch_size=32, out=killed)
    assert killed.with_name("killed.trec.partial").exists()
    code, err = run_main([*args, "--out", killed])
    assert_one_error(code, err, "compute_dtype (bf16 -> fp32)")
    code, err = run_main([*args, "--out", killed, "--dtype", "bf16"])  # the same dtype resumes
    assert code in (None, 0), err
    assert killed.read_bytes() == out.read_bytes()


def test_index_build_cli_compute_dtype_is_not_the_storage_dtype(models, tmp_path, monkeypatch):
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    beir = write_beir_folder(tmp_path / "beir")
    args = ["index", "build", "-m", models["mice"], "-d", beir, "-o", tmp_path / "idx", "--storage-dtype", "float16"]
    code, err = run_main([*args, "--dtype", "bf16"])
    assert code in (None, 0), err
    info = DocIndex.open(tmp_path / "idx").info()
    assert info["compute_dtype"] == "bf16" and info["dtype"] == "float16"
    # rebuilding the folder at another compute precision is another job: refused, naming it
    code, err = run_main(args)
    assert_one_error(code, err, "compute_dtype (bf16 -> fp32)")
    # `--compute-dtype` is the same option; a compute precision given as the storage is pointed to --dtype
    code, err = run_main([*args[:-2], "--compute-dtype", "bf16"])
    assert code in (None, 0), err
    code, err = run_main(
        ["index", "build", "-m", models["mice"], "-d", beir, "-o", tmp_path / "idx2", "--storage-dtype", "bf16"]
    )
    assert_one_error(code, err, "'bf16'", "--dtype fp32|bf16|fp16")


@pytest.fixture()
def fresh_accelerate():
    """accelerate fixes the mixed precision once per process (`AcceleratorState` is a singleton): reset it around
    a test that trains at another precision, so neither it nor the tests after it inherit the other's."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_train_in_bf16_smoke(models, tmp_path, monkeypatch, fresh_accelerate):
    from test_train import write_beir

    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "data", n_train=12, n_dev=4)
    common = [
        "train",
        "--preset",
        "tiny",
        "--model",
        models["ce"],
        "--dataset",
        data,
        "--max-steps",
        2,
        "--set",
        "dev_queries=4",
        "--quiet",
    ]
    runs = {}
    for dtype in ("fp32", "bf16"):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        out = tmp_path / dtype
        code, err = run_main([*common, "-o", out, "--dtype", dtype])
        assert code in (None, 0), err
        runs[dtype] = out
    cfg = json.loads((runs["bf16"] / "train_config.json").read_text())
    assert cfg["mixed_precision"] == "bf16"
    assert json.loads((runs["fp32"] / "train_config.json").read_text())["mixed_precision"] == "no"
    logs = {d: pd.read_csv(runs[d] / "train_log.csv").dropna(subset=["loss"]) for d in runs}
    loss32, loss16 = logs["fp32"]["loss"].to_numpy(), logs["bf16"]["loss"].to_numpy()
    assert np.isfinite(loss16).all() and not np.array_equal(loss16, loss32)  # bf16 really ran, and stayed close
    assert np.abs(loss16 - loss32).max() <= 0.05 * np.abs(loss32).max()


def test_train_fp16_on_cpu_is_refused_before_any_work(models, tmp_path, fresh_accelerate):
    out = tmp_path / "fp16"
    code, err = run_main(["train", "--preset", "tiny", "--model", models["ce"], "-o", out, "--dtype", "fp16"])
    assert_one_error(code, err, "--dtype fp16", "on CPU use bf16")
    assert not out.exists()
