"""Full disks, read-only outputs, outputs that are folders, hostile table cells and split names. Disk-full is a
real 64 KiB tmpfs (mounted here when the tests run as root; skipped otherwise), full at the start or with a page
or a few left so that the job's own files fill it mid-way; read-only a read-only remount of it. Every case goes
through the real `mice` entry point and ends in one `error:` line naming the path, exit 2; once space is freed, a
re-rank or sweep resumes to the very files an uninterrupted run writes."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_checks import assert_one_error
from test_data import write_beir_folder
from test_fuzz_inputs import run_main
from test_train import write_beir as write_train_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _mount(point: Path, *opts: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *opts]), "tmpfs", str(point)], capture_output=True
    )
    return res.returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    point = tmp_path / "disk"
    if not _mount(point):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture()
def read_only(tmp_path):
    point = tmp_path / "ro"
    if not _mount(point, "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture()
def job(tmp_path, tiny_bert):
    folder = write_beir_folder(tmp_path / "ds")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {r} {10 - r} bm25\n" for q in (1, 2, 3) for r, d in enumerate((1, 2, 3))))
    return {"model": tiny_bert, "data": folder, "run": run, "train_data": write_train_folder(tmp_path / "train")}


def _rerank(job, out):
    return ["rerank", "--model", job["model"], "--dataset", job["data"], "--run", job["run"], "--out", out, "--k", 3]


def _fill(point: Path, leave: int = 0) -> None:
    """Write until the file system is full, then give `leave` bytes back (whole 4 KiB pages on a tmpfs)."""
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        if leave:
            os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
        os.close(fd)


def _argv(job, command: str, out: Path) -> list:
    return {
        "rerank": _rerank(job, out),
        "export": ["data", "export", job["data"], out],
        "train": [
            "train",
            "--preset",
            "tiny",
            "--model",
            job["model"],
            "--dataset",
            job["train_data"],
            "-o",
            out,
            "--max-steps",
            2,
            "--set",
            "num_threads=1",
        ],
        "index build": [
            "index",
            "build",
            "--model",
            job["model"],
            "--dataset",
            job["data"],
            "--out",
            out,
            "--arch",
            "1+1",
        ],
        "sweep": [
            "ablate",
            "sweep",
            "--model",
            job["model"],
            "--dataset",
            job["data"],
            "--run",
            job["run"],
            "--out",
            Path(str(out) + ".csv"),
            "--k",
            3,
            "--heads",
        ],
    }[command]


def _left(point: Path) -> set[str]:
    """What a failed job left on the disk (the filler and hidden write probes aside)."""
    return {str(p.relative_to(point)) for p in point.rglob("*") if p.name != "filler"}


def test_rerank_on_a_full_disk_is_one_line_and_resumes_once_space_is_freed(job, small_disk, tmp_path):
    out = small_disk / "out.trec"
    _fill(small_disk)
    code, err = run_main(_rerank(job, out))
    line = assert_one_error(code, err, str(small_disk), "no space left")
    assert not out.exists(), line
    (small_disk / "filler").unlink()
    code, err = run_main(_rerank(job, out))
    assert code in (0, None), err
    clean = tmp_path / "clean.trec"
    assert run_main(_rerank(job, clean))[0] in (0, None)
    assert out.read_bytes() == clean.read_bytes()


@pytest.mark.parametrize("command", ["rerank", "export", "train", "index build", "sweep"])
def test_read_only_outputs_are_refused_before_any_work(job, read_only, command):
    code, err = run_main(_argv(job, command, read_only / "out"))
    assert_one_error(code, err, str(read_only), "read-only", where=command)


COMMANDS = ["rerank", "export", "train", "index build", "sweep"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_at_the_start_is_refused_before_any_work(job, small_disk, command):
    _fill(small_disk)
    code, err = run_main(_argv(job, command, small_disk / "out"))
    assert_one_error(code, err, str(small_disk), "no space left", where=command)
    assert _left(small_disk) == set(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_a_disk_that_fills_mid_job_is_one_line_naming_the_path(job, small_disk, tmp_path, command):
    """One free page passes the write check at the start; the job's own files then fill the disk."""
    _fill(small_disk, leave=4096 if command != "sweep" else 16384)
    code, err = run_main(_argv(job, command, small_disk / "out"))
    assert_one_error(code, err, str(small_disk), "no space left", where=command)
    left = _left(small_disk)
    assert not any(name.startswith(".") and name.endswith(".tmp") for name in left), left  # no temp files
    if command == "sweep":  # the journal of finished units stays; no sidecar beside a missing table
        assert left <= {"out.csv.partial"}, left
    if command in ("rerank", "sweep"):  # once space is freed, the job resumes to what an uninterrupted run writes
        _grow(small_disk)
        code, err = run_main(_argv(job, command, small_disk / "out"))
        assert code in (0, None), err
        clean = tmp_path / "clean"
        assert run_main(_argv(job, command, clean))[0] in (0, None)
        _same_outputs(small_disk, "out", clean.parent, "clean")


def _grow(point: Path) -> None:
    """Free the space: drop the filler, and make the disk large enough for the whole output."""
    (point / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=16m", str(point)], check=True)


def _same_outputs(folder: Path, name: str, clean_folder: Path, clean_name: str) -> None:
    """Every file of the job `name` equals the uninterrupted job's, byte for byte (a sweep's metadata up to its
    elapsed time, and the name of its per-query file)."""
    import json

    files = sorted(p.name for p in folder.iterdir() if p.name.startswith(name + "."))
    assert files == sorted(
        p.name.replace(clean_name, name, 1) for p in clean_folder.iterdir() if p.name.startswith(clean_name + ".")
    ), files
    for f in files:
        a, b = folder / f, clean_folder / f.replace(name, clean_name, 1)
        if f.endswith(".meta.json"):
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            for m in (ma, mb):
                m.pop("elapsed_s"), m.pop("per_query")
            assert ma == mb
        elif not f.endswith(".done.json"):  # a rerank receipt names its job, which names its output
            assert a.read_bytes() == b.read_bytes(), f


def test_a_sweep_whose_tables_do_not_fit_leaves_none_of_them_and_resumes(job, small_disk, tmp_path):
    """Every knockout is journalled, then the disk fills while the three tables are written: none of them is left
    (no metadata or per-query file beside a missing table), and the rerun after freeing space writes them."""
    from ablations.sweep import sweep

    class Stop(Exception):
        pass

    argv = _argv(job, "sweep", small_disk / "out")[:-1]  # without --heads: three units
    clean = tmp_path / "clean.csv"
    assert run_main([*argv[:-3], clean, "--k", 3])[0] in (0, None)

    def stop_after_last(done, total):
        if done == total:
            raise Stop()

    journal = tmp_path / "j" / "out.csv"
    with pytest.raises(Stop):  # the same job through the library: its journal holds every unit
        sweep(str(job["model"]), str(job["data"]), "test", str(job["run"]), 3, out=journal, callback=stop_after_last)
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)  # room for the journal
    shutil.copy(str(journal) + ".partial", small_disk / "out.csv.partial")
    _fill(small_disk, leave=8192)
    code, err = run_main(argv)
    assert_one_error(code, err, str(small_disk), "no space left")
    assert _left(small_disk) == {"out.csv.partial"}
    _grow(small_disk)
    assert run_main(argv)[0] in (0, None)
    _same_outputs(small_disk, "out", tmp_path, "clean")


def test_an_output_that_is_a_folder_is_refused_before_scoring(job, tmp_path):
    out = tmp_path / "a-folder.trec"
    out.mkdir()
    code, err = run_main(_rerank(job, out))
    assert_one_error(code, err, str(out), "is a folder")
    assert not list(tmp_path.glob("a-folder.trec.*"))


def test_export_refuses_a_split_name_that_leaves_the_folder(job, tmp_path):
    corpus, queries = job["data"] / "corpus.jsonl", job["data"] / "queries.jsonl"
    qrels = job["data"] / "qrels" / "test.tsv"
    out = tmp_path / "export" / "inside"
    for split in ("../../escaped", "a/b", "..", "x\\y"):
        spec = f"files:corpus={corpus},queries={queries},qrels={qrels},split={split}"
        code, err = run_main(["data", "export", spec, out])
        assert_one_error(code, err, "split name", where=split)
    assert not (tmp_path / "escaped.tsv").exists() and not list(tmp_path.rglob("escaped*"))


HOSTILE = [
    "mask2 ![k](/etc/hostname)",
    "<script>document.title='pwned'</script>",
    "[x](javascript:alert(1))",
    "a | b",
    "**bold** _it_ `code`",
    "&lt;b&gt;",
    "<img src=x onerror=alert(1)>",
    "line\nbreak",
]


def test_report_cells_are_escaped_and_nothing_outside_the_run_is_inlined(tmp_path):
    import pandas as pd

    from mice.app.report import _md
    from mice.viz.report import render_report_html

    table = _md(pd.DataFrame({"candidate": HOSTILE, "value": [1.0] * len(HOSTILE)}))
    page = render_report_html("# Report\n\n## Results\n\n" + table + "\n", tmp_path)
    main = page.split("<main", 1)[1]
    assert "data:" not in main and "<img" not in main and "<script>document" not in main
    assert 'href="javascript' not in main and "<strong>" not in main and "<em>" not in main
    import html

    for text in ("mask2 ![k](/etc/hostname)", "**bold** _it_ `code`", "<script>document.title='pwned'</script>"):
        assert text in html.unescape(main)  # the text itself is shown, as text
    outside = tmp_path.parent / "outside.png"
    outside.write_bytes(b"\x89PNG\r\n")
    from mice.errors import DataError

    with pytest.raises(DataError, match="outside the run folder"):
        render_report_html(f"# R\n\n![x]({outside})\n", tmp_path / "run")
    with pytest.raises(DataError, match="outside the run folder"):
        render_report_html("# R\n\n![x](../outside.png)\n", tmp_path)
