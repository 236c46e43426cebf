"""Causal mediation per head (analyses/coref_mediation.py) on a tiny random-weight Llama asked
a question after WinoBias-style twins (same antecedent, the pronoun's gender flipped).

The ground truth is computed here the plain way: one sequence per candidate (the whole text
tokenized at once), log-softmax over the final logits, and the head patch written out with
`run_with_hooks` replacing ``blocks.{l}.attn.hook_z[:, :, h]`` by the other twin's cached z.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import build_hf

import models
import probe
from analyses import coref_mediation as cm
from analyses.coref_interventions import answer_table, continuation_batch
from probe.errors import InputError

QUESTION = " {pronoun} was"  # in the tiny tokenizer's word list (the default question's words are not)
HEADS = [(0, 1), (1, 0), (1, 3)]  # checked against the hand-written patch


def word_span(text: str, words: str, nth: int = 0) -> list[int]:
    """[start, end) of the ``nth`` occurrence of ``words`` as whole words in ``text``."""
    found = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(words)}(?!\w)", text)]
    return [found[nth], found[nth] + len(words)]


def record(text: str, pair: str, pronoun: str, gender: str, answer: int, candidates: tuple[str, str],
           occupations: tuple[str, str], stereotype: str) -> dict:
    """A WinoBias-style JSONL record (probe.prompts' label convention); ``pronoun`` is the
    last of its words in ``text`` (after the candidates)."""
    spans = [word_span(text, c) for c in candidates]
    p = word_span(text, pronoun, len(re.findall(rf"(?<!\w){re.escape(pronoun)}(?!\w)", text)) - 1)
    return {"text": text, "pair_id": pair, "variant": stereotype, "answer": answer, "pronoun": pronoun,
            "pronoun_span": p, "candidates": list(candidates), "candidate_spans": spans,
            "antecedent": candidates[answer], "antecedent_span": spans[answer], "stereotype": stereotype,
            "type": 1, "gender": gender, "candidate_occupations": list(occupations)}


CAT_DOG, DOG_CAT = ("the cat", "the dog"), ("the dog", "the cat")
DEV, CARP = ("developer", "designer"), ("carpenter", "nurse")  # male/female on WinoBias's lists
RECORDS = [
    # 0, 1: anti first: the pro twin (he -> the developer) must still be x
    record("the cat ran to the dog because she was tired .", "wb-1", "she", "female", 0, CAT_DOG, DEV, "anti"),
    record("the cat ran to the dog because he was tired .", "wb-1", "he", "male", 0, CAT_DOG, DEV, "pro"),
    # 2, 3: pro first (she -> the nurse)
    record("the dog sat on the mat and the cat said that she was old .", "wb-2", "she", "female", 1, DOG_CAT, CARP,
           "pro"),
    record("the dog sat on the mat and the cat said that he was old .", "wb-2", "he", "male", 1, DOG_CAT, CARP,
           "anti"),
    # 4, 5: the twins' candidates differ (a non-minimal pair): paired by labels, refused for mediation
    record("the cat ran to the dog because he was big .", "wb-3", "he", "male", 0, CAT_DOG, DEV, "pro"),
    record("the cat ran to the man because she was big .", "wb-3", "she", "female", 0, ("the cat", "the man"),
           DEV, "anti"),
    # 6, 7: the pronoun is two words in one twin: the question is a token longer, refused
    record("the cat ran to the dog because he was small .", "wb-4", "he", "male", 0, CAT_DOG, DEV, "pro"),
    record("the cat ran to the dog because she she small .", "wb-4", "she she", "female", 0, CAT_DOG, DEV, "anti"),
    # 8, 9: different token lengths: never paired
    record("the cat ran to the dog because he was red .", "wb-5", "he", "male", 0, CAT_DOG, DEV, "pro"),
    record("the cat ran to the big dog because she was red .", "wb-5", "she", "female", 0,
           ("the cat", "the big dog"), DEV, "anti"),
    # 10, 11: no stereotype in the data (occupations on no list): the group's order
    record("the dog ran to the cat and she was blue .", "wb-6", "she", "female", 1, DOG_CAT, ("dog", "cat"), "anti"),
    record("the dog ran to the cat and he was blue .", "wb-6", "he", "male", 1, DOG_CAT, ("dog", "cat"), "pro"),
    # 12, 13: seed-like twins: another antecedent, the same pronoun: no mediation pair
    record("the cat ran to the dog because it was new .", "wb-7", "it", "male", 0, CAT_DOG, DEV, "pro"),
    record("the cat ran to the dog because it was green .", "wb-7", "it", "male", 1, CAT_DOG, DEV, "pro"),
]
ALIGNED = [(1, 0), (2, 3), (10, 11)]
REFUSED = [(4, 5), (6, 7)]


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture in conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, run): a 2-layer, 4-head random-weight Llama with a word-level tokenizer, on RECORDS."""
    path = tmp_path_factory.mktemp("llama")
    build_hf("llama", path)
    model = models.load(path)
    prompts = tmp_path_factory.mktemp("prompts") / "wb.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    run = probe.record(model, prompts, tmp_path_factory.mktemp("tiny") / "run", names=["blocks.*.attn.hook_pattern"],
                       progress=False)
    return model, run


@pytest.fixture(scope="module")
def mediation(tiny):
    model, run = tiny
    return cm.head_mediation(model, run, cm.mediation_pairs(run, list(range(run.n_prompts))), QUESTION)


# ------------------------------------------------------------------ the ground truth, the plain way


def sequences(model, run, i: int) -> tuple[list[list[int]], int]:
    """Prompt i's text + question + each candidate's continuation, tokenized whole (one row
    per candidate), and which candidate is the antecedent."""
    r = RECORDS[i]
    context = r["text"] + QUESTION.format(pronoun=r["text"][slice(*r["pronoun_span"])])
    conts = [" " + c for c in r["candidates"]]
    assert run.prompt_records[i]["text"] == r["text"]
    return [model.tokenizer(context + c)["input_ids"] for c in conts], r["answer"]


def continuation_logprob(logits: torch.Tensor, ids: list[int], n_context: int) -> float:
    """Sum of log p(token) over the tokens after the first ``n_context``, from [p, vocab] logits."""
    logp = logits.float().log_softmax(-1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(n_context, len(ids)))


def plain_difference(model, run, i: int, source: int | None = None, head: tuple[int, int] | None = None) -> float:
    """log p(antecedent) - log p(other) on prompt i; with ``head`` = (l, h), that head's z
    replaced by its value on prompt ``source`` (the same candidate's sequence)."""
    rows, gold = sequences(model, run, i)
    n_context = len(model.tokenizer(RECORDS[i]["text"] + QUESTION.format(
        pronoun=RECORDS[i]["text"][slice(*RECORDS[i]["pronoun_span"])]))["input_ids"])
    lp = []
    with torch.no_grad():
        for c, ids in enumerate(rows):
            hooks = []
            if head is not None:
                layer, h = head
                other = sequences(model, run, source)[0][c]
                assert len(other) == len(ids)
                name = f"blocks.{layer}.attn.hook_z"
                _, cache = model.run_with_cache(torch.tensor([other]), names_filter=name)
                z_other = cache[name]  # [1, p, heads, d_head]

                def put(z, hook, z_other=z_other, h=h):
                    z = z.clone()
                    z[:, :, h] = z_other[:, :, h]
                    return z

                hooks = [(name, put)]
            logits = model.run_with_hooks(torch.tensor([ids]), hooks)[0]
            lp.append(continuation_logprob(logits, ids, n_context))
    return lp[gold] - lp[1 - gold]


# ------------------------------------------------------------------ tests


def test_pairs_are_oriented_by_the_stereotype_and_paired_only_where_they_can_be(tiny):
    _, run = tiny
    from probe.design import stereotype_choice

    assert [stereotype_choice(r) for r in RECORDS[:4]] == [1, 0, 1, 0]  # the labels say what the test assumes
    assert stereotype_choice(RECORDS[10]) is None
    pairs = cm.mediation_pairs(run, list(range(run.n_prompts)))
    # wb-1: x the pro twin though listed second; wb-2: pro first; wb-6 (no stereotype): the group's order;
    # wb-5: other token lengths; wb-7: another antecedent, the same pronoun
    assert pairs == [(1, 0), (2, 3), (4, 5), (6, 7), (10, 11)]
    assert cm.mediation_pairs(run, [0, 2, 3]) == [(2, 3)]  # only prompts in `used`
    for x, x_ in pairs[:2]:
        assert RECORDS[x]["stereotype"] == "pro" and RECORDS[x_]["stereotype"] == "anti"


def test_total_effect_is_the_answer_tables_difference(tiny, mediation):
    model, run = tiny
    m = mediation
    assert m.n_pairs == len(ALIGNED) and m.dropped == tuple(REFUSED) and m.question == QUESTION
    base = answer_table(model, run, [x for x, _ in ALIGNED], QUESTION).difference.to_numpy()
    swapped = answer_table(model, run, [x_ for _, x_ in ALIGNED], QUESTION).difference.to_numpy()
    assert m.y_base == pytest.approx(base.mean(), abs=1e-5)
    assert m.y_intervened == pytest.approx(swapped.mean(), abs=1e-5)
    assert m.total_effect == pytest.approx((swapped - base).mean(), abs=1e-5)
    assert abs(m.total_effect) > 1e-3  # a real effect to mediate on these random weights
    # and the plain computation agrees with answer_table
    assert m.y_base == pytest.approx(np.mean([plain_difference(model, run, x) for x, _ in ALIGNED]), abs=1e-4)


def test_nie_and_nde_equal_the_hand_written_patch(tiny, mediation):
    model, run = tiny
    table = mediation.table.set_index(["layer", "head"])
    y_base = np.mean([plain_difference(model, run, x) for x, _ in ALIGNED])
    for head in HEADS:
        nie = np.mean([plain_difference(model, run, x, x_, head) for x, x_ in ALIGNED]) - y_base
        nde = np.mean([plain_difference(model, run, x_, x, head) for x, x_ in ALIGNED]) - y_base
        row = table.loc[head]
        assert row.nie == pytest.approx(nie, abs=1e-4), head
        assert row.nde == pytest.approx(nde, abs=1e-4), head
        assert row.nie_share == pytest.approx(nie / mediation.total_effect, rel=1e-3, abs=1e-4)
    assert len(mediation.table) == model.cfg.n_layers * model.cfg.n_heads
    assert list(zip(mediation.table.layer, mediation.table["head"])) == [
        (la, h) for la in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    assert (mediation.table.te == mediation.total_effect).all() and (mediation.table.n_pairs == 3).all()
    assert table.nie.abs().max() > 1e-3  # some head mediates something: the check above is not 0 == 0


def test_chunks_average_to_the_same_effects(tiny, mediation):
    model, run = tiny
    one_by_one = cm.head_mediation(model, run, ALIGNED, QUESTION, chunk_pairs=1)
    assert one_by_one.total_effect == pytest.approx(mediation.total_effect, abs=1e-5)
    # float32 sums in batches of other shapes (1 pair vs all, other padding): measured up to 1.5e-4 on
    # effects of about 7 nats (2e-5 relative) under a loaded machine, hence the project's usual 1e-4
    for column in ("nie", "nde", "nie_share"):
        np.testing.assert_allclose(one_by_one.table[column], mediation.table[column], rtol=1e-4, atol=1e-4)


def test_chunks_whose_own_effect_is_zero_are_merged():
    assert cm.effect_chunks([1.0, 0.0, 2.0], 1) == [[0], [1, 2]]
    assert cm.effect_chunks([0.0, 1.0, 0.0, 0.0], 1) == [[0, 1, 2, 3]]  # the last one joins the one before
    assert cm.effect_chunks([0.5, -0.5, 1.0], 2) == [[0, 1, 2]]
    assert cm.effect_chunks([1.0] * 5, 2) == [[0, 1], [2, 3], [4]]


def test_unaligned_pairs_are_dropped_or_refused(tiny):
    model, run = tiny
    kept, dropped = cm.split_aligned(model, run, ALIGNED + REFUSED, QUESTION, "pronoun_span")
    assert kept == ALIGNED
    assert [pair for pair, _ in dropped] == REFUSED
    assert "continuations differ" in dropped[0][1] and "token lengths differ" in dropped[1][1]
    with pytest.raises(InputError, match="none of the 2 mediation pairs lines up token for token.*prompts 4 and 5"):
        cm.head_mediation(model, run, REFUSED, QUESTION)
    x, x_ = (continuation_batch(model, run, [i], QUESTION) for i in (6, 7))
    with pytest.raises(InputError, match="do not line up token for token.*token lengths differ"):
        cm.check_mediation_aligned(x, x_)
    cm.check_mediation_aligned(*(continuation_batch(model, run, [i], QUESTION) for i in (1, 0)))  # he vs she: fine


def test_no_total_effect_and_no_pairs_are_refused(tiny):
    model, run = tiny
    with pytest.raises(InputError, match="no total effect to mediate"):
        cm.head_mediation(model, run, [(1, 1), (2, 2)], QUESTION)  # x' = x: the swap changes nothing
    with pytest.raises(InputError, match="no mediation pairs"):
        cm.head_mediation(model, run, [], QUESTION)
    with pytest.raises(InputError, match="chunk_pairs must be a positive integer"):
        cm.head_mediation(model, run, ALIGNED, QUESTION, chunk_pairs=0)


def test_render_names_the_top_heads_and_the_attention_heads_verdict(mediation):
    m = mediation
    t = m.table
    by_size = sorted(zip(t.nie.abs(), t.layer, t["head"]), key=lambda r: (-r[0], r[1], r[2]))
    top = [(int(la), int(h)) for _, la, h in by_size[:3]]
    outside = next((la, h) for _, la, h in by_size[3:])
    lines = cm.render_mediation(m, [top[1], (int(outside[0]), int(outside[1]))], top=3)
    text = "\n".join(lines)
    assert lines[0] == "## Causal mediation by head" and f"TE = y(x') - y(x) = {m.total_effect:+.3f}" in text
    listed = [line for line in lines if line.startswith("- L") and "NIE" in line]
    assert [line.split(":")[0][2:] for line in listed] == [f"L{la}H{h}" for la, h in top]
    assert f"- L{top[1][0]}H{top[1][1]}: agree (rank 2)" in lines
    assert f"- L{outside[0]}H{outside[1]}: disagree" in lines
    assert "2 pairs did not line up" in text and "1 is among the top 3" in text
    assert cm.render_mediation(m, [], top=1)[-1] == "Attention accuracy names no heads to compare with."
    with pytest.raises(InputError):
        cm.render_mediation(m, [], top=0)


# ------------------------------------------------------------------ SmolLM2 on real WinoBias twins (no patching: cheap)


def test_smollm2_winobias_twins_pair_pro_to_anti_and_line_up_after_the_default_question(smollm2, tmp_path):
    """Real WinoBias-dev twins (he/she, her/his, him/her; one group listed anti first; the
    desk pair whose anti line ends in "one" instead of "a desk"): pro -> anti pairs of equal
    token length, which line up token for token after the default question; the rows of x
    and x' differ in the sentence's pronoun and in the question's, nowhere else."""
    dev = probe.load_prompts("winobias-dev")
    chosen = [dev[i] for i in (396, 0, 1, 397, 1189, 793, 91, 487)]
    run = probe.record(smollm2, chosen, tmp_path / "run", names=["blocks.0.attn.hook_pattern"], progress=False)
    assert len(run.tokens(6)) != len(run.tokens(7))  # the desk pair: other token lengths
    pairs = cm.mediation_pairs(run, list(range(run.n_prompts)))
    assert pairs == [(1, 0), (2, 3), (5, 4)]
    assert all(chosen[x].labels["stereotype"] == "pro" and chosen[x_].labels["stereotype"] == "anti" for x, x_ in pairs)
    kept, dropped = cm.split_aligned(smollm2, run, pairs, cm.DEFAULT_QUESTION, "pronoun_span")
    assert kept == pairs and dropped == []
    for x, x_ in pairs:
        a, b = (continuation_batch(smollm2, run, [i], cm.DEFAULT_QUESTION).tokens[0] for i in (x, x_))
        n = len(run.tokens(x))
        pronouns = {p for span in chosen[x].labels["pronoun_spans"] for p in run.tokens_in(x, *span)}
        differ = set(np.flatnonzero((a != b).numpy()).tolist())
        assert {p for p in differ if p < n} == pronouns
        question = len(smollm2.tokenizer(" The pronoun '", add_special_tokens=False)["input_ids"])
        assert {p for p in differ if p >= n} == {n + question}  # the pronoun in the question, one token


def test_the_total_effects_interval_and_test_are_over_pairs():
    """TE's interval is a bootstrap over the pairs and its p-value a two-sided sign flip of the
    pair effects, checked against scipy's exact permutation test."""
    from scipy import stats

    from analyses.coref_mediation import Mediation

    effects = (-0.9, -0.4, -1.2, 0.3, -0.7, -0.2, -0.5, -0.8, 0.1, -0.6)
    m = Mediation(pd.DataFrame(), float(np.mean(effects)), 0.5, 0.5 + float(np.mean(effects)), len(effects), "q",
                  pair_effects=effects)
    low, high = m.total_effect_ci()
    assert low < np.mean(effects) < high < 0
    ref = stats.permutation_test((np.asarray(effects),), np.mean, permutation_type="samples", alternative="two-sided",
                                 n_resamples=np.inf).pvalue
    assert m.total_effect_p() == pytest.approx(ref)
