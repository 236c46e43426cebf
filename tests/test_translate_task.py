"""models/tasks/translate.py, the toy translation task's generator: translations written out
by hand, a reference translator written here (split at the verb, swap each adjective behind
its noun, verb last), the alignment as ground truth, and the compositional held-out split."""

from __future__ import annotations

from collections import Counter

import pytest

from models.tasks import SPECIALS
from models.tasks import translate as tr

HAND = [  # source, target, alignment: written out by hand from the dictionary and the two rules
    ("the big dog sees the small cat", "ka vusk grom ka mirel tisk vidak", (0, 2, 1, 4, 6, 5, 3)),
    ("a fox chases the lazy cow", "nu kesh ka bulma murn korrun", (0, 1, 3, 5, 4, 2)),
    ("the old man helps a child", "ka odro varn nu lipa sundo", (0, 2, 1, 4, 5, 3)),
    ("a girl likes a bird", "nu selka nu pelto amesh", (0, 1, 3, 4, 2)),
]


def example_of(sentence: str) -> tr.Example:
    """Build the example through make_example from the sentence's words."""
    words = sentence.split()
    verb = next(i for i, w in enumerate(words) if w in tr.VERBS)
    subj, obj = words[:verb], words[verb + 1:]

    def parts(phrase):
        return phrase[0], (phrase[1] if len(phrase) == 3 else None), phrase[-1]

    d1, a1, n1 = parts(subj)
    d2, a2, n2 = parts(obj)
    return tr.make_example(d1, a1, n1, words[verb], d2, a2, n2)


def reference_translation(source: list[str]) -> tuple[list[str], list[int]]:
    """An independent translator: positions of each phrase, adjectives moved behind the noun
    that follows them, the verb at the end; words through the dictionary."""
    verb = next(i for i, w in enumerate(source) if w in tr.VERBS)
    order = []
    for start, stop in ((0, verb), (verb + 1, len(source))):
        positions = list(range(start, stop))
        adjectives = [i for i in positions if source[i] in tr.ADJECTIVES]
        order += [i for i in positions if i not in adjectives] + adjectives
    order.append(verb)
    return [tr.DICTIONARY[source[i]] for i in order], order


@pytest.fixture(scope="module")
def samples():
    return {split: tr.sample_examples(split, 600, seed=0) for split in ("train", "test")}


@pytest.fixture(scope="module")
def content():
    return {split: list(tr.all_content(split)) for split in ("train", "test")}


@pytest.mark.parametrize("source,target,alignment", HAND)
def test_hand_written_translations(source, target, alignment):
    e = example_of(source)
    assert e.source == source and e.target == target and e.alignment == alignment
    assert e.source_words == tuple(source.split()) and e.target_words == tuple(target.split())


def test_templates_and_roles():
    e = example_of("the big dog sees the small cat")
    assert e.template == 3 and e.roles == ("det", "adj", "noun", "verb", "det", "adj", "noun")
    assert e.content == ("big", "dog", "sees", "small", "cat")
    assert e.combinations == (("dog", "big", "sees"), ("cat", "small", "sees"))
    assert [example_of(s).template for s, _, _ in HAND] == [3, 2, 1, 0]
    assert example_of("a girl likes a bird").combinations == (("girl", "-", "likes"), ("bird", "-", "likes"))


def test_dictionary_is_one_to_one_and_foreign():
    source_words = tr.DETERMINERS + tr.NOUNS + tr.ADJECTIVES + tr.VERBS
    assert sorted(tr.DICTIONARY) == sorted(source_words) and len(set(source_words)) == len(source_words)
    targets = list(tr.DICTIONARY.values())
    assert len(set(targets)) == len(targets)  # one-to-one
    assert not set(targets) & set(source_words)  # no target word is a source word
    assert (len(tr.NOUNS), len(tr.ADJECTIVES), len(tr.VERBS)) == (12, 8, 8)


def test_alignment_is_a_permutation_onto_dictionary_entries(samples):
    for e in samples["train"] + samples["test"]:
        assert sorted(e.alignment) == list(range(len(e.source_words))) == list(range(len(e.target_words)))
        for j, i in enumerate(e.alignment):
            assert e.target_words[j] == tr.DICTIONARY[e.source_words[i]]
            assert tr.INVERSE[e.target_words[j]] == e.source_words[i]


def test_reordering_rules_on_every_example(samples):
    adjectives = {tr.DICTIONARY[a] for a in tr.ADJECTIVES}
    nouns = {tr.DICTIONARY[n] for n in tr.NOUNS}
    verbs = {tr.DICTIONARY[v] for v in tr.VERBS}
    determiners = {tr.DICTIONARY[d] for d in tr.DETERMINERS}
    for e in samples["train"] + samples["test"]:
        words, order = reference_translation(list(e.source_words))
        assert e.target_words == tuple(words) and e.alignment == tuple(order)
        t = e.target_words
        assert t[-1] in verbs and sum(w in verbs for w in t) == 1  # verb last (SOV)
        for j, w in enumerate(t):
            if w in adjectives:  # right after its noun, which it preceded in the source
                assert t[j - 1] in nouns and e.alignment[j] + 1 == e.alignment[j - 1]
            if w in determiners:  # heads its noun phrase
                assert t[j + 1] in nouns
        # the source kept English order: adjective before its noun, verb in the middle
        for i, r in enumerate(e.roles):
            if r == "adj":
                assert e.roles[i + 1] == "noun"
        assert e.roles.count("verb") == 1 and 2 <= e.roles.index("verb") <= 3


def test_sampling_is_deterministic_per_seed():
    a = tr.sample_examples("train", 50, seed=3)
    assert a == tr.sample_examples("train", 50, seed=3)
    assert a != tr.sample_examples("train", 50, seed=4)
    assert a != tr.sample_examples("test", 50, seed=3)
    assert tr.sample_examples("train", 20, seed=3) == a[:20]
    with pytest.raises(ValueError):
        tr.sample_examples("validation", 1, seed=0)


def test_samples_cover_the_templates(samples):
    for split in ("train", "test"):
        counts = Counter(e.template for e in samples[split])
        assert sorted(counts) == [0, 1, 2, 3] and min(counts.values()) > 60
        assert all(tr.split_of(*e.content) == split for e in samples[split])
        assert all(e.content[1] != e.content[4] for e in samples[split])  # subject and object differ


def test_held_out_combinations_never_occur_in_training(content, samples):
    held = tr.held_out_combinations()
    fraction = len(held) / (len(tr.NOUNS) * (len(tr.ADJECTIVES) + 1) * len(tr.VERBS))
    assert abs(fraction - tr.TEST_FRACTION) < 0.05, fraction

    def combos(c):
        adj1, noun1, verb, adj2, noun2 = c
        return {(noun1, adj1 or tr.NO_ADJ, verb), (noun2, adj2 or tr.NO_ADJ, verb)}

    train = set().union(*(combos(c) for c in content["train"]))
    assert not train & held
    assert all(combos(c) & held for c in content["test"])  # each test sentence has a held-out one
    assert not any(set(e.combinations) & held for e in samples["train"])
    assert all(set(e.combinations) & held for e in samples["test"])
    # the two splits partition every sentence (11 objects per subject, 9 adjective choices each)
    n_all = len(tr.NOUNS) * (len(tr.NOUNS) - 1) * len(tr.VERBS) * (len(tr.ADJECTIVES) + 1) ** 2
    assert not set(content["train"]) & set(content["test"])
    assert len(content["train"]) + len(content["test"]) == n_all
    share = len(content["test"]) / n_all
    assert abs(share - (1 - (1 - tr.TEST_FRACTION) ** 2)) < 0.08, share


def test_held_out_split_is_compositional(content):
    """Every piece of a held-out combination is seen in training, only not together."""
    train = content["train"]
    pairs_na = {(c[1], c[0]) for c in train} | {(c[4], c[3]) for c in train}
    pairs_nv = {(c[1], c[2]) for c in train} | {(c[4], c[2]) for c in train}
    for noun, adj, verb in tr.held_out_combinations():
        assert (noun, None if adj == tr.NO_ADJ else adj) in pairs_na and (noun, verb) in pairs_nv
    assert {c[2] for c in train} == set(tr.VERBS) and {c[0] for c in content["test"]} == {None, *tr.ADJECTIVES}


def test_all_examples_enumerates_the_split_lazily(content):
    first = [e for _, e in zip(range(8), tr.all_examples("test"))]
    assert [e.content for e in first] == [content["test"][0]] * 4 + [content["test"][1]] * 4
    assert {(e.source_words[0], e.source_words[-2 if e.template < 2 else -3]) for e in first[:4]} == {
        (d1, d2) for d1 in tr.DETERMINERS for d2 in tr.DETERMINERS}


def test_vocabularies_hold_every_word(samples):
    source, target = tr.source_vocabulary(), tr.target_vocabulary()
    assert source[:len(SPECIALS)] == SPECIALS and target[:len(SPECIALS)] == SPECIALS
    assert target[len(SPECIALS)] == tr.EOS and tr.EOS not in source
    assert len(set(source)) == len(source) and len(set(target)) == len(target)
    assert not (set(source) - set(SPECIALS)) & set(target)  # separate languages
    assert set(tr.vocabulary()) == set(source) | set(target)
    for e in samples["train"] + samples["test"]:
        assert all(w in source for w in e.source_words) and all(w in target for w in e.target_words)
        assert len(e.source_words) <= tr.MAX_SOURCE_LEN


def test_ids_round_trip():
    e = example_of("the big dog sees the small cat")
    source, target = tr.source_vocabulary(), tr.target_vocabulary()
    assert [source[i] for i in tr.source_ids(e)] == list(e.source_words)
    ids = tr.target_ids(e)
    assert [target[i] for i in ids] == ["<bos>", "ka", "vusk", "grom", "ka", "mirel", "tisk", "vidak", "<eos>"]
    assert tr.decode_target(ids + [target.index("ka")]) == list(e.target_words)  # stops at <eos>


def test_exact_match():
    examples = [example_of(s) for s, _, _ in HAND]
    right = [t for _, t, _ in HAND]
    assert tr.exact_match(right, examples) == 1.0
    wrong = [right[0], right[1].split(), "ka varn odro nu lipa sundo", right[3].split()[:-1]]
    assert tr.exact_match(wrong, examples) == 0.5
    with pytest.raises(ValueError):
        tr.exact_match(right[:2], examples)
