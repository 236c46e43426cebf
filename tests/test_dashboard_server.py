"""The served dashboard (dashboard/server.py, and the app it serves over HTTP): its callbacks
driven through Dash's real HTTP endpoint (what the browser posts), so a failure anywhere in
a callback, state sync included, shows here as it would in the page: a message in the page,
never a 500 and a stack trace; the server serves no files but its own; `probe dashboard`'s
safe defaults, check_runs and url_of; a port in use is a user error."""

from __future__ import annotations

import shutil

import pytest
from helpers import corrupt_copy, record_coref_run

from dashboard.app import create_app
from dashboard.data import Registry, UnknownRun
from dashboard.server import check_runs, url_of
from dashboard.state import from_query
from probe.errors import StoreError


class Page:
    """Posts callback requests to a served app, as dash-renderer does."""

    def __init__(self, app):
        self.client = app.server.test_client()
        self.deps = self.client.get("/_dash-dependencies").get_json()

    def dep(self, output_part: str) -> dict:
        return next(d for d in self.deps if output_part in d["output"])

    def post(self, output_part: str, values: dict, changed: str) -> tuple[dict, int]:
        """The callback whose output names ``output_part``, fired by ``changed``
        ("id.prop") with inputs/states from ``values`` {"id.prop": value} (None where not
        given): (its response {id: {prop: value}}, size of the body in bytes)."""
        dep = self.dep(output_part)

        def fill(items):
            out = []
            for i in items:
                key = f"{i['id']}.{i['property']}"
                if isinstance(i["id"], str) and i["id"].startswith("{"):  # pattern-matching (ALL): no components
                    out.append([])
                else:
                    out.append({"id": i["id"], "property": i["property"], "value": values.get(key)})
            return out

        outputs = []
        for part in dep["output"].strip(".").split("..."):
            cid, prop = part.rsplit(".", 1)
            outputs.append({"id": cid, "property": prop})
        body = {"output": dep["output"], "outputs": outputs, "inputs": fill(dep["inputs"]),
                "state": fill(dep["state"]), "changedPropIds": [changed]}
        r = self.client.post("/_dash-update-component", json=body)
        assert r.status_code in (200, 204), r.data[:2000]
        return (r.get_json()["response"] if r.status_code == 200 else {}), len(r.data)

    def load(self, search: str) -> str:
        """Open the page at ``?search``: the state sync_state derives from the URL."""
        resp, _ = self.post("state.data", {"url.search": search}, "url.search")
        return resp["state"]["data"]

    def drawn(self, store: str, state: str):
        """What the callback that writes ``store`` leaves there after drawing ``state``."""
        output = {"grid-drawn": "grid.figure", "tokens-drawn": "queries.options",
                  "prompts-drawn": "prompt.options"}[store]
        resp, _ = self.post(output, {"state.data": state, "generation.data": 0}, "state.data")
        return resp[store]["data"]

    def view(self, state: str) -> dict:
        return self.post("view-msg.children", {"state.data": state, "generation.data": 0}, "state.data")[0]


def test_a_run_with_garbage_shards_opened_with_query_tokens_shows_a_message(coref_run, tmp_path):
    bad = corrupt_copy(coref_run, tmp_path / "shard", "shard")
    page = Page(create_app([coref_run, bad]))
    state = page.load("?run=1&prompt=2&layer=1&head=1&q=3,4")  # clamp reads the (garbage) tokens
    assert from_query(state).run == "1" and from_query(state).queries == (3, 4)
    msg = page.view(state)["view-msg"]["children"]
    assert "damaged" in msg and "Traceback" not in msg
    # the good run beside it still works
    good = page.load("?run=0&prompt=2&q=3")
    assert page.view(good)["view-msg"]["children"] == ""


def test_a_foreign_csv_with_non_integer_layers_is_named_not_fatal(coref_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(coref_run, run)
    (run / "analyses" / "foreign.csv").write_text("layer,head,score\nL0,H1,0.5\nL1,H0,0.25\n")
    (run / "analyses" / "ablation_foreign.csv").write_text("layer,head,effect\n0,1,oops\n1,x,0.3\n")
    page = Page(create_app([run, coref_run]))
    state = page.load("?run=0&view=results&layer=1&head=2")
    s = from_query(state)
    assert (s.layer, s.head) == (1, 2)
    out = page.view(state)
    assert out["view-msg"]["children"] == ""
    text = str(out["panel-results"]["children"])
    assert "foreign.csv is not shown" in text and "'L0'" in text
    assert "ablation_foreign.csv is not shown" in text and "'x'" in text
    # the run's own tables are still drawn, and its metrics still colour the grid
    assert "ablation_coref" in text and "coref_heads" in text
    metrics = page.view(page.load("?run=0&view=metrics"))
    assert "foreign.csv is not shown" in str(metrics["metrics-msg"]["children"])
    assert page.view(page.load("?run=1&view=results"))["view-msg"]["children"] == ""


def test_prompt_search_text_lives_in_the_url(coref_run):
    from dashboard.state import ViewState, to_query
    from probe.reader import Run

    s = ViewState(search="the sick one", prompt=2)
    assert from_query(to_query(s)) == s and "search=the+sick+one" in to_query(s)
    page = Page(create_app([coref_run]))
    # typing in the search box puts the text in the state and the URL
    stored = page.load("?prompt=2")
    resp, _ = page.post("state.data", {"prompt-search.value": "SICK", "state.data": stored}, "prompt-search.value")
    assert from_query(resp["state"]["data"]).search == "SICK" and "search=SICK" in resp["url"]["search"]
    # and a shared URL with it restores the search box and the filtered prompt list
    state = page.load("?prompt=2&search=sick")
    resp, _ = page.post("state.data", {"url.search": "?prompt=2&search=sick"}, "url.search")
    assert resp["prompt-search"]["value"] == "sick"
    opts, _ = page.post("prompt.options", {"state.data": state, "generation.data": 0}, "state.data")
    texts = Run(coref_run).prompts
    assert [o["value"] for o in opts["prompt"]["options"]] == [i for i, t in enumerate(texts) if "sick" in t]


def test_clicks_on_the_results_panels_heatmaps_select_heads_and_layers(coref_run):
    import json

    import pandas as pd

    page = Page(create_app([coref_run]))
    stored = page.load("?view=results&layer=0&head=0")
    graphs = [g for g in page.view(stored)["panel-results"]["children"] if g.get("props", {}).get("id")]
    ids = {(g["props"]["id"]["kind"], g["props"]["id"]["name"]) for g in graphs}
    assert {("head", "ablation_coref"), ("head", "patch_heads"), ("head", "coref_heads"), ("layer", "patch_resid"),
            ("probe", "probes_answer")} <= ids
    abl = pd.read_csv(coref_run / "analyses" / "ablation_coref.csv")
    target = abl.loc[abl.effect.idxmax()]  # the head whose ablation hurts most: click its cell
    fig = next(g["props"]["figure"] for g in graphs if g["props"]["id"]["name"] == "ablation_coref")
    heads, layers = fig["data"][0]["x"], fig["data"][0]["y"]
    assert int(target["head"]) in heads and int(target["layer"]) in layers  # the axes carry the real numbers

    def click(kind: str, name: str, point: dict) -> tuple[int, int]:
        gid = {"type": "result", "kind": kind, "name": name}
        key = json.dumps(gid, sort_keys=True, separators=(",", ":")) + ".clickData"
        dep = page.dep("state.data")
        body_inputs = []
        for i in dep["inputs"]:
            if isinstance(i["id"], str) and i["id"].startswith("{"):
                body_inputs.append([{"id": gid, "property": "clickData", "value": {"points": [point]}}])
            else:
                body_inputs.append({"id": i["id"], "property": i["property"], "value": None})
        outputs = [{"id": p.rsplit(".", 1)[0], "property": p.rsplit(".", 1)[1]}
                   for p in dep["output"].strip(".").split("...")]
        state = [{"id": "state", "property": "data", "value": stored}]
        r = page.client.post("/_dash-update-component", json={
            "output": dep["output"], "outputs": outputs, "inputs": body_inputs, "state": state,
            "changedPropIds": [key]})
        assert r.status_code == 200, r.data[:500]
        s = from_query(r.get_json()["response"]["state"]["data"])
        return s.layer, s.head

    point = {"x": int(target["head"]), "y": int(target["layer"]), "z": float(target["effect"])}
    assert click("head", "ablation_coref", point) == (int(target["layer"]), int(target["head"]))
    assert click("head", "coref_heads", {"x": 2, "y": 1}) == (1, 2)
    assert click("layer", "patch_resid", {"x": 5, "y": 1}) == (1, 0)  # [layer, position]: the layer
    assert click("probe", "probes_answer", {"x": 1, "y": 0.8}) == (1, 0)
    # the residual-norm map of the layer view selects a layer too
    resp, _ = page.post("state.data", {"resid-norm.clickData": {"points": [{"x": 3, "y": 1}]}, "state.data": stored},
                        "resid-norm.clickData")
    assert from_query(resp["state"]["data"]).layer == 1


def test_what_a_head_or_prompt_switch_sends_does_not_grow_with_the_run(tmp_path):
    """Bytes of every callback response a switch causes (Dash serialises figures with
    plotly's JSON encoder), on runs of 12 and 48 prompts."""
    sizes, n_options = {}, {}
    for n in (12, 48):
        page = Page(create_app([record_coref_run(tmp_path / f"run{n}", n=n, analyses=False)]))
        stored = page.load("?prompt=3&layer=1&head=0")
        for what, control, value in (("head", "head.value", 2), ("prompt", "prompt.value", 5)):
            resp, sent = page.post("state.data", {control: value, "state.data": stored}, control)
            state = resp["state"]["data"]
            sizes[n, what, "state"] = sent
            for output in ("view-msg.children", "grid.figure", "queries.options", "prompt.options"):
                values = {"state.data": state, "generation.data": 0}
                # what the browser holds from drawing the previous state (the callbacks' own stores)
                for store in ("grid-drawn", "tokens-drawn", "prompts-drawn"):
                    values[f"{store}.data"] = page.drawn(store, stored)
                out, sizes[n, what, output] = page.post(output, values, "state.data")
                if output == "prompt.options" and out:
                    n_options[n, what] = len(out["prompt"]["options"])
    for what in ("head", "prompt"):
        total = {n: sum(v for (m, w, _), v in sizes.items() if (m, w) == (n, what)) for n in (12, 48)}
        assert total[48] < 300_000, sizes
        # everything but the prompt list is the same size on both runs
        rest = {n: total[n] - sizes[n, what, "prompt.options"] for n in (12, 48)}
        assert rest[48] <= 1.02 * rest[12], sizes
    # a head switch does not resend the prompt list; a prompt switch sends at most 50 of them
    assert sizes[12, "head", "prompt.options"] == sizes[48, "head", "prompt.options"]
    assert (12, "head") not in n_options and (48, "head") not in n_options
    assert n_options[12, "prompt"] == 12 and n_options[48, "prompt"] == 48
    page = Page(create_app([record_coref_run(tmp_path / "run60", n=60, analyses=False)]))
    opts, _ = page.post("prompt.options", {"state.data": page.load("?prompt=59"), "generation.data": 0},
                        "state.data")
    assert len(opts["prompt"]["options"]) == 51  # 50 matches and the current prompt


def test_the_server_serves_no_files_but_its_own(coref_run):
    app = create_app([coref_run])
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    for url in ["/assets/../run.json", f"/assets/{coref_run}/run.json", "/_dash-component-suites/../../etc/passwd",
                "/run.json", f"/{coref_run}/run.json", "/_dash-component-suites/dash/../../../../etc/passwd"]:
        r = client.get(url)  # Dash answers unknown paths with its page (multi-page apps route them)
        assert r.status_code in (200, 400, 404, 500), url  # 500: Dash refuses an unknown library
        assert b"schema_version" not in r.data and b"root:" not in r.data, url
        assert r.status_code != 200 or b"_dash-config" in r.data, url


def test_command_line_is_safe_by_default(coref_run, tmp_path):
    from probe.cli import build_parser, dashboard_command

    parser = build_parser()
    args = parser.parse_args(["dashboard", str(coref_run)])
    assert (args.host, args.port, args.debug, args.runs) == ("127.0.0.1", 8050, False, [str(coref_run)])
    args = parser.parse_args(["dashboard", "a", "b", "--port", "9000", "--host", "0.0.0.0", "--debug"])
    assert (args.host, args.port, args.debug, args.runs) == ("0.0.0.0", 9000, True, ["a", "b"])
    assert args.func is dashboard_command.run
    with pytest.raises(StoreError, match="none of .* is a recorded run"):
        check_runs([tmp_path / "nothing", tmp_path])
    check_runs([coref_run, tmp_path / "nothing"])  # one good run is enough; the other shows its message
    assert url_of("0.0.0.0", 8050) == "http://127.0.0.1:8050/"
    from probe.errors import is_user_error

    assert is_user_error(StoreError("x")) and is_user_error(UnknownRun("x"))
    with pytest.raises(StoreError, match="at least one run"):
        Registry([])


def test_port_in_use_is_a_user_error(coref_run):
    import socket

    from dashboard.server import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(StoreError, match="cannot listen"):
            serve([coref_run], port=s.getsockname()[1])



@pytest.mark.parametrize("port", [0, -1, 99999, True])
def test_a_port_outside_1_to_65535_is_refused_before_binding(port):
    from dashboard.server import check_port
    from probe.errors import InputError

    with pytest.raises(InputError, match=f"port {port!r} is not a port number from 1 to 65535"):
        check_port("127.0.0.1", port)
