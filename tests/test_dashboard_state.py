"""dashboard/state.py: the view state round-trips through the URL, malformed values fall
back to defaults (for any query string: property tests), and a loaded URL is fitted to the
run (next_state)."""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.app import next_state
from dashboard.state import VIEWS, ViewState, from_query, to_query


def test_url_state_round_trips(registry):
    states = [ViewState(), ViewState(run="1", prompt=1, layer=5, head=11, view="compare", compare=0),
              ViewState(prompt=7, layer=1, head=2, view="metrics", metric="induction", queries=(3, 5, 8),
                        x="induction", y="ablation_coref"),
              ViewState(view="qk", metric="coref_accuracy")]
    for s in states:
        assert from_query(to_query(s)) == s
        assert from_query(to_query(s).lstrip("?")) == s
    assert to_query(ViewState(prompt=1, layer=1, head=2, queries=(3, 5))) == \
        "?run=0&prompt=1&layer=1&head=2&q=3%2C5"
    # malformed values fall back to defaults instead of failing
    s = from_query("?prompt=abc&layer=-3&head=1e9&view=nope&q=1,x,2&compare=")
    assert s == ViewState(queries=(1, 2))
    # loading a URL fits it to the run: numbers past the run's size are clamped
    s = next_state("?run=0&prompt=999&layer=9&head=9&q=2,300", None, None, None, registry)
    run = registry.get("0")
    assert (s.prompt, s.layer, s.head) == (run.n_prompts - 1, run.n_layers - 1, run.n_heads - 1)
    assert s.queries == (2,)
    # and a later event starts from the stored state, not from the URL
    stored = to_query(s)
    assert next_state("?stale", stored, "head", 0, registry) == s.with_(head=0)
    # values no control sends (a hand-made request) leave the state as it was
    assert next_state(None, stored, "prompt", "abc", registry) == s
    assert next_state(None, stored, "grid", {"points": [{"x": -3, "y": -1}]}, registry).head == 0
    # JSON's Infinity (Flask parses it) in a crafted click or control value changes nothing
    assert next_state(None, stored, "grid", {"points": [{"x": float("inf"), "y": float("inf")}]}, registry) == s
    assert next_state(None, stored, "prompt", float("inf"), registry) == s



def assert_valid(state: ViewState) -> None:
    """Every field has its type and range (what the app's clamp and views rely on), and the
    state survives its own URL."""
    assert isinstance(state.run, str) and len(state.run) <= 20
    for n in (state.prompt, state.layer, state.head):
        assert type(n) is int and n >= 0
    for n in (state.compare, state.window):
        assert n is None or (type(n) is int and n >= 0)
    assert state.view in VIEWS
    assert all(isinstance(t, str) and len(t) <= 120 for t in (state.metric, state.x, state.y, state.search))
    assert isinstance(state.queries, tuple) and len(state.queries) <= 64
    assert all(type(q) is int and q >= 0 for q in state.queries) and list(state.queries) == sorted(set(state.queries))
    assert from_query(to_query(state)) == state


def test_digits_that_int_refuses_fall_back_to_defaults(registry):
    """``?q=²``: '²'.isdigit() is true, yet int('²') fails; it must not fail the page."""
    for search in ("?q=²", "?q=1,²,3", "?prompt=²", "?layer=³&head=¹", "?window=½", "?q=" + "9" * 5000,
                   "?prompt=" + "9" * 5000, "?compare=٣"):
        state = from_query(search)
        assert_valid(state)
    assert from_query("?q=1,²,3").queries == (1, 3)
    assert next_state("?q=²", None, None, None, registry).queries == ()


KEYS = st.sampled_from(["run", "prompt", "layer", "head", "view", "metric", "compare", "q", "x", "y", "window",
                        "search"]) | st.text(max_size=8)
NUMBERISH = st.from_regex(r"\A[ +\-]?[0-9²³¹½٣_.,e]{0,12}\Z") | st.integers().map(str)
# raw text, and raw text shaped as key=value pairs (so the fields' parsers see it, unencoded)
RAW = st.text() | st.lists(st.tuples(KEYS, st.text() | NUMBERISH)).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@settings(max_examples=300, deadline=None)
@given(RAW)
def test_any_query_string_parses_to_a_valid_state(search):
    assert_valid(from_query(search))
    assert_valid(from_query("?" + search))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, st.text() | NUMBERISH, max_size=12))
def test_any_encoded_fields_parse_to_a_valid_state(fields):
    assert_valid(from_query("?" + urlencode(fields)))
