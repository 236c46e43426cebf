"""models/hooked_transformer.py's HookedTransformer: the forward pass resumed at a layer
(``start_at_layer``) from a cached residual stream equals the full run, on padded batches of
an encoder and a decoder, and token ids are refused there; run_with_cache refuses hook names
the model lacks as run_with_hooks does. (The rest of the hook API is tested in test_hooks.py.)"""

from __future__ import annotations

import pytest
import torch

import models
from models import InputError, MissingHook


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


def refusal(call, *args, **kwargs) -> str:
    """The MissingHook message ``call(*args, **kwargs)`` raises."""
    with pytest.raises(MissingHook) as e:
        call(*args, **kwargs)
    return str(e.value)


def test_run_with_cache_refuses_unknown_hook_names_as_run_with_hooks_does():
    """A names_filter naming a hook the model lacks (a typo, a layer past the last) or a glob
    matching nothing is refused with run_with_hooks's message, not answered with an empty cache;
    a predicate is the caller's own and may match nothing."""
    toy = models.load("toy-coref")
    ids = toy.to_tokens("the animal was tired")
    ignore = lambda x, hook: None  # noqa: E731
    for missing in ("blocks.0.attn.hook_nope", "blocks.9.hook_resid_post", "blocks.9.*", "hook_*nope"):
        expected = refusal(toy.run_with_hooks, ids, [(missing, ignore)])
        assert refusal(toy.run_with_cache, ids, names_filter=missing) == expected
        # one unknown name among good ones, and a glob among exact names, are refused just the same
        assert refusal(toy.run_with_cache, ids, names_filter=["blocks.0.hook_resid_post", missing]) == expected
        assert refusal(toy.run_with_cache, ids, names_filter=("blocks.*.hook_resid_post", missing)) == expected
    _, cache = toy.run_with_cache(ids, names_filter=["blocks.0.hook_resid_post", "blocks.*.attn.hook_pattern"])
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post",
                                    "blocks.1.attn.hook_pattern"]
    assert len(toy.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_nope"))[1].keys()) == 0
