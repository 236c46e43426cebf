"""models/tasks (induction, coref): the shipped toy models trained on them do what the tasks'
ground truth says. The training code is tested in test_training.py."""

from __future__ import annotations

import pytest
import torch

import models
from models.tasks import coref, induction


@pytest.fixture(scope="module")
def toy_induction():
    return models.load("toy-induction")


@pytest.fixture(scope="module")
def toy_coref():
    return models.load("toy-coref")


def test_induction_model_predicts_the_repeated_half(toy_induction):
    ids = induction.repeated_tokens(torch.Generator().manual_seed(7), 128)
    loss = induction.per_position_loss(toy_induction, ids)
    first, repeated = induction.repeated_positions()
    first_half, repeated_half = loss[:, first].mean().item(), loss[:, repeated].mean().item()
    assert first_half > 3.0  # random tokens stay unpredictable (uniform: ln 48 = 3.87)
    assert first_half - repeated_half > 2.0, (first_half, repeated_half)


def test_coref_model_resolves_held_out_combinations(toy_coref):
    test = coref.all_examples("test")
    train_triples = {(e.answer, e.other, e.adjective) for e in coref.all_examples("train")}
    assert not any((e.answer, e.other, e.adjective) in train_triples for e in test)  # truly held out
    preds = coref.predictions(toy_coref, test)
    accuracy = sum(p == e.answer for p, e in zip(preds, test)) / len(test)
    assert accuracy > 0.95, accuracy
    # Both answer positions occur, so position alone cannot score this.
    first = [e for e in test if e.antecedent_pos < e.other_pos]
    assert 0.3 < len(first) / len(test) < 0.7


def test_coref_ground_truth_positions_match_the_tokenizer(toy_coref):
    for e in coref.all_examples("test")[:50]:
        toks = toy_coref.to_str_tokens(e.text)
        assert toks[e.pronoun_pos] == "it"
        assert toks[e.antecedent_pos] == e.answer and toks[e.other_pos] == e.other
        assert toks[e.adjective_pos] == e.adjective
        vocab = {w: i for i, w in enumerate(coref.vocabulary())}
        assert toy_coref.to_tokens(e.text)[0].tolist() == coref.ids_of(e, vocab)


def test_seed_sentence_with_the_toy_coref_model(toy_coref):
    for adj, answer in [("tired", "animal"), ("wide", "street")]:
        text = f"The animal didn't cross the street because it was {adj}. The {adj} one was the"
        out = toy_coref.generate(text, max_new_tokens=1, do_sample=False)
        assert out.split()[-1] == answer


def test_induction_model_has_previous_token_and_induction_heads(toy_induction):
    """The ground truth later analyses are checked against: layer 0 holds previous-token
    heads, layer 1 induction heads, and ablating the induction heads destroys the repeat."""
    ids = induction.repeated_tokens(torch.Generator().manual_seed(11), 64)
    _, cache = toy_induction.run_with_cache(ids, names_filter="blocks.*.attn.hook_pattern")
    half = induction.HALF
    queries = torch.arange(half + 1, 2 * half)
    prev = {layer: cache["pattern", layer].diagonal(offset=-1, dim1=-2, dim2=-1)[:, :, 1:].mean((0, 2))
            for layer in range(2)}
    ind = {layer: cache["pattern", layer][:, :, queries, queries - half + 1].mean((0, 2)) for layer in range(2)}
    assert prev[0].max() > 2 * prev[1].max() and prev[0].max() > 0.2
    assert ind[1].max() > 2 * ind[0].max() and ind[1].max() > 0.4
    induction_heads = [h for h in range(4) if ind[1][h] > 0.3]

    def ablate(z, hook):
        z = z.clone()
        z[:, :, induction_heads] = 0
        return z

    first, repeated = induction.repeated_positions()
    with toy_induction.hooks([("blocks.1.attn.hook_z", ablate)]):
        loss = induction.per_position_loss(toy_induction, ids)
    assert loss[:, repeated].mean() > 3.0  # back near chance without the induction heads
