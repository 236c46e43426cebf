"""dashboard/state.py: the view state round-trips through the URL, malformed values fall
back to defaults, and a loaded URL is fitted to the run (next_state)."""

from __future__ import annotations

from dashboard.app import next_state
from dashboard.state import ViewState, from_query, to_query


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

