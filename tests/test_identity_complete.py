"""Resume identities complete by construction: every scorer's identity holds its tokenizer, a resumed job with
another tokenizer, strategy or schedule length is refused naming what differs, and every option of every long
job is either part of its identity or on a short list of settings that cannot change the output."""

from __future__ import annotations

import json
import shutil

import pytest

from mice.errors import IdentityError
from mice.identity import tokenizer_fingerprint
from test_data import write_beir_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _swap_two_ids(folder) -> None:
    """Swap the ids of two ordinary words in `tokenizer.json` (the model's scores change, its weights do not)."""
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    words = [w for w in vocab if w.isalpha() and len(w) > 3][:2]
    vocab[words[0]], vocab[words[1]] = vocab[words[1]], vocab[words[0]]
    path.write_text(json.dumps(tok))
    if (folder / "vocab.txt").exists():  # a slow tokenizer would read this instead: keep both in step
        lines = (folder / "vocab.txt").read_text().splitlines()
        i, j = lines.index(words[0]), lines.index(words[1])
        lines[i], lines[j] = lines[j], lines[i]
        (folder / "vocab.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("ident")
    a = tiny_cross_encoder(root / "a", num_layers=2)
    b = root / "b"
    shutil.copytree(a, b)
    _swap_two_ids(b)
    return a, b


def test_swapped_token_ids_change_every_scorer_identity(models):
    from mice.models.biencoder import BiEncoder
    from mice.models.hooked import HookedCrossEncoder
    from mice.models.late_interaction import MaxSimScorer
    from mice.models.mice_model import MICEModel

    a, b = models
    builders = {
        "hooked": lambda p: HookedCrossEncoder.from_pretrained(p),
        "mice": lambda p: MICEModel.from_cross_encoder(p, contextual_layers=1, interaction_layers=1),
        "late interaction": lambda p: MaxSimScorer.from_pretrained(p, seed=0),
        "bi-encoder": lambda p: BiEncoder(p),
    }
    for name, build in builders.items():
        one, other = build(a).identity(), build(b).identity()
        assert one["weights"] == other["weights"], name  # the weights are the same...
        assert one["tokenizer"] != other["tokenizer"], name  # ...the tokenizer is not, and the identity says so


def test_tokenizer_fingerprint_sees_settings_not_only_the_vocabulary(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models[0])
    before = tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(models[0])) == before  # stable across loads
    tok.padding_side = "left"
    assert tokenizer_fingerprint(tok) != before


class _Interrupt(Exception):
    pass


def test_resume_with_another_tokenizer_is_refused(models, tmp_path):
    """A job interrupted after its first chunk, resumed with a copy whose tokenizer has two ids swapped: refused,
    naming the tokenizer; the same model resumes and gives the uninterrupted run's bytes."""
    from mice.models.hooked import HookedCrossEncoder
    from mice.rank.rerank import rerank, score_batch

    a, b = models
    folder = write_beir_folder(tmp_path / "ds")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {r} {10 - r} bm25\n" for q in (1, 2, 3) for r, d in enumerate((1, 2, 3))))
    out = tmp_path / "out.trec"
    calls = []

    def stop_after_one(scorer, batch, batch_size):
        if calls:
            raise _Interrupt
        calls.append(1)
        return score_batch(scorer, batch, batch_size)

    model = HookedCrossEncoder.from_pretrained(a)
    with pytest.raises(_Interrupt):
        rerank(model, folder, "test", run, k=3, out=out, chunk_pairs=3, batch_size=3, score_fn=stop_after_one)
    partial = tmp_path / "out.trec.partial"
    assert len(partial.read_text().splitlines()) == 2  # header + one finished query
    with pytest.raises(IdentityError, match="tokenizer"):
        rerank(HookedCrossEncoder.from_pretrained(b), folder, "test", run, k=3, out=out, chunk_pairs=3, batch_size=3)
    assert not out.exists() and partial.exists()
    rerank(model, folder, "test", run, k=3, out=out, chunk_pairs=3, batch_size=3)
    clean = tmp_path / "clean.trec"
    rerank(model, folder, "test", run, k=3, out=clean, chunk_pairs=3, batch_size=3)
    assert out.read_bytes() == clean.read_bytes()


# ------------------------------------------------------------------------------ every option, accounted for
# Per job: option -> the identity component it enters (by content where it names a file or model). Each
# component is checked against the identity the job really builds (`_real_identity_keys`).
IN_IDENTITY = {
    "rerank": {
        "model": "weights",
        "dataset": "corpus",
        "run": "candidates",
        "mask": "mask",
        "mode": "mask",
        "split": "split",
        "k": "k",
        "batch_size": "batch_size",
        "max_length": "max_length",
        "max_query_length": "max_length",
        "index": "scorer",
        "compute_dtype": "compute_dtype",
    },
    "ablate sweep": {
        "model": "weights",
        "dataset": "pairs",
        "split": "pairs",
        "run": "pairs",
        "k": "pairs",
        "max_queries": "pairs",
        "sample": "pairs",
        "mode": "mode",
        "base": "base_mask",
        "metrics": "metrics",
        "batch_size": "batch_size",
        "strategy": "strategy",
        "max_length": "max_length",
    },
    "ablate attribute": {
        "model": "weights",
        "pairs": "pairs",
        "dataset": "pairs",
        "split": "pairs",
        "run": "pairs",
        "k": "pairs",
        "max_queries": "pairs",
        "sample": "pairs",
        "paths": "knockouts",
        "layers": "knockouts",
        "heads": "knockouts",
        "modes": "modes",
        "base": "base",
        "ig_steps": "steps",
        "batch_size": "batch_size",
        "max_length": "max_length",
    },
    "index build": {
        "model": "doc_states",
        "dataset": "content",
        "storage_dtype": "dtype",
        "kv": "kv",
        "shard_size": "shard_size",
        "compute_dtype": "compute_dtype",
        "arch": "doc_states",
        "batch_size": "batch_size",
        "pq_m": "codec",
        "rotation": "codec",
        "anchors": "codec",
        "pq_refine": "codec",
        "centroids": "codec",
        "bits": "codec",
        "train_tokens": "codec",
    },
}
# Options that cannot change a job's output, each with the reason. Adding one here needs a reason as good.
OUTPUT_NEUTRAL = {
    "out": "where the output goes, not what it holds",
    "output": "where the output goes, not what it holds",
    "overwrite": "discards earlier work; the new work is keyed as usual",
    "restart": "discards earlier work; the new work is keyed as usual",
    "resume": "whether to resume at all; what is resumed is checked against the identity",
    "device": "cpu or an accelerator: the same computation (float rounding aside, as for any re-run)",
    "log": "a progress log file",
    "check": "prints an exact re-check of the top knockouts; the table is unchanged",
    "measure": "the column the printout ranks by; every column is written",
    # sweep rows are keyed one by one by their knockout in the partial: choosing other rows reuses only the
    # rows both selections share, each computed under the same identity
    "paths": "selects knockouts (rows keyed by knockout)",
    "layers": "selects knockouts (rows keyed by knockout)",
    "heads": "selects knockouts (rows keyed by knockout)",
    "head_list": "selects knockouts (rows keyed by knockout)",
}

# Options that may change the output in the last bits and are not yet in their job's identity (none now: the index
# build's `batch_size` is keyed). Listed so that a gap is visible and cannot grow unnoticed.
NOT_YET_IN_IDENTITY: dict[str, set[str]] = {}


def _job_options(job: str) -> list[str]:
    import typer

    from mice.cli import app

    cmd = typer.main.get_command(app)
    for part in job.split():
        cmd = cmd.commands[part]
    return [p.name for p in cmd.params]


@pytest.mark.parametrize("job", sorted(IN_IDENTITY))
def test_every_option_is_in_the_identity_or_output_neutral(job):
    missing = [
        o
        for o in _job_options(job)
        if o not in IN_IDENTITY[job] and o not in OUTPUT_NEUTRAL and o not in NOT_YET_IN_IDENTITY.get(job, ())
    ]
    assert not missing, f"{job}: options neither in the identity nor output-neutral: {missing}"
    assert set(IN_IDENTITY[job]) <= set(_job_options(job)), f"{job}: the table names options the job lacks"


def _identity_source(job: str) -> str:
    """The source of the code that builds `job`'s identity: its components must appear there by name."""
    import importlib
    import inspect

    import mice.index.store
    import mice.models.hooked
    import mice.rank.rerank

    return {
        "rerank": inspect.getsource(mice.rank.rerank.job_identity)
        + inspect.getsource(mice.models.hooked.HookedCrossEncoder.identity),
        "ablate sweep": inspect.getsource(importlib.import_module("ablations.sweep"))
        + inspect.getsource(mice.models.hooked.HookedCrossEncoder.identity),
        "ablate attribute": inspect.getsource(importlib.import_module("ablations.attribution"))
        + inspect.getsource(mice.models.hooked.HookedCrossEncoder.identity),
        "index build": inspect.getsource(mice.index.store.build_identity),
    }[job]


@pytest.mark.parametrize("job", sorted(IN_IDENTITY))
def test_identity_components_exist(job):
    source = _identity_source(job)
    absent = sorted({c for c in IN_IDENTITY[job].values() if f"{c}=" not in source and f'"{c}"' not in source})
    assert not absent, f"{job}: components not built by its identity: {absent}"


def test_rerank_identity_holds_every_component(models, tmp_path):
    """The real rerank identity (not the source): every component the table names is a key of it."""
    from mice.data import load_dataset
    from mice.models.hooked import HookedCrossEncoder
    from mice.rank.rerank import job_identity

    ds = load_dataset(write_beir_folder(tmp_path / "ds"))
    key = job_identity(
        HookedCrossEncoder.from_pretrained(models[0]), ds, "test", ds.queries("test"), {"q1": ["d1"]}, 3, 4, None
    )
    assert set(IN_IDENTITY["rerank"].values()) <= set(key)


def test_train_settings_left_out_of_the_identity_are_the_known_few():
    """Training keys its identity on every setting but `_RESUME_FREE` (and by content `_BY_CONTENT`)."""
    from mice.train.loop import _BY_CONTENT, _RESUME_FREE

    assert _RESUME_FREE == {
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
    assert _BY_CONTENT == {"model", "dataset", "dev_dataset", "teacher", "mask"}


def test_linear_schedule_resume_with_another_max_steps_is_refused(tmp_path_factory, tmp_path):
    """The linear decay reads max_steps: a 4-step run's checkpoint resumed as a 3-step run is refused, naming
    it; under the constant schedule max_steps changes nothing a step computes, so it may change."""
    from test_train import train_env

    from mice.train import Trainer, preset

    env = next(train_env(tmp_path_factory, "maxsteps", student=dict(num_layers=1, seed=0)))

    def cfg(out, steps, **kw):
        return preset(
            "tiny",
            "cross-encoder",
            model=env["student"],
            dataset=env["data"],
            output=str(out),
            max_steps=steps,
            save_every=1,
            eval_every=100,
            dev_split=None,
            batch_size=2,
            **kw,
        )

    Trainer(cfg(tmp_path / "lin", 2), quiet=True).train()
    with pytest.raises(IdentityError, match=r"config\.max_steps \(2 -> 3\)"):
        Trainer(cfg(tmp_path / "lin", 3, resume=True), quiet=True).train()
    Trainer(cfg(tmp_path / "const", 2, lr_schedule="constant"), quiet=True).train()
    assert Trainer(cfg(tmp_path / "const", 3, resume=True, lr_schedule="constant"), quiet=True).train().steps == 3


def test_index_batch_size_enters_the_build_identity_when_not_the_default(models):
    """Documents are encoded in padded batches: another batch size is another build (a resume is refused naming
    it); the default keeps the identity indexes had before the batch size was keyed."""
    from mice.identity import identity_diff
    from mice.index.store import DEFAULT_BATCH_SIZE, IndexConfig, build_identity
    from mice.models.mice_model import MICEModel

    model = MICEModel.from_cross_encoder(models[0], contextual_layers=1, interaction_layers=1)
    ids = ["d1", "d2"]
    default = build_identity(model, IndexConfig(), ids, None)
    other = build_identity(model, IndexConfig(batch_size=8), ids, None)
    assert "batch_size" not in default and other["batch_size"] == 8
    assert "batch_size" in identity_diff(default, other)
    assert build_identity(model, IndexConfig(batch_size=DEFAULT_BATCH_SIZE), ids, None) == default
