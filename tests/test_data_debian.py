"""`embedded:debian` (installed Debian packages' synopsis -> description) and `mix:A+B` (several collections as
one training set): real dpkg status files (crafted here, and this machine's own when it has one), the real
installed Python distributions for the leakage guard, and a real training run on a mix."""

import json
from pathlib import Path

import pandas as pd
import pytest

from mice.data import load_dataset
from mice.data.debian import STATUS, DebianConfig, build, debian_text, parse_spec, read_status
from mice.data.mix import MixedDataset
from mice.errors import DataError

LONG = (
    " This tool reads configuration files written for other programs, checks every\n"
    " key against a schema and reports what is missing or misspelt.\n"
)


def stanza(name, synopsis, body=LONG, status="install ok installed", source=None):
    src = f"Source: {source}\n" if source else ""
    return (
        f"Package: {name}\nStatus: {status}\nPriority: optional\n{src}Version: 1.0-1\nDescription: {synopsis}\n{body}"
    )


@pytest.fixture()
def status(tmp_path):
    path = tmp_path / "status"
    path.write_text(
        "\n".join(
            [
                stanza("confcheck", "check configuration files against a schema"),
                stanza(
                    "listtool",
                    "print lists of things",
                    " Lists what it is given.\n .\n It knows:\n"
                    "  - files and folders of every size\n  - users, groups and their many memberships\n",
                ),
                stanza("python3-numpy", "fast array computing for Python 3", LONG.replace("tool", "library")),
                stanza(
                    "libfastarrays1",
                    "shared library for array computing",
                    LONG.replace("tool", "shared library"),
                    source="numpy (1:1.0-1)",
                ),
                stanza(
                    "python3-zzz-not-installed",
                    "a Python module no one installed here",
                    LONG.replace("configuration", "settings"),
                ),
                stanza(
                    "oldpkg",
                    "removed package kept its configuration",
                    LONG.replace("checks", "verifies"),
                    status="deinstall ok config-files",
                ),
                stanza("short", "too short a description", " Two words.\n"),
                stanza("copycat", "check configuration files against a schema", LONG.replace("tool", "program")),
            ]
        )
        + "\n"
    )
    return path


def test_reads_the_dpkg_format_and_cleans_like_meta(status):
    records = read_status(status)
    assert [r["name"] for r in records] == [
        "confcheck",
        "copycat",
        "libfastarrays1",
        "listtool",
        "python3-numpy",
        "python3-zzz-not-installed",
        "short",
    ]  # not the deinstalled one
    listing = next(r for r in records if r["name"] == "listtool")["description"]
    assert listing == debian_text(
        [
            " Lists what it is given.",
            " .",
            " It knows:",
            "  - files and folders of every size",
            "  - users, groups and their many memberships",
        ]
    )
    ds = load_dataset(f"embedded:debian?status={status}&fractions=1,0,0")
    t = ds.table
    assert list(t["id"]) == ["confcheck", "listtool", "python3-zzz-not-installed"]
    assert t.loc[t["id"] == "listtool", "doc"].item() == (
        "Lists what it is given. It knows: files and folders of every size users, groups and their many memberships"
    )
    stats = ds.build_stats
    # numpy is installed in this interpreter: its Debian packages' text (by name or by source package) comes from
    # the same upstream as the `embedded:meta` record the tests are scored on, so they go
    assert stats["excluded"] == 2 and stats["python_packages_left_out"] == 2
    assert stats["short_description"] == 1 and stats["duplicate_queries"] == 1
    assert set(ds.queries("train")) == set(t["id"]) and not ds.queries("test")
    q = ds.qrels("train")
    assert (q["query_id"] == q["doc_id"]).all() and q["doc_id"].isin(ds.corpus().keys()).all()


def test_fingerprint_follows_the_status_file_and_splits_follow_the_hash(status, tmp_path):
    cfg = DebianConfig(status=str(status), fractions=(0.5, 0.5, 0.0))
    df, stats = build(cfg)
    again, _ = build(cfg)
    pd.testing.assert_frame_equal(df, again)
    other = tmp_path / "status2"
    other.write_text(
        status.read_text() + "\n" + stanza("newtool", "a tool installed later", LONG.replace("schema", "grammar"))
    )
    more, more_stats = build(DebianConfig(status=str(other), fractions=(0.5, 0.5, 0.0)))
    assert more_stats["key"] != stats["key"] and len(more) == len(df) + 1
    # a new package never moves another one to a different split
    merged = more.merge(df, on="id", suffixes=("", "_before"))
    assert (merged["split"] == merged["split_before"]).all()


def test_bad_status_files_and_options_name_the_file_line_or_option(tmp_path):
    bad = tmp_path / "status"
    bad.write_text("Package: a\nDescription: one two\n broken\n\nPackage: b\nthis line has no colon\n")
    with pytest.raises(DataError, match=rf"{bad}:6: not a 'Field: value' line"):
        read_status(bad)
    with pytest.raises(DataError, match=r"cannot read the dpkg status file"):
        read_status(tmp_path / "missing")
    with pytest.raises(DataError, match=r"embedded:debian\?colour=red: unknown option 'colour'"):
        parse_spec("embedded:debian?colour=red")
    with pytest.raises(DataError, match="bad value for 'status'"):
        parse_spec("embedded:debian?status=")
    with pytest.raises(DataError, match=r"unknown embedded collection 'debain' \(docs, docs-ood, meta, debian\)"):
        load_dataset("embedded:debian".replace("debian", "debain"))


@pytest.mark.skipif(not Path(STATUS).is_file(), reason="not a Debian system")
def test_this_machines_packages_share_no_text_with_embedded_meta():
    ds = load_dataset("embedded:debian")
    meta = load_dataset("embedded:meta").table
    t = ds.table
    assert len(t) >= 50 and ds.build_stats["splits"]["train"] > ds.build_stats["splits"]["dev"] > 0
    assert not set(t["query"].str.lower()) & set(meta["query"].str.lower())
    assert not set(t["doc"]) & set(meta["doc"])
    assert len(t) == ds.build_stats["pairs"]


def test_mix_prefixes_ids_and_joins_splits(status, tmp_path):
    from tests.test_train import write_beir

    beir = write_beir(tmp_path / "beir", n_train=6, n_dev=3)
    spec = f"mix:{beir}+embedded:debian?status={status}&fractions=1,0,0"
    mix = load_dataset(spec)
    first, deb = load_dataset(str(beir)), load_dataset(f"embedded:debian?status={status}&fractions=1,0,0")
    assert isinstance(mix, MixedDataset) and mix.splits == ("dev", "test", "train")
    assert mix.corpus() == {**first.corpus(), **{"1:" + k: v for k, v in deb.corpus().items()}}
    assert mix.queries("dev") == first.queries("dev")
    assert mix.queries("train") == {**first.queries("train"), **{"1:" + k: v for k, v in deb.queries("train").items()}}
    q = mix.qrels("train")
    assert set(q["query_id"]) == set(mix.queries("train")) and q["doc_id"].isin(mix.corpus().keys()).all()
    assert mix.fingerprint() != MixedDataset([first, first]).fingerprint()
    for bad in ("mix:embedded:docs", "mix:embedded:docs+", f"mix:{beir}+mix:{beir}+{beir}"):
        with pytest.raises(DataError, match="a mix"):
            load_dataset(bad)


def test_training_on_a_mix_draws_from_every_part_and_validates_on_the_first(status, tmp_path, monkeypatch):
    from mice.models.testing import tiny_cross_encoder
    from mice.train import Trainer, preset
    from tests.test_train import write_beir

    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    beir = str(write_beir(tmp_path / "beir", n_train=8, n_dev=4))
    model = str(tiny_cross_encoder(tmp_path / "student", num_layers=2, seed=0))
    spec = f"mix:{beir}+embedded:debian?status={status}&fractions=1,0,0"
    cfg = preset(
        "tiny",
        "cross-encoder",
        model=model,
        dataset=spec,
        dev_dataset=beir,
        output=str(tmp_path / "out"),
        max_steps=6,
        batch_size=2,
        teacher=None,
        distill_weight=0.0,
    )
    trainer = Trainer(cfg, quiet=True)
    result = trainer.train()
    assert result.steps == 6
    qids = set(trainer.pool.query_ids)
    deb = {q for q in qids if q.startswith("1:")}
    # a query stays out only when BM25 finds no negative for it (warned)
    assert deb <= {"1:confcheck", "1:listtool", "1:python3-zzz-not-installed"} and deb
    assert qids <= set(load_dataset(spec).queries("train")) and len(qids - deb) >= 6
    drawn = {g.query_id for step in range(6) for g in trainer.sampler.batch(step, 2)}
    assert drawn & deb and drawn - deb
    assert {q for q, *_ in trainer.dev["pairs"]} <= set(load_dataset(beir).queries("dev"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"] == spec
    assert "config.mix_alpha" not in trainer.identity()  # the default keeps the identities written before it
    # drawing the parts otherwise is another job: resuming this checkpoint under it is refused, naming the field
    from mice.errors import IdentityError

    with pytest.raises(IdentityError, match="mix_alpha"):
        Trainer(cfg.updated({"mix_alpha": 0.0, "resume": True, "max_steps": 8}), quiet=True).train()


def test_mix_alpha_draws_parts_by_weight_statelessly_and_alpha_1_changes_nothing(status, tmp_path, monkeypatch):
    """Temperature sampling over a mix's parts: shares ∝ n_s ** alpha per cycle, each part walking through all
    its queries once per epoch; alpha = 1 draws exactly the groups it drew before the option existed."""
    from collections import Counter

    from mice.train.config import ConfigError, TrainConfig
    from mice.train.samples import GroupSampler, TrainingPool, pool_from_dataset
    from tests.test_train import write_beir

    assert GroupSampler.cycle([3809, 673], 1.0, 100)[2] == [85, 15]
    assert GroupSampler.cycle([3809, 673], 0.5, 100)[2] == [70, 30]
    assert GroupSampler.cycle([3809, 673], 0.0, 100)[2] == [50, 50]
    assert GroupSampler.cycle([10_000, 1, 1], 1.0, 100)[2] == [98, 1, 1]  # every part at least once a cycle
    order, rank, counts = GroupSampler.cycle([9, 3], 0.0, 10)
    assert order == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1] and rank == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # spread, not blocks

    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    beir = str(write_beir(tmp_path / "beir", n_train=12, n_dev=3))
    pool = pool_from_dataset(load_dataset(f"mix:{beir}+embedded:debian?status={status}&fractions=1,0,0"), "train", 20)
    assert set(pool.parts.values()) == {0, 1} and all((q.startswith("1:")) == (p == 1) for q, p in pool.parts.items())
    n = Counter(pool.parts[q] for q in pool.query_ids)
    one = TrainingPool(pool.queries, pool.positives, pool.candidates, pool.corpus)  # the same pool, not a mix
    for g, h in zip(GroupSampler(pool, 3, 7, 1.0).batch(0, 40), GroupSampler(one, 3, 7).batch(0, 40)):
        assert (g.query_id, g.doc_ids) == (h.query_id, h.doc_ids)
    equal = GroupSampler(pool, 3, 7, 0.0)
    ids = [equal.query_id(i) for i in range(20 * equal.CYCLE)]
    assert Counter(pool.parts[q] for q in ids) == {0: 1000, 1: 1000}
    for part in (0, 1):  # each epoch of a part holds each of its queries once
        drawn = [q for q in ids if pool.parts[q] == part]
        for e in range(3):
            assert sorted(drawn[e * n[part] : (e + 1) * n[part]]) == sorted(
                q for q in pool.query_ids if pool.parts[q] == part
            )
    again = GroupSampler(pool, 3, 7, 0.0)
    assert [again.group(i).doc_ids for i in (1999, 5, 700)] == [equal.group(i).doc_ids for i in (1999, 5, 700)]
    assert equal.mixed and not GroupSampler(pool, 3, 7, 1.0).mixed and not GroupSampler(one, 3, 7, 0.0).mixed
    with pytest.raises(ConfigError, match="mix_alpha"):
        TrainConfig(mix_alpha=1.5).validate()


def test_cli_data_info_shows_the_debian_build(status):
    from typer.testing import CliRunner

    from mice.cli import app

    result = CliRunner().invoke(app, ["data", "info", f"embedded:debian?status={status}", "--examples", "1"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "installed Debian packages: 7" in out and "2 installed Python distributions' Debian packages" in out
