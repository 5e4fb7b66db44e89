import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random cross-encoders of each family, built once per session: {family: folder}."""
    from mice.testing import tiny_cross_encoder

    root = tmp_path_factory.mktemp("tiny")
    return {f: tiny_cross_encoder(root / f, family=f, num_layers=3) for f in ("bert", "electra", "roberta")}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models):
    return tiny_models["bert"]
