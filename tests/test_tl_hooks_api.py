"""TransformerLens's hook API (issue 15, part C): `HookPoint.layer/add_hook/remove_hooks`,
`model.add_hook/reset_hooks`, backward hooks and `run_with_cache(incl_bwd=True)` checked against
torch autograd; the opt-in hooks (`set_use_attn_result`, `set_use_split_qkv_input`,
`set_use_attn_in`, `set_use_hook_mlp_in`) against TransformerLens's bridge (compatibility mode,
raw weights) and their definitions; the model helpers (`to_string`, `to_str_tokens`,
`get_token_position`, `tokens_to_residual_directions`, `forward`'s TransformerLens arguments)
against the bridge on the same random GPT-2. After every run no hook is left behind."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import hooks_left, padded_ids, tl_raw_bridge

import models
from models import InputError

TOL = 1e-4


@pytest.fixture(scope="module")
def gpt2(hf_checkpoints):
    return models.load(hf_checkpoints["gpt2"][0])


@pytest.fixture(scope="module")
def bridge(hf_checkpoints):
    return tl_raw_bridge(hf_checkpoints["gpt2"][0])


@pytest.fixture
def ids(gpt2):
    return padded_ids(gpt2.cfg.d_vocab, lengths=(9, 9))


@pytest.fixture(autouse=True)
def clean(gpt2):
    """Every test leaves the shared model as it found it: no hooks, no switches on."""
    yield
    assert hooks_left(gpt2) == []
    for switch in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_attn_in", "set_use_hook_mlp_in"):
        getattr(gpt2, switch)(False)


# ------------------------------------------------------------------ forward hooks
def test_layer_permanent_prepend_and_levels(gpt2, ids):
    seen: list[str] = []
    gpt2.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: seen.append(hook.layer()))])
    assert seen == [1]
    with pytest.raises(InputError, match="not inside a block"):
        gpt2.hook_dict["hook_embed"].layer()

    order: list[str] = []
    hp = gpt2.hook_dict["blocks.0.hook_resid_pre"]
    hp.add_hook(lambda x, hook: order.append("perm"), is_permanent=True)
    gpt2.add_hook("blocks.0.hook_resid_pre", lambda x, hook: order.append("temp"))
    gpt2.add_hook(lambda n: n == "blocks.0.hook_resid_pre", lambda x, hook: order.append("first"), prepend=True)
    gpt2(ids)
    assert order == ["first", "perm", "temp"]
    gpt2.reset_hooks()  # TransformerLens's default spares permanent hooks
    order.clear()
    gpt2(ids)
    assert order == ["perm"]
    # A context's own hooks go on exit; the permanent one outside it stays.
    with gpt2.hooks([("blocks.0.hook_resid_pre", lambda x, hook: order.append("ctx"))]):
        assert hp.has_hooks(level=gpt2.context_level, including_permanent=False)
        gpt2(ids)
    assert order == ["perm", "perm", "ctx"] and len(hp.fwd_hooks) == 1
    hp.remove_hooks()  # dir="fwd", permanent spared
    assert len(hp.fwd_hooks) == 1
    gpt2.reset_hooks(including_permanent=True)


def test_predicate_matching_nothing_is_allowed_an_unknown_name_is_not(gpt2, ids):
    gpt2.run_with_hooks(ids, fwd_hooks=[(lambda n: False, lambda x, hook: None)])
    with pytest.raises(KeyError):
        gpt2.add_hook("blocks.0.hook_nope", lambda x, hook: None)


def test_a_predicate_leaves_the_opt_in_hooks_alone_until_switched_on(gpt2, bridge, ids):
    """As in TransformerLens, where an opt-in point is never called while its switch is off: a
    predicate accepting every name neither fires nor caches hook_q_input & co., so ln1's hooks keep
    their [batch, pos, ...] shapes; an exact name, a glob of only opt-in points, or the switch do."""
    seen: dict[str, tuple] = {}
    gpt2.run_with_hooks(ids, fwd_hooks=[(lambda name: True, lambda x, hook: seen.update({hook.name: x.shape}))])
    _, ours = gpt2.run_with_cache(ids, names_filter=lambda name: True)
    _, theirs = bridge.run_with_cache(ids, names_filter=lambda name: name.startswith("blocks.0.ln1"))
    for names in (seen, ours):
        assert not any(n.endswith(("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in",
                                   "hook_result")) for n in names)
    assert tuple(seen["blocks.0.ln1.hook_scale"]) == tuple(theirs["blocks.0.ln1.hook_scale"].shape) == (2, 9, 1)
    _, glob = gpt2.run_with_cache(ids, names_filter="blocks.*.hook_q_input")
    assert len(glob) == gpt2.cfg.n_layers
    gpt2.set_use_split_qkv_input(True)
    _, switched = gpt2.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_q_input"))
    assert len(switched) == gpt2.cfg.n_layers


# ------------------------------------------------------------------ backward hooks
def keep_and_grad(name: str):
    """A forward hook keeping the (non-detached) activation and a backward hook keeping its grad."""
    kept: dict[str, torch.Tensor] = {}

    def fwd(x, hook):
        kept["act"] = x

    def bwd(g, hook):
        kept["grad"] = g.detach().clone()

    return kept, [(name, fwd)], [(name, bwd)]


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid", "hook_embed",
                                  "blocks.0.hook_q_input"])
def test_backward_hook_grad_equals_autograd(gpt2, ids, name):
    kept, fwd, bwd = keep_and_grad(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TransformerLens warning with reset_hooks_end=False
        loss = gpt2.run_with_hooks(ids, fwd_hooks=fwd, bwd_hooks=bwd, return_type="loss", reset_hooks_end=False)
    (expected,) = torch.autograd.grad(loss, kept["act"], retain_graph=True)
    gpt2.zero_grad()
    loss.backward()
    gpt2.reset_hooks()
    assert (kept["grad"] - expected).abs().max() < 1e-5
    assert kept["grad"].abs().max() > 0


def test_bwd_hooks_with_reset_hooks_end_warn_and_still_fire_on_that_graph(gpt2, ids):
    """As TransformerLens's HookedRootModule: a warning; PyTorch captured the hook in this
    call's graph, so a backward of this output still runs it, though it is no longer attached."""
    kept, _, bwd = keep_and_grad("blocks.1.hook_resid_pre")
    with pytest.warns(UserWarning, match="reset at the end"):
        loss = gpt2.run_with_hooks(ids, bwd_hooks=bwd, return_type="loss")
    assert hooks_left(gpt2) == []
    loss.backward()
    assert "grad" in kept
    gpt2.zero_grad()


def test_scaling_a_gradient_scales_exactly_the_parameters_upstream(gpt2, ids):
    """Tripling the gradient at blocks.0.hook_attn_out triples layer 0's attention weight
    gradients (every path from them runs through it) and leaves layer 0's MLP's alone."""
    def grads(bwd_hooks):
        gpt2.zero_grad()
        with gpt2.hooks(bwd_hooks=bwd_hooks):
            gpt2(ids, return_type="loss").backward()
        out = {n: p.grad.clone() for n, p in gpt2.named_parameters() if n.startswith(("blocks.0.attn", "blocks.0.mlp"))}
        gpt2.zero_grad()
        return out

    base = grads([])
    scaled = grads([("blocks.0.hook_attn_out", lambda g, hook: 3 * g)])
    for name, g in base.items():
        factor = 3 if ".attn." in name else 1
        assert (scaled[name] - factor * g).abs().max() < 1e-5 * max(1.0, float(g.abs().max())), name


def test_each_backward_hook_sees_the_incoming_grad_and_the_last_return_wins(gpt2, ids):
    """PyTorch's full backward hooks, as TransformerLens uses them: not a chain. blocks.0's
    resid_post feeds only blocks.1's resid_pre, so its grad is what that point passed upstream."""
    name, seen, upstream = "blocks.1.hook_resid_pre", [], {}
    bwd = [(name, lambda g, hook: seen.append(g.clone()) or 2 * g),
           (name, lambda g, hook: seen.append(g.clone()) or 5 * g),
           ("blocks.0.hook_resid_post", lambda g, hook: upstream.setdefault("g", g.clone()))]
    with gpt2.hooks(bwd_hooks=bwd):
        gpt2(ids, return_type="loss").backward()
    gpt2.zero_grad()
    assert torch.equal(seen[0], seen[1])
    assert (upstream["g"] - 5 * seen[0]).abs().max() < 1e-6


def test_run_with_cache_incl_bwd(gpt2, ids):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "ln_final.hook_normalized"]
    kept, fwd, _ = keep_and_grad(names[1])
    gpt2.zero_grad()
    with gpt2.hooks(fwd):
        loss, cache = gpt2.run_with_cache(ids, names_filter=names, incl_bwd=True, return_type="loss")
    assert set(cache) == set(names) | {n + "_grad" for n in names}
    assert cache["blocks.1.attn.hook_z_grad"].shape == cache["blocks.1.attn.hook_z"].shape
    assert any(p.grad is not None for p in gpt2.parameters())  # backward ran, as TransformerLens's does
    gpt2.zero_grad()
    # The same gradient by autograd on a fresh pass.
    kept2, fwd2, _ = keep_and_grad(names[1])
    loss2 = gpt2.run_with_hooks(ids, fwd_hooks=fwd2, return_type="loss")
    (expected,) = torch.autograd.grad(loss2, kept2["act"])
    assert (cache["blocks.1.attn.hook_z_grad"] - expected).abs().max() < 1e-5
    with pytest.raises(InputError, match="scalar"):
        gpt2.run_with_cache(ids, names_filter=names, incl_bwd=True)  # logits are not a scalar


# ------------------------------------------------------------------ opt-in hooks
def cached_with(gpt2, bridge, ids, *switches: str):
    """(logits, cache) of our model and of the bridge, each run with the `set_use_*` ``switches``
    on; the bridge's are turned off again (the `clean` fixture resets ours)."""
    for switch in switches:
        getattr(gpt2, switch)(True)
        getattr(bridge, switch)(True)
    try:
        with torch.no_grad():
            return gpt2.run_with_cache(ids), bridge.run_with_cache(ids)
    finally:
        for switch in switches:
            getattr(bridge, switch)(False)


def test_attn_result_matches_bridge_and_sums_to_attn_out(gpt2, bridge, ids):
    _, off = gpt2.run_with_cache(ids)
    assert not any(n.endswith("hook_result") for n in off)
    (_, ours), (_, theirs) = cached_with(gpt2, bridge, ids, "set_use_attn_result")
    for layer in range(gpt2.cfg.n_layers):
        result = ours["result", layer]
        assert result.shape == (2, 9, gpt2.cfg.n_heads, gpt2.cfg.d_model)
        assert (result - theirs[f"blocks.{layer}.attn.hook_result"]).abs().max() < TOL
        assert (result.sum(2) + gpt2.blocks[layer].attn.b_O - ours["attn_out", layer]).abs().max() < 1e-5


def test_switches_live_on_the_config(gpt2, ids):
    """As in TransformerLens, the switches are the config's: `set_use_attn_result` sets
    `cfg.use_attn_result`, and setting the config directly switches the hook on."""
    gpt2.set_use_attn_result(True)
    assert gpt2.cfg.use_attn_result and all(block.attn.use_attn_result for block in gpt2.blocks)
    gpt2.set_use_attn_result(False)
    gpt2.cfg.use_hook_mlp_in = True
    _, cache = gpt2.run_with_cache(ids)
    assert sum(n.endswith("hook_mlp_in") for n in cache) == gpt2.cfg.n_layers
    assert "use_hook_mlp_in" not in gpt2.cfg.to_dict()  # how a model is run is never saved with it


def test_split_qkv_input_matches_bridge_and_patches_one_head(gpt2, bridge, ids):
    with torch.no_grad():
        base, base_cache = gpt2.run_with_cache(ids)
    (logits, ours), (_, theirs) = cached_with(gpt2, bridge, ids, "set_use_split_qkv_input", "set_use_hook_mlp_in")
    assert (logits - base).abs().max() < 1e-5  # the same model, computed per head
    h, m = gpt2.cfg.n_heads, gpt2.cfg.d_model
    for layer in range(gpt2.cfg.n_layers):
        for name in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"):
            key = f"blocks.{layer}.{name}"
            assert (ours[key] - theirs[key]).abs().max() < TOL, key
        # TransformerLens's definition: the stream before ln1, one copy per head.
        q_in = ours[f"blocks.{layer}.hook_q_input"]
        assert q_in.shape == (2, 9, h, m)
        assert torch.equal(q_in, ours["resid_pre", layer][:, :, None].expand(-1, -1, h, -1))
        assert torch.equal(ours[f"blocks.{layer}.hook_mlp_in"], ours["resid_mid", layer])

    def patch(x, hook):
        x = x.clone()  # a random direction: a constant shift would be undone by ln1's centring
        x[:, :, 2] += torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(0))
        return x

    with torch.no_grad(), gpt2.hooks([("blocks.1.hook_q_input", patch)]):
        _, patched = gpt2.run_with_cache(ids, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"])
    q, q0 = patched["q", 1], base_cache["q", 1]
    assert (q[:, :, 2] - q0[:, :, 2]).abs().max() > 1e-3
    assert (q[:, :, [0, 1, 3]] - q0[:, :, [0, 1, 3]]).abs().max() < 1e-5
    assert (patched["k", 1] - base_cache["k", 1]).abs().max() < 1e-5


def test_attn_in_matches_bridge(gpt2, bridge, ids):
    (logits, ours), (their_logits, theirs) = cached_with(gpt2, bridge, ids, "set_use_attn_in")
    assert (logits - their_logits).abs().max() < TOL
    for layer in range(gpt2.cfg.n_layers):
        key = f"blocks.{layer}.hook_attn_in"
        assert ours[key].shape == (2, 9, gpt2.cfg.n_heads, gpt2.cfg.d_model)
        assert (ours[key] - theirs[key]).abs().max() < TOL, key


def test_split_qkv_input_with_grouped_query_attention(hf_checkpoints):
    llama = models.load(hf_checkpoints["llama"][0])
    ids = padded_ids(llama.cfg.d_vocab, lengths=(7, 7))
    with torch.no_grad():
        base = llama(ids)
        llama.set_use_split_qkv_input(True)
        logits, cache = llama.run_with_cache(ids)
        llama.set_use_split_qkv_input(False)
        llama.set_use_attn_in(True)
        logits_in = llama(ids)
    cfg = llama.cfg
    assert cache["blocks.0.hook_q_input"].shape == (2, 7, cfg.n_heads, cfg.d_model)
    assert cache["blocks.0.hook_k_input"].shape == (2, 7, cfg.n_kv_heads, cfg.d_model)
    assert (logits - base).abs().max() < 1e-5 and (logits_in - base).abs().max() < 1e-5


# ------------------------------------------------------------------ model helpers
def test_token_helpers_match_bridge(gpt2, bridge):
    texts = ["the cat sat on the mat", "a dog ran"]
    assert gpt2.to_str_tokens(texts) == bridge.to_str_tokens(texts)
    assert gpt2.to_str_tokens(texts[0], prepend_bos=False) == bridge.to_str_tokens(texts[0], prepend_bos=False)
    tokens = gpt2.to_tokens(texts)
    assert torch.equal(tokens, bridge.to_tokens(texts))
    assert gpt2.to_string(tokens) == bridge.to_string(tokens)
    assert gpt2.to_string(tokens[0]) == bridge.to_string(tokens[0])
    assert gpt2.to_string(tokens[0].tolist()) == bridge.to_string(tokens[0].tolist())
    assert gpt2.to_single_token(" cat") == bridge.to_single_token(" cat")
    text = "the cat and the dog"
    for mode in ("first", "last"):
        for single in (" the", gpt2.to_single_token(" the")):
            assert gpt2.get_token_position(single, text, mode=mode) == bridge.get_token_position(single, text, mode=mode)
        assert (gpt2.get_token_position(" the", text, mode=mode, prepend_bos=False)
                == bridge.get_token_position(" the", text, mode=mode, prepend_bos=False))
    assert gpt2.get_token_position(" dog", gpt2.to_tokens(text)) == bridge.get_token_position(" dog", bridge.to_tokens(text))
    with pytest.raises(InputError, match="does not occur"):
        gpt2.get_token_position(" mat", text)
    for tok in (" cat", 7, torch.tensor([7, 9]), torch.tensor([[7, 9], [10, 11]])):
        ours, theirs = gpt2.tokens_to_residual_directions(tok), bridge.tokens_to_residual_directions(tok)
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() < TOL


def test_forward_arguments_match_bridge(gpt2, bridge, ids):
    with torch.no_grad():
        for kwargs in ({"return_type": "loss"}, {"return_type": "loss", "loss_per_token": True}):
            ours, theirs = gpt2(ids, **kwargs), bridge(ids, **kwargs)
            assert ours.shape == theirs.shape and (ours - theirs).abs().max() < TOL, kwargs
        logits, loss = gpt2(ids, return_type="both")
        assert (loss - gpt2(ids, return_type="loss")).abs() < 1e-6 and logits.shape[-1] == gpt2.cfg.d_vocab
        assert gpt2(ids, return_type=None) is None
        resid = gpt2(ids, stop_at_layer=1)
        _, cache = gpt2.run_with_cache(ids, names_filter="blocks.1.hook_resid_pre")
        assert torch.equal(resid, cache["resid_pre", 1])
        assert (resid - bridge(ids, stop_at_layer=1)).abs().max() < TOL
        text = "the cat sat"
        for bos in (True, False):
            ours, theirs = gpt2(text, prepend_bos=bos), bridge(text, prepend_bos=bos)
            assert ours.shape == theirs.shape and (ours - theirs).abs().max() < TOL
