"""The hook API: ablation changes exactly what it should, hooks never outlive their call,
caches honour names_filter, and TransformerLens-style access works."""

from __future__ import annotations

import pytest
import torch

import models


@pytest.fixture(scope="module")
def gpt2(hf_checkpoints):
    return models.load(hf_checkpoints["gpt2"][0])


def ids_for(model, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(6, model.cfg.d_vocab, (2, n), generator=g)


def test_zero_ablating_one_head_changes_exactly_what_it_should(gpt2):
    ids = ids_for(gpt2)
    layer, head = 1, 2

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with torch.no_grad():
        _, clean = gpt2.run_with_cache(ids)
        gpt2_hooks = [(f"blocks.{layer}.attn.hook_z", ablate)]
        with gpt2.hooks(gpt2_hooks):
            _, ablated = gpt2.run_with_cache(ids)

    # Everything upstream of the ablated head is untouched.
    for name in ["blocks.0.hook_resid_post", f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern"]:
        assert torch.equal(clean[name], ablated[name]), name
    # The layer's attention output loses exactly that head's contribution z_h W_O[h].
    W_O = gpt2.blocks[layer].attn.W_O  # [h, d, m]
    contribution = clean["z", layer][:, :, head] @ W_O[head]
    assert torch.allclose(clean["attn_out", layer] - ablated["attn_out", layer], contribution, atol=1e-5)
    # The other heads' z are unchanged; downstream the residual stream differs.
    others = [h for h in range(gpt2.cfg.n_heads) if h != head]
    assert torch.equal(clean["z", layer][:, :, others], ablated["z", layer][:, :, others])
    assert (clean["resid_post", layer] - ablated["resid_post", layer]).abs().max() > 1e-3


def test_hooks_removed_after_call_even_when_hook_raises(gpt2):
    ids = ids_for(gpt2)

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        gpt2.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_q", boom), ("hook_embed", lambda x, hook: None)])
    assert all(not hp.fwd_hooks for hp in gpt2.hook_dict.values())
    with pytest.raises(RuntimeError):
        with gpt2.hooks([("blocks.1.hook_resid_pre", boom)]):
            gpt2(ids)
    assert all(not hp.fwd_hooks for hp in gpt2.hook_dict.values())
    gpt2(ids)  # and the model still runs


def test_hook_can_replace_activation_and_wrong_shape_is_refused(gpt2):
    ids = ids_for(gpt2)
    with torch.no_grad():
        base = gpt2(ids)
        doubled = gpt2.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: 2 * x)])
        # resid_post of the last layer feeds ln_final only; LayerNorm is scale-invariant
        # up to eps, so doubling it barely moves the logits: check via the norm hook instead.
        _, cache = gpt2.run_with_cache(ids, names_filter="ln_final.hook_scale")
        with gpt2.hooks([("blocks.1.hook_resid_post", lambda x, hook: 2 * x)]):
            _, cache2 = gpt2.run_with_cache(ids, names_filter="ln_final.hook_scale")
    assert torch.allclose(cache2["ln_final.hook_scale"], 2 * cache["ln_final.hook_scale"], rtol=1e-3)
    assert torch.allclose(doubled, base, atol=1e-3)
    with pytest.raises(ValueError, match="must return None or a tensor of shape"):
        gpt2.run_with_hooks(ids, fwd_hooks=[("hook_embed", lambda x, hook: x[:, :1])])


def test_names_filter_forms_and_hook_result_opt_in(gpt2):
    ids = ids_for(gpt2)
    _, full = gpt2.run_with_cache(ids)
    assert not any(n.endswith("hook_result") for n in full)
    expected = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"}
    for layer in range(2):
        expected |= {f"blocks.{layer}.{n}" for n in [
            "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
            "ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized",
            "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_attn_scores",
            "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post"]}
    assert set(full) == expected
    b, p, m, h, d = 2, 10, gpt2.cfg.d_model, gpt2.cfg.n_heads, gpt2.cfg.d_head
    assert full["q", 0].shape == (b, p, h, d)
    assert full["pattern", 0].shape == (b, h, p, p)
    assert full["ln1.hook_scale" if False else "blocks.0.ln1.hook_scale"].shape == (b, p, 1)
    assert full["post", 0].shape == (b, p, gpt2.cfg.d_mlp)

    _, only = gpt2.run_with_cache(ids, names_filter="blocks.*.attn.hook_result")
    assert set(only) == {"blocks.0.attn.hook_result", "blocks.1.attn.hook_result"}
    result = only["blocks.1.attn.hook_result"]
    assert result.shape == (b, p, h, m)
    # Per-head outputs sum (plus the output bias) to the attention output.
    attn_out = full["attn_out", 1]
    assert torch.allclose(result.sum(2) + gpt2.blocks[1].attn.o_proj.bias, attn_out, atol=1e-5)

    _, two = gpt2.run_with_cache(ids, names_filter=["hook_embed", "blocks.1.hook_resid_post"])
    assert set(two) == {"hook_embed", "blocks.1.hook_resid_post"}
    _, pred = gpt2.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_v"))
    assert set(pred) == {"blocks.0.attn.hook_v", "blocks.1.attn.hook_v"}


def test_scores_are_masked_with_minus_inf_and_softmax_to_pattern(gpt2):
    ids = ids_for(gpt2)
    _, cache = gpt2.run_with_cache(ids, names_filter=["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"])
    scores, pattern = cache["attn_scores", 0], cache["pattern", 0]
    upper = torch.ones(10, 10, dtype=torch.bool).triu(1)
    assert torch.isinf(scores[..., upper]).all() and (scores[..., upper] < 0).all()
    assert torch.allclose(scores.softmax(-1), pattern)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 10))


def test_unknown_hook_name_says_which_exist(gpt2):
    with pytest.raises(KeyError) as err:
        gpt2.run_with_hooks(ids_for(gpt2), fwd_hooks=[("blocks.0.attn.hook_patern", lambda x, hook: None)])
    msg = str(err.value)
    assert "hook_patern" in msg and "blocks.0.attn.hook_pattern" in msg
    with pytest.raises(KeyError):
        gpt2.run_with_hooks(ids_for(gpt2), fwd_hooks=[("blocks.*.no_such_hook", lambda x, hook: None)])


def test_rotary_and_gqa_hooks(hf_checkpoints):
    llama = models.load(hf_checkpoints["llama"][0])
    ids = ids_for(llama)
    _, cache = llama.run_with_cache(ids)
    cfg = llama.cfg
    assert cache["q", 0].shape == (2, 10, cfg.n_heads, cfg.d_head)
    assert cache["k", 0].shape == (2, 10, cfg.n_kv_heads, cfg.d_head)  # grouped-query: fewer K/V heads
    assert cache["rot_k", 0].shape == cache["k", 0].shape
    # Rotary leaves position 0 unrotated and rotates later positions.
    assert torch.allclose(cache["rot_q", 0][:, 0], cache["q", 0][:, 0], atol=1e-6)
    assert not torch.allclose(cache["rot_q", 0][:, 3], cache["q", 0][:, 3], atol=1e-3)
    assert "blocks.0.mlp.hook_pre_linear" in cache
    neox = models.load(hf_checkpoints["neox"][0])
    assert "blocks.0.hook_resid_mid" not in neox.hook_dict  # parallel attention + MLP has no mid stream
