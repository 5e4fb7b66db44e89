"""Every test session (tests/ and the notebooks under nbmake) keeps demo runs in a temporary folder of its own:
`$MICE_RUNS`, which `mice.app.demo.runs_root` reads. Tests never read or write the user's runs/."""

import os
import shutil
import tempfile

_made: list[str] = []


def pytest_configure(config):
    folder = tempfile.mkdtemp(prefix="mice-runs-")
    _made.append(folder)
    os.environ["MICE_RUNS"] = folder


def pytest_unconfigure(config):
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)
