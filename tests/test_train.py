"""`mice train`: the three modes from the CLI, losses, determinism, resume after a kill, divergence, teacher
cache, config files and several seeds — on tiny random models and a tiny BEIR folder written here."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mice.cli import app
from mice.models.testing import _WORDS, tiny_cross_encoder
from mice.train import TrainConfig, TrainingDiverged, preset
from mice.train.losses import listwise_ce, margin_mse, pointwise_bce

runner = CliRunner()


def write_beir(folder, n_train=40, n_dev=10, seed=0):
    """A BEIR folder: each query shares three words with its one relevant document."""
    rng = random.Random(seed)
    docs, queries, qrels = {}, {}, {"train": [], "dev": []}
    for i in range(n_train + n_dev):
        words = rng.sample(_WORDS, 12)
        docs[f"d{i}"] = " ".join(words)
        queries[f"q{i}"] = " ".join(words[:3] + rng.sample(_WORDS, 1))
        qrels["train" if i < n_train else "dev"].append((f"q{i}", f"d{i}", 1))
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows)
        )
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


def train_env(tmp_path_factory, name: str, **models):
    """A module's training set-up (use with `yield from`): a tiny BEIR folder, tiny random cross-encoders
    (`models`: folder name -> tiny_cross_encoder settings), and MICE_CACHE inside the test folder so BM25
    indexes and teacher caches stay there."""
    root = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("MICE_CACHE", str(root / "cache"))
    data = write_beir(root / "data")
    built = {key: str(tiny_cross_encoder(root / key, **kw)) for key, kw in models.items()}
    yield {"root": root, "data": str(data), **built}
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)  # checkpoints take gigabytes; the module is done with them


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from train_env(
        tmp_path_factory, "train", student=dict(num_layers=3, seed=0), teacher=dict(num_layers=3, seed=1)
    )


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def run_cli(*args):
    result = runner.invoke(app, ["train", *map(str, args)])
    return result


# ----------------------------------------------------------------------------------------------- losses
def test_margin_mse_matches_hand_computation():
    student = torch.tensor([[3.0, 1.0, 0.0], [0.5, 1.0, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    # margins: student (2, 3), (-0.5, -1.5); teacher (1, 1), (1, 0)
    expected = ((2 - 1) ** 2 + (3 - 1) ** 2 + (-0.5 - 1) ** 2 + (-1.5 - 0) ** 2) / 4
    assert margin_mse(student, teacher).item() == pytest.approx(expected)
    assert expected == pytest.approx(2.375)
    # shifting the teacher (or the student) by a constant per group changes nothing: only margins count
    assert margin_mse(student + 5, teacher - 3).item() == pytest.approx(expected)


def test_ranking_losses_match_hand_computation():
    s = torch.tensor([[2.0, 0.0, 1.0]])
    lse = math.log(math.exp(2) + 1 + math.exp(1))
    assert listwise_ce(s).item() == pytest.approx(lse - 2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = -(math.log(sig(2.0)) + math.log(1 - sig(0.0)) + math.log(1 - sig(1.0))) / 3
    assert pointwise_bce(s).item() == pytest.approx(bce)


# ------------------------------------------------------------------------------------------- CLI modes
@pytest.mark.parametrize("mode", ["cross-encoder", "masked", "mice"])
def test_each_mode_trains_from_the_cli(env, mode):
    from mice.models.loader import load

    out = env["root"] / f"cli-{mode}"
    args = [
        "--preset",
        "tiny",
        "--mode",
        mode,
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        out,
        "--max-steps",
        4,
        "--quiet",
    ]
    if mode == "cross-encoder":  # also exercise distillation in this mode
        args += ["--set", "loss=listwise+margin-mse", "--set", f"teacher={env['teacher']}"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wall time" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 4 and summary["mode"] == mode
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == [
        "step",
        "loss",
        "lr",
        "pairs_per_s",
        "elapsed_s",
        "dev_rr10",
        "dev_ndcg10",
        "p_vs_teacher",
    ]
    assert log["p_vs_teacher"].isna().all()  # only runs that stop on beating their teacher test against it
    assert log["step"].max() == 4 and log["loss"].dropna().map(math.isfinite).all()
    assert log["dev_rr10"].notna().sum() >= 2  # step 0 and step 4
    assert (out / "last" / "trainer_state.pt").exists()
    best = out / "best"
    scorer = load(best)
    scores = scorer.predict([("sort an array", "return a sorted copy of an array"), ("plot", "a line plot")])
    assert np.isfinite(scores).all() and scores.shape == (2,)
    cfg = json.loads((best / "config.json").read_text())
    if mode == "masked":
        from mice.masks import InteractionMask

        saved = InteractionMask.load(best / "mask.json")
        assert saved == InteractionMask.parse("mask2", 3)
        assert cfg["mice_mask"] == saved.to_dict()
        from mice.models.hooked import HookedCrossEncoder

        pairs = [("sort an array", "return a sorted copy of an array"), ("plot", "a line plot")]
        plain = HookedCrossEncoder.from_pretrained(best)
        np.testing.assert_allclose(scorer.predict(pairs), plain.predict(pairs, mask=saved), atol=1e-6)
        assert not np.allclose(plain.predict(pairs), plain.predict(pairs, mask=saved))  # the mask matters
        # the saved weights under the saved mask reproduce what the trainer measured on dev
        assert json.loads((best / "best.json").read_text())["dev"]["RR@10"] == pytest.approx(
            summary["best_dev"]["RR@10"]
        )
    elif mode == "mice":
        assert cfg["mice"]["contextual_layers"] == 1 and cfg["mice"]["interaction_layers"] == 2
        assert type(scorer).__name__ == "MICEModel"
    else:
        assert "mice_mask" not in cfg and "mice" not in cfg


def test_training_moves_weights_and_best_is_the_best_dev_step(env):
    out = env["root"] / "moves"
    result = run_cli(
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        out,
        "--max-steps",
        6,
        "--set",
        "eval_every=2",
        "--set",
        "lr=1e-3",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    start, last = weights(__import__("pathlib").Path(env["student"])), weights(out / "last")
    changed = [k for k in start if k in last and not torch.equal(start[k], last[k])]
    assert len(changed) > len(start) // 2
    log = pd.read_csv(out / "train_log.csv").dropna(subset=["dev_rr10"])
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["dev"]["RR@10"] == pytest.approx(log["dev_rr10"].max())
    assert best["step"] == int(log.loc[log["dev_rr10"].idxmax(), "step"])  # first step reaching the max


def test_existing_output_needs_resume_or_overwrite(env):
    out = env["root"] / "exists"
    args = [
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        out,
        "--max-steps",
        1,
        "--quiet",
    ]
    assert run_cli(*args).exit_code == 0
    again = run_cli(*args)
    assert again.exit_code != 0 and "--resume" in str(again.exception)
    assert run_cli(*args, "--overwrite").exit_code == 0


# ------------------------------------------------------------------------- determinism, resume, NaN
def _cfg(env, out, **kw):
    return preset("tiny", "cross-encoder", model=env["student"], dataset=env["data"], output=str(out), **kw)


def test_same_seed_gives_identical_weights(env):
    from mice.train import Trainer

    a = Trainer(_cfg(env, env["root"] / "det-a", seed=3, max_steps=4), quiet=True).train()
    b = Trainer(_cfg(env, env["root"] / "det-b", seed=3, max_steps=4), quiet=True).train()
    c = Trainer(_cfg(env, env["root"] / "det-c", seed=4, max_steps=4), quiet=True).train()
    wa, wb, wc = weights(a.output / "last"), weights(b.output / "last"), weights(c.output / "last")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters (fresh head, sampled groups)
    assert a.best_dev == b.best_dev


class Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted_run(env):
    from mice.train import Trainer

    kw = dict(seed=1, max_steps=6, save_every=2, eval_every=3, loss="listwise+margin-mse", teacher=env["teacher"])
    full = Trainer(_cfg(env, env["root"] / "full", **kw), quiet=True).train()

    def kill_at_5(trainer, step):
        if step == 5:  # a checkpoint was written at step 4; step 5's update is lost
            raise Killed()

    out = env["root"] / "killed"
    with pytest.raises(Killed):
        Trainer(_cfg(env, out, **kw), callbacks=[kill_at_5], quiet=True).train()
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=True)["step"] == 4
    # a kill between the two renames of a checkpoint swap leaves only `.last.old`: resume must find it
    (out / "last").rename(out / ".last.old")
    resumed = Trainer(_cfg(env, out, resume=True, **kw), quiet=True).train()
    assert resumed.steps == 6
    wf, wr = weights(full.output / "last"), weights(out / "last")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert resumed.best_dev == full.best_dev and resumed.best_step == full.best_step
    log_full = pd.read_csv(full.output / "train_log.csv")
    log_res = pd.read_csv(out / "train_log.csv")
    assert log_res["step"].tolist() == log_full["step"].tolist()  # no duplicated or missing rows
    np.testing.assert_allclose(log_res["loss"].to_numpy(), log_full["loss"].to_numpy(), rtol=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(env):
    out = env["root"] / "nan"
    # an absurd learning rate: step 1 is computed from sane weights, then the weights explode
    result = run_cli(
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        out,
        "--set",
        "lr=1e30",
        "--set",
        "warmup_steps=0",
        "--set",
        "save_every=1",
        "--max-steps",
        6,
        "--quiet",
    )
    assert isinstance(result.exception, TrainingDiverged), result.output
    message = str(result.exception)
    assert "diverged at step 2" in message and "last good checkpoint" in message and "--set lr=" in message
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in weights(out / "last").values())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


# ------------------------------------------------------------------------------------ reuse and speed
def test_fused_adamw_moves_every_weight_as_the_per_tensor_adamw(env):
    """`adamw` (torch's fused kernel, what the loop trains with) against the per-tensor AdamW it replaced: the
    same weights to float rounding after a few steps, over every parameter group (head lr, no decay)."""
    import copy

    from mice.train.student import adamw, build_student, param_groups

    cfg = preset("tiny", "masked", model=env["student"], dataset=env["data"], head_lr=1e-3, weight_decay=0.01)
    fast = build_student(cfg).train()
    slow = copy.deepcopy(fast)
    opt_fast = adamw(param_groups(fast, cfg.lr, cfg.head_lr, cfg.weight_decay), cfg.lr)
    opt_slow = torch.optim.AdamW(param_groups(slow, cfg.lr, cfg.head_lr, cfg.weight_decay), lr=cfg.lr)
    assert opt_fast.defaults["fused"] and not opt_slow.defaults["fused"]
    assert len(opt_fast.param_groups) == 4
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        for a, b in zip(fast.parameters(), slow.parameters()):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_fast.step()
        opt_slow.step()
    moved = False
    for (name, a), b, start in zip(fast.named_parameters(), slow.parameters(), build_student(cfg).parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
        moved |= not torch.equal(a, start)
    assert moved


def test_training_pool_is_built_once_per_data_and_settings(env, tmp_path):
    """The search and the frontier start dozens of runs in one process: the pool of the same data and settings is
    built once (an equal pool), another depth or edited data (judgements, corpus) builds a new one."""
    import shutil

    from mice.data import load_dataset
    from mice.train.samples import pool_from_dataset, shared_pool

    folder = shutil.copytree(env["data"], tmp_path / "data")
    first = shared_pool(load_dataset(str(folder)), "train", 5)
    assert shared_pool(load_dataset(str(folder)), "train", 5) is first  # a file dataset is a new object each time
    fresh = pool_from_dataset(load_dataset(str(folder)), "train", 5)
    assert (first.query_ids, first.positives, first.candidates) == (fresh.query_ids, fresh.positives, fresh.candidates)
    assert shared_pool(load_dataset(str(folder)), "train", 3) is not first
    qrels = folder / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines(keepends=True)
    qrels.write_text("".join(lines[:-1]))  # one judgement fewer
    edited = shared_pool(load_dataset(str(folder)), "train", 5)
    assert edited is not first and len(edited.positives) == len(first.positives) - 1
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "extra", "text": "an extra document"}) + "\n")
    assert shared_pool(load_dataset(str(folder)), "train", 5) is not edited


def test_dev_candidates_are_built_once_per_data_and_settings(env):
    from mice.data import load_dataset
    from mice.train import Trainer

    ds = load_dataset(env["data"])
    first = Trainer(_cfg(env, env["root"] / "dev-a"))._dev_candidates(ds)
    assert Trainer(_cfg(env, env["root"] / "dev-b", seed=3))._dev_candidates(load_dataset(env["data"])) is first
    other = Trainer(_cfg(env, env["root"] / "dev-c", dev_top_k=3))._dev_candidates(ds)
    assert other is not first and len(other["pairs"]) < len(first["pairs"])


# --------------------------------------------------------------------------------------------- teacher
def test_teacher_scores_are_cached_and_reused(env):
    from mice.models.loader import load
    from mice.train import Trainer

    cache = env["root"] / "teacher-cache.parquet"
    kw = dict(loss="margin-mse", teacher=env["teacher"], teacher_cache=str(cache), max_steps=4)
    first = Trainer(_cfg(env, env["root"] / "t1", **kw), quiet=True).train()
    assert first.summary["teacher"]["pairs_scored"] > 0
    table = pd.read_parquet(cache)
    assert len(table) == first.summary["teacher"]["pairs_scored"]
    # cached values are the teacher's own scores
    from mice.data import load_dataset

    ds = load_dataset(env["data"])
    row = table.iloc[0]
    q = {**ds.queries("train"), **ds.queries("dev")}[row["query_id"]]
    direct = load(env["teacher"], max_length=64).predict([(q, ds.corpus()[row["doc_id"]])])[0]
    assert row["score"] == pytest.approx(float(direct), abs=1e-5)
    second = Trainer(_cfg(env, env["root"] / "t2", seed=0, **kw), quiet=True).train()
    assert second.summary["teacher"]["pairs_scored"] == 0  # the teacher never ran
    assert second.summary["teacher"]["pairs_from_cache"] == len(table)
    wa, wb = weights(first.output / "last"), weights(second.output / "last")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # cached scores = fresh scores


def test_teacher_score_file_defines_triples_and_scores(env):
    from mice.train import Trainer

    path = env["root"] / "teacher-triples.tsv"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        for j in rng.choice([k for k in range(40) if k != i], size=3, replace=False):
            lines.append(f"{5 + rng.normal():.4f}\t{rng.normal():.4f}\tq{i}\td{i}\td{j}\n")
    path.write_text("".join(lines))
    res = Trainer(
        _cfg(env, env["root"] / "tfile", loss="margin-mse", teacher=str(path), negatives=2, max_steps=3), quiet=True
    ).train()
    assert res.summary["teacher"]["pairs_scored"] == 0 and res.summary["teacher"]["pairs_from_cache"] == 160
    bad = env["root"] / "bad-teacher.tsv"
    bad.write_text("1.0\t0.5\tq1\td1\td2\n2.0\tq1\td1\td3\n")
    result = run_cli(
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        env["root"] / "tbad",
        "--set",
        "loss=margin-mse",
        "--set",
        f"teacher={bad}",
        "--quiet",
    )
    assert "bad-teacher.tsv:2" in str(result.exception)


# ----------------------------------------------------------------------------------- config and seeds
def test_config_file_presets_and_flags_take_precedence_in_order(env, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('mode = "mice"\nlr = 2e-4\ninteraction_layers = 2\n')
    result = run_cli(
        "--preset",
        "tiny",
        "--config",
        toml,
        "--model",
        env["student"],
        "--set",
        "lr=5e-5",
        "--set",
        "dev_queries=7",
        "--show-config",
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["mode"] == "mice" and cfg["lr"] == 5e-5 and cfg["interaction_layers"] == 2
    assert cfg["dev_queries"] == 7 and cfg["max_steps"] == 8 and cfg["teacher"] == "source"  # tiny preset
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"mode": "masked", "mask": "mask9"}))
    bad = run_cli("--config", js, "--model", env["student"], "--show-config")
    assert "unknown preset 'mask9'" in str(bad.exception)
    unknown = run_cli("--set", "learning_rate=1", "--show-config")
    assert "unknown setting 'learning_rate'" in str(unknown.exception)
    assert "margin-mse needs a teacher" in str(run_cli("--set", "loss=margin-mse", "--show-config").exception)
    assert TrainConfig.from_dict(cfg).to_dict() == cfg


def test_several_seeds_in_one_command(env):
    out = env["root"] / "seeds"
    result = run_cli(
        "--preset",
        "tiny",
        "--model",
        env["student"],
        "--dataset",
        env["data"],
        "-o",
        out,
        "--max-steps",
        2,
        "--seeds",
        "0,1",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "seeds.csv")
    assert table["seed"].tolist() == [0, 1] and (table["steps"] == 2).all()
    assert (out / "seed-0" / "best").is_dir() and (out / "seed-1" / "best").is_dir()
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["mean_std"]["dev_rr10"]["mean"] == pytest.approx(table["dev_rr10"].mean())
    assert "mean" in result.output


def test_wall_clock_budget_stops_the_run_and_keeps_its_models(env):
    from mice.train import Trainer

    res = Trainer(_cfg(env, env["root"] / "budget", max_steps=50, max_minutes=1e-4), quiet=True).train()
    assert res.stopped_by == "max_minutes" and res.steps == 1
    assert torch.load(res.output / "last" / "trainer_state.pt", weights_only=True)["step"] == 1
    assert (res.output / "best" / "model.safetensors").exists()
    assert json.loads((res.output / "summary.json").read_text())["stopped_by"] == "max_minutes"


@pytest.mark.integration
def test_quick_preset_runs_on_the_embedded_data_with_the_packaged_minilm(tmp_path):
    """The real recipe end to end for two steps: packaged MiniLM, bi-encoder teacher, embedded:docs."""
    out = tmp_path / "quick"
    result = run_cli(
        "--preset",
        "quick",
        "-o",
        out,
        "--max-steps",
        2,
        "--set",
        "dev_queries=3",
        "--set",
        "eval_every=1000",
        "--quiet",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["teacher"]["spec"] == "biencoder:packaged"
    assert summary["teacher"]["pairs_scored"] + summary["teacher"]["pairs_from_cache"] >= 16
    from mice.models.loader import load

    scores = load(out / "best").predict([("sort an array", "Return a sorted copy of an array.")])
    assert np.isfinite(scores).all()


def test_until_beats_teacher_stops_at_the_first_significant_win_over_the_teacher(env):
    """The teacher is scored once on the student's dev candidates; with the student's own start model as the
    teacher, that score is the step-0 evaluation exactly (two code paths, one number), a tie is not a win, and
    training stops at the first evaluation above the teacher whose one-sided paired p is below `beat_teacher_p`
    over the planned looks (8 steps / eval_every 2 = 4, Bonferroni)."""
    import pandas as pd
    from scipy import stats

    from mice.train import Trainer
    from mice.train.config import ConfigError

    for alpha in (1.0, 0.05):
        cfg = _cfg(
            env,
            env["root"] / f"beat-{alpha}",
            seed=0,
            max_steps=8,
            eval_every=2,
            eval_at_start=True,
            loss="listwise+margin-mse",
            teacher=env["student"],
            until_beats_teacher=True,
            beat_teacher_p=alpha,
        )
        trainer = Trainer(cfg, quiet=True)
        res = trainer.train()
        teacher = res.summary["teacher_dev"]
        log = pd.read_csv(res.output / "train_log.csv")
        evals = log.dropna(subset=["dev_rr10"])
        assert evals.iloc[0]["step"] == 0 and evals.iloc[0]["dev_rr10"] == teacher["RR@10"]
        assert evals.iloc[0]["dev_ndcg10"] == teacher["nDCG@10"] and evals.iloc[0]["p_vs_teacher"] == 1.0
        # the logged p is the paired test of the last evaluation's per-query RR@10 against the teacher's
        student, t_rr = trainer.last_dev_rr.align(trainer.teacher_dev_rr, join="inner")
        if not np.allclose(student.values, t_rr.values):
            expect = stats.ttest_rel(student.values, t_rr.values, alternative="greater").pvalue
            assert evals.iloc[-1]["p_vs_teacher"] == pytest.approx(expect)
        later = evals[evals["step"] > 0]
        assert cfg.beat_teacher_threshold == alpha / 4
        wins = later[(later["dev_rr10"] > teacher["RR@10"]) & (later["p_vs_teacher"] < alpha / 4)]
        if len(wins):
            assert res.stopped_by == "beat_teacher" and res.steps == wins.iloc[0]["step"] == later.iloc[-1]["step"]
        else:
            assert res.stopped_by == "max_steps" and res.steps == 8
    with pytest.raises(ConfigError, match="until_beats_teacher"):
        _cfg(env, env["root"] / "beat-bad", loss="listwise", until_beats_teacher=True).validate()
    with pytest.raises(ConfigError, match="beat_teacher_p"):
        _cfg(env, env["root"] / "beat-bad", beat_teacher_p=0).validate()


# ------------------------------------------------------------------------------------- mined negatives
def test_mined_negatives_are_the_biencoders_top_documents_and_join_bm25s(env):
    """The miner's run is the bi-encoder's exact top-k (checked against scoring every pair with `predict`), is
    cached, and adds its documents to BM25's candidates without duplicates or judged-relevant ones."""
    from mice.models.biencoder import BiEncoder
    from mice.data import load_dataset
    from mice.data.base import cache_dir
    from mice.train.mining import mined_run
    from mice.train.samples import pool_from_dataset

    ds = load_dataset(env["data"])
    spec = "biencoder:" + env["teacher"]
    run = mined_run(ds, "train", spec, depth=5, max_length=64)
    corpus, queries = ds.corpus(), ds.queries("train")
    bi = BiEncoder(env["teacher"], max_length=64)
    for qid in sorted(queries)[:10]:
        full = dict(zip(corpus, bi.predict([(queries[qid], text) for text in corpus.values()])))
        mine = run[run["query_id"] == qid].sort_values("rank")
        assert len(mine) == 5 and list(mine["rank"]) == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(mine["score"], [full[d] for d in mine["doc_id"]], atol=1e-5)
        rest = [s for d, s in full.items() if d not in set(mine["doc_id"])]
        assert min(mine["score"]) >= max(rest) - 1e-5  # nothing left out scores higher
    files = list((cache_dir() / "mined").glob("*.parquet"))
    assert len(files) >= 1
    pd.testing.assert_frame_equal(mined_run(ds, "train", spec, depth=5, max_length=64), run)

    bm25 = pool_from_dataset(ds, "train", 5)
    both = pool_from_dataset(ds, "train", 5, spec, 64)
    assert both.query_ids == bm25.query_ids
    grew = 0
    for qid in both.query_ids:
        positives = set(both.positives[qid])
        mined = [d for d in run[run["query_id"] == qid].sort_values("rank")["doc_id"] if d not in positives]
        extra = [d for d in mined if d not in bm25.candidates[qid]]
        assert both.candidates[qid] == bm25.candidates[qid] + extra
        assert not positives & set(both.candidates[qid])
        grew += bool(extra)
    assert grew > 0  # the miner found documents BM25 did not


def test_negative_miner_trains_enters_the_identity_and_rejects_other_models(env):
    from mice.train import Trainer
    from mice.train.config import ConfigError

    with pytest.raises(ConfigError, match="negative_miner"):
        _cfg(env, env["root"] / "nm-bad", negative_miner=env["teacher"]).validate()
    bad = run_cli("--set", f"negative_miner={env['teacher']}", "--show-config")
    assert bad.exit_code != 0 and "negative_miner" in str(bad.exception) and "not a bi-encoder" in str(bad.exception)
    out = env["root"] / "nm"
    spec = "biencoder:" + env["teacher"]
    trainer = Trainer(_cfg(env, out, negative_miner=spec, max_steps=2), quiet=True)
    trainer.train()
    plain = Trainer(_cfg(env, env["root"] / "nm-plain", max_steps=2), quiet=True)
    plain.train()
    assert all(set(plain.pool.candidates[q]) <= set(trainer.pool.candidates[q]) for q in plain.pool.query_ids)
    assert trainer.pool.candidates != plain.pool.candidates
    # resuming the run without the miner is another run: refused, naming the setting
    with pytest.raises(Exception, match="negative_miner"):
        Trainer(_cfg(env, out, resume=True, max_steps=4), quiet=True).train()
