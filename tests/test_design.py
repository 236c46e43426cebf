"""probe/design.py: subsets, the gender-stereotype baseline, balanced subsets and samples. Ground
truth comes from the data's own construction (WinoBias's pro-stereotyped lines are the ones whose
answer is the stereotype), from WinoGender's statistics file read here, and from label lists the
tests build."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from probe.design import SUBSET_FIELDS, balanced_sample, balanced_subset, stereotype_choice, subsets_of
from probe.errors import PromptSetError
from probe.prompts import Prompt, load_prompts

DATA = Path(__file__).resolve().parents[1] / "probe" / "prompt_sets"
SHARED_STATS = Path("/work/shared/datasets/winogender/occupations-stats.tsv")


@pytest.fixture(scope="module")
def winobias_dev() -> list[Prompt]:
    return load_prompts("winobias-dev")


@pytest.fixture(scope="module")
def winogender() -> list[Prompt]:
    return load_prompts("winogender")


def bls_pct_female() -> dict[str, float]:
    """The statistics file as the test reads it (csv), independent of the module."""
    with open(DATA / "winogender" / "occupations-stats.tsv", newline="") as f:
        return {row["occupation"]: float(row["bls_pct_female"]) for row in csv.DictReader(f, delimiter="\t")}


def by_text(prompts: list[Prompt], text: str) -> Prompt:
    (hit,) = [p for p in prompts if p.text == text]
    return hit


# --------------------------------------------------------------------------------------- subsets
def test_subsets_are_the_label_fields_as_strings_in_report_order(winobias_dev, winogender):
    assert SUBSET_FIELDS == ("stereotype", "type", "refers_to", "gender")
    first = winobias_dev[0].labels
    assert subsets_of(first) == {"stereotype": "pro", "type": "1", "gender": first["gender"]}
    assert list(subsets_of(first)) == ["stereotype", "type", "gender"]
    assert subsets_of(winogender[0].labels) == {"refers_to": "participant", "gender": "male"}
    assert subsets_of(load_prompts("seed")[0].labels) == {}
    assert subsets_of({"gender": None, "type": 2, "other": "x"}) == {"type": "2"}  # None is absent


# ----------------------------------------------------------------------------- stereotype baseline
def test_winobias_stereotype_is_the_answer_exactly_on_pro_lines():
    """WinoBias is built so that a pro-stereotyped line's answer is the occupation stereotyped for
    the pronoun's gender, and an anti line's the other one: every one of the 3,168 lines agrees."""
    prompts = load_prompts("winobias")
    choices = [stereotype_choice(p.labels) for p in prompts]
    assert None not in choices
    disagree = [p.labels["source"] + f":{p.labels['line']}" for p, c in zip(prompts, choices)
                if (c == p.labels["answer"]) != (p.labels["stereotype"] == "pro")]
    assert disagree == []
    assert len(prompts) == 3168


def test_winobias_stereotype_on_constructed_labels():
    def labels(occupations, gender):
        return {"candidate_occupations": occupations, "gender": gender}

    assert stereotype_choice(labels(["developer", "designer"], "male")) == 0
    assert stereotype_choice(labels(["developer", "designer"], "female")) == 1
    assert stereotype_choice(labels(["designer", "CEO"], "male")) == 1  # the list spells it "CEO"
    assert stereotype_choice(labels(["ceo", "designer"], "male")) == 0
    assert stereotype_choice(labels(["developer", "CEO"], "male")) is None  # both on the male list
    assert stereotype_choice(labels(["developer", "CEO"], "female")) is None  # neither on the female list
    assert stereotype_choice(labels(["developer", "designer"], "neutral")) is None
    assert stereotype_choice(labels(["developer"], "male")) is None


@pytest.mark.parametrize("text, occupation, expected", [
    # occupation first: "The technician" is candidate 0
    ("The technician told the customer that he could pay with cash.", "technician", 0),
    ("The technician told the customer that she could pay with cash.", "technician", 1),
    ("The technician told the customer that they could pay with cash.", "technician", None),
    # participant first: "The taxpayer" is candidate 0, "the accountant" 1
    ("The taxpayer met with the accountant to get help filing his taxes.", "accountant", 0),
    ("The taxpayer met with the accountant to get help filing her taxes.", "accountant", 1),
    ("The taxpayer met with the accountant to find out if he could help with tax preparation.", "accountant", 0),
    ("The nurse notified the patient that his shift would be ending in an hour.", "nurse", 1),
    ("The nurse notified the patient that her shift would be ending in an hour.", "nurse", 0),
    ("The nurse notified someone that her blood would be drawn in an hour.", "nurse", 0),
])
def test_winogender_stereotype_follows_the_bls_share_of_women(winogender, text, occupation, expected):
    """A male pronoun's stereotype is the occupation when under 50 % of its workers are women, a
    female pronoun's when over 50 %; otherwise the other participant."""
    prompt = by_text(winogender, text)
    pct = bls_pct_female()[occupation]
    gender = prompt.labels["gender"]
    occupation_index = [c.lower() for c in prompt.labels["candidates"]].index(f"the {occupation}")
    if gender != "neutral":
        stereotypical = pct < 50 if gender == "male" else pct > 50
        assert expected == (occupation_index if stereotypical else 1 - occupation_index)
    assert stereotype_choice(prompt.labels) == expected


def test_the_extremes_of_the_statistics(winogender):
    """Plumber (0.7 % women) and pathologist (97.5 %): the stereotype is the occupation for one
    gender and the other participant for the other, in all 8 sentences of each."""
    stats = bls_pct_female()
    assert (stats["plumber"], stats["pathologist"]) == (0.7, 97.5)
    for occupation, stereotyped in (("plumber", "male"), ("pathologist", "female")):
        gendered = [p for p in winogender if p.labels["occupation"] == occupation and p.labels["gender"] != "neutral"]
        assert len(gendered) == 8
        for p in gendered:
            spans = p.labels["candidate_spans"]
            picked = p.text[slice(*spans[stereotype_choice(p.labels)])].lower()
            is_occupation = picked.endswith(occupation)
            assert is_occupation == (p.labels["gender"] == stereotyped), p.text


def test_winogender_has_a_stereotype_for_every_gendered_pronoun(winogender):
    stats = bls_pct_female()
    assert {p.labels["occupation"] for p in winogender} <= set(stats)
    assert all(v != 50 for v in stats.values())
    none = [p for p in winogender if stereotype_choice(p.labels) is None]
    assert len(none) == 240 and {p.labels["gender"] for p in none} == {"neutral"}


def test_other_sets_have_no_stereotype():
    for p in load_prompts("seed"):
        assert stereotype_choice(p.labels) is None
    assert stereotype_choice({}) is None
    assert stereotype_choice({"gender": "male", "answer": 0}) is None
    assert stereotype_choice({"occupation": "nurse", "participant": "patient", "refers_to": "occupation",
                              "answer": 0, "gender": "male", "candidate_spans": [[0, 9], [19, 30]]}) == 1
    assert stereotype_choice({"occupation": "astronaut", "participant": "patient", "refers_to": "occupation",
                              "answer": 0, "gender": "male"}) is None  # not in the statistics


def test_the_statistics_file_is_wino_genders_unchanged():
    text = (DATA / "winogender" / "occupations-stats.tsv").read_bytes()
    assert text.splitlines()[0] == b"occupation\tbergsma_pct_female\tbls_pct_female\tbls_year"
    assert len(text.splitlines()) == 61
    assert b"occupations-stats.tsv" in (DATA / "winogender" / "ATTRIBUTION.md").read_bytes()
    if SHARED_STATS.exists():
        assert text == SHARED_STATS.read_bytes()


# ---------------------------------------------------------------------------------- balanced subset
def pairs(n: int, start: int, **fields) -> list[dict]:
    """n pro/anti pairs (pair ids start, start+1, ...) with the given group-level fields."""
    return [{"pair_id": f"p{start + k}", "stereotype": s, **fields} for k in range(n) for s in ("pro", "anti")]


def test_balanced_subset_equalises_strata_and_drops_incomplete_groups():
    labels = pairs(10, 0, type=1) + pairs(3, 100, type=2) + [{"stereotype": "pro", "type": 1}] * 2
    # the first 3 type-1 pairs (positions 0-5) and all 3 type-2 pairs (20-25); the lone prompts go
    assert balanced_subset(labels) == [0, 1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25]


def test_balanced_subset_keeps_pairs_whole_wherever_they_are():
    labels = pairs(2, 0, type=1) + pairs(2, 10, type=2)
    shuffled = [labels[i] for i in (0, 4, 2, 6, 1, 5, 3, 7)]  # twins apart, types interleaved
    assert balanced_subset(shuffled) == list(range(8))
    labels = [labels[i] for i in (0, 2, 3, 4, 5, 6, 7)]  # p0 has lost its anti line
    assert balanced_subset(labels) == [1, 2, 3, 4]  # p1, and the first type-2 pair p10


def test_balanced_subset_needs_every_value_once_per_group():
    twice_pro = [{"pair_id": "a", "stereotype": "pro"}, {"pair_id": "a", "stereotype": "pro"}]
    assert balanced_subset(pairs(1, 0) + twice_pro) == [0, 1]
    triples = [{"pair_id": f"t{k}", "gender": g} for k in range(3) for g in ("male", "female", "neutral")]
    no_neutral = [{"pair_id": "x", "gender": "male"}, {"pair_id": "x", "gender": "female"}]
    assert balanced_subset(triples + no_neutral) == list(range(9))
    doubled = [{"pair_id": "d", "gender": g} for g in ("male", "female", "neutral") * 2]
    assert balanced_subset(doubled + triples) == list(range(15))  # each value equally often: twice is fine


def test_a_prompt_missing_a_present_field_drops_its_group():
    pair_without = [{"pair_id": "m", "stereotype": "pro", "type": 1}, {"pair_id": "m", "type": 1}]
    assert balanced_subset(pairs(1, 0, type=1) + pair_without) == [0, 1]
    no_type = [{"pair_id": "n", "stereotype": "pro"}, {"pair_id": "n", "stereotype": "anti"}]
    assert balanced_subset(pairs(1, 0, type=1) + no_type + pairs(1, 5, type=2)) == [0, 1, 4, 5]
    assert balanced_subset(pairs(1, 0) + [{}]) == [0, 1]


def test_without_twins_every_field_is_a_stratum():
    labels = [{"stereotype": s, "type": t} for s, t in
              [("pro", 1)] * 5 + [("anti", 1)] * 2 + [("pro", 2)] * 3 + [("anti", 2)] * 4]
    kept = balanced_subset(labels)
    assert Counter((labels[i]["stereotype"], labels[i]["type"]) for i in kept) == Counter(
        {("pro", 1): 2, ("anti", 1): 2, ("pro", 2): 2, ("anti", 2): 2})
    assert kept == [0, 1, 5, 6, 7, 8, 10, 11]  # the first two of each


def test_one_stereotype_alone_is_never_balanced(winobias_dev):
    """The 396 dev type-1 pro lines alone: no twin of them, and no anti line, so no subset of them
    is balanced between pro and anti (the stereotype alone is right on every one); with the 396
    anti lines added every pair is complete."""
    head = [p.labels for p in winobias_dev[:396]]
    assert {lab["stereotype"] for lab in head} == {"pro"}
    assert balanced_subset(head) == []
    both = [p.labels for p in winobias_dev[:792]]
    assert balanced_subset(both) == list(range(792))
    # another field that never varies inside a group is a stratum: the genders equalised
    assert Counter(lab["gender"] for lab in head) == {"male": 198, "female": 198}


def test_without_subset_fields_every_prompt_is_kept():
    assert balanced_subset([{}, {"pair_id": 1}, {"x": 2}, {"pair_id": 1}]) == [0, 1, 2, 3]
    assert balanced_subset([]) == []
    assert balanced_subset([p.labels for p in load_prompts("seed")]) == [0, 1]


def test_balanced_subset_of_the_bundled_sets(winobias_dev, winogender):
    """Dev and WinoGender are balanced as shipped. Two test pairs (type 2, lines 382 and 384) swap
    the occupations instead of the pronoun, so both lines say "him": they are dropped, and so are
    the last two type-1 pairs, to keep 394 pairs of each type."""
    assert balanced_subset([p.labels for p in winobias_dev]) == list(range(1584))
    assert balanced_subset([p.labels for p in winogender]) == list(range(720))
    test = load_prompts("winobias-test")
    kept = set(balanced_subset([p.labels for p in test]))
    dropped = [(p.labels["type"], p.labels["line"]) for i, p in enumerate(test) if i not in kept]
    assert sorted(set(dropped)) == [(1, 395), (1, 396), (2, 382), (2, 384)]
    same_gender = {p.labels["pair_id"] for p in test
                   if sum(q.labels["gender"] == p.labels["gender"] for q in test
                          if q.labels["pair_id"] == p.labels["pair_id"]) == 2}
    assert same_gender == {"winobias-type2-test-382", "winobias-type2-test-384"}


def test_a_prefix_keeps_only_its_complete_pairs(winobias_dev):
    """The first 400 dev prompts: all 396 type-1 pro lines and the first 4 type-1 anti lines."""
    head = winobias_dev[:400]
    assert Counter((p.labels["type"], p.labels["stereotype"]) for p in head) == {(1, "pro"): 396, (1, "anti"): 4}
    kept = balanced_subset([p.labels for p in head])
    assert kept == [i for i, p in enumerate(head) if p.labels["line"] <= 4]
    assert len(kept) == 8 and {head[i].labels["type"] for i in kept} == {1}


# ---------------------------------------------------------------------------------- balanced sample
def test_a_winobias_sample_is_balanced_with_whole_pairs(winobias_dev):
    sample = balanced_sample(winobias_dev, 48)
    assert len(sample) == 48
    assert Counter((p.labels["stereotype"], p.labels["type"]) for p in sample) == {
        (s, t): 12 for s in ("pro", "anti") for t in (1, 2)}
    assert set(Counter(p.labels["pair_id"] for p in sample).values()) == {2}
    positions = [winobias_dev.index(p) for p in sample]
    assert positions == sorted(positions)  # the original order


def test_a_winogender_sample_keeps_triples_whole(winogender):
    sample = balanced_sample(winogender, 60, seed=3)
    assert len(sample) == 60
    triples: dict[str, list[str]] = {}
    for p in sample:
        triples.setdefault(p.labels["pair_id"], []).append(p.labels["gender"])
    assert all(sorted(g) == ["female", "male", "neutral"] for g in triples.values())
    assert Counter(p.labels["refers_to"] for p in sample) == {"occupation": 30, "participant": 30}


def test_a_sample_never_exceeds_n_and_depends_only_on_the_seed(winobias_dev):
    assert len(balanced_sample(winobias_dev, 50)) == 48  # whole rounds of one pair per type: 4 prompts
    assert len(balanced_sample(winobias_dev, 4)) == 4
    assert balanced_sample(winobias_dev, 20, seed=7) == balanced_sample(list(winobias_dev), 20, seed=7)
    assert balanced_sample(winobias_dev, 20, seed=7) != balanced_sample(winobias_dev, 20, seed=8)
    assert balanced_sample(winobias_dev, 10_000) == winobias_dev  # all of it, when n exceeds the set
    test = load_prompts("winobias-test")
    everything = balanced_sample(test, 10_000)  # as large as the balanced subset, its type-1 pairs drawn at random
    assert len(everything) == len(balanced_subset([p.labels for p in test])) == 1576
    assert Counter(p.labels["type"] for p in everything) == {1: 788, 2: 788}


def test_a_sample_of_unlabelled_prompts_is_a_plain_draw():
    prompts = [Prompt(f"prompt {i}") for i in range(10)]
    sample = balanced_sample(prompts, 4, seed=1)
    assert len(sample) == 4 and all(p in prompts for p in sample)
    assert [prompts.index(p) for p in sample] == sorted(prompts.index(p) for p in sample)


@pytest.mark.parametrize("n, problem", [
    (3, "comes in units of 4 prompts"),
    (0, "at least 1"),
    (-2, "at least 1"),
    (True, "at least 1"),
])
def test_a_sample_too_small_is_refused_in_one_line(winobias_dev, n, problem):
    with pytest.raises(PromptSetError, match=problem) as err:
        balanced_sample(winobias_dev, n)
    assert "\n" not in str(err.value)


def test_a_set_without_complete_groups_cannot_be_sampled(winogender):
    """Pairs of he/she and a lone "they": no group holds all three genders."""
    prompts = [p for p in winogender if p.labels["gender"] != "neutral"] + [winogender[2]]
    assert winogender[2].labels["gender"] == "neutral"
    prompts[-1] = Prompt(prompts[-1].text, {**prompts[-1].labels, "pair_id": "alone"})
    with pytest.raises(PromptSetError, match="no twin group") as err:
        balanced_sample(prompts, 8)
    assert "\n" not in str(err.value) and "gender" in str(err.value)
    with pytest.raises(PromptSetError, match="empty"):
        balanced_sample([], 8)


def test_design_stays_light():
    """The store layer's rule: no torch, pandas or models just to read labels."""
    code = ("import sys, probe.design\n"
            "heavy = [m for m in ('torch', 'pandas', 'models', 'analyses') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
