import pytest

from mice.pipeline import PARTIAL, Pipeline


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
