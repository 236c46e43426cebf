"""Hook values agree with TransformerLens's `TransformerBridge` on the same GPT-2 weights
(raw weights: no layer-norm folding or centring, which would change the values)."""

from __future__ import annotations

import pytest
import torch

import models

# Every TransformerLens name our GPT-2 exposes that the bridge exposes too.
SHARED = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"] + [
    f"blocks.{layer}.{n}" for layer in range(2) for n in (
        "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
        "ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized",
        "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_attn_scores", "attn.hook_pattern",
        "mlp.hook_pre", "mlp.hook_post")
]


@pytest.fixture(scope="module")
def bridge_and_ours(hf_checkpoints):
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    transformers.utils.logging.disable_progress_bar()
    path = hf_checkpoints["gpt2"][0]
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
    return bridge, models.load(path)


def test_hook_values_match_transformer_bridge(bridge_and_ours):
    bridge, ours = bridge_and_ours
    ids = torch.randint(6, ours.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        their_logits, theirs = bridge.run_with_cache(ids)
        our_logits, cache = ours.run_with_cache(ids)
    assert (our_logits - their_logits).abs().max() < 1e-4
    assert set(SHARED) <= set(cache), set(SHARED) - set(cache)
    assert set(SHARED) <= set(theirs.keys()), set(SHARED) - set(theirs.keys())
    for name in SHARED:
        a, b = cache[name], theirs[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        if name.endswith("hook_attn_scores"):
            # Masked entries: we write -inf (TransformerLens legacy), the bridge finfo.min.
            visible = torch.isfinite(a)
            assert torch.equal(visible, b > torch.finfo(b.dtype).min / 2)
            a, b = a[visible], b[visible]
        assert (a - b).abs().max() < 1e-4, name


def test_tokenization_matches_bridge(bridge_and_ours):
    """Both prepend BOS for GPT-2-style tokenizers."""
    bridge, ours = bridge_and_ours
    text = "the cat sat on the mat"
    assert torch.equal(ours.to_tokens(text), bridge.to_tokens(text))
