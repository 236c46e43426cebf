"""Generation (models/generation.py): KV cache equals recomputation, greedy equals
transformers', batches with left padding equal single prompts, sampling filters behave,
hooks fire at every step."""

from __future__ import annotations

import pytest
import torch

import models
from models.generation import filter_logits, sample_logits
from probe.errors import InputError


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_greedy_matches_transformers_and_cache_matches_recompute(family, hf_checkpoints):
    path, hf = hf_checkpoints[family]
    model = models.load(path)
    prompt = torch.tensor([[4, 9, 17, 23, 8]])
    ours = model.generate(prompt, max_new_tokens=8, stop_at_eos=False, do_sample=False)
    no_cache = model.generate(prompt, max_new_tokens=8, stop_at_eos=False, do_sample=False, use_past_kv_cache=False)
    alias = model.generate(prompt, max_new_tokens=8, stop_at_eos=False, do_sample=False, use_kv_cache=False)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, no_cache) and torch.equal(ours, alias)
    assert torch.equal(ours, theirs)


def test_batched_generation_equals_single_prompts(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    texts = ["the cat sat on the mat", "a dog"]
    batch = model.generate(texts, max_new_tokens=6, stop_at_eos=False, do_sample=False)
    singles = [model.generate(t, max_new_tokens=6, stop_at_eos=False, do_sample=False) for t in texts]
    assert batch == singles
    assert isinstance(batch[0], str)


def test_hooks_fire_at_every_step_and_see_generated_tokens(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    prompt = torch.tensor([[4, 9, 17, 23]])
    seen = []
    with model.hooks([("hook_embed", lambda x, hook: seen.append(x.detach().clone()))]):
        out = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, do_sample=False)
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
    greedy = model.generate(prompt, 10, stop_at_eos=False, do_sample=False)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, top_k=1, seed=0, stop_at_eos=False), greedy)


def test_filter_logits_on_a_known_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isinf(filter_logits(logits, 1.0, 2, None)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, 1.0, 2, None)[0, :2]).all()
    # top_p: the smallest set whose mass reaches top_p (0.5 + 0.3 >= 0.75; 0.85 needs 0.15 too)
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.75))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.85))[0].tolist() == [True, True, True, False]
    # temperature sharpens: softmax of logits / 0.5 equals probs^2 renormalised
    sharp = filter_logits(logits, 0.5, None, None).softmax(-1)
    assert torch.allclose(sharp, probs**2 / (probs**2).sum())
    with pytest.raises(ValueError):
        filter_logits(logits, 0.0, None, None)
    with pytest.raises(InputError, match="mutually exclusive"):
        filter_logits(logits, 1.0, 2, 0.5)


def test_freq_penalty_by_hand():
    """logits / temperature - freq_penalty * count: the penalty is not divided by the temperature."""
    logits = torch.tensor([[2.0, 4.0, -2.0, 6.0]])
    tokens = torch.tensor([[1, 1, 3]])
    expected = torch.tensor([[1.0, 2.0 - 0.5 * 2, -1.0, 3.0 - 0.5 * 1]])
    assert torch.equal(filter_logits(logits, 2.0, None, None, freq_penalty=0.5, tokens=tokens), expected)
    # padding (mask 0) is not counted
    mask = torch.tensor([[0, 1, 1]])
    expected[0, 1] = 2.0 - 0.5
    assert torch.equal(filter_logits(logits, 2.0, None, None, 0.5, tokens, mask), expected)
    with pytest.raises(InputError, match="freq_penalty"):
        filter_logits(logits, 1.0, None, None, freq_penalty=-1.0, tokens=tokens)


class _Captured:
    """Stands in for torch's Categorical inside TransformerLens's sample_logits: keeps the logits."""

    seen: list[torch.Tensor] = []

    def __init__(self, logits):
        _Captured.seen.append(logits.clone())
        self.logits = logits

    def sample(self):
        return self.logits.argmax(-1)


@pytest.mark.parametrize("temperature,top_k,top_p,freq_penalty", [
    (1.0, None, None, 0.0), (0.7, None, None, 0.3), (1.3, 5, None, 0.0), (0.9, 3, None, 1.5),
    (1.0, None, 0.6, 0.0), (2.0, None, 0.3, 0.8), (1.0, 100, None, 0.2)])
def test_filter_logits_equals_transformerlens_sample_logits(temperature, top_k, top_p, freq_penalty, monkeypatch):
    from transformer_lens.utilities import sample_logits as tl_sample_logits

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 50, generator=g)
    tokens = torch.randint(0, 50, (3, 12), generator=g)
    monkeypatch.setattr(torch.distributions.categorical, "Categorical", _Captured)
    _Captured.seen.clear()
    tl_sample_logits(logits.clone(), top_k=top_k, top_p=top_p, temperature=temperature,
                     freq_penalty=freq_penalty, tokens=tokens)
    ours = filter_logits(logits, temperature, top_k, top_p, freq_penalty, tokens)
    torch.testing.assert_close(ours, _Captured.seen[0], atol=1e-6, rtol=0)


def test_sample_logits_draws_what_transformerlens_draws():
    from transformer_lens.utilities import sample_logits as tl_sample_logits

    g = torch.Generator().manual_seed(1)
    logits, tokens = torch.randn(4, 30, generator=g), torch.randint(0, 30, (4, 6), generator=g)
    for kwargs in [{}, {"temperature": 0.5, "top_k": 4}, {"top_p": 0.7, "freq_penalty": 0.4}, {"temperature": 0.0}]:
        torch.manual_seed(7)
        ours = sample_logits(logits, tokens=tokens, **kwargs)
        torch.manual_seed(7)
        assert torch.equal(ours, tl_sample_logits(logits, tokens=tokens, **kwargs)), kwargs


def test_defaults_sample_as_transformerlens(hf_checkpoints):
    """do_sample=True by default, drawn from torch's global generator (torch.manual_seed
    reproduces it); temperature 0 is greedy; a temperature greedy would ignore is refused."""
    model = models.load(hf_checkpoints["gpt2"][0])
    prompt = torch.tensor([[4, 9, 17]])
    draws = []
    for s in (0, 0, 1):
        torch.manual_seed(s)
        draws.append(model.generate(prompt, 12, stop_at_eos=False, verbose=False))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    greedy = model.generate(prompt, 12, stop_at_eos=False, do_sample=False, verbose=False)
    assert torch.equal(model.generate(prompt, 12, stop_at_eos=False, temperature=0.0, verbose=False), greedy)
    assert torch.equal(model.generate(prompt, 12, stop_at_eos=False, do_sample=False, temperature=0.0,
                                      verbose=False), greedy)
    with pytest.raises(InputError, match="do_sample=False"):
        model.generate(prompt, 3, do_sample=False, temperature=0.7)
    with pytest.raises(InputError, match="padding_side"):
        model.generate(["a dog"], 3, padding_side="right")


def test_eos_token_id_int_or_list_stops(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    prompt = torch.tensor([[4, 9, 17, 23]])
    free = model.generate(prompt, 8, stop_at_eos=False, do_sample=False, verbose=False)[0, 4:].tolist()
    stop = free[2]
    first = free.index(stop)
    for eos in (stop, [60, stop], (stop,)):
        out = model.generate(prompt, 8, eos_token_id=eos, do_sample=False, verbose=False)
        assert out[0, 4:].tolist() == free[: first + 1], eos
    # a finished row is padded (with the tokenizer's EOS for a list) while the other goes on
    batch = torch.tensor([[4, 9, 17, 23], [5, 6, 7, 8]])
    other = model.generate(batch[1:], 8, stop_at_eos=False, do_sample=False, verbose=False)[0, 4:].tolist()
    out = model.generate(batch, 8, eos_token_id=[stop], do_sample=False, verbose=False)
    if stop not in other:
        assert out[1, 4:].tolist() == other
        assert out[0, 4 + first + 1:].eq(model.tokenizer.eos_token_id).all()


def test_return_type_input_follows_the_input(hf_checkpoints):
    model = models.load(hf_checkpoints["gpt2"][0])
    kw = {"max_new_tokens": 3, "stop_at_eos": False, "do_sample": False, "verbose": False}
    text = model.generate("the cat sat", **kw)
    assert isinstance(text, str) and text.startswith("the cat sat")
    texts = model.generate(["the cat sat", "a dog"], **kw)
    assert isinstance(texts, list) and texts[0] == text
    ids = model.to_tokens("the cat sat")
    tokens = model.generate(ids, **kw)
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (1, ids.shape[1] + 3)
    assert model.generate(ids, return_type="str", **kw) == text
    assert torch.equal(model.generate("the cat sat", return_type="tokens", **kw).cpu(), tokens.cpu())
    # TransformerLens's default input "": a prompt of just BOS
    assert model.generate(return_type="tokens", **kw)[0, 0].item() == model.tokenizer.bos_token_id


def test_verbose_shows_a_progress_bar(hf_checkpoints, capsys):
    model = models.load(hf_checkpoints["gpt2"][0])
    model.generate(torch.tensor([[4, 9]]), 3, stop_at_eos=False, verbose=False)
    assert "3/3" not in capsys.readouterr().err
    model.generate(torch.tensor([[4, 9]]), 3, stop_at_eos=False)
    assert "3/3" in capsys.readouterr().err
