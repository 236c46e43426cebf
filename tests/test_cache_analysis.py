"""models/cache_analysis.py and ActivationCache's TransformerLens methods (logit lens, residual
decomposition, direct logit attribution, TransformerLens's keys, batch and device handling),
checked by value against TransformerLens's own `ActivationCache` run by its TransformerBridge in
compatibility mode on the same random checkpoints (GPT-2, Llama-style RMSNorm, NeoX parallel
blocks), and against the identities direct logit attribution rests on."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import padded_ids, processed_model, tl_processed_bridge

from models import ActivationCache, InputError, MissingHook, act_name

TOL = 1e-4
A, B = 7, 11  # the two answers of the logit difference
TOKENS, WRONG = torch.tensor([7, 8, 9]), torch.tensor([10, 11, 12])  # one answer per prompt


@pytest.fixture(scope="module")
def caches(hf_checkpoints):
    """{family: (our model, our cache, TransformerLens's cache, logits)} on the same ids."""
    out = {}
    ids = padded_ids(64)
    for family in ("gpt2", "llama", "neox"):
        path = hf_checkpoints[family][0]
        ours, bridge = processed_model(path), tl_processed_bridge(path)
        with torch.no_grad():
            logits, cache = ours.run_with_cache(ids)
            _, theirs = bridge.run_with_cache(ids)
        out[family] = (ours, cache, theirs, logits)
    return out


def close(mine, ref) -> None:
    """Same labels (if labelled), same shape, values within TOL."""
    if isinstance(ref, tuple):
        assert mine[1] == ref[1]
        mine, ref = mine[0], ref[0]
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    assert (mine - ref).abs().max() < TOL


# Each call runs on our cache and on TransformerLens's; "mid" marks those reading resid_mid,
# which parallel-block NeoX has on neither side.
CALLS = {
    "accumulated_resid": (False, lambda c: c.accumulated_resid(return_labels=True)),
    "accumulated_resid ln": (False, lambda c: c.accumulated_resid(apply_ln=True, return_labels=True)),
    "accumulated_resid mid ln": (True, lambda c: c.accumulated_resid(incl_mid=True, apply_ln=True,
                                                                     return_labels=True)),
    "accumulated_resid layer 1 mlp_input pos -1": (True, lambda c: c.accumulated_resid(
        1, mlp_input=True, apply_ln=True, pos_slice=-1, return_labels=True)),
    "decompose_resid": (False, lambda c: c.decompose_resid(return_labels=True)),
    "decompose_resid ln": (False, lambda c: c.decompose_resid(apply_ln=True, return_labels=True)),
    "decompose_resid attn layer 1 mlp_input": (False, lambda c: c.decompose_resid(
        1, mlp_input=True, mode="attn", apply_ln=True, pos_slice=(2, 6), return_labels=True)),
    "decompose_resid mlp no embeds": (False, lambda c: c.decompose_resid(mode="mlp", incl_embeds=False,
                                                                         pos_slice=[0, 3, 5], return_labels=True)),
    "stack_head_results": (False, lambda c: c.stack_head_results(return_labels=True)),
    "stack_head_results ln remainder": (False, lambda c: c.stack_head_results(apply_ln=True, incl_remainder=True,
                                                                              return_labels=True)),
    "stack_head_results layer 1 pos -1": (False, lambda c: c.stack_head_results(1, apply_ln=True, pos_slice=-1,
                                                                                incl_remainder=True,
                                                                                return_labels=True)),
    "stack_neuron_results": (False, lambda c: c.stack_neuron_results(2, return_labels=True)),
    "stack_neuron_results ln remainder slice": (False, lambda c: c.stack_neuron_results(
        2, apply_ln=True, incl_remainder=True, neuron_slice=(0, 5), pos_slice=slice(1, 8), return_labels=True)),
    "stack_neuron_results one neuron": (False, lambda c: c.stack_neuron_results(1, neuron_slice=3,
                                                                                return_labels=True)),
    "get_neuron_results": (False, lambda c: c.get_neuron_results(1, neuron_slice=[1, 3], pos_slice=slice(1, 4))),
    "get_full_resid_decomposition": (False, lambda c: c.get_full_resid_decomposition(return_labels=True)),
    "get_full_resid_decomposition ln": (False, lambda c: c.get_full_resid_decomposition(apply_ln=True,
                                                                                        return_labels=True)),
    "get_full_resid_decomposition mlp layers": (False, lambda c: c.get_full_resid_decomposition(
        1, mlp_input=True, expand_neurons=False, apply_ln=True, pos_slice=-1, return_labels=True)),
    "stack_activation": (False, lambda c: c.stack_activation("pattern")),
    "stack_activation scale ln2": (False, lambda c: c.stack_activation("scale", 1, "ln2")),
    "logit_attrs per prompt": (False, lambda c: c.logit_attrs(c.decompose_resid(pos_slice=-1), TOKENS,
                                                              incorrect_tokens=WRONG, pos_slice=-1)),
    "logit_attrs broadcast over positions": (False, lambda c: c.logit_attrs(c.stack_head_results(), TOKENS)),
    "logit_attrs per position": (False, lambda c: c.logit_attrs(
        c.accumulated_resid(), torch.arange(6, 6 + 36).reshape(3, 12), incorrect_tokens=torch.full((3, 12), 9))),
    "logit_attrs one prompt": (False, lambda c: c.logit_attrs(c.decompose_resid(pos_slice=-1), A, incorrect_tokens=B,
                                                              pos_slice=-1, batch_slice=1)),
    "apply_ln_to_stack ln2 batch": (False, lambda c: c.apply_ln_to_stack(c.decompose_resid(1, mlp_input=True), 1,
                                                                         mlp_input=True, batch_slice=(0, 2))),
}


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("call", list(CALLS))
def test_matches_transformerlens(caches, family, call):
    """Every method, with its slices and flags, gives TransformerLens's labels, shapes and values."""
    needs_mid, fn = CALLS[call]
    if needs_mid and family == "neox":
        pytest.skip("parallel blocks have no resid_mid")
    _, cache, theirs, _ = caches[family]
    with torch.no_grad():
        close(fn(cache), fn(theirs))


def test_transformerlens_slice_objects_and_labels(caches):
    """TransformerLens's own `Slice` objects are taken as slices; labels are written as TransformerLens does."""
    from transformer_lens.utilities import Slice

    _, cache, theirs, _ = caches["gpt2"]
    close(cache.decompose_resid(pos_slice=Slice((1, 5)), return_labels=True),
          theirs.decompose_resid(pos_slice=Slice((1, 5)), return_labels=True))
    _, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    assert labels[8:10] == ["L0N0", "L0N1"] and labels[-3:] == ["embed", "pos_embed", "bias"]
    assert cache.accumulated_resid(incl_mid=True, return_labels=True)[1] == ["0_pre", "0_mid", "1_pre", "1_mid",
                                                                             "final_post"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_keys_as_transformerlens_reads_them(caches, family):
    """Negative layers, layer types, ln_final's scale without a layer, "k1"-style shorthand."""
    _, cache, theirs, _ = caches[family]
    keys = [("resid_post", -1), ("pattern", 0, "attn"), ("attn", 1), ("scale", 1, "ln1"), ("normalized", 0, "ln2"),
            "scale", "normalized", "k1", "scale1ln2", ("z", -2, "a"), ("post", 1, "mlp"), ("resid_pre", 1, "b")]
    for key in keys:
        assert torch.equal(cache[key], cache[theirs_name(key)]), key
        assert (cache[key] - theirs[key]).abs().max() < TOL, key
    assert ("resid_post", -1) in cache and ("resid_mid", 5) not in cache


def theirs_name(key) -> str:
    """The full name TransformerLens's `get_act_name` gives (negative layers resolved as its cache does)."""
    from transformer_lens.utilities import get_act_name

    if isinstance(key, str):
        return get_act_name(key)
    name, layer, *rest = key
    return get_act_name(name, layer + 2 if layer < 0 else layer, *rest)


def test_act_name_is_transformerlens_get_act_name():
    """`act_name` on the forms of TransformerLens's docstring and its aliases."""
    from transformer_lens.utilities import get_act_name

    forms = [("k", 6, "a"), ("pre", 2), ("embed",), ("normalized", 27, "ln2"), ("k6",), ("scale4ln1",), ("pre5",),
             ("scale",), ("attn", 3), ("attn_logits", 1), ("key", 0), ("mlp_post", 1), ("resid_mid", 0, "block"),
             ("blocks.0.hook_resid_pre",), ("pos_embed",), ("rot_q", 1), ("pre_linear", 0)]
    for form in forms:
        assert act_name(*form) == get_act_name(*form), form
    with pytest.raises(MissingHook, match="per-layer"):
        act_name("resid_pre")


def test_a_cache_without_a_model(caches):
    """A cache read from a run has no model: keys work (the layer count read from its names),
    the analysis asks for the model."""
    _, cache, _, _ = caches["gpt2"]
    bare = ActivationCache(dict(cache.cache_dict))
    assert torch.equal(bare["resid_post", -1], cache["blocks.1.hook_resid_post"])
    with pytest.raises(InputError, match="cache.model"):
        bare.decompose_resid()


# ---------------------------------------------------------------- the identities
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_direct_logit_attribution_adds_up_to_the_logit_difference(caches, family):
    """With processed weights, at every position: the terms of decompose_resid(apply_ln=True),
    of the heads plus everything else (get_full_resid_decomposition without neurons), and of
    the heads plus the remainder, projected on W_U[:, A] - W_U[:, B] (by hand and by
    logit_attrs), plus b_U[A] - b_U[B], give logits[A] - logits[B]."""
    model, cache, _, logits = caches[family]
    expected = logits[..., A] - logits[..., B] - (model.b_U[A] - model.b_U[B])  # [b, p]
    direction = model.W_U[:, A] - model.W_U[:, B]  # [m]
    with torch.no_grad():
        terms = cache.decompose_resid(apply_ln=True)  # [component, b, p, m]
        assert ((terms @ direction).sum(0) - expected).abs().max() < TOL
        stacks = [cache.decompose_resid(), cache.get_full_resid_decomposition(expand_neurons=False),
                  cache.get_full_resid_decomposition(), cache.stack_head_results(incl_remainder=True)]
        for stack in stacks:
            attrs = cache.logit_attrs(stack, A, incorrect_tokens=B)  # [component, b, p]
            assert (attrs.sum(0) - expected).abs().max() < TOL
        last = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), A, incorrect_tokens=B, pos_slice=-1)  # [c, b]
        assert (last.sum(0) - expected[:, -1]).abs().max() < TOL


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_logit_lens_ends_at_the_final_norm(caches, family):
    """accumulated_resid(apply_ln=True)'s last entry is ln_final's normalized output, which the
    unembedding turns into the logits; decompositions sum to the stream they decompose."""
    model, cache, _, logits = caches[family]
    with torch.no_grad():
        lens = cache.accumulated_resid(apply_ln=True)
        assert (lens[-1] - cache["ln_final.hook_normalized"]).abs().max() < TOL
        assert (lens[-1] @ model.W_U + model.b_U - logits).abs().max() < TOL
        final = cache["resid_post", -1]
        for stack in (cache.decompose_resid(), cache.get_full_resid_decomposition(),
                      cache.stack_neuron_results(-1, incl_remainder=True)):
            assert (stack.sum(0) - final).abs().max() < TOL
        into_1 = cache.get_full_resid_decomposition(1, expand_neurons=False).sum(0)
        assert (into_1 - cache["resid_pre", 1]).abs().max() < TOL


def test_head_results(caches):
    """compute_head_results equals the recorded hook_result, and the heads plus b_O make attn_out."""
    model, cache, _, _ = caches["gpt2"]
    ids = padded_ids(64)
    with torch.no_grad():
        _, recorded = model.run_with_cache(ids, names_filter=["blocks.*.attn.hook_result", "blocks.*.attn.hook_z"])
    computed = ActivationCache({k: v for k, v in recorded.items() if "hook_z" in k}, model)
    computed.compute_head_results()
    for layer in range(model.cfg.n_layers):
        mine = computed["result", layer, "attn"]  # [b, p, h, m]
        assert (mine - recorded["result", layer]).abs().max() < TOL
        assert (mine.sum(-2) + model.b_O[layer] - cache["attn_out", layer]).abs().max() < TOL
        assert not mine.requires_grad


def test_we_differ_on_purpose(caches, caplog):
    """layer=0's remainder is the stream entering layer 0 (TransformerLens reads the last
    layer's resid_post); layers outside [0, n_layers] are refused; computing cached head
    results again only warns."""
    _, cache, _, _ = caches["gpt2"]
    stack, labels = cache.stack_head_results(0, incl_remainder=True, return_labels=True)
    assert labels == ["remainder"] and torch.equal(stack[0], cache["resid_pre", 0])
    assert cache.stack_neuron_results(0).shape == (0, 3, 12, 32)
    for bad in (-2, 3):
        with pytest.raises(InputError, match="layer must be in"):
            cache.decompose_resid(bad)
    with caplog.at_level(logging.WARNING):
        cache.compute_head_results()
    assert "already cached" in caplog.text


# ---------------------------------------------------------------- batch, device, padding
def test_one_prompt_without_its_batch_dim(caches):
    """run_with_cache(remove_batch_dim=True) and remove_batch_dim(): every method gives prompt
    0's numbers without the batch axis; return_cache_object=False gives the plain dict; a
    larger batch is refused."""
    model, cache, _, _ = caches["gpt2"]
    one = padded_ids(64)[:1]
    with torch.no_grad():
        _, batchless = model.run_with_cache(one, remove_batch_dim=True)
        _, plain = model.run_with_cache(one, return_cache_object=False)
        _, again = model.run_with_cache(one)
    assert not batchless.has_batch_dim and type(plain) is dict and plain.keys() == batchless.keys()
    assert batchless["resid_post", -1].shape == (12, 32)
    again.remove_batch_dim()
    assert torch.equal(again["pattern", 1], batchless["pattern", 1])
    with torch.no_grad():
        pairs = [(batchless.accumulated_resid(apply_ln=True), cache.accumulated_resid(apply_ln=True)[:, 0]),
                 (batchless.decompose_resid(apply_ln=True, pos_slice=-1),
                  cache.decompose_resid(apply_ln=True, pos_slice=-1)[:, 0]),
                 (batchless.stack_head_results(apply_ln=True), cache.stack_head_results(apply_ln=True)[:, 0]),
                 (batchless.get_full_resid_decomposition(apply_ln=True),
                  cache.get_full_resid_decomposition(apply_ln=True)[:, 0]),
                 (batchless.logit_attrs(batchless.decompose_resid(), A, incorrect_tokens=B, has_batch_dim=False),
                  cache.logit_attrs(cache.decompose_resid(), A, incorrect_tokens=B)[:, 0])]
    for mine, ref in pairs:
        close(mine, ref)
    with pytest.raises(InputError, match="one prompt"):
        model.run_with_cache(padded_ids(64), remove_batch_dim=True)
    with pytest.raises(InputError, match="3 prompts"):
        ActivationCache(dict(cache.cache_dict), model).remove_batch_dim()


def test_to_and_cache_dict(caches):
    """to(device) moves every activation and the mask in place; cache_dict is the dict itself."""
    model, _, _, _ = caches["gpt2"]
    ids, mask = padded_ids(64, with_mask=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, attention_mask=mask)
    assert cache.to("cpu") is cache and cache.attention_mask.device.type == "cpu"
    assert cache.cache_dict is cache.store and set(cache.cache_dict) == set(cache)
    assert cache.model is model


def test_a_padded_batch_decomposes_each_prompt_as_alone(caches):
    """Right-padded prompts: at each prompt's real positions the decomposition and the logit
    lens equal those of the prompt run alone (padding changes nothing before it, causally)."""
    model, _, _, _ = caches["gpt2"]
    ids, mask = padded_ids(64, with_mask=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, attention_mask=mask)
        for i, n in enumerate(mask.sum(1).tolist()):
            _, alone = model.run_with_cache(ids[i:i + 1, :n])
            for method in ("decompose_resid", "accumulated_resid", "get_full_resid_decomposition"):
                mine = getattr(cache, method)(apply_ln=True, pos_slice=slice(0, n))[:, i]
                close(mine, getattr(alone, method)(apply_ln=True)[:, 0])
    assert torch.equal(cache.attention_mask, mask)
