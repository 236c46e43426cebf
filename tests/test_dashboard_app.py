"""dashboard/app.py called directly: how clicks and controls change the view state
(apply_event), and that a run id from the browser (next_state, the view callback over HTTP)
never reaches the file system. The browser tests (test_dashboard_e2e.py) check the same app
through Chromium."""

from __future__ import annotations

import pytest

from dashboard.app import apply_event, create_app, next_state
from dashboard.data import UnknownRun
from dashboard.state import ViewState


def test_clicks_and_controls_update_the_state():
    s = ViewState(prompt=3, queries=(1, 2))
    assert apply_event(s, "scatter", {"points": [{"customdata": [1, 3]}]}).head == 3
    assert apply_event(s, "scatter", {"points": [{"customdata": {"0": 1, "1": 2}}]}).head == 2
    assert apply_event(s, "layer-view", {"points": [{"customdata": 2}]}).head == 2
    # clicking a query token in the line view toggles it
    assert apply_event(s, "head-lines", {"points": [{"x": 0, "customdata": 5}]}).queries == (1, 2, 5)
    assert apply_event(s, "head-lines", {"points": [{"x": 0, "customdata": 2}]}).queries == (1,)
    assert apply_event(s, "head-lines", {"points": [{"x": 1, "customdata": 0.5}]}) == s  # a key: nothing
    # a new prompt drops the query positions (they belonged to the old prompt)
    assert apply_event(s, "prompt", 4) == s.with_(prompt=4, queries=())
    assert apply_event(s, "next", 1).prompt == 4 and apply_event(s, "prev", 1).prompt == 2
    # a dropdown emptied by Dash (value not yet among its options) does not undo the state
    for control in ("prompt", "layer", "head", "metric", "compare", "run"):
        assert apply_event(s, control, None) == s


def test_a_path_from_the_browser_never_reaches_the_file_system(registry, coref_run, tmp_path):
    for bad in ["../etc/passwd", "/etc/passwd", str(coref_run), "coref", "2", "-1", "", None, "0/../1"]:
        with pytest.raises(UnknownRun, match="is served here"):
            registry.get(bad)
    # a run id from a URL that names a path becomes the first run served
    assert next_state(f"?run={tmp_path}", None, None, None, registry).run == "0"
    # through the real HTTP callback path: the view callback refuses the id and says so
    app = create_app([coref_run])
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    view = next(d for d in deps if "panel-head.style" in d["output"])
    body = {"output": view["output"], "outputs": _outputs(view),
            "inputs": [{"id": "state", "property": "data", "value": "?run=/etc&view=head"},
                       {"id": "generation", "property": "data", "value": 0}],
            "changedPropIds": ["state.data"], "state": []}
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200
    msg = r.get_json()["response"]["view-msg"]["children"]
    assert "no run '/etc' is served here" in msg


def _outputs(dep: dict) -> list[dict]:
    out = []
    for part in dep["output"].strip(".").split("..."):
        cid, prop = part.rsplit(".", 1)
        out.append({"id": cid, "property": prop})
    return out

