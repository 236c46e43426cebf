"""Generation (models/generation.py): KV cache equals recomputation, greedy equals
transformers', batches with left padding equal single prompts, sampling filters behave,
hooks fire at every step."""

from __future__ import annotations

import pytest
import torch

import models
from models.generation import filter_logits


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_greedy_matches_transformers_and_cache_matches_recompute(family, hf_checkpoints):
    path, hf = hf_checkpoints[family]
    model = models.load(path)
    prompt = torch.tensor([[4, 9, 17, 23, 8]])
    ours = model.generate(prompt, max_new_tokens=8, stop_at_eos=False)
    no_cache = model.generate(prompt, max_new_tokens=8, stop_at_eos=False, use_kv_cache=False)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, no_cache)
    assert torch.equal(ours, theirs)


def test_batched_generation_equals_single_prompts(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    texts = ["the cat sat on the mat", "a dog"]
    batch = model.generate(texts, max_new_tokens=6, stop_at_eos=False)
    singles = [model.generate(t, max_new_tokens=6, stop_at_eos=False) for t in texts]
    assert batch == singles
    assert isinstance(batch[0], str)


def test_hooks_fire_at_every_step_and_see_generated_tokens(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    prompt = torch.tensor([[4, 9, 17, 23]])
    seen = []
    with model.hooks([("hook_embed", lambda x, hook: seen.append(x.detach().clone()))]):
        out = model.generate(prompt, max_new_tokens=5, stop_at_eos=False)
    assert len(seen) == 5  # the prompt, then one step per further token
    assert seen[0].shape == (1, 4, model.cfg.d_model)
    W_E = model.embed.W_E
    for step, x in enumerate(seen[1:]):
        assert x.shape == (1, 1, model.cfg.d_model)
        assert torch.equal(x[0, 0], W_E[out[0, 4 + step]])  # the token generated at the previous step


def test_sampling_is_seeded_and_top_k_1_is_greedy(hf_checkpoints):
    model = models.load(hf_checkpoints["llama"][0])
    prompt = torch.tensor([[4, 9, 17]])
    a = model.generate(prompt, 10, do_sample=True, temperature=1.5, seed=3, stop_at_eos=False)
    b = model.generate(prompt, 10, do_sample=True, temperature=1.5, seed=3, stop_at_eos=False)
    c = model.generate(prompt, 10, do_sample=True, temperature=1.5, seed=4, stop_at_eos=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt, 10, stop_at_eos=False)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, top_k=1, seed=0, stop_at_eos=False), greedy)


def test_filter_logits_on_a_known_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isinf(filter_logits(logits, 1.0, 2, None)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, 1.0, 2, None)[0, :2]).all()
    # top_p=0.8: keep 0.5 and 0.3 (cumulative 0.8), drop the rest
    kept = torch.isfinite(filter_logits(logits, 1.0, None, 0.8))[0].tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, 1.0, None, 0.81))[0].tolist()
    assert kept == [True, True, True, False]
    # temperature sharpens: softmax of logits / 0.5 equals probs^2 renormalised
    sharp = filter_logits(logits, 0.5, None, None).softmax(-1)
    assert torch.allclose(sharp, probs**2 / (probs**2).sum())
    with pytest.raises(ValueError):
        filter_logits(logits, 0.0, None, None)
