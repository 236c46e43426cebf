"""The IOI prompt set (probe/ioi_prompts.py): its construction checked against the definition
(who is IO, who is S, where each is mentioned), its balance, its corrupted versions, and the bundled
file against the generator and SmolLM2's tokenizer."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from probe.errors import InputError
from probe.ioi_prompts import (
    BUNDLED_SIZE,
    NAMES,
    TEMPLATES,
    bundled_file,
    ioi_prompts,
    single_token_words,
    write_bundled,
)
from probe.prompts import load_prompts


def test_each_prompt_names_io_once_and_s_twice_and_ends_before_the_answer():
    for p in ioi_prompts(48, seed=3):
        lab = p.labels
        io_span, s1, s2 = lab["io_span"], lab["s1_span"], lab["s2_span"]
        assert p.text[slice(*io_span)] == lab["io"] and p.text[slice(*s1)] == lab["s"] == p.text[slice(*s2)]
        assert p.text.count(lab["io"]) == 1 and p.text.count(lab["s"]) == 2
        assert s2[0] > max(io_span[0], s1[0])  # S2 comes after both introductions
        first_io = io_span[0] < s1[0]
        assert first_io == (lab["order"] == "ABBA")
        assert not p.text.endswith(" ") and p.text.split()[-1] == "to"
        assert lab["answer"] == " " + lab["io"] and lab["wrong"] == " " + lab["s"]
        assert lab["io"] != lab["s"]


def test_corrupted_versions_keep_the_frame_and_change_the_names():
    for p in ioi_prompts(32, seed=1):
        lab = p.labels
        abc, swap = lab["abc"], lab["swap"]
        names = lab["abc_names"]
        assert len(set(names)) == 3 and not set(names) & {lab["io"], lab["s"]}
        assert abc == TEMPLATES[lab["template"]].format(A=names[0], B=names[1], S=names[2], place=lab["place"],
                                                        object=lab["object"])
        # the swap exchanges IO and S everywhere: the text's IO is the swap's subject
        assert swap.replace(lab["io"], "#").replace(lab["s"], lab["io"]).replace("#", lab["s"]) == p.text
        assert swap.count(lab["io"]) == 2 and swap.count(lab["s"]) == 1


def test_deterministic_and_balanced():
    a, b = ioi_prompts(64, seed=7), ioi_prompts(64, seed=7)
    assert a == b and a != ioi_prompts(64, seed=8)
    cells = Counter((p.labels["template"], p.labels["order"]) for p in a)
    assert set(cells.values()) == {4} and len(cells) == 2 * len(TEMPLATES)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="n must be"):
        ioi_prompts(0)
    with pytest.raises(InputError, match="needs 5"):
        ioi_prompts(4, names=["Mary", "John", "Tom", "Mary"])


def test_bundled_set_is_the_generators_for_smollm2(smollm2, tmp_path):
    """The shipped file equals a fresh generation with SmolLM2's tokenizer; in that tokenizer every
    name is one token and each prompt, its ABC and its swap have the same token length with the
    names at the same token positions."""
    tok = smollm2.tokenizer
    fresh = write_bundled(tok, tmp_path / "ioi.jsonl")
    assert fresh.read_bytes() == bundled_file().read_bytes()
    prompts = load_prompts("ioi")
    assert len(prompts) == BUNDLED_SIZE
    single = set(single_token_words(tok, NAMES))
    assert len(single) >= 60
    for p in prompts:
        lab = p.labels
        assert {lab["io"], lab["s"], *lab["abc_names"]} <= single
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (p.text, lab["abc"], lab["swap"])]
        assert len({len(x) for x in ids}) == 1
        io_id, s_id = (tok(lab[k], add_special_tokens=False)["input_ids"][0] for k in ("answer", "wrong"))
        assert ids[0].count(io_id) == 1 and ids[0].count(s_id) == 2  # each name one token, where it should be
        differ = [i for i, (x, y) in enumerate(zip(ids[0], ids[2])) if x != y]
        assert len(differ) == 3 and all({ids[0][i], ids[2][i]} == {io_id, s_id} for i in differ)
    # the file is plain JSONL a researcher can read without the package
    first = json.loads(bundled_file().read_text().splitlines()[0])
    assert first["text"] == prompts[0].text
