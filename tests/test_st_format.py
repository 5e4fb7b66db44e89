"""sentence-transformers cross-encoder folders (`mice.models.st_format`): saved by sentence-transformers' own classes
from tiny random encoders, scored by mice and by `sentence_transformers.CrossEncoder`, no mocks.

Scores are compared as logits: mice's `predict` returns the raw logit, sentence-transformers' applies the saved
`activation_fn` (Sigmoid for one label), so both are also checked in that form."""

import json
import shutil

import numpy as np
import pytest
import torch

from mice import HookedCrossEncoder
from mice.errors import ModelError
from mice.models.loader import load
from mice.models.testing import tiny_cross_encoder

from parity_checks import PAIRS

st = pytest.importorskip("sentence_transformers")
from sentence_transformers import CrossEncoder  # noqa: E402
from sentence_transformers.sentence_transformer.modules import (  # noqa: E402
    Dense,
    LayerNorm,
    Normalize,
    Pooling,
    Transformer,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5


def _bare_encoder(root, family: str, pooling: str = "cls", norm_bias: bool = True):
    """A tiny random bare encoder folder (`BertModel` / `ModernBertModel` + tokenizer), as the Transformer
    module of a modular cross-encoder saves it; `norm_bias=False` as the Ettin encoders are configured."""
    from transformers import AutoConfig, AutoModel

    src = tiny_cross_encoder(root / f"{family}-src", family=family, pooling=pooling)
    cfg = AutoConfig.from_pretrained(src)
    cfg.architectures = None
    if family == "modernbert":
        cfg.norm_bias = norm_bias
    torch.manual_seed(1)
    out = root / f"{family}-{pooling}-{norm_bias}-bare"
    AutoModel.from_config(cfg).save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def _modular(root, family: str, pooling: str = "cls", norm_bias: bool = True, head=None):
    """A modular CrossEncoder folder saved by sentence-transformers: Ettin's head on ModernBERT, BERT's pooler
    head on BERT, or the modules `head(H)` returns."""
    torch.manual_seed(2)
    t = Transformer(str(_bare_encoder(root, family, pooling, norm_bias)), transformer_task="feature-extraction")
    h = t.get_embedding_dimension()
    if head is not None:
        mods = head(h)
    elif family == "modernbert":
        mods = [
            Pooling(h, pooling),
            Dense(h, h, bias=False, activation_function=torch.nn.GELU()),
            LayerNorm(h),
            Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
        ]
    else:
        mods = [
            Pooling(h, "cls"),
            Dense(h, h, activation_function=torch.nn.Tanh()),
            Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
        ]
    with torch.no_grad():  # the random head must move scores well above the tolerance
        for m in mods:
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    out = root / f"{family}-{pooling}-{norm_bias}-modular"
    CrossEncoder(modules=[t, *mods], device="cpu").save_pretrained(str(out))
    return out


def _parity(folder) -> float:
    """Max |mice logit − sentence-transformers logit| over the mixed-length pairs (one padded batch); also
    checks ST's default predict is its activation of ours."""
    ours = np.asarray(HookedCrossEncoder.from_pretrained(folder).predict(PAIRS), dtype=np.float64)
    ce = CrossEncoder(str(folder), device="cpu")
    theirs = ce.predict(PAIRS, activation_fn=torch.nn.Identity())
    activated = ce.activation_fn(torch.tensor(ours)).numpy()
    assert np.abs(activated - ce.predict(PAIRS)).max() <= ATOL
    assert np.ptp(ours) > 1e-2  # scores differ between pairs: a wrong head could not pass by accident
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize(
    "family,pooling,norm_bias",
    [("modernbert", "cls", False), ("modernbert", "mean", False), ("modernbert", "cls", True), ("bert", "cls", True)],
)
def test_modular_folder_matches_sentence_transformers(tmp_path, family, pooling, norm_bias):
    folder = _modular(tmp_path, family, pooling, norm_bias)
    assert len(json.loads((folder / "modules.json").read_text())) > 1
    assert _parity(folder) <= ATOL


@pytest.mark.parametrize("family,pooling", [("bert", "cls"), ("modernbert", "cls"), ("modernbert", "mean")])
def test_plain_folder_saved_by_sentence_transformers(tmp_path, family, pooling):
    """`CrossEncoder(hf_classifier).save_pretrained`: modules.json with one sequence-classification Transformer;
    the root stays an HF `…ForSequenceClassification` folder."""
    src = tiny_cross_encoder(tmp_path / "src", family=family, pooling=pooling)
    out = tmp_path / "st"
    CrossEncoder(str(src), device="cpu").save_pretrained(str(out))
    assert len(json.loads((out / "modules.json").read_text())) == 1
    assert _parity(out) <= ATOL


def test_modular_model_saves_a_plain_hf_folder_and_feeds_mice(tmp_path):
    """What mice saves from a modular Ettin-like model reloads in plain HF with the same scores (the head's norm
    bias survives), and MICE built from the modular folder carries the sentence-transformers head."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    folder = _modular(tmp_path, "modernbert", "cls", norm_bias=False)
    model = HookedCrossEncoder.from_pretrained(folder)
    model.save_pretrained(tmp_path / "plain")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain", attn_implementation="eager").eval()
    batch = model.tokenize(PAIRS)
    with torch.no_grad():
        logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        assert (logits - model(batch)).abs().max() <= ATOL
    mice = load(folder, arch="1+1")
    scores = load_file(str(folder / "4_Dense" / "model.safetensors"))
    assert torch.equal(mice.backbone.classifier.weight, scores["linear.weight"])


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unsupported_stacks_are_one_line_errors(tmp_path):
    def no_norm(h):
        return [Pooling(h, "cls"), Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores")]

    def normalize(h):
        return [
            Pooling(h, "cls"),
            Dense(h, h, activation_function=torch.nn.Tanh()),
            Normalize(),
            Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
        ]

    def sigmoid_scores(h):
        return [
            Pooling(h, "cls"),
            Dense(h, h, activation_function=torch.nn.GELU()),
            LayerNorm(h),
            Dense(h, 1, activation_function=torch.nn.Sigmoid(), module_output_name="scores"),
        ]

    folder = _modular(tmp_path / "a", "modernbert", head=no_norm)
    with pytest.raises(ModelError) as err:
        load(folder)
    assert "modules.json" in _one_line(err) and "Pooling → Dense" in _one_line(err)

    folder = _modular(tmp_path / "b", "bert", head=normalize)
    with pytest.raises(ModelError) as err:
        load(folder)
    assert "modules.json" in _one_line(err) and "Normalize" in _one_line(err)

    folder = _modular(tmp_path / "c", "modernbert", head=sigmoid_scores)
    with pytest.raises(ModelError) as err:
        load(folder)
    assert "4_Dense" in _one_line(err) and "Sigmoid" in _one_line(err)


def test_settings_mice_cannot_reproduce_are_refused(tmp_path):
    folder = _modular(tmp_path, "bert")
    cfg = folder / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**data, "prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    with pytest.raises(ModelError) as err:
        load(folder)
    assert "config_sentence_transformers.json" in _one_line(err) and "prompt" in _one_line(err)


def test_hub_name_resolves_to_the_cached_snapshot_with_its_modules(tmp_path, monkeypatch):
    """A hub name of a modular repo loads from the HF cache's snapshot (root + module folders), offline here:
    the cache is laid out as huggingface_hub writes it."""
    import huggingface_hub.constants

    from mice.models.st_format import local_folder

    folder = _modular(tmp_path, "modernbert", "cls", norm_bias=False)
    repo = tmp_path / "hub" / "models--cross-encoder--tiny-modular"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert local_folder("cross-encoder/tiny-modular") == str(repo / "snapshots" / "0123abcd")
    ours = np.asarray(load("cross-encoder/tiny-modular").predict(PAIRS))
    theirs = CrossEncoder(str(folder), device="cpu").predict(PAIRS, activation_fn=torch.nn.Identity())
    assert np.abs(ours - theirs).max() <= ATOL
