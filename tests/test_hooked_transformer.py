"""models/hooked_transformer.py's HookedTransformer: the forward pass resumed at a layer
(``start_at_layer``) from a cached residual stream equals the full run, on padded batches of
an encoder and a decoder, and token ids are refused there. (The hook API is tested in
test_hooks.py.)"""

from __future__ import annotations

import pytest
import torch

import models
from models import InputError


def test_start_at_layer_resumes_the_forward_pass(minilm):
    """A padded batch resumed from a cached resid_pre gives the full run's output (encoder
    and decoder)."""
    toy = models.load("toy-induction")
    for model, texts in ((minilm, ["The animal didn't cross the street.", "It was tired."]), (toy, None)):
        if texts is None:
            tokens, mask = torch.randint(0, toy.cfg.d_vocab, (2, 12)), torch.ones(2, 12, dtype=torch.long)
            mask[1, 9:] = 0
        else:
            tok = model.tokenize(texts)
            tokens, mask = tok.ids, tok.attention_mask
        with torch.no_grad():
            full, cache = model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_pre", attention_mask=mask)
            for layer in range(1, model.cfg.n_layers):
                resumed = model(cache["resid_pre", layer], attention_mask=mask, start_at_layer=layer)
                real = mask.bool()
                assert torch.allclose(resumed[real], full[real], atol=1e-5)
    with pytest.raises(InputError, match="residual stream"):
        minilm(tokens, start_at_layer=1)
