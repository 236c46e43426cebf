"""analyses/cross_attention.py on the shipped toy translator, whose gold alignment is known:
the aligning heads are found, their scores beat the monotonic-diagonal baseline, and ablating
them breaks translation far more than ablating as many other heads of the same layer; the
scores themselves are checked on patterns the test writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from analyses.cross_attention import (
    TranslationSet,
    ablate_against_random,
    alignment_scores,
    diagonal_baseline,
    translation_set,
)
from models.tasks import translate as tr
from probe.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return models.load("toy-translate")


@pytest.fixture(scope="module")
def held_out():
    return translation_set(tr.sample_examples("test", 256, 7), tr.batch)


def test_the_shipped_translator_translates_held_out_sentences(toy):
    metrics = tr.evaluate(toy, n=256)
    assert metrics["exact_match_test"] > 0.95, metrics
    assert toy.generate("the big dog sees a small cat") == "ka vusk grom nu mirel tisk vidak"


def test_scores_on_patterns_written_by_hand(toy, held_out):
    """Head 0 of layer 0 made to attend one-hot to the gold word scores alignment 1 and gold
    attention 1; made to attend along the diagonal it scores the diagonal baseline."""
    gold = held_out.gold

    def one_hot(where):
        def hook(pattern, hook):  # [b, h, t, s]
            pattern = pattern.clone()
            pattern[:, 0] = torch.nn.functional.one_hot(where, pattern.shape[-1]).float()
            return pattern
        return hook

    lengths = held_out.source_mask.sum(-1)[:, None]
    diagonal = torch.minimum(torch.arange(gold.shape[1])[None, :].expand_as(gold), lengths - 1)
    for where, want in ((gold.clamp(min=0), 1.0), (diagonal, diagonal_baseline(held_out))):
        with toy.hooks([("decoder.0.cross_attn.hook_pattern", one_hot(where))]):
            row = alignment_scores(toy, held_out).set_index("label").loc["L0H0"]
        assert row.alignment == pytest.approx(want)
    assert 0.2 < diagonal_baseline(held_out) < 0.5  # the reordering moves most words


def test_the_aligning_heads_are_found_and_needed(toy, held_out):
    scores = alignment_scores(toy, held_out)
    aligning = [(int(r.layer), int(r.head)) for r in scores.itertuples() if r.alignment > 0.9]
    assert aligning, scores
    assert scores.alignment.iloc[0] > scores.diagonal.iloc[0] + 0.5
    assert (scores.alignment.iloc[len(aligning):] < 0.5).all()  # the others do not align
    table = ablate_against_random(toy, held_out, aligning, draws=10).set_index("condition")
    assert table.loc["clean", "exact_match"] > 0.95
    assert table.loc["heads", "exact_match"] < 0.1
    random = table.loc[["random"]]
    assert table.loc["heads", "token_accuracy"] < random.token_accuracy.min() - 0.3


def test_what_cannot_be_scored_is_refused(toy, held_out):
    with pytest.raises(InputError, match="not an encoder-decoder"):
        alignment_scores(models.load("toy-induction"), held_out)
    with pytest.raises(InputError, match="no cross-attention head L5H0"):
        ablate_against_random(toy, held_out, [(5, 0)])
    with pytest.raises(InputError, match="gold source positions"):
        TranslationSet(held_out.source, held_out.source_mask, held_out.target, held_out.target_mask,
                       held_out.gold + 20)


def test_patching_is_exact_where_only_one_head_reads_the_source(toy, held_out):
    """Ground truth by construction: with every other cross-attention head's output weights zeroed,
    L1H2 is the decoder's only path to the source, so patching it restores all of the clean
    likelihood (denoise: 1) or loses all of it (noise: 0), and patching any other head does
    nothing (0 and 1)."""
    import copy

    from analyses.cross_attention import patch_cross_heads, shuffled_sources

    one_path = copy.deepcopy(toy)
    d = one_path.cfg.d_head
    with torch.no_grad():
        for layer, block in enumerate(one_path.decoder):
            for head in range(one_path.cfg.n_heads):
                if (layer, head) != (1, 2):
                    block.cross_attn.o_proj.weight[:, head * d:(head + 1) * d] = 0
    corrupt = shuffled_sources(held_out)
    for direction, mine, others in (("denoise", 1.0, 0.0), ("noise", 0.0, 1.0)):
        table = patch_cross_heads(one_path, held_out, corrupt, direction).set_index(["layer", "head"])
        assert table.loc[(1, 2), "normalized"] == pytest.approx(mine, abs=1e-4)
        assert np.allclose(table.drop(index=(1, 2)).normalized, others, atol=1e-4)
    # on the shipped toy the aligning heads carry most of what the source adds
    table = patch_cross_heads(toy, held_out, corrupt).set_index(["layer", "head"])
    assert table.normalized.idxmax() in {(1, 1), (1, 2)} and table.normalized.max() > 0.5
