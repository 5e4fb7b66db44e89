"""Full disks, read-only outputs, outputs that are folders, hostile table cells and split names. Disk-full is a
real 64 KiB tmpfs (mounted here when the tests run as root; skipped otherwise), read-only a read-only remount
of it. Every case goes through the real `mice` entry point and ends in one `error:` line naming the path, exit 2."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from cli_checks import assert_one_error
from test_data import write_beir_folder
from test_fuzz_inputs import run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _mount(point: Path, *opts: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *opts]), "tmpfs", str(point)],
                         capture_output=True)
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
    return {"model": tiny_bert, "data": folder, "run": run}


def _rerank(job, out):
    return ["rerank", "--model", job["model"], "--dataset", job["data"], "--run", job["run"], "--out", out, "--k", 3]


def _fill(point: Path) -> None:
    """Write until the file system is full (the last, partly buffered block fails on close)."""
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


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
    out = read_only / "out"
    argv = {"rerank": _rerank(job, out),
            "export": ["data", "export", job["data"], out],
            "train": ["train", "--preset", "tiny", "--model", job["model"], "--dataset", job["data"], "-o", out],
            "index build": ["index", "build", "--model", job["model"], "--dataset", job["data"], "--out", out,
                            "--arch", "1+1"],
            "sweep": ["ablate", "sweep", "--model", job["model"], "--dataset", job["data"], "--run", job["run"],
                      "--out", Path(str(out) + ".csv")]}[command]
    code, err = run_main(argv)
    assert_one_error(code, err, str(read_only), "read-only", where=command)


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


HOSTILE = ["mask2 ![k](/etc/hostname)", "<script>document.title='pwned'</script>", "[x](javascript:alert(1))",
           "a | b", "**bold** _it_ `code`", "&lt;b&gt;", "<img src=x onerror=alert(1)>", "line\nbreak"]


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
