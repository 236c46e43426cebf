"""models/weight_processing.py and HookedTransformer.from_pretrained: weight processing as
TransformerLens does it at load, checked by value against TransformerLens's TransformerBridge in
compatibility mode (its own `ProcessWeights` run on the same Hugging Face weights): the processed
weights (TransformerLens's stacked views), the logits and hook activations; processed and raw
models give the same log-probabilities; direct logit attribution adds up to the logit difference."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import padded_ids, tl_bridge

import models
from models import HookedTransformer, InputError

TOL = 1e-4
# The hook activations compared with TransformerLens after processing.
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "ln_final.hook_normalized"]
VIEWS = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out", "W_gate",
         "W_E", "W_U", "b_U"]
PROCESSED = ["gpt2", "llama", "qwen2", "neox", "neox_seq"]


def processed(path, **flags) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RMSNorm models: "center_writing_weights skipped"
        return HookedTransformer.from_pretrained(str(path), **flags)


def log_probs(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, attention_mask=mask).log_softmax(-1)


def their_view(bridge, name: str) -> torch.Tensor | None:
    """TransformerLens's stacked view, None where the bridge has none (a bias-free projection)."""
    try:
        view = getattr(bridge, name)
    except AttributeError:
        return None
    if view is not None and name in ("W_K", "W_V", "b_K", "b_V"):
        # The bridge stacks the kv heads; HookedTransformer (and we) repeat them per query head.
        view = view.repeat_interleave(bridge.cfg.n_heads // view.shape[1], dim=1)
    return view


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_processing_matches_transformerlens(family, hf_checkpoints):
    """With TransformerLens's defaults, the stacked weights, logits and hooks equal the
    bridge's after `enable_compatibility_mode()` on the same weights."""
    path = hf_checkpoints[family][0]
    bridge = tl_bridge(path)
    bridge.enable_compatibility_mode(disable_warnings=True)
    ours = processed(path)
    ids = padded_ids(ours.cfg.d_vocab)
    with torch.no_grad():
        their_logits, theirs = bridge.run_with_cache(ids)
        our_logits, cache = ours.run_with_cache(ids)
    assert (our_logits - their_logits).abs().max() < TOL
    for name in HOOKS:
        assert (cache[name] - theirs[name]).abs().max() < TOL, name
    for name in VIEWS:
        mine, ref = getattr(ours, name), their_view(bridge, name)
        if mine is None or ref is None:
            # No gate (non-gated MLP) on both sides; a bias the checkpoint lacks reads as zeros here.
            assert (mine is None) == (name == "W_gate" and not ours.cfg.gated_mlp), name
            assert mine is None or not mine.any(), name
            continue
        assert mine.shape == ref.shape, (name, mine.shape, ref.shape)
        assert (mine - ref).abs().max() < TOL, name
    if family == "gpt2":
        assert (ours.W_pos - bridge.W_pos).abs().max() < TOL
        assert (ours.W_E_pos - bridge.W_E_pos).abs().max() < TOL


@pytest.mark.parametrize("family", PROCESSED)
def test_processed_and_raw_give_the_same_log_probs(family, hf_checkpoints, tmp_path):
    """Every flag on, on a padded batch: the log-probabilities of real tokens are unchanged;
    the config says what was done, and a saved processed model loads back the same."""
    path = hf_checkpoints[family][0]
    raw = HookedTransformer.from_pretrained_no_processing(str(path))
    ours = processed(path)
    ids, mask = padded_ids(raw.cfg.d_vocab, with_mask=True)
    real = mask.bool()
    assert (log_probs(ours, ids, mask) - log_probs(raw, ids, mask))[real].abs().max() < TOL
    rms = raw.cfg.norm == "rmsnorm"
    assert raw.cfg.normalization_type == ("RMS" if rms else "LN")
    assert ours.cfg.normalization_type == ("RMSPre" if rms else "LNPre")
    assert ours.cfg.extra["weight_processing"]["fold_ln"]
    assert ours.cfg.extra["weight_processing"]["center_writing_weights"] is not rms
    assert "ln_final.w" not in ours.state_dict() and "blocks.0.ln1.w" not in ours.state_dict()
    reloaded = models.load(models.save(ours, tmp_path / "processed"))
    assert (log_probs(reloaded, ids, mask) - log_probs(ours, ids, mask))[real].abs().max() < 1e-6


def test_each_step_alone_keeps_the_log_probs(hf_checkpoints):
    """Each flag on its own (and fold_value_biases on grouped-query Qwen2's q/k/v biases)."""
    for family in ("gpt2", "qwen2"):
        path = hf_checkpoints[family][0]
        raw = HookedTransformer.from_pretrained_no_processing(str(path))
        ids = padded_ids(raw.cfg.d_vocab)
        for flag in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
            flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
            one = processed(path, **{**flags, flag: True})
            assert (log_probs(one, ids) - log_probs(raw, ids)).abs().max() < TOL, (family, flag)
        folded = processed(path, fold_ln=False, center_writing_weights=False, center_unembed=False)
        assert not folded.b_V.any() and folded.b_O.any()


def test_stacked_views_are_the_blocks_weights(hf_checkpoints):
    """Unprocessed Llama (grouped-query: 4 query heads, 2 kv heads): the shapes TransformerLens
    gives, W_K per query head with query head h reading kv head h // 2, _W_K the stored kv heads,
    and the views equal the bridge's without processing."""
    path = hf_checkpoints["llama"][0]
    raw = HookedTransformer.from_pretrained_no_processing(str(path))
    cfg = raw.cfg
    L, h, m, d, f = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    shapes = {"W_Q": (L, h, m, d), "W_K": (L, h, m, d), "W_V": (L, h, m, d), "W_O": (L, h, d, m), "b_Q": (L, h, d),
              "b_O": (L, m), "W_in": (L, m, f), "W_gate": (L, m, f), "W_out": (L, f, m), "b_in": (L, f),
              "b_out": (L, m), "W_E": (cfg.d_vocab, m), "W_U": (m, cfg.d_vocab), "b_U": (cfg.d_vocab,)}
    for name, shape in shapes.items():
        assert tuple(getattr(raw, name).shape) == shape, name
    attn = raw.blocks[1].attn
    assert tuple(attn._W_K.shape) == (cfg.n_kv_heads, m, d)
    assert torch.equal(attn.W_K[3], attn._W_K[1]) and torch.equal(attn.W_V[2], attn._W_V[1])
    assert torch.equal(raw.blocks[0].mlp.W_in, raw.W_in[0])
    bridge = tl_bridge(path)
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_E", "W_U"):
        assert (getattr(raw, name) - their_view(bridge, name)).abs().max() < 1e-6, name
    assert (cfg.n_key_value_heads, cfg.positional_embedding_type, cfg.eps, cfg.d_vocab_out) == (2, "rotary", 1e-6, 64)
    assert (cfg.device, cfg.dtype) == ("cpu", torch.float32)
    assert raw.to(torch.float64).cfg.dtype == torch.float64
    gpt2 = HookedTransformer.from_pretrained_no_processing(str(hf_checkpoints["gpt2"][0]))
    assert gpt2.cfg.n_key_value_heads is None and gpt2.cfg.positional_embedding_type == "standard"
    assert tuple(gpt2.W_E_pos.shape) == (gpt2.cfg.d_vocab + gpt2.cfg.n_ctx, gpt2.cfg.d_model)
    with pytest.raises(AttributeError):
        raw.W_pos  # noqa: B018  (rotary: no position table)


def test_direct_logit_attribution_adds_up_after_processing(hf_checkpoints):
    """GPT-2 after fold_ln + center_writing_weights + center_unembed: the residual stream's
    components (embed, pos_embed, each layer's attn_out and mlp_out) sum to a mean-zero stream;
    divided by ln_final's scale and projected on W_U[:, a] - W_U[:, b], plus b_U[a] - b_U[b] (the
    folded final-LN bias), they give logits[a] - logits[b] at the last position."""
    model = processed(hf_checkpoints["gpt2"][0])
    ids = padded_ids(model.cfg.d_vocab)
    a, b = 7, 11
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    parts = [cache["hook_embed"], cache["hook_pos_embed"]] + [
        cache[f"blocks.{layer}.hook_{kind}_out"] for layer in range(model.cfg.n_layers) for kind in ("attn", "mlp")]
    resid = torch.stack(parts)[:, :, -1]  # [component, batch, m] at the last position
    assert (resid.sum(0) - cache["blocks.1.hook_resid_post"][:, -1]).abs().max() < TOL
    assert resid.mean(-1).abs().max() < 1e-5  # every component writes a mean-zero vector
    scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
    direction = model.W_U[:, a] - model.W_U[:, b]  # [m]
    attributed = (resid / scale) @ direction  # [component, batch]
    expected = logits[:, -1, a] - logits[:, -1, b]
    assert (attributed.sum(0) + model.b_U[a] - model.b_U[b] - expected).abs().max() < TOL


def test_refactor_factored_attn_matrices(hf_checkpoints):
    """GPT-2: the refactored model gives TransformerLens's logits and W_QK, W_OV per head; W_O
    becomes orthonormal per head. Rotary and grouped-query models are refused."""
    path = hf_checkpoints["gpt2"][0]
    ours = processed(path, refactor_factored_attn_matrices=True)
    raw = HookedTransformer.from_pretrained_no_processing(str(path))
    bridge = tl_bridge(path)
    bridge.enable_compatibility_mode(disable_warnings=True, refactor_factored_attn_matrices=True)
    ids = padded_ids(raw.cfg.d_vocab)
    with torch.no_grad():
        assert (ours(ids) - bridge(ids)).abs().max() < TOL
    assert (log_probs(ours, ids) - log_probs(raw, ids)).abs().max() < TOL
    qk, their_qk = ours.W_Q @ ours.W_K.transpose(-1, -2), bridge.W_Q @ bridge.W_K.transpose(-1, -2)
    assert (qk - their_qk).abs().max() < TOL
    assert (ours.W_V @ ours.W_O - bridge.W_V @ bridge.W_O).abs().max() < TOL
    eye = torch.eye(ours.cfg.d_head)
    assert (ours.W_O @ ours.W_O.transpose(-1, -2) - eye).abs().max() < 1e-5
    for family in ("llama", "neox"):
        with pytest.raises(InputError, match="rotary"):
            processed(hf_checkpoints[family][0], refactor_factored_attn_matrices=True)


def test_steps_a_model_cannot_take_are_skipped_with_a_warning(hf_checkpoints):
    """As TransformerLens: no centring of writing weights under RMSNorm, no folding or
    centring of post-norm BERT (its value biases still fold); the outputs stay the same."""
    with pytest.warns(UserWarning, match="center_writing_weights skipped: RMSNorm"):
        HookedTransformer.from_pretrained(str(hf_checkpoints["llama"][0]))
    path = hf_checkpoints["bert"][0]
    raw = models.load(path)
    with pytest.warns(UserWarning, match="fold_ln skipped: post-norm"):
        bert = HookedTransformer.from_pretrained(str(path))
    assert bert.cfg.normalization_type == "LN"
    assert bert.cfg.extra["weight_processing"] == {"fold_ln": False, "center_writing_weights": False,
                                                   "center_unembed": False, "fold_value_biases": True}
    ids = padded_ids(raw.cfg.d_vocab)
    with torch.no_grad():
        assert (bert(ids) - raw(ids)).abs().max() < TOL


def test_processing_twice_changes_nothing(hf_checkpoints):
    """process_weights_ on an already processed model (a re-run notebook cell) is a no-op."""
    model = processed(hf_checkpoints["gpt2"][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.process_weights_()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all((before[k] - after[k]).abs().max() < 1e-6 for k in before)
