"""`HookedEncoderDecoder` against `transformers` (eager) on tiny random BART, Marian, T5 and
T5 v1.1 checkpoints loaded through `models.load(dir)`: logits, both stacks' hidden states,
self- and cross-attention patterns on padded batches, greedy and beam-search decoding; the
cross-attention hooks as causal tools; the errors for inputs that cannot be answered."""

from __future__ import annotations

import pytest
import torch
from helpers import SEQ2SEQ_FAMILIES

import models
from models.encoder_decoder import HookedEncoderDecoder
from probe.errors import InputError, MissingHook

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
EOS = 5


def pair(seed: int = 0, b: int = 3, s: int = 7, t: int = 5):
    """Random source [b, s] and target [b, t] ids, each row padded at the right by a different amount."""
    g = torch.Generator().manual_seed(seed)
    source, target = torch.randint(6, 60, (b, s), generator=g), torch.randint(6, 60, (b, t), generator=g)
    source_mask, target_mask = torch.ones_like(source), torch.ones_like(target)
    for row in range(1, b):
        source_mask[row, max(1, s - 2 * row):] = 0
        target_mask[row, max(1, t - row):] = 0
    return source, source_mask, target, target_mask


@pytest.fixture(scope="module")
def loaded(seq2seq_checkpoints):
    return {family: models.load(path) for family, (path, _) in seq2seq_checkpoints.items()}


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_logits_hidden_states_and_patterns_match_transformers(seq2seq_checkpoints, loaded, family):
    hf, ours = seq2seq_checkpoints[family][1], loaded[family]
    assert isinstance(ours, HookedEncoderDecoder)
    source, source_mask, target, target_mask = pair(seed=len(family))
    with torch.no_grad():
        want = hf(input_ids=source, attention_mask=source_mask, decoder_input_ids=target,
                  decoder_attention_mask=target_mask, output_hidden_states=True, output_attentions=True)
        logits, cache = ours.run_with_cache(source, decoder_input=target, attention_mask=source_mask,
                                            decoder_attention_mask=target_mask)
        hidden = ours(source, target, source_mask, target_mask, return_type="hidden")
        encoded = ours.encode(source, source_mask.bool())
    src, tgt = source_mask.bool(), target_mask.bool()  # compare real positions only
    assert (want.logits - logits)[tgt].abs().max() < TOL
    # hidden_states[i] enters layer i; the last is the stack's output (after T5's final norm)
    for stack, states, valid, out in (("encoder", want.encoder_hidden_states, src, encoded),
                                      ("decoder", want.decoder_hidden_states, tgt, hidden)):
        for layer, state in enumerate(states[:-1]):
            assert (state - cache[f"{stack}.{layer}.hook_resid_pre"])[valid].abs().max() < TOL, (stack, layer)
        assert (states[-1] - out)[valid].abs().max() < TOL
    for name, attentions, valid in (("encoder.{l}.attn", want.encoder_attentions, src),
                                    ("decoder.{l}.attn", want.decoder_attentions, tgt),
                                    ("decoder.{l}.cross_attn", want.cross_attentions, tgt)):
        for layer, theirs in enumerate(attentions):
            pattern = cache[name.format(l=layer) + ".hook_pattern"]  # [b, head, query, key]
            assert pattern.shape == theirs.shape
            assert (theirs - pattern).permute(0, 2, 1, 3)[valid].abs().max() < TOL, (name, layer)
    assert cache["decoder.0.cross_attn.hook_pattern"].shape[-2:] == (target.shape[1], source.shape[1])


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
@pytest.mark.parametrize("beams,length_penalty,early_stopping", [(1, 1.0, False), (3, 1.0, False), (4, 0.6, True),
                                                                 (3, 2.0, "never"), (2, -0.5, False)])
def test_greedy_and_beam_search_equal_transformers_generate(seq2seq_checkpoints, loaded, family, beams,
                                                            length_penalty, early_stopping):
    hf, ours = seq2seq_checkpoints[family][1], loaded[family]
    source, source_mask, _, _ = pair(seed=3, b=5, s=8)
    settings = dict(num_beams=beams, length_penalty=length_penalty, early_stopping=early_stopping)
    want = hf.generate(input_ids=source, attention_mask=source_mask, max_new_tokens=8, do_sample=False,
                       forced_eos_token_id=None, forced_bos_token_id=None, use_cache=False, **settings)
    got = ours.generate(source, attention_mask=source_mask, max_new_tokens=8, **settings)
    uncached = ours.generate(source, attention_mask=source_mask, max_new_tokens=8, use_kv_cache=False, **settings)
    assert torch.equal(got, uncached)
    # (transformers' reference runs uncached: its cache breaks on a decoder deeper than the encoder)
    assert got.shape == want.shape
    for theirs, mine in zip(want.tolist(), got.tolist()):
        # rows that ended early are padded after EOS (transformers pads beam search with EOS
        # when the pad id is 0; we pad with the pad id): compare up to the first EOS
        end = theirs.index(EOS, 1) + 1 if EOS in theirs[1:] else len(theirs)
        assert mine[:end] == theirs[:end]


def test_the_generation_cases_end_at_different_lengths(seq2seq_checkpoints):
    """The equality above would be weak if every hypothesis ran to the limit: on BART and Marian
    some end early and some do not."""
    for family in ("bart", "marian"):
        hf = seq2seq_checkpoints[family][1]
        source, source_mask, _, _ = pair(seed=3, b=5, s=8)
        out = hf.generate(input_ids=source, attention_mask=source_mask, max_new_tokens=8, num_beams=3,
                          forced_eos_token_id=None, forced_bos_token_id=None, use_cache=False)
        ended = [EOS in row[1:-1] for row in out.tolist()]
        assert any(ended) and not all(ended), (family, out)


def test_text_in_text_out_and_target_tokens_start_with_the_decoder_start(loaded):
    ours = loaded["marian"]
    target = ours.to_tokens(["the cat sat", "a dog"], side="target")
    assert target[:, 0].tolist() == [ours.cfg.decoder_start_token_id] * 2
    assert target[0, 1:].tolist() == ours.tokenizer("the cat sat")["input_ids"]  # ends in </s>
    out = ours.generate("the cat sat on the mat", max_new_tokens=4)
    assert isinstance(out, str)
    ids = ours.generate(ours.to_tokens("the cat sat on the mat"), max_new_tokens=4)
    assert out == ours.to_string(ids[0])
    with torch.no_grad():
        assert torch.equal(ours("the cat sat", "a dog"), ours(ours.to_tokens("the cat sat"), ours.to_tokens("a dog", side="target")))


def test_hooks_fire_at_every_step_and_the_source_is_read_once(loaded):
    ours = loaded["bart"]
    calls: dict[str, list[tuple[int, ...]]] = {}

    def seen(x, hook):
        calls.setdefault(hook.name, []).append(tuple(x.shape))

    names = ["encoder.0.attn.hook_pattern", "decoder.0.attn.hook_pattern", "decoder.0.cross_attn.hook_pattern",
             "decoder.0.cross_attn.hook_k"]
    source = torch.randint(6, 60, (2, 6))
    with ours.hooks([(n, seen) for n in names]):
        out = ours.generate(source, max_new_tokens=5, stop_at_eos=False)
    steps = out.shape[1] - 1
    assert steps == 5
    assert len(calls["encoder.0.attn.hook_pattern"]) == 1
    assert len(calls["decoder.0.cross_attn.hook_k"]) == 1  # the source's keys, computed once
    assert len(calls["decoder.0.attn.hook_pattern"]) == steps
    # with the cache each step's query is the new position; cross patterns span the source
    assert calls["decoder.0.cross_attn.hook_pattern"] == [(2, 4, 1, 6)] * steps
    assert calls["decoder.0.attn.hook_pattern"] == [(2, 4, 1, k) for k in range(1, steps + 1)]
    assert not any(hp.has_hooks() for hp in ours.hook_dict.values())


def test_ablating_every_cross_attention_head_cuts_the_decoder_off_from_the_source(loaded):
    """Ground truth by construction: with every cross-attention head's output zeroed, nothing of
    the source reaches the decoder, so two different sources give the same logits; intact, they
    do not. Ablating one head changes the output only through that head."""
    ours = loaded["t5"]
    target = torch.randint(6, 60, (1, 4))
    a, b = torch.randint(6, 60, (1, 6)), torch.randint(6, 60, (1, 6))

    def zero(x, hook):
        return torch.zeros_like(x)

    cut = [(f"decoder.{layer}.cross_attn.hook_z", zero) for layer in range(ours.cfg.n_decoder_layers)]
    with torch.no_grad():
        assert (ours(a, target) - ours(b, target)).abs().max() > 1e-3
        assert (ours.run_with_hooks(a, fwd_hooks=cut, decoder_input=target)
                - ours.run_with_hooks(b, fwd_hooks=cut, decoder_input=target)).abs().max() < 1e-6

    def one_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with torch.no_grad():
        _, intact = ours.run_with_cache(a, decoder_input=target)
        ablated = {}
        ours.run_with_hooks(a, decoder_input=target, fwd_hooks=[
            ("decoder.0.cross_attn.hook_z", one_head),
            ("decoder.0.hook_cross_attn_out", lambda x, hook: ablated.setdefault("out", x))])
    # the layer's cross-attention output loses exactly head 1's term z_1 W_O[1]
    head_term = intact["decoder.0.cross_attn.hook_z"][:, :, 1] @ ours.decoder[0].cross_attn.W_O[1]
    assert head_term.abs().max() > 1e-3
    assert (intact["decoder.0.hook_cross_attn_out"] - head_term - ablated["out"]).abs().max() < 1e-5


def test_inputs_that_cannot_be_answered_are_refused(loaded, hf_checkpoints):
    ours = loaded["bart"]
    source, target = torch.randint(6, 60, (2, 5)), torch.randint(6, 60, (2, 4))
    with pytest.raises(InputError, match="needs a source"):
        ours(None, target)
    with pytest.raises(InputError, match="no target given"):
        ours(source)
    with pytest.raises(InputError, match="2 sources but 1 targets"):
        ours(source, target[:1])
    with pytest.raises(InputError, match="side must be"):
        ours.to_tokens("the cat", side="both")
    with pytest.raises(InputError, match="num_beams"):
        ours.generate(source, num_beams=0)
    with pytest.raises(InputError, match="do_sample=True"):
        ours.generate(source, top_k=3)
    with pytest.raises(InputError, match="ids must lie"):
        ours(source, target + 100)
    decoder_only = models.load(hf_checkpoints["gpt2"][0])
    with pytest.raises(MissingHook, match="cross_attn"):
        decoder_only.run_with_cache(torch.randint(6, 60, (1, 4)), names_filter="blocks.0.cross_attn.hook_pattern")
    with pytest.raises(InputError, match="not an encoder-decoder config"):
        HookedEncoderDecoder(decoder_only.cfg)


def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy(loaded):
    ours = loaded["marian"]
    source, source_mask, _, _ = pair(seed=4, b=4, s=6)
    greedy = ours.generate(source, attention_mask=source_mask, max_new_tokens=6)
    one = ours.generate(source, attention_mask=source_mask, max_new_tokens=6, do_sample=True, top_k=1, seed=3)
    assert torch.equal(one, greedy)
    a = ours.generate(source, attention_mask=source_mask, max_new_tokens=6, do_sample=True, temperature=2.0, seed=9)
    b = ours.generate(source, attention_mask=source_mask, max_new_tokens=6, do_sample=True, temperature=2.0, seed=9)
    c = ours.generate(source, attention_mask=source_mask, max_new_tokens=6, do_sample=True, temperature=2.0, seed=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
