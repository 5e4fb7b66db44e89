"""Atomic artefact writing: complete under the final name or absent, with ordinary file permissions."""

import os

import pandas as pd
import pytest

from mice.files import FILE_MODE, atomic_path, read_table, write_table, write_text_atomic


def test_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_artefacts_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    assert FILE_MODE == 0o666 & ~umask
    text = write_text_atomic(tmp_path / "a.json", "{}")
    table = write_table(pd.DataFrame({"x": [1, 2]}), tmp_path / "t.csv")
    for path in (text, table):
        assert os.stat(path).st_mode & 0o777 == FILE_MODE, oct(os.stat(path).st_mode)
    assert read_table(table)["x"].tolist() == [1, 2]
