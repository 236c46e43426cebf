"""analyses/ioi_circuit.py's pieces against references on a random GPT-2 (weights processed as
TransformerLens does) with IOI prompts whose names are words of the test tokenizer:

- the task's named positions are where the names' tokens are (IO once, S twice, END last), and
  its groups are prompts whose template, order and positions agree;
- the direct effects equal `analyses.ioi.head_dla` (itself checked by hand and against the
  residual decomposition), and with heads mean-ablated equal a hand-written hook run;
- the copying score of a head is the share of prompts whose IO token is in the top 5 of
  W_U applied to the final norm of OV of the stream after block 0, computed by hand;
- the attention evidence is the recorded pattern at the named positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import processed_model

from analyses.circuit import group_means
from analyses.ioi import head_dla
from analyses.ioi_circuit import attention_evidence, copying_scores, direct_effects, ioi_task
from probe.ioi_prompts import ioi_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "man", "woman", "house", "street", "animal"]


@pytest.fixture(scope="module")
def setup(hf_checkpoints):
    model = processed_model(hf_checkpoints["gpt2"][0]).eval()
    prompts = ioi_prompts(24, seed=2, tokenizer=model.tokenizer, names=NAMES)
    return model, prompts, ioi_task(model, prompts)


def test_positions_are_where_the_names_are(setup):
    model, prompts, task = setup
    seen = 0
    for batch in task.batches:
        for i in range(len(batch.clean)):
            toks = batch.clean[i]
            pos = {k: int(v[i]) for k, v in batch.positions.items()}
            assert toks[pos["IO"]] == batch.answer[i] and toks[pos["S1"]] == toks[pos["S2"]] == batch.wrong[i]
            assert pos["S1"] < pos["S2"] < pos["END"] == len(toks) - 1 and pos["S1+1"] == pos["S1"] + 1
            assert (toks == batch.answer[i]).sum() == 1
            seen += 1
        for g in batch.group.unique():  # a group's prompts line up
            rows = (batch.group == g).nonzero().flatten()
            for name in ("IO", "S1", "S2"):
                assert len(set(batch.positions[name][rows].tolist())) == 1
    assert seen == len(prompts)


def test_direct_effects_equal_head_dla(setup):
    model, prompts, task = setup
    ref = head_dla(model, prompts)
    ours = direct_effects(model, task)
    np.testing.assert_allclose(ours[ref.layer, ref["head"]], ref.dla, atol=1e-4)


@torch.no_grad()
def test_direct_effects_with_heads_mean_ablated_equal_a_hook_run(setup):
    model, _, task = setup
    means = group_means(model, task)
    ablate = [(0, 1), (1, 2)]
    ours = direct_effects(model, task, ablate, means)
    total = np.zeros_like(ours)
    for batch, mean in zip(task.batches, means):
        def hook(z, hook, mean=mean):
            layer = int(hook.name.split(".")[1])
            z = z.clone()
            for lyr, h in ablate:
                if lyr == layer:
                    z[:, :, h] = mean[hook.name][:, :, h]
            return z

        with model.hooks(fwd_hooks=[(f"blocks.{lyr}.attn.hook_z", hook) for lyr in range(model.cfg.n_layers)]):
            _, cache = model.run_with_cache(batch.clean)
        rows = torch.arange(len(batch.clean))
        for layer in range(model.cfg.n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # [b, h, d]
            out = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer]) / cache["ln_final.hook_scale"][rows, -1][:, None]
            direction = (model.W_U[:, batch.answer] - model.W_U[:, batch.wrong]).T
            total[layer] += torch.einsum("bhm,bm->h", out, direction).numpy()
    np.testing.assert_allclose(ours, total / task.n, atol=1e-4)
    assert not np.allclose(ours, direct_effects(model, task), atol=1e-3)  # the ablation changed something


@torch.no_grad()
def test_copying_score_by_hand(setup):
    model, _, task = setup
    heads = [(1, 0), (0, 3)]
    ours = copying_scores(model, task, heads)
    for (layer, head), copy, neg in zip(heads, ours["copy"], ours["neg_copy"]):
        hits = np.zeros(2)
        for batch in task.batches:
            _, cache = model.run_with_cache(batch.clean)
            for i in range(len(batch.clean)):
                x = cache["blocks.0.hook_resid_post"][i, batch.positions["IO"][i]]
                ov = x @ model.W_V[layer, head] @ model.W_O[layer, head]
                for j, sign in enumerate((1, -1)):
                    logits = model.ln_final(sign * ov) @ model.W_U
                    hits[j] += int(batch.answer[i]) in logits.topk(5).indices.tolist()
        assert copy == pytest.approx(hits[0] / task.n) and neg == pytest.approx(hits[1] / task.n)


@torch.no_grad()
def test_attention_evidence_is_the_pattern_at_the_named_positions(setup):
    model, _, task = setup
    ours = attention_evidence(model, task)
    batch = task.batches[0]
    _, cache = model.run_with_cache(batch.clean)
    pattern = cache["blocks.1.attn.hook_pattern"]  # [b, h, q, k]
    want = np.zeros(model.cfg.n_heads)
    for b in task.batches:
        _, c = model.run_with_cache(b.clean)
        p = c["blocks.1.attn.hook_pattern"]
        for i in range(len(b.clean)):
            want += p[i, :, b.positions["END"][i], b.positions["IO"][i]].numpy()
    row = ours[ours.layer == 1].sort_values("head")
    np.testing.assert_allclose(row.attn_end_io, want / task.n, atol=1e-5)
    assert pattern.shape[1] == model.cfg.n_heads
