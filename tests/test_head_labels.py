"""probe/head_labels.py: heads are written "L{layer}H{head}" and read back the same."""

from __future__ import annotations

import pandas as pd
import pytest

from probe.errors import InputError
from probe.head_labels import head_label, heads_text, parse_head, parse_heads, top_heads_text


def test_labels_round_trip():
    for layer, head in [(0, 0), (1, 0), (11, 7), (29, 8)]:
        assert parse_head(head_label(layer, head)) == (layer, head)
    assert head_label(3.0, 2) == "L3H2"  # table values read back as floats still label as whole numbers
    assert parse_heads(["l1h0", " L2H3 "]) == [(1, 0), (2, 3)] and parse_heads(None) == []
    assert heads_text([(1, 0), (2, 3)]) == "L1H0, L2H3" and heads_text([(1, 0)], " ") == "L1H0"


@pytest.mark.parametrize("bad", ["1.0", "L1", "H1L0", "L-1H0", "L1H0x", ""])
def test_other_spellings_are_refused_with_the_expected_form(bad):
    with pytest.raises(InputError, match="write heads as LxHy"):
        parse_head(bad)


@pytest.mark.parametrize("top", [0, -2, 1.5, True])
def test_a_top_that_is_not_a_positive_count_is_refused(top):
    """-2 would be a slice (all heads but two), 0 an empty line."""
    from probe.head_labels import check_top

    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [0.1, 0.9, 0.5, 0.7]})
    with pytest.raises(InputError, match=f"top must be a positive integer .*, not {top!r}"):
        top_heads_text(table, "score", top)
    with pytest.raises(InputError):
        check_top(top)


def test_top_heads_text_ranks_by_the_column():
    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [0.1, 0.9, 0.5, 0.7]})
    assert top_heads_text(table, "score", 2) == "L0H1 0.900, L1H1 0.700"
    assert top_heads_text(table, "score", 1, ".1f", ascending=True) == "L0H0 0.1"
