"""Full disks, read-only outputs, outputs that are folders, hostile table cells and split names. Disk-full is a
real 64 KiB tmpfs (mounted here when the tests run as root; skipped otherwise), full at the start or with a page
or a few left so that the job's own files fill it mid-way; read-only a read-only remount of it. Every case goes
through the real `mice` entry point and ends in one `error:` line naming the path, exit 2; once space is freed,
every long job (rerank, sweep, train, index build, data export) resumes to the very files an uninterrupted run
of the same command writes."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
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


# pages left free before the job starts: one passes the write check and the job's own files fill the disk;
# more let it get further (a shard's data written but not its record, a model folder half-written)
MID_JOB = [("rerank", 1), ("export", 1), ("export", 2), ("train", 1), ("train", 4), ("index build", 1)]
MID_JOB += [("index build", 2), ("index build", 4), ("sweep", 4)]
RESUME = {"train": ["--resume"]}  # how the CLI resumes a job: train continues its checkpoint only when asked


@pytest.mark.parametrize("command,pages", MID_JOB)
def test_a_disk_that_fills_mid_job_is_one_line_and_resumes_once_space_is_freed(
    job, small_disk, tmp_path, command, pages
):
    """One `error:` line naming the disk, no temporary file left; once space is freed, the same command (train:
    with --resume) ends with the very files an uninterrupted run of it writes."""
    _fill(small_disk, leave=4096 * pages)
    argv = _argv(job, command, small_disk / "out")
    code, err = run_main(argv)
    assert_one_error(code, err, str(small_disk), "no space left", where=command)
    left = _left(small_disk)
    assert not any(p.startswith(".") and p.endswith(".tmp") for n in left for p in Path(n).parts), left
    if command == "sweep":  # the journal of finished units stays; no sidecar beside a missing table
        assert left <= {"out.csv.partial"}, left
    _grow(small_disk)
    code, err = run_main([*argv, *RESUME.get(command, [])])
    assert code in (0, None), err
    _set_aside(small_disk, tmp_path / "resumed")
    code, err = run_main(argv)  # uninterrupted, into the same place, now clean
    assert code in (0, None), err
    _same_outputs(tmp_path / "resumed", small_disk)


def test_training_that_fills_the_disk_mid_checkpoint_resumes_from_the_last_whole_one(job, small_disk, tmp_path):
    """A checkpoint every step; the disk holds best/ and step 1's last/, and fills while step 2's checkpoint is
    written: that one is not left half-written, and --resume continues step 1's to the very files an
    uninterrupted run writes."""
    import torch

    argv = [*_argv(job, "train", small_disk / "out"), "--set", "save_every=1"]
    _grow(small_disk, filler=False)
    code, err = run_main(argv)  # uninterrupted, first: how much room the run takes
    assert code in (0, None), err
    _set_aside(small_disk, tmp_path / "clean")
    whole = sum(f.stat().st_size for f in (tmp_path / "clean").rglob("*") if f.is_file())
    half = (tmp_path / "clean" / "out" / "last" / "model.safetensors").stat().st_size // 2
    subprocess.run(["mount", "-o", f"remount,size={whole + half}", str(small_disk)], check=True)
    code, err = run_main(argv)
    assert_one_error(code, err, str(small_disk), "no space left")
    assert sorted(p.name for p in (small_disk / "out").iterdir()) == [
        "best",
        "last",
        "train.log",
        "train_config.json",
        "train_log.csv",
    ]
    assert torch.load(small_disk / "out" / "last" / "trainer_state.pt", weights_only=True)["step"] == 1
    _grow(small_disk, filler=False)
    code, err = run_main([*argv, "--resume"])
    assert code in (0, None), err
    assert "resuming from" in (small_disk / "out" / "train.log").read_text()
    _set_aside(small_disk, tmp_path / "resumed")
    _same_outputs(tmp_path / "resumed", tmp_path / "clean")


def _grow(point: Path, filler: bool = True) -> None:
    """Free the space: drop the filler, and make the disk large enough for the whole output (a tiny model's
    best/ and last/ take about 18 MB)."""
    if filler:
        (point / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(point)], check=True)


def _set_aside(point: Path, aside: Path) -> None:
    """Move everything on the disk to `aside` (off it), so that the same command can run again into a clean
    folder: the same paths, hence the same paths inside what it writes."""
    aside.mkdir(parents=True)
    for p in point.iterdir():
        shutil.move(str(p), str(aside / p.name))


def _drop_keys(*keys):
    def drop(path: Path):
        obj = json.loads(path.read_text())
        for k in keys:
            obj.pop(k)
        return obj

    return drop


def _drop_columns(*columns):
    def drop(path: Path):
        rows = list(csv.reader(path.read_text().splitlines()))
        keep = [i for i, c in enumerate(rows[0]) if c not in columns]
        assert len(keep) == len(rows[0]) - len(columns), rows[0]
        return [[r[i] for i in keep] for r in rows]

    return drop


def _drop_state_keys(*keys):
    def drop(path: Path):
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        for k in keys:
            state.pop(k)
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    return drop


# What legitimately differs between two runs of one job, file by file: wall-clock times and speeds. Every other
# file is compared byte for byte (weights, configs, tokenizers, index shards and manifest, exported data, runs).
_VARIES = {
    "out.meta.json": _drop_keys("elapsed_s"),  # a sweep's wall time
    "summary.json": _drop_keys("wall_time_s", "this_session_s", "pairs_per_s"),  # training's times and speed
    "train_log.csv": _drop_columns("pairs_per_s", "elapsed_s"),  # likewise, per logged step
    "trainer_state.pt": _drop_state_keys("elapsed_s"),  # the training time so far (a resumed run adds to it)
}
_LOGS = ("train.log", "build.log")  # appended to by every attempt: `_same_log`
_TIMES = re.compile(r"\b\d+(\.\d+)? (pairs/)?s\b")  # "12 s", "0.5 s", "218.5 pairs/s"


def _same_log(resumed: Path, clean: Path) -> None:
    """Less the time stamp that opens each line and the durations and speeds in it, the uninterrupted run's lines
    are all in the resumed log, in order; any other line there is the notice that a run resumed, or a repeat
    of a line the uninterrupted run writes too (the failed attempt's, which a log keeps)."""

    def lines(path: Path) -> list[str]:
        return [_TIMES.sub("<t>", line.split(" ", 2)[2]) for line in path.read_text().splitlines()]

    ours, theirs = [x for x in lines(resumed) if not x.startswith("resuming from ")], lines(clean)
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    rest = iter(ours)
    assert all(line in rest for line in theirs), (ours, theirs)  # a subsequence


def _same_outputs(resumed: Path, clean: Path) -> None:
    """Every file the resumed job left equals the uninterrupted job's, byte for byte, but as `_VARIES` and
    `_LOGS` say."""
    files = sorted(str(p.relative_to(resumed)) for p in resumed.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(clean)) for p in clean.rglob("*") if p.is_file())
    for f in files:
        a, b, name = resumed / f, clean / f, Path(f).name
        if name in _LOGS:
            _same_log(a, b)
        elif name in _VARIES:
            assert _VARIES[name](a) == _VARIES[name](b), f
        else:
            assert a.read_bytes() == b.read_bytes(), f


def test_a_sweep_whose_tables_do_not_fit_leaves_none_of_them_and_resumes(job, small_disk, tmp_path):
    """Every knockout is journalled, then the disk fills while the three tables are written: none of them is left
    (no metadata or per-query file beside a missing table), and the rerun after freeing space writes them."""
    from ablations.sweep import sweep

    class Stop(Exception):
        pass

    argv = _argv(job, "sweep", small_disk / "out")[:-1]  # without --heads: three units

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
    _set_aside(small_disk, tmp_path / "resumed")
    assert run_main(argv)[0] in (0, None)  # uninterrupted, into the same place, now clean
    _same_outputs(tmp_path / "resumed", small_disk)


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
