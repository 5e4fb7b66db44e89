import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test (and every process it starts) uses a cache of its own, never the user's `~/.cache/mice` or
    a `MICE_CACHE` set outside: BM25 indexes, teacher scores and embedded corpora are built under tmp."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("mice-cache")
    mp.setenv("MICE_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random cross-encoders of each family, built once per session: {family: folder}."""
    from mice.models.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("tiny")
    return {f: tiny_cross_encoder(root / f, family=f, num_layers=3) for f in ("bert", "electra", "roberta")}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models):
    return tiny_models["bert"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when other processes share the cores.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted-mechanism model and its dataset/run (ablations.planted): (folder, dataset, run)."""
    from ablations.planted import planted_dataset, planted_model

    folder = planted_model(tmp_path_factory.mktemp("planted") / "model")
    ds, run = planted_dataset()
    return folder, ds, run
