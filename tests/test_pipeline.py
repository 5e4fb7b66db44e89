import pytest

from mice.app.pipeline import PARTIAL, Pipeline


def test_stage_runs_once_and_is_reused(tmp_path):
    calls = []

    def stage(folder):
        calls.append(1)
        (folder / "out.txt").write_text("hello")
        return {"n": 1}

    p = Pipeline(tmp_path)
    assert p.run("a", stage) == {"n": 1}
    assert (tmp_path / "a" / "out.txt").read_text() == "hello"
    p2 = Pipeline(tmp_path)
    assert p2.run("a", stage) == {"n": 1}
    assert len(calls) == 1 and p2.results[0].cached


def test_interrupted_stage_leaves_no_artefact_and_resumes(tmp_path):
    seen = []

    def stage(folder):
        seen.append(sorted(p.name for p in folder.iterdir() if p.name != PARTIAL))
        if not (folder / "half.txt").exists():
            (folder / "half.txt").write_text("half")
            raise KeyboardInterrupt
        (folder / "done.txt").write_text("done")

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path).run("b", stage)
    assert not (tmp_path / "b").exists()  # nothing under the real name
    Pipeline(tmp_path).run("b", stage)  # the rerun continues from the kept work folder
    assert seen == [[], ["half.txt"]]
    assert (tmp_path / "b" / "done.txt").exists() and not (tmp_path / ".b.partial").exists()


def test_changed_fingerprint_reruns(tmp_path):
    calls = []
    Pipeline(tmp_path, fingerprint={"preset": "quick"}).run("c", lambda f: calls.append(1))
    Pipeline(tmp_path, fingerprint={"preset": "full"}).run("c", lambda f: calls.append(1))
    assert len(calls) == 2


def test_keys_with_tuples_still_match_after_a_round_trip_through_json(tmp_path):
    calls = []
    for _ in range(2):
        Pipeline(tmp_path).run("d", lambda f: calls.append(1), key={"doc_lens": (128, 512)})
    assert len(calls) == 1


def test_a_resumed_stage_counts_every_attempts_time(tmp_path):
    import json
    import time

    def stage(folder):
        time.sleep(0.3)
        if not (folder / "half.txt").exists():
            (folder / "half.txt").write_text("half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path).run("e", stage)
    first = json.loads((tmp_path / ".e.partial" / PARTIAL).read_text())
    assert first["attempts"] == 1 and first["elapsed_s"] >= 0.3
    p = Pipeline(tmp_path)
    p.run("e", stage)
    info = json.loads((tmp_path / "e" / "stage.json").read_text())
    assert info["attempts"] == 2 and 0.3 <= info["seconds_last_attempt"] < info["seconds"]
    assert info["seconds"] >= first["elapsed_s"] + 0.3
    assert p.timings().loc[0, "attempts"] == 2


SLOW_STAGE = r"""
import sys, time
from pathlib import Path
from mice.app.pipeline import Pipeline

def stage(folder):
    if not (folder / "started").exists():
        (folder / "started").write_text("1")
        time.sleep(120)  # killed here

Pipeline(sys.argv[1], heartbeat_s=0.05).run("k", stage)
"""


def test_a_sigkilled_attempts_time_is_kept_by_the_heartbeat(tmp_path):
    import contextlib
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STAGE)
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], env=env, stderr=subprocess.PIPE)
    marker = tmp_path / "run" / ".k.partial" / PARTIAL
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        with contextlib.suppress(OSError, ValueError):  # not written yet
            if json.loads(marker.read_text()).get("elapsed_s", 0) >= 0.5:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(marker.read_text())["elapsed_s"]
    assert killed >= 0.5
    assert subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env).returncode == 0
    info = json.loads((tmp_path / "run" / "k" / "stage.json").read_text())
    assert info["attempts"] == 2 and info["seconds"] >= killed


def test_the_report_says_which_stages_took_several_attempts_and_which_did_not_count(tmp_path):
    import pandas as pd

    from mice.files import read_table, write_table
    from mice.app.report import report_markdown

    timings = pd.DataFrame(
        {
            "stage": ["a", "b", "c"],
            "seconds": [1.0, 5.0, 2.0],
            "cached": [True, False, True],
            "attempts": pd.array([1, 3, None], dtype="Int64"),
        }
    )
    write_table(timings, tmp_path / "timings.csv")
    md = report_markdown(tmp_path, env={}, timings=read_table(tmp_path / "timings.csv"))
    assert "| b | 5.0 | False | 3 |" in md and "| c | 2.0 | True |  |" in md
    assert "count the time of every attempt: b (3)." in md and "A blank `attempts`" in md
