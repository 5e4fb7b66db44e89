"""Model folders checked against their config before anything is scored: a layer count that disagrees with the
weights, missing, unexpected or mis-shaped tensors, a missing tokenizer, non-finite weights. Each is one
`ModelError` naming the file and the tensor, through the API and through `mice score`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mice.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


def _edit_weights(folder, edit):
    w = load_file(str(folder / "model.safetensors"))
    edit(w)
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _drop(name):
    return lambda w: w.pop(name)


def _nan(name):
    def edit(w):
        w[name] = w[name].clone()
        w[name].view(-1)[0] = float("nan")

    return edit


def _inf(name):
    def edit(w):
        w[name] = w[name].clone()
        w[name].view(-1)[-1] = float("inf")

    return edit


def _extra(w):
    w["bert.encoder.layer.0.attention.self.extra"] = torch.zeros(3)


def _reshape(name):
    def edit(w):
        w[name] = torch.zeros(w[name].shape[0] + 1, *w[name].shape[1:])

    return edit


def _no_tokenizer(folder):
    for f in ("tokenizer.json", "vocab.txt"):
        (folder / f).unlink()


CASES = {  # name -> (how the folder is damaged, what the error must name)
    "config says more layers": (lambda f: _edit_config(f, num_hidden_layers=5), ["config.json", "5", "3 layers"]),
    "config says fewer layers": (lambda f: _edit_config(f, num_hidden_layers=1), ["config.json", "1", "3 layers"]),
    "missing tensor": (
        lambda f: _edit_weights(f, _drop("bert.encoder.layer.2.output.dense.weight")),
        ["model.safetensors", "bert.encoder.layer.2.output.dense.weight", "missing"],
    ),
    "missing classifier": (
        lambda f: _edit_weights(f, _drop("classifier.weight")),
        ["model.safetensors", "classifier.weight", "missing"],
    ),
    "unexpected tensor": (lambda f: _edit_weights(f, _extra), ["model.safetensors", "attention.self.extra"]),
    "mis-shaped tensor": (
        lambda f: _edit_weights(f, _reshape("bert.encoder.layer.0.intermediate.dense.weight")),
        ["model.safetensors", "bert.encoder.layer.0.intermediate.dense.weight", "shape"],
    ),
    "no tokenizer": (_no_tokenizer, ["no tokenizer"]),
    "NaN classifier": (
        lambda f: _edit_weights(f, _nan("classifier.weight")),
        ["model.safetensors", "classifier.weight", "NaN"],
    ),
    "inf in a layer": (
        lambda f: _edit_weights(f, _inf("bert.encoder.layer.0.attention.self.query.weight")),
        ["model.safetensors", "bert.encoder.layer.0.attention.self.query.weight", "inf"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_folder_that_does_not_match_its_config_is_refused(tiny_bert, tmp_path, case):
    from mice.models.loader import load

    damage, names = CASES[case]
    folder = _copy(tiny_bert, tmp_path / "m")
    damage(folder)
    with pytest.raises(ModelError) as err:
        load(folder)
    for n in names:
        assert n in str(err.value), (case, str(err.value))
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("case", ["config says more layers", "missing tensor", "NaN classifier", "no tokenizer"])
def test_mice_score_refuses_them_in_one_line(tiny_bert, tmp_path, case):
    from cli_checks import assert_one_error
    from test_fuzz_inputs import run_main

    folder = _copy(tiny_bert, tmp_path / "m")
    CASES[case][0](folder)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sort an array\tReturn a sorted copy\n")
    code, err = run_main(["score", "--model", folder, pairs])
    assert_one_error(code, err, str(folder), where=case)


def test_an_intact_folder_and_a_bare_encoder_still_load(tiny_bert, tmp_path):
    from mice.models.loader import load

    assert load(tiny_bert).predict([("a", "b")]).shape == (1,)
    bare = _copy(tiny_bert, tmp_path / "bare")  # an encoder without a head: the head starts fresh, no error
    _edit_config(bare, architectures=["BertModel"])
    _edit_weights(bare, lambda w: [w.pop(k) for k in [k for k in w if k.startswith("classifier.")]])
    assert load(bare).predict([("a", "b")]).shape == (1,)
