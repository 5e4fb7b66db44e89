"""Parity tests: the hooked cross-encoder must equal plain Hugging Face, and hooks must equal masks."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from mice import HookedCrossEncoder, InteractionMask
from mice.models.hooked import knockout_hooks
from parity_checks import PAIRS, assert_hook_equals_mask
from mice.segments import SEG

FAMILIES = ["bert", "electra", "roberta"]


def hf_logits(folder, batch):
    hf = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        return hf(**kw).logits[:, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_equals_plain_hf_on_padded_batch(tiny_models, family):
    model = HookedCrossEncoder.from_pretrained(tiny_models[family])
    batch = model.tokenize(PAIRS)
    assert (batch["attention_mask"] == 0).any()  # mixed lengths: padding is really exercised
    with torch.no_grad():
        ours = model(batch)
    ref = hf_logits(tiny_models[family], batch)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # mask 'none' is the unmasked model
    with torch.no_grad():
        assert torch.allclose(model(batch, mask=InteractionMask.from_preset("none", model.n_layers)), ref, atol=1e-5)
    # the HF forward itself, going through our registered attention and mask functions
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        assert torch.allclose(model.model(**kw).logits[:, 0], ref, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["renorm", "zero"])
@pytest.mark.parametrize("preset", ["mask2", "mask3:k=2", "prettr:k=1", "sparse_ce"])
def test_knockout_by_hook_equals_knockout_by_mask(tiny_models, family, mode, preset):
    assert_hook_equals_mask(tiny_models[family], PAIRS, preset, mode)


def test_hand_written_hook_knockout_equals_mask(tiny_bert):
    """A user's own `(tensor, hook) -> tensor` removing q->d in layer 1 equals the one-rule mask."""
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    seg = batch["segment_ids"]
    qd = (seg[:, :, None] == SEG["q"]) & (seg[:, None, :] == SEG["d"])

    def remove_q_to_d(scores, hook):
        return scores.masked_fill(qd[:, None], float("-inf"))

    mask = InteractionMask.full(model.n_layers).with_blocked("q->d", [1])
    with torch.no_grad():
        a = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_attn_scores", remove_q_to_d)])
        b = model(batch, mask=mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_knockout_of_one_head_only(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    mask = InteractionMask.from_preset("mask2", model.n_layers)
    with torch.no_grad():
        clean = model(batch)
        all_heads = model.run_with_hooks(batch, fwd_hooks=knockout_hooks(model, batch, mask, "renorm"))
        one_head = model.run_with_hooks(batch, fwd_hooks=knockout_hooks(model, batch, mask, "renorm", heads=[0]))
    assert not torch.allclose(one_head, clean, atol=1e-5)
    assert not torch.allclose(one_head, all_heads, atol=1e-5)


def test_run_layers_resumes_from_cached_stream(tiny_bert):
    """Sweeps reuse the clean stream at layer l: resuming there equals the full masked forward."""
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    mask = InteractionMask.full(model.n_layers).with_blocked(["d->q", "q->d"], [2])
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
        resumed = model.score_head(model.run_layers(cache["blocks.2.hook_resid_pre"], batch, 2, mask=mask))
        full = model(batch, mask=mask)
    assert torch.allclose(resumed, full, atol=1e-5)


def test_cache_names_and_shapes(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    _, cache = model.run_with_cache(batch)
    B, T = batch["input_ids"].shape
    H = model.n_heads
    assert cache["blocks.0.attn.hook_pattern"].shape == (B, H, T, T)
    assert cache["blocks.2.attn.hook_attn_scores"].shape == (B, H, T, T)
    assert cache["blocks.1.attn.hook_z"].shape[:3] == (B, T, H)
    pattern = cache["blocks.0.attn.hook_pattern"]
    valid = batch["attention_mask"].bool()
    assert torch.allclose(pattern.sum(-1)[valid[:, None].expand(-1, H, -1)], torch.tensor(1.0), atol=1e-5)
    assert float(pattern[~valid[:, None, None, :].expand(-1, H, T, -1)].abs().max()) == 0.0  # pad never attended


def test_zero_mode_leaves_blocked_weights_zero_and_rows_unnormalised(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    batch = model.tokenize(PAIRS)
    mask = InteractionMask.from_preset("mask2", model.n_layers)
    with model.using_mask(mask, mode="zero"):
        _, cache = model.run_with_cache(batch)
    p = cache["blocks.0.attn.hook_pattern"]
    allow = mask.compile(batch["segment_ids"], 0)[:, None]
    assert float(p.masked_select(~allow.expand_as(p)).abs().max()) == 0.0
    assert (p.sum(-1) < 0.999).any()  # not renormalised


def test_predict_rank_and_masks_as_context(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    scores = model.predict(PAIRS, batch_size=2)
    assert scores.shape == (5,) and scores.dtype == np.float32
    one_by_one = np.array([model.predict([p])[0] for p in PAIRS])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-5)  # batching/padding does not change scores
    docs = [d for _, d in PAIRS]
    ranked = model.rank("sort an array", docs, top_k=3, return_documents=True)
    assert len(ranked) == 3 and ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]
    assert ranked[0]["text"] == docs[ranked[0]["corpus_id"]]
    with model.using_mask("mask2"):
        masked = model.predict(PAIRS)
    np.testing.assert_allclose(masked, model.predict(PAIRS, mask="mask2"), atol=1e-6)
    np.testing.assert_allclose(model.predict(PAIRS), scores, atol=1e-6)  # context restored


def test_masked_training_gradients_are_finite(tiny_bert):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    model.model.train()
    scores = model(PAIRS, mask="mask3:k=2")
    scores.sum().backward()
    grads = [p.grad for p in model.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_save_pretrained_is_a_plain_hf_folder(tiny_bert, tmp_path):
    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    model.save_pretrained(tmp_path / "out")
    batch = model.tokenize(PAIRS)
    with torch.no_grad():
        ours = model(batch)
    assert torch.allclose(hf_logits(tmp_path / "out", batch), ours, atol=1e-5)


def test_mask_layer_mismatch_is_refused(tiny_bert):
    from mice.errors import MaskError

    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    with pytest.raises(MaskError, match="6 layers, the model has 3"):
        model.predict(PAIRS, mask=InteractionMask.from_preset("mask2", 6))


@pytest.mark.integration
def test_packaged_minilm_loads_offline_as_cross_encoder():
    from mice.models.backbone import packaged_model_path

    model = HookedCrossEncoder.from_pretrained("packaged:minilm")
    assert model.n_layers == 6 and model.n_heads == 12
    batch = model.tokenize(PAIRS)
    with torch.no_grad():
        ours = model(batch)
    hf = AutoModelForSequenceClassification.from_pretrained(
        packaged_model_path(), num_labels=1, attn_implementation="eager"
    ).eval()
    hf.classifier.load_state_dict(model.model.classifier.state_dict())  # same fresh head on both
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ref = hf(**kw).logits[:, 0]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_load_reapplies_the_mask_a_model_was_trained_under(tiny_bert, tmp_path):
    from mice.models.loader import MASK_KEY, load

    model = HookedCrossEncoder.from_pretrained(tiny_bert)
    mask = InteractionMask.from_preset("mask3", model.n_layers, k=1)
    setattr(model.model.config, MASK_KEY, mask.to_dict())
    model.save_pretrained(tmp_path / "masked")
    loaded = load(tmp_path / "masked")
    np.testing.assert_allclose(loaded.predict(PAIRS), model.predict(PAIRS, mask=mask), atol=1e-6)
    assert np.abs(loaded.predict(PAIRS) - model.predict(PAIRS)).max() > 1e-3
    np.testing.assert_allclose(
        load(tmp_path / "masked", mask="none").predict(PAIRS), model.predict(PAIRS), atol=1e-6
    )  # an explicit mask wins
