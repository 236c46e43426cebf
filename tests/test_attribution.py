"""Attribution patching (analyses/attribution.py) against ground truth the tests construct.

- AtP is its definition computed another way: the activation difference times the gradient that
  the model's own backward hooks report (`run_with_hooks(bwd_hooks=)`), in both directions.
- The QK fix is exact where the metric is linear in the attention pattern (one attention-only
  layer, no final norm): there AtP* equals exact patching of every query and key, for learned and
  rotary positions and grouped-query heads; a saturated head, where plain AtP sees almost nothing,
  is recovered.
- GradDrop equals the mean absolute estimate over runs whose layer-l outputs are detached (a
  second implementation, through forward hooks).
- `exact_patching` equals TransformerLens's sweeps (`analyses.activation_patching`, checked against
  TransformerLens itself) with the roles of the runs swapped for noising.
- `agreement` equals scipy's Spearman correlation and a hand count of the top-k.
"""

from __future__ import annotations

import pytest
import torch

import models
from analyses import activation_patching as patching
from analyses.attribution import (
    agreement,
    attribution_patching,
    exact_patching,
    logit_diff_metric,
    recovered,
)
from models import HookedTransformer, TransformerConfig
from probe.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
GOOD, BAD = 10, 20
metric = logit_diff_metric([GOOD, GOOD], [BAD, BAD])


def token_pair(vocab: int = 60, p: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(6, vocab, (2, p), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(6, vocab, (2,), generator=g)
    corrupt[:, -1] = torch.randint(6, vocab, (2,), generator=g)
    return clean, corrupt


@pytest.fixture(scope="module")
def decoders(hf_checkpoints):
    return {family: models.load(hf_checkpoints[family][0]).eval() for family in ("gpt2", "llama", "neox")}


def one_layer(positional: str = "learned", n_kv_heads: int | None = None, q_gain: float = 1.0, seed: int = 0):
    """An attention-only one-layer model without a final norm: its logits are linear in the
    attention pattern, so the QK fix's first-order step after the softmax is exact."""
    cfg = TransformerConfig(d_model=16, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads, d_vocab=30, n_ctx=16,
                            attn_only=True, final_norm=False, positional=positional)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
        model.blocks[0].attn.q_proj.weight.mul_(q_gain)
    return model


# ------------------------------------------------------------------------------- AtP = definition


@pytest.mark.parametrize("direction", ["noise", "denoise"])
@pytest.mark.parametrize("node,hook", [("z", "attn.hook_z"), ("resid_pre", "hook_resid_pre"),
                                       ("mlp_out", "hook_mlp_out"), ("post", "mlp.hook_post"),
                                       ("k", "attn.hook_k")])
def test_atp_is_difference_times_the_models_own_gradient(decoders, node, hook, direction):
    model = decoders["llama"]  # grouped-query: k at n_kv_heads
    clean, corrupt = token_pair()
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    got = attribution_patching(model, clean, corrupt, metric, [node], method="atp", direction=direction)[node]
    names = [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, src = model.run_with_cache(source, names_filter=names)
    acts, grads = {}, {}
    fwd = [(n, lambda x, hook: acts.__setitem__(hook.name, x.detach().clone())) for n in names]
    bwd = [(n, lambda g, hook: grads.__setitem__(hook.name, g.detach().clone())) for n in names]
    metric(model.run_with_hooks(base, fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=False)).backward()
    model.reset_hooks()
    for layer, name in enumerate(names):
        want = ((src[name] - acts[name]) * grads[name]).sum(0)
        want = want.sum(-1) if node != "post" else want  # heads: over d_head; streams: over d_model
        assert got.values[layer].shape == want.shape
        assert (got.values[layer] - want).abs().max() < TOL
    if node == "k":
        assert got.values.shape == (model.cfg.n_layers, clean.shape[1], model.cfg.n_kv_heads)


def test_chunks_add_up_to_the_whole_batch(decoders):
    model = decoders["gpt2"]
    clean, corrupt = token_pair()
    for method in ("atp", "atp*"):
        whole = attribution_patching(model, clean, corrupt, metric, ["z", "k"], method=method)
        chunked = attribution_patching(model, clean, corrupt, metric, ["z", "k"], method=method, batch_size=1)
        for node in ("z", "k"):
            assert (whole[node].values - chunked[node].values).abs().max() < 1e-5
        assert abs(whole["z"].base_metric - chunked["z"].base_metric) < 1e-5


# ------------------------------------------------------------------------------------- the QK fix


@pytest.mark.parametrize("positional,n_kv_heads", [("learned", None), ("rotary", None), ("rotary", 2)])
@pytest.mark.parametrize("node", ["q", "k"])
def test_qk_fix_is_exact_where_the_metric_is_linear_in_the_pattern(positional, n_kv_heads, node):
    model = one_layer(positional, n_kv_heads, q_gain=4.0)
    clean, corrupt = token_pair(vocab=30)
    star = attribution_patching(model, clean, corrupt, metric, [node], method="atp*")[node]
    assert star.method == "atp+qk" and "GradDrop skipped" in star.notes[0]
    exact = exact_patching(model, clean, corrupt, metric, node)
    assert star.values.shape == exact.values.shape
    assert exact.values.abs().max() > 0.05  # something to get right
    assert (star.values - exact.values).abs().max() < TOL
    whole = attribution_patching(model, clean, corrupt, metric, [node], method="atp*", per_position=False)[node]
    exact_whole = exact_patching(model, clean, corrupt, metric, node, per_position=False)
    assert (whole.values - exact_whole.values).abs().max() < TOL


def test_qk_fix_recovers_a_saturated_head_plain_atp_misses():
    """A head whose last query attends almost one-hot (softmax saturated): the corrupted query
    moves its attention elsewhere, a large effect; the gradient through the saturated softmax is
    nearly zero, so AtP reports almost nothing; recomputing the softmax gets it right."""
    cfg = TransformerConfig(d_model=16, n_layers=1, n_heads=2, d_vocab=12, n_ctx=8, attn_only=True, final_norm=False)
    model = HookedTransformer(cfg).eval()
    # Seeded after construction, so the weights below do not depend on how the constructor
    # initialises (an init change once moved this head off saturation).
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
        model.blocks[0].attn.q_proj.weight.mul_(20)
    clean, corrupt = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 3, 4, 6]])
    one = logit_diff_metric([7], [8])
    _, cache = model.run_with_cache(clean)
    head = 0
    assert cache["pattern", 0][0, head, -1].max() > 0.999  # saturated
    exact = exact_patching(model, clean, corrupt, one, "q").values[0, -1, head]
    atp = attribution_patching(model, clean, corrupt, one, ["q"], method="atp")["q"].values[0, -1, head]
    star = attribution_patching(model, clean, corrupt, one, ["q"], method="atp*")["q"].values[0, -1, head]
    assert abs(exact) > 0.5
    assert abs(atp) < 0.05 * abs(exact)  # plain AtP: wrong by more than 95%
    assert abs(star - exact) < TOL


# -------------------------------------------------------------------------------------- GradDrop


@pytest.mark.parametrize("family", ["gpt2", "neox", "bert"])
def test_graddrop_is_the_mean_absolute_estimate_with_each_layer_detached(decoders, hf_checkpoints, family):
    """Pre-norm models take GradDrop's partial backward passes (gpt2; neox's parallel blocks),
    post-norm BERT its gradient gates: both equal runs with the layer's outputs detached."""
    model = decoders[family] if family in decoders else models.load(hf_checkpoints[family][0]).eval()
    clean, corrupt = token_pair()
    got = attribution_patching(model, clean, corrupt, metric, ["z", "resid_pre"], qk_fix=False, grad_drop=True)
    assert got["z"].method == "atp+graddrop"
    n_layers = model.cfg.n_layers
    with torch.no_grad():
        _, src = model.run_with_cache(corrupt)
    want = {"z": 0, "resid_pre": 0}
    for drop in range(n_layers):
        acts = {}

        def keep(x, hook, acts=acts):
            x.retain_grad()
            acts[hook.name] = x

        detach = [(f"blocks.{drop}.hook_attn_out", lambda x, hook: x.detach()),
                  (f"blocks.{drop}.hook_mlp_out", lambda x, hook: x.detach())]
        keepers = [(lambda n: n.endswith(("attn.hook_z", "hook_resid_pre")), keep)]
        metric(model.run_with_hooks(clean, fwd_hooks=keepers + detach)).backward()
        for node, hook in (("z", "attn.hook_z"), ("resid_pre", "hook_resid_pre")):
            per_layer = []
            for layer in range(n_layers):
                name = f"blocks.{layer}.{hook}"
                grad = acts[name].grad if acts[name].grad is not None else torch.zeros_like(acts[name])
                per_layer.append(((src[name] - acts[name].detach()) * grad).sum(0).sum(-1))
            want[node] = want[node] + torch.stack(per_layer).abs()
    for node in want:
        assert (got[node].values - want[node] / (n_layers - 1)).abs().max() < TOL


# ---------------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_patching_equals_transformerlens_sweeps(decoders, family):
    """Noising is TransformerLens's denoising sweep with the runs' roles swapped: the clean tokens
    are run and the corrupted run's cache patched in."""
    model = decoders[family]
    clean, corrupt = token_pair()
    with torch.no_grad():
        _, corrupt_cache = model.run_with_cache(corrupt)
        base = metric(model(clean)).item()
    for node, sweep in (("z", patching.get_act_patch_attn_head_out_by_pos), ("v", patching.get_act_patch_attn_head_v_by_pos),
                        ("resid_pre", patching.get_act_patch_resid_pre), ("mlp_out", patching.get_act_patch_mlp_out)):
        ours = exact_patching(model, clean, corrupt, metric, node)
        theirs = sweep(model, clean, corrupt_cache, metric) - base
        assert ours.values.shape == theirs.shape, node
        assert (ours.values - theirs).abs().max() < TOL, node
    heads = exact_patching(model, clean, corrupt, metric, "z", per_position=False)
    theirs = patching.get_act_patch_attn_head_out_all_pos(model, clean, corrupt_cache, metric) - base
    assert (heads.values - theirs).abs().max() < TOL


# ------------------------------------------------------------------------------------ comparison


def test_agreement_is_spearman_and_top_k_recall():
    from scipy.stats import spearmanr

    from analyses.attribution import Attribution

    g = torch.Generator().manual_seed(1)
    exact_v = torch.randn(3, 5, 4, generator=g)
    est_v = exact_v + 0.8 * torch.randn(3, 5, 4, generator=g)
    make = lambda v, m: Attribution("z", m, "noise", v, ("layer", "pos", "head"), 0.0, 0.0)  # noqa: E731
    exact, est = make(exact_v, "exact"), make(est_v, "atp")
    got = agreement(est, exact, ks=(5, 10))
    assert abs(got.spearman - spearmanr(est_v.abs().flatten(), exact_v.abs().flatten()).statistic) < 1e-9
    for k in (5, 10):
        top = set(exact_v.abs().flatten().argsort(descending=True)[:k].tolist())
        mine = set(est_v.abs().flatten().argsort(descending=True)[:k].tolist())
        assert got.recall[k] == len(top & mine) / k
    star = make(exact_v.abs(), "atp*")  # a perfect magnitude ranking
    missed = recovered(est, star, exact, k=10)
    assert missed.recovered.all() and len(missed) == round(10 * (1 - got.recall[10]))
    flat = exact.table()
    assert list(flat.columns) == ["layer", "pos", "head", "value"] and len(flat) == 60


def test_bad_input_is_refused(decoders):
    model = decoders["gpt2"]
    clean, corrupt = token_pair()
    with pytest.raises(InputError, match="one shape"):
        attribution_patching(model, clean, corrupt[:, :-1], metric)
    with pytest.raises(InputError, match="unknown node"):
        attribution_patching(model, clean, corrupt, metric, ["heads"])
    with pytest.raises(InputError, match="method"):
        attribution_patching(model, clean, corrupt, metric, method="atp**")
    with pytest.raises(InputError, match="no MLPs"):
        attribution_patching(one_layer(), clean % 30, corrupt % 30, metric, ["mlp_out"])
