"""Prompt-set loading: .txt / .jsonl / in-memory lists, user mistakes, and the bundled sets."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections import Counter
from importlib import resources

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from probe.prompts import (
    Prompt,
    PromptSetError,
    PromptSetWarning,
    _occupation_pattern,
    _parse_winobias_line,
    bundled_sets,
    load_prompts,
    prompt_set_fingerprint,
)

BUNDLED = ("seed", "winobias", "winobias-dev", "winobias-test", "ud-ewt-dev", "ud-ewt-test", "toy-coref-test", "ioi",
           "winogender", "toy-translate-test")


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


# --- .txt -------------------------------------------------------------------------------------------


def test_txt_one_prompt_per_line_keeps_inner_whitespace(tmp_path):
    path = write(tmp_path, "p.txt", "The cat sat.\r\n  two  spaces\tand a tab \nlast line without newline")
    prompts = no_warnings(load_prompts, path)
    assert [p.text for p in prompts] == ["The cat sat.", "  two  spaces\tand a tab ", "last line without newline"]
    assert all(p.labels == {} for p in prompts)
    assert load_prompts(str(path)) == prompts  # str path and Path agree


def test_txt_trailing_newline_and_bom_are_not_prompts(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeffa\nb\n")
    assert [p.text for p in no_warnings(load_prompts, path)] == ["a", "b"]


def test_txt_unicode_line_separators_stay_inside_a_prompt(tmp_path):
    path = write(tmp_path, "p.txt", "a\u2028b\x0bc\nd\n")
    assert [p.text for p in load_prompts(path)] == ["a\u2028b\x0bc", "d"]


def test_txt_blank_lines_skipped_with_warning(tmp_path):
    path = write(tmp_path, "p.txt", "one\n\n   \ntwo\n\t\nthree\n")
    with pytest.warns(PromptSetWarning) as record:
        prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["one", "two", "three"]
    [warning] = record
    message = str(warning.message)
    assert "p.txt" in message and "3 blank lines" in message and "2, 3, 5" in message
    assert warning.filename == __file__  # points at the caller, not at probe/prompts.py


def test_txt_many_blank_lines_lists_the_first_few(tmp_path):
    path = write(tmp_path, "p.txt", "x\n" + "\n" * 9 + "y\n")
    with pytest.warns(PromptSetWarning, match=r"9 blank lines \(line 2, 3, 4, 5, 6, \.\.\.\)"):
        assert len(load_prompts(path)) == 2


@pytest.mark.parametrize("content", ["", "\n", " \n\t\n\r\n"])
def test_txt_without_prompts_is_an_error(tmp_path, content):
    path = write(tmp_path, "empty.txt", content)
    with pytest.raises(PromptSetError, match=r"empty prompt file .*empty\.txt"):
        load_prompts(path)


def test_txt_not_utf8_names_line_and_offset(tmp_path):
    path = write(tmp_path, "latin.txt", "first line\ncaf\xe9 ok\nna\xefve\n".encode("latin-1"))
    with pytest.raises(PromptSetError) as err:
        load_prompts(path)
    message = str(err.value)
    assert "latin.txt" in message and "line 2 " in message
    assert "byte offset 14 " in message and "byte 3 of the line" in message and "e9" in message
    assert "re-encode" in message and "UTF-8" in message


# --- .jsonl ----------------------------------------------------------------------------------------


def test_jsonl_keeps_other_fields_as_labels(tmp_path):
    rows = [{"text": "The dog ran.", "label": 1, "meta": {"src": "x"}}, {"text": " spaced ", "tags": ["a", "b"]}]
    path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\r\n")
    prompts = no_warnings(load_prompts, path)
    assert prompts == [
        Prompt("The dog ran.", {"label": 1, "meta": {"src": "x"}}),
        Prompt(" spaced ", {"tags": ["a", "b"]}),
    ]


def test_jsonl_blank_lines_skipped_with_warning(tmp_path):
    path = write(tmp_path, "p.jsonl", '\n{"text": "a"}\n\n{"text": "b"}\n')
    with pytest.warns(PromptSetWarning, match=r"p\.jsonl: skipped 2 blank lines \(line 1, 3\)"):
        assert [p.text for p in load_prompts(path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"text": "unterminated}', "invalid JSON"),
        ("not json at all", "invalid JSON"),
        ('["text", "a list"]', "expected a JSON object"),
        ('{"label": 1}', 'no "text" field'),
        ('{"text": 42}', '"text" is a int, not a string'),
        ('{"text": null}', '"text" is a NoneType, not a string'),
        ('{"text": ""}', '"text" is empty'),
        ('{"text": "   "}', '"text" is empty'),
        ('{"text": "a", "text": "b"}', "appears twice"),
        ('{"text": "a", "n": ' + "1" * 5000 + "}", "invalid JSON (an integer of more than 4300 digits)"),
        ('{"text": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON (nested too deeply)"),
        ('{"text": "a \\ud800 b"}', "lone surrogate"),
    ],
)
def test_jsonl_bad_line_names_the_line(tmp_path, bad_line, problem):
    path = write(tmp_path, "bad.jsonl", '{"text": "fine"}\n\n' + bad_line + '\n{"text": "also fine"}\n')
    with pytest.raises(PromptSetError) as err:
        load_prompts(path)
    message = str(err.value)
    assert "bad.jsonl: line 3:" in message
    assert problem in message


def test_jsonl_without_prompts_is_an_error(tmp_path):
    with pytest.raises(PromptSetError, match=r"empty prompt file .*e\.jsonl \(all 2 lines are blank\)"):
        load_prompts(write(tmp_path, "e.jsonl", "\n \n"))


def test_jsonl_not_utf8(tmp_path):
    path = write(tmp_path, "p.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(PromptSetError, match=r"p\.jsonl: line 2 is not valid UTF-8 \(byte ff at byte offset 25 "):
        load_prompts(path)


# --- lists and bad sources -----------------------------------------------------------------------


def test_list_of_strings():
    prompts = load_prompts(["a b", "  c  ", "d\r\n"])
    assert prompts == [Prompt("a b"), Prompt("  c  "), Prompt("d")]
    assert load_prompts(("x",)) == [Prompt("x")]
    assert load_prompts([Prompt("y", {"k": 1}), "z"]) == [Prompt("y", {"k": 1}), Prompt("z")]


@pytest.mark.parametrize(
    ("items", "problem"),
    [(["ok", ""], "item 1 is empty"), ([" \t"], "item 0 is empty"), ([], "list is empty"), (["a", 3], "item 1 is a int")],
)
def test_bad_lists(items, problem):
    with pytest.raises(PromptSetError, match=problem):
        load_prompts(items)


def _assert_lists_the_choices(message: str) -> None:
    for name in BUNDLED:
        assert name in message
    assert ".txt" in message and ".jsonl" in message


@pytest.mark.parametrize("case", ["missing", "directory", "suffix", "bundled-typo", "empty-string", "not-a-source"])
def test_bad_sources_list_the_choices(tmp_path, case):
    source = {
        "missing": tmp_path / "nope.txt",
        "directory": tmp_path,
        "suffix": write(tmp_path, "prompts.csv", "a,b\n"),
        "bundled-typo": "winobias-train",
        "empty-string": "",
        "not-a-source": 42,
    }[case]
    with pytest.raises(PromptSetError) as err:
        load_prompts(source)
    _assert_lists_the_choices(str(err.value))
    if case in ("missing", "directory", "suffix", "bundled-typo"):
        assert str(source) in str(err.value)


def test_prompt_is_frozen_and_errors_are_value_errors():
    prompt = Prompt("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.text = "y"  # type: ignore[misc]
    assert prompt.labels == {} and Prompt("z").labels is not prompt.labels
    assert issubclass(PromptSetError, ValueError)


# --- fingerprint -------------------------------------------------------------------------------------


def test_fingerprint(tmp_path):
    base = [Prompt("a", {"x": 1, "y": [1, 2]}), Prompt("b")]
    fp = prompt_set_fingerprint(base)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fp == prompt_set_fingerprint([Prompt("a", {"y": [1, 2], "x": 1}), Prompt("b")])  # key order
    assert fp == prompt_set_fingerprint([Prompt("a", {"x": 1, "y": (1, 2)}), Prompt("b")])  # same JSON
    assert fp != prompt_set_fingerprint(base[::-1])
    assert fp != prompt_set_fingerprint([Prompt("a", {"x": 2, "y": [1, 2]}), Prompt("b")])
    assert fp != prompt_set_fingerprint([Prompt("a", {"x": 1, "y": [1, 2]}), Prompt("b ")])
    assert fp != prompt_set_fingerprint(base[:1])
    # the same prompts reach the same fingerprint from a file or from memory
    txt = write(tmp_path, "p.txt", "one\ntwo\n")
    assert prompt_set_fingerprint(load_prompts(txt)) == prompt_set_fingerprint(load_prompts(["one", "two"]))
    with pytest.raises(PromptSetError, match="JSON-serialisable"):
        prompt_set_fingerprint([Prompt("a", {"x": object()})])


# --- bundled sets ------------------------------------------------------------------------------------


def test_bundled_sets_listed_with_descriptions():
    sets = bundled_sets()
    assert set(sets) == set(BUNDLED)
    assert all(isinstance(d, str) and d and "\n" not in d for d in sets.values())
    data = resources.files("probe").joinpath("prompt_sets")
    for name in ("LICENSE", "ATTRIBUTION.md", "male_occupations.txt", "female_occupations.txt"):
        assert data.joinpath("winobias", name).is_file()
    for name in ("LICENSE", "ATTRIBUTION.md", "templates.tsv", "all_sentences.tsv"):
        assert data.joinpath("winogender", name).is_file()


def test_the_toy_translation_set_carries_targets_and_gold_alignments():
    """Each source word's translation, by the task's dictionary, is the target word the alignment points from."""
    from models.tasks.translate import DICTIONARY

    prompts = load_prompts("toy-translate-test")
    assert len(prompts) == 512 and len({p.text for p in prompts}) > 400
    for p in prompts[:50]:
        source, target = p.text.split(), p.labels["target"].split()
        assert [DICTIONARY[source[a]] for a in p.labels["alignment"]] == target
        assert sorted(p.labels["alignment"]) == list(range(len(source)))


def assert_spans(prompt: Prompt) -> None:
    text, labels = prompt.text, prompt.labels
    start, end = labels["pronoun_span"]
    assert text[start:end] == labels["pronoun"]
    start, end = labels["antecedent_span"]
    assert text[start:end] == labels["antecedent"]
    assert len(labels["candidates"]) == len(labels["candidate_spans"]) == 2
    for mention, (start, end) in zip(labels["candidates"], labels["candidate_spans"]):
        assert text[start:end] == mention
    first, second = labels["candidate_spans"]
    assert first[1] <= second[0]  # in order of appearance, not overlapping
    assert labels["candidates"][labels["answer"]] == labels["antecedent"]
    assert labels["candidate_spans"][labels["answer"]] == labels["antecedent_span"]


def test_seed_set():
    prompts = load_prompts("seed")
    assert [p.text for p in prompts] == [
        "The animal didn't cross the street because it was tired.",
        "The animal didn't cross the street because it was wide.",
    ]
    tired, wide = prompts
    for prompt in prompts:
        assert_spans(prompt)
        assert prompt.labels["pronoun"] == "it" and prompt.labels["candidates"] == ["animal", "street"]
    assert tired.labels["antecedent"] == "animal" and tired.labels["answer"] == 0
    assert wide.labels["antecedent"] == "street" and wide.labels["answer"] == 1
    assert tired.labels["pair_id"] == wide.labels["pair_id"]
    assert (tired.labels["variant"], wide.labels["variant"]) == ("tired", "wide")
    assert tired.labels["pronoun_span"] == [43, 45] and tired.labels["candidate_spans"] == [[4, 10], [28, 34]]


@pytest.fixture(scope="module")
def winobias() -> list[Prompt]:
    return load_prompts("winobias")


def test_winobias_every_line_parses(winobias):
    assert len(winobias) == 3168
    counts = Counter((p.labels["split"], p.labels["type"], p.labels["stereotype"]) for p in winobias)
    assert len(counts) == 8 and set(counts.values()) == {396}
    # every raw line of every file became exactly one prompt, in file order
    data = resources.files("probe").joinpath("prompt_sets", "winobias")
    for source in {p.labels["source"] for p in winobias}:
        raw = data.joinpath(source).read_text(encoding="utf-8").splitlines()
        lines = [p.labels["line"] for p in winobias if p.labels["source"] == source]
        assert lines == list(range(1, len(raw) + 1)) == list(range(1, 397))
    dev, test = load_prompts("winobias-dev"), load_prompts("winobias-test")
    assert len(dev) == len(test) == 1584 and dev + test == winobias
    assert {p.labels["split"] for p in dev} == {"dev"} and {p.labels["split"] for p in test} == {"test"}


def test_winobias_spans_and_labels(winobias):
    male = set(_occupation_words("male_occupations.txt"))
    female = set(_occupation_words("female_occupations.txt"))
    for prompt in winobias:
        labels = prompt.labels
        assert_spans(prompt)
        assert "[" not in prompt.text and "]" not in prompt.text and "  " not in prompt.text
        assert not prompt.text[0].isdigit()
        assert labels["pronoun"] == labels["pronouns"][0] and labels["pronoun_span"] == labels["pronoun_spans"][0]
        for pronoun, (start, end) in zip(labels["pronouns"], labels["pronoun_spans"]):
            assert prompt.text[start:end] == pronoun
        assert labels["gender"] in ("male", "female") and labels["type"] in (1, 2)
        assert labels["variant"] == labels["stereotype"] and labels["pair_id"].startswith("winobias-type")
        # pro-stereotyped: the pronoun's gender matches the antecedent occupation's stereotype
        gold = labels["candidate_occupations"][labels["answer"]]
        other = labels["candidate_occupations"][1 - labels["answer"]]
        assert labels["antecedent"].endswith(gold) and labels["candidates"][1 - labels["answer"]].endswith(other)
        stereotyped = (gold in male) == (labels["gender"] == "male")
        assert stereotyped == (labels["stereotype"] == "pro")
        assert (gold in male) != (other in male) and {gold, other} <= male | female
    assert Counter(len(p.labels["pronouns"]) for p in winobias) == {1: 3081, 2: 87}
    pairs = Counter(p.labels["pair_id"] for p in winobias)
    assert len(pairs) == 1584 and set(pairs.values()) == {2}
    assert sum(not p.labels["minimal_pair"] for p in winobias) == 44


def _occupation_words(name: str) -> list[str]:
    data = resources.files("probe").joinpath("prompt_sets", "winobias", name)
    return [w for w in data.read_text(encoding="utf-8").split("\n") if w]


def find(prompts, source, line):
    [prompt] = [p for p in prompts if p.labels["source"] == source and p.labels["line"] == line]
    return prompt


def test_winobias_hand_checked_examples(winobias):
    first = winobias[0]
    assert first == find(winobias, "pro_stereotyped_type1.txt.dev", 1)
    assert first.text == "The developer argued with the designer because he did not like the design."
    assert first.labels["antecedent"] == "The developer" and first.labels["antecedent_span"] == [0, 13]
    assert first.labels["pronoun"] == "he" and first.labels["pronoun_span"] == [47, 49]
    assert first.labels["candidates"] == ["The developer", "the designer"] and first.labels["answer"] == 0
    assert first.labels["candidate_occupations"] == ["developer", "designer"]
    assert first.labels["gender"] == "male" and first.labels["minimal_pair"] is True
    assert (first.labels["type"], first.labels["stereotype"], first.labels["split"]) == (1, "pro", "dev")

    # second line: the antecedent is the second candidate
    second = find(winobias, "pro_stereotyped_type1.txt.dev", 2)
    assert second.text == "The developer argued with the designer because her idea cannot be implemented."
    assert second.labels["antecedent"] == "the designer" and second.labels["answer"] == 1
    assert second.labels["gender"] == "female"

    # two bracketed pronouns
    two = find(winobias, "anti_stereotyped_type1.txt.dev", 27)
    assert two.text == "The developer visited the hairdresser because she needed to cut her hair."
    assert two.labels["pronouns"] == ["she", "her"] and two.labels["pronoun"] == "she"
    assert two.labels["antecedent"] == "The developer" and two.labels["candidates"][1] == "the hairdresser"

    # "[ physician]": whitespace inside the bracket dropped, no double space in the text
    spaced = find(winobias, "pro_stereotyped_type2.txt.dev", 176)
    assert spaced.text == "The teacher asked the physician about the best course of action and believed him."
    assert spaced.labels["antecedent"] == "physician" and spaced.labels["candidates"] == ["The teacher", "physician"]
    assert spaced.labels["minimal_pair"] is False  # its anti twin reads "the [the physician]"

    # type 2, a third occupation after the pronoun is not a candidate
    three = find(winobias, "pro_stereotyped_type2.txt.dev", 72)
    assert three.labels["candidates"] == ["The developer", "the cleaner"] and three.labels["answer"] == 1
    assert three.labels["pronoun"] == "her"

    # indefinite determiners and multi-word occupations
    indefinite = find(winobias, "anti_stereotyped_type2.txt.test", 307)
    assert indefinite.labels["candidates"] == ["The farmer", "an assistant"] and indefinite.labels["answer"] == 1
    worker = find(winobias, "pro_stereotyped_type2.txt.test", 52)
    assert worker.labels["candidates"] == ["The construction worker", "the clerk"] and worker.labels["answer"] == 1
    assert worker.labels["candidate_occupations"] == ["construction worker", "clerk"]


def test_winobias_line_parser_rejects_malformed_lines():
    occupations = _occupation_pattern()
    _, text, labels = _parse_winobias_line("7 The nurse met [the chief] and thanked [him].", occupations, "f: line 7")
    assert text == "The nurse met the chief and thanked him." and labels["candidates"] == ["The nurse", "the chief"]
    for bad, problem in [
        ("The nurse met [the chief] and thanked [him].", "expected '<number> <sentence>'"),
        ("7 The nurse met [the chief and thanked [him].", "unbalanced brackets"),
        ("7 The nurse met the chief] and thanked [him].", "unbalanced brackets"),
        ("7 The nurse met [the chief] and thanked him.", "one bracketed antecedent"),
        ("7 The nurse met [the chief] and thanked [him] for [her] help.", "both genders"),
        ("7 [The nurse] met [the chief] and thanked [him].", "one bracketed antecedent"),
        ("7 The dog met [the chief] and thanked [him].", "one occupation in the antecedent and one other"),
        ("7 []The nurse met [the chief] and thanked [him].", "empty brackets"),
    ]:
        with pytest.raises(PromptSetError, match=re.escape(problem)) as err:
            _parse_winobias_line(bad, occupations, "f: line 7")
        assert "f: line 7" in str(err.value)


def test_ud_ewt_sentences_with_word_spans_and_upos():
    for split, n_sentences in (("dev", 2001), ("test", 2077)):
        prompts = load_prompts(f"ud-ewt-{split}")
        assert len(prompts) == n_sentences
        for p in prompts[:300]:
            assert len(p.labels["words"]) == len(p.labels["upos"]) > 0
            for a, b in p.labels["words"]:
                assert p.text[a:b].strip() == p.text[a:b] != ""
    first = load_prompts("ud-ewt-dev")[0]
    assert first.text == "From the AP comes this story :"
    assert [first.text[a:b] for a, b in first.labels["words"]] == first.text.split()
    assert first.labels["upos"] == ["ADP", "DET", "PROPN", "VERB", "DET", "NOUN", "PUNCT"]
    data = resources.files("probe").joinpath("prompt_sets", "ud_ewt")
    assert data.joinpath("LICENSE.txt").is_file() and data.joinpath("ATTRIBUTION.md").is_file()


def test_winogender_sentences_spans_and_gold_antecedents():
    """Every sentence of WinoGender's all_sentences.tsv, in order, with the gold antecedent the
    sentence id names (answer 0 = the occupation, 1 = the other participant) and spans that
    cut out the mentions and the pronoun."""
    prompts = load_prompts("winogender")
    rows = [line.split("\t") for line in resources.files("probe").joinpath(
        "prompt_sets/winogender/all_sentences.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert [p.text for p in prompts] == [text for _, text in rows]
    pronouns = {"male": {"he", "his", "him"}, "female": {"she", "her"}, "neutral": {"they", "their", "them"}}
    for p, (sentid, _) in zip(prompts, rows):
        occupation, participant, answer, gender, _ = sentid.split(".")
        L = p.labels
        assert p.text[slice(*L["pronoun_span"])] == L["pronoun"] and L["pronoun"].lower() in pronouns[gender]
        assert [p.text[slice(*s)] for s in L["candidate_spans"]] == L["candidates"]
        assert L["candidate_spans"][0][1] <= L["candidate_spans"][1][0] <= L["pronoun_span"][0]  # order of appearance
        gold_word = occupation if answer == "0" else participant
        assert L["antecedent"].lower().split()[-1] == gold_word
        assert L["candidates"][L["answer"]] == L["antecedent"]
        other = participant if answer == "0" else occupation
        assert L["candidates"][1 - L["answer"]].lower().split()[-1] == other
    assert Counter(p.labels["pair_id"] for p in prompts).most_common()[-1][1] == 3  # male / female / neutral
    # Hand-checked: the pronoun refers to the participant, who comes first here.
    p = next(p for p in prompts if p.text == "The patient was referred to the specialist because he had a rare skin "
             "condition.")
    assert p.labels["candidates"] == ["The patient", "the specialist"] and p.labels["answer"] == 0
    assert p.labels["refers_to"] == "participant"


# --- twins and other JSONL records -------------------------------------------------------------------


def test_twin_keys_group_pairs_and_keep_singles_apart():
    from probe.prompts import twin_groups, twin_key

    labels = [{"pair_id": "a"}, {"pair_id": "a"}, {}, {"pair_id": 7}, {"pair_id": None}, {"pair_id": "7"}]
    keys = [twin_key(lab, i) for i, lab in enumerate(labels)]
    assert keys == ["pair:a", "pair:a", "prompt:2", "pair:7", "prompt:4", "pair:7"]
    # a pair id can never equal a single prompt's own key, whatever it is
    assert twin_key({"pair_id": "2"}, 5) != twin_key({}, 2)
    assert twin_groups(enumerate(labels)) == {"pair:a": [0, 1], "pair:7": [3, 5]}


def test_jsonl_records_need_their_string_fields(tmp_path):
    from probe.prompts import read_jsonl_records

    good = tmp_path / "pairs.jsonl"
    good.write_text('{"clean": "a b", "corrupt": "c d", "answer": " x", "wrong": " y"}\n\n')
    assert read_jsonl_records(good, ("clean", "corrupt", "answer", "wrong")) == [
        {"clean": "a b", "corrupt": "c d", "answer": " x", "wrong": " y"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean": "a", "corrupt": 3}\n')
    with pytest.raises(PromptSetError, match=r"bad\.jsonl: line 1: needs the string fields clean, corrupt .*corrupt"):
        read_jsonl_records(bad, ("clean", "corrupt"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"clean": "a"\n')
    with pytest.raises(PromptSetError, match=r"broken\.jsonl: line 1: invalid JSON"):
        read_jsonl_records(broken, ("clean",))
    with pytest.raises(PromptSetError, match="no such file"):
        read_jsonl_records(tmp_path / "nope.jsonl", ("clean",))


def test_jsonl_records_refuse_a_directory_and_bytes_that_are_not_utf8(tmp_path):
    from probe.prompts import read_jsonl_records

    with pytest.raises(PromptSetError, match=r"is a directory, not a JSONL file; give a JSONL file with the fields"):
        read_jsonl_records(tmp_path, ("clean",))
    latin1 = write(tmp_path, "latin1.jsonl", b'{"clean": "caf\xe9"}\n')
    with pytest.raises(PromptSetError, match=r"latin1\.jsonl: line 1 is not valid UTF-8"):
        read_jsonl_records(latin1, ("clean",))


# --- any bytes at all: prompts or PromptSetError, nothing else ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)
json_lines = st.one_of(
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["text", "label", "pair_id", "text "]), json_values, max_size=3).map(json.dumps),
    st.text(max_size=20))
file_contents = st.one_of(st.binary(max_size=200),
                          st.lists(json_lines, max_size=5).map(lambda lines: "\n".join(lines).encode("utf-8")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=file_contents, suffix=st.sampled_from([".jsonl", ".txt"]))
@example(content=b'{"text": "a", "n": ' + b"9" * 5000 + b"}", suffix=".jsonl")
@example(content=b'{"text": "a", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", suffix=".jsonl")
@example(content=b'{"text": "\\udc00"}', suffix=".jsonl")
@example(content=b"\xef\xbb\xbf\r\n\xed\xa0\x80", suffix=".txt")
def test_any_file_gives_prompts_or_a_prompt_set_error(tmp_path, content, suffix):
    path = tmp_path / f"arbitrary{suffix}"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptSetWarning)
        try:
            prompts = load_prompts(path)
        except PromptSetError as e:
            assert str(e) and "\n" not in str(e)
            return
    assert prompts and all(isinstance(p, Prompt) and isinstance(p.text, str) and p.text.strip() for p in prompts)
    assert len(prompt_set_fingerprint(prompts)) == 64  # what a recording computes first
