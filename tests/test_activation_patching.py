"""analyses.activation_patching against TransformerLens's own `transformer_lens.patching`.

The reference is TransformerLens's function of the same name, run (a) on our own model (its
sweeps read only `run_with_hooks`, `cfg` and `get_act_name`, so they run on it unchanged) and
(b), for gpt2, on TransformerLens's TransformerBridge of the same checkpoint (raw weights, TL hook
names). The ground truth that does not rely on TransformerLens: patching every position of
resid_pre at layer 0 restores the clean metric, and one cell equals a hand-written patched run."""

from __future__ import annotations

import pytest
import torch
from helpers import tl_raw_bridge

import models
from analyses import activation_patching as patching

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
DECODERS = ["gpt2", "llama", "neox"]
# Every sweep that takes (model, corrupted_tokens, clean_cache, metric).
SWEEPS = [
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos", "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every", "get_act_patch_block_every",
]
# NeoX's parallel blocks add attention and MLP to the same residual: no resid_mid (nor in TL).
NO_RESID_MID = {"neox"}
GOOD, BAD = 10, 20  # the two answer tokens of the logit difference


def logit_diff(logits: torch.Tensor) -> torch.Tensor:  # [b, p, vocab] -> scalar
    last = logits[:, -1]
    return (last[:, GOOD] - last[:, BAD]).mean()


def token_pair(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted batches [2, 5] of ids from 6 (no special tokens), differing
    at two positions so several cells matter."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(6, 60, (2, 5), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(6, 60, (2,), generator=g)
    corrupted[:, 3] = torch.randint(6, 60, (2,), generator=g)
    return clean, corrupted


@pytest.fixture(scope="module")
def ours(hf_checkpoints):
    """{family: (model, clean, corrupted, clean cache, corrupted cache)} of our models."""
    out = {}
    clean, corrupted = token_pair()
    for family in DECODERS:
        model = models.load(hf_checkpoints[family][0]).eval()
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        out[family] = (model, clean, corrupted, clean_cache, corrupted_cache)
    return out


@pytest.fixture(scope="module")
def our_results(ours):
    """Every sweep of ours, once per family: {(family, sweep): tensor}."""
    return {(family, name): getattr(patching, name)(model, corrupted, cache, logit_diff)
            for family, (model, _, corrupted, cache, _) in ours.items() for name in SWEEPS
            if not (family in NO_RESID_MID and name == "get_act_patch_resid_mid")}


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, diff
    return diff


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("name", SWEEPS)
def test_matches_transformerlens_on_our_model(ours, our_results, family, name):
    from transformer_lens import patching as tl_patching

    model, _, corrupted, cache, _ = ours[family]
    if (family, name) not in our_results:
        with pytest.raises(models.MissingHook, match="resid_mid"):
            getattr(patching, name)(model, corrupted, cache, logit_diff)
        return
    theirs = getattr(tl_patching, name)(model, corrupted, cache, logit_diff)
    assert_close(our_results[family, name], theirs)


@pytest.fixture(scope="module")
def bridge_gpt2(hf_checkpoints, ours):
    """TransformerLens's bridge on the gpt2 checkpoint with its own clean cache."""
    bridge = tl_raw_bridge(hf_checkpoints["gpt2"][0])
    _, clean, corrupted, _, _ = ours["gpt2"]
    _, clean_cache = bridge.run_with_cache(clean)
    _, corrupted_cache = bridge.run_with_cache(corrupted)
    return bridge, corrupted, clean_cache, corrupted_cache


# The bridge's blocks.L.hook_resid_mid is the input of its ln_2 alone: patching it changes what
# the MLP reads but not the residual skip around the MLP (HF's GPT2Block keeps its own
# reference), so its resid_mid sweep is not the stream's. test_resid_mid_is_the_stream checks
# ours against Hugging Face instead.
BRIDGE_DIFFERS = {"get_act_patch_resid_mid"}


@pytest.mark.parametrize("name", [n for n in SWEEPS if n not in BRIDGE_DIFFERS])
def test_matches_transformerlens_bridge(bridge_gpt2, our_results, name):
    from transformer_lens import patching as tl_patching

    bridge, corrupted, cache, _ = bridge_gpt2
    theirs = getattr(tl_patching, name)(bridge, corrupted, cache, logit_diff)
    assert_close(our_results["gpt2", name], theirs)


def test_resid_mid_is_the_stream(hf_checkpoints, ours, our_results):
    """A resid_mid cell equals Hugging Face's GPT-2 with the stream between attention and MLP
    patched: the MLP's input and the skip around it both get the clean vector."""
    hf = hf_checkpoints["gpt2"][1]
    _, clean, corrupted, _, _ = ours["gpt2"]
    block, pos = hf.transformer.h[0], 2  # layer 0: a later attention carries it to the last position
    mids = {}
    capture = block.ln_2.register_forward_pre_hook(lambda mod, args: mids.__setitem__("clean", args[0].clone()))
    with torch.no_grad():
        hf(clean)
    capture.remove()

    def patched_block(mod, args, out):  # recompute the MLP half from the patched stream
        mid = mids["corrupted"].clone()
        mid[:, pos] = mids["clean"][:, pos]
        return (mid + block.mlp(block.ln_2(mid)), *out[1:]) if isinstance(out, tuple) else mid + block.mlp(block.ln_2(mid))

    hooks = [block.ln_2.register_forward_pre_hook(lambda mod, args: mids.__setitem__("corrupted", args[0].clone())),
             block.register_forward_hook(patched_block)]
    try:
        with torch.no_grad():
            expected = logit_diff(hf(corrupted).logits)
    finally:
        for h in hooks:
            h.remove()
    assert our_results["gpt2", "get_act_patch_resid_mid"][0, pos].item() == pytest.approx(expected.item(), abs=1e-5)
    unpatched = logit_diff(hf(corrupted).logits).item()
    assert abs(expected.item() - unpatched) > 1e-3  # the patch matters, so the check has teeth


def test_direct_path_matches_transformerlens_bridge(ours, bridge_gpt2):
    from transformer_lens import patching as tl_patching

    model, _, corrupted, clean_cache, corrupted_cache = ours["gpt2"]
    bridge, _, tl_clean, tl_corrupted = bridge_gpt2
    mine = patching.get_act_patch_direct_path_all_sources(model, corrupted, clean_cache, corrupted_cache, logit_diff)
    theirs = tl_patching.get_act_patch_direct_path_all_sources(bridge, corrupted, tl_clean, tl_corrupted, logit_diff)
    assert_close(mine, theirs)
    assert mine[1].abs().sum() == 0  # no later layer to reach from the last one
    assert not any(block.use_split_qkv_input for block in model.blocks)  # the switch is restored


@pytest.mark.parametrize("family", DECODERS)
def test_direct_path_ground_truth(ours, family):
    """One edge, head 0.1 -> query of head 1.2, equals the run built by hand: the source head's
    clean-minus-corrupted write added to that head's own query input alone."""
    model, _, corrupted, clean_cache, corrupted_cache = ours[family]
    result = patching.get_act_patch_direct_path(model, corrupted, clean_cache, corrupted_cache, logit_diff,
                                                src_layer=0, src_head=1, verbose=False)
    z = "blocks.0.attn.hook_z"
    delta = (clean_cache[z][:, :, 1] - corrupted_cache[z][:, :, 1]) @ model.W_O[0, 1]  # [b, p, m]

    def add(x, hook):  # [b, p, h, m]
        x = x.clone()
        x[:, :, 2] += delta
        return x

    model.set_use_split_qkv_input(True)
    try:
        expected = logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_q_input", add)]))
    finally:
        model.set_use_split_qkv_input(False)
    assert abs(result[1, 2].item() - expected.item()) <= 1e-6
    assert result[0].abs().sum() == 0


def test_direct_path_refuses_kv_on_grouped_query(ours):
    model, _, corrupted, clean_cache, corrupted_cache = ours["llama"]
    with pytest.raises(models.InputError, match="grouped-query"):
        patching.get_act_patch_direct_path(model, corrupted, clean_cache, corrupted_cache, logit_diff, 0, 0, "k")


@pytest.mark.parametrize("family", DECODERS)
def test_ground_truth_resid_pre(ours, our_results, family):
    """Layer 0's whole residual stream from the clean run is the clean run; one cell of the
    sweep is the patched run written by hand."""
    model, clean, corrupted, cache, _ = ours[family]
    clean_metric = logit_diff(model(clean))
    assert abs(clean_metric.item() - logit_diff(model(corrupted)).item()) > 1e-3
    every_pos = patching.generic_activation_patch(
        model, corrupted, cache, logit_diff, lambda act, index, clean_act: clean_act.clone(), "resid_pre",
        index_axis_names=["layer"])
    assert every_pos[0].item() == pytest.approx(clean_metric.item(), abs=1e-6)

    def patch_pos_3(act, hook):  # [b, p, m]
        act[:, 3] = cache["blocks.1.hook_resid_pre"][:, 3]
        return act

    by_hand = logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_resid_pre", patch_pos_3)]))
    assert our_results[family, "get_act_patch_resid_pre"][1, 3].item() == pytest.approx(by_hand.item(), abs=1e-6)
    # Patching the positions where the prompts agree, before any mixing, changes nothing.
    corrupted_metric = logit_diff(model(corrupted)).item()
    assert our_results[family, "get_act_patch_resid_pre"][0, 0].item() == pytest.approx(corrupted_metric, abs=1e-5)


def test_grouped_query_kv_axes(ours, our_results):
    """Keys and values sweep the n_kv_heads heads hook_k has; the *_every stack pads them."""
    model = ours["llama"][0]
    n_kv, n_heads = model.cfg.n_kv_heads, model.cfg.n_heads
    assert n_kv < n_heads
    assert our_results["llama", "get_act_patch_attn_head_k_by_pos"].shape == (2, 5, n_kv)
    assert our_results["llama", "get_act_patch_attn_head_v_all_pos"].shape == (2, n_kv)
    every = our_results["llama", "get_act_patch_attn_head_all_pos_every"]
    assert every.shape == (5, 2, n_heads)
    assert every[2:4, :, n_kv:].abs().sum() == 0


def test_index_df_flat_and_returned(ours, our_results):
    """An index_df gives one value per row, in its order; return_index_df hands back the grid."""
    from transformer_lens import patching as tl_patching

    model, _, corrupted, cache, _ = ours["gpt2"]
    full, grid = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff,
                                                             return_index_df=True)
    assert list(grid.columns) == ["layer", "pos", "head"] and len(grid) == full.numel()
    rows = grid.sample(7, random_state=0)
    flat = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff, index_df=rows)
    assert flat.shape == (7,)
    expected = torch.stack([full[tuple(r)] for r in rows.itertuples(index=False)])
    assert_close(flat, expected)
    theirs = tl_patching.generic_activation_patch(model, corrupted, cache, logit_diff,
                                                  tl_patching.layer_pos_head_vector_patch_setter, "z", index_df=rows)
    assert_close(flat, theirs)


def test_refuses_training_mode(ours):
    model, _, corrupted, cache, _ = ours["gpt2"]
    model.train()
    try:
        with pytest.raises(models.InputError, match="eval"):
            patching.get_act_patch_resid_pre(model, corrupted, cache, logit_diff)
    finally:
        model.eval()
