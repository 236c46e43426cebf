"""The dashboard's circuit view (views.view_circuit, figures.circuit_graph and
attribution_maps, the app's clicks): on a small recorded run with circuit tables of known
values saved by save_result, as `probe circuit ... -o RUN` saves them. The graph has a trace
per head class holding exactly that class's circuit heads, edges as wide as their |effect|,
the AtP* - |exact| map cell by cell, a click selecting the head whose recorded pattern is then
shown, the state in the URL, and the command that computes what a run lacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import figure_dict, record_plain_run

from analyses.results import CIRCUIT_ATTRIBUTION, CIRCUIT_EDGES, CIRCUIT_HEADS, load_results, save_result
from dashboard import figures
from dashboard.app import apply_event, create_app, next_state
from dashboard.data import Registry
from dashboard.state import VIEWS, ViewState, from_query, to_query
from dashboard.views import render_view
from probe.reader import Run

# (layer, head): (class, in the circuit); every other head has no class and is outside it
CLASSES = {(5, 3): ("name mover", True), (5, 7): ("name mover", True), (4, 1): ("negative name mover", True),
           (3, 2): ("S-inhibition", True), (3, 9): ("S-inhibition", True), (1, 4): ("induction", True),
           (0, 6): ("duplicate token", True), (2, 5): (None, True),  # in the circuit, no class (NaN in the CSV)
           (0, 1): ("previous token", False)}  # classified, yet outside the circuit: grey
EDGES = [((3, 2), (5, 3), "q", -0.30), ((3, 9), (5, 7), "q", -0.10), ((0, 6), (3, 2), "k", -0.05),
         ((1, 4), (3, 9), "v", 0.02), ((0, 1), (1, 4), "k", -0.20)]
SUMMARY = {"task": "ioi", "model": "smollm2", "metric": "logit_diff", "clean_metric": 3.25, "faithfulness": None,
           "edges": [1, 2]}


def heads_table(n_layers: int, n_heads: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            cls, inside = CLASSES.get((layer, head), ("", False))
            rows.append({"layer": layer, "head": head, "head_class": cls, "in_circuit": inside,
                         "dla": round(float(rng.normal()), 4), "attn_io": round(float(rng.uniform()), 4)})
    return pd.DataFrame(rows)


def edges_table() -> pd.DataFrame:
    return pd.DataFrame([{"sender_layer": s[0], "sender_head": s[1], "receiver_layer": r[0], "receiver_head": r[1],
                          "receiver_input": inp, "effect": e} for s, r, inp, e in EDGES])


def attribution_table(n_layers: int, n_heads: int) -> pd.DataFrame:
    """Every head at position "all" (exact measured only for the circuit's heads), and a few
    positions of L5H3."""
    rng = np.random.default_rng(1)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            atp = float(rng.normal())
            exact = float(atp + rng.normal(scale=0.3)) if CLASSES.get((layer, head), ("", False))[1] else np.nan
            rows.append({"layer": layer, "head": head, "position": "all", "atp": atp,
                         "atp_star": abs(atp) + float(rng.uniform(0, 0.2)), "exact": exact})
    for pos, v in (("IO", 0.4), ("S2", -0.1), ("END", 1.2)):
        rows.append({"layer": 5, "head": 3, "position": pos, "atp": v, "atp_star": abs(v), "exact": np.nan})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a run with a circuit saved beside it, the same run without one)."""
    root = tmp_path_factory.mktemp("circuit")
    bare = record_plain_run(root / "bare")
    run = shutil.copytree(bare, root / "circuit")
    cfg = Run(run).config
    L, H = cfg["n_layers"], cfg["n_heads"]
    save_result(run, "circuit_heads", heads_table(L, H))
    save_result(run, "circuit_edges", edges_table())
    save_result(run, "circuit_attribution", attribution_table(L, H))
    (run / "circuit").mkdir()
    (run / "circuit" / "summary.json").write_text(json.dumps(SUMMARY))
    return run, bare


def graphs(component) -> dict:
    """Every dcc.Graph under a view's components, by its id's name (or its id)."""
    out = {}
    if isinstance(component, list | tuple):
        for c in component:
            out.update(graphs(c))
        return out
    if hasattr(component, "figure") and getattr(component, "id", None) is not None:
        cid = component.id
        out[cid["name"] if isinstance(cid, dict) else cid] = figure_dict(component.figure)
    children = getattr(component, "children", None)
    if children is not None and not isinstance(children, str):
        out.update(graphs(children))
    return out


def circuit_view(registry: Registry, state: ViewState) -> tuple[list, dict]:
    out, msg = render_view(registry, state.with_(view="circuit"))
    assert msg is None, msg
    return out["circuit"], graphs(out["circuit"])


def attribution_loads(run) -> None:
    """The circuit_attribution table (its position column holds labels: "all", "IO") loads."""
    problems: list[str] = []
    load_results(run, problems)
    assert problems == []


# ------------------------------------------------------------------------------ the graph
def test_the_graph_has_a_trace_per_class_with_exactly_its_heads(runs):
    run, _ = runs
    reg = Registry([run])
    parts, figs = circuit_view(reg, ViewState(layer=5, head=3))
    fig = figs["circuit"]
    nodes = {t["name"]: t for t in fig["data"] if t.get("mode") == "markers"}
    expected = {}
    for lh, (cls, inside) in CLASSES.items():
        if inside:
            expected.setdefault(cls or figures.UNCLASSIFIED, set()).add(lh)
    # the fixed order of the classes, then the unclassified circuit heads; no trace for a class
    # with no circuit head (backup name mover; previous token is only outside the circuit)
    assert list(nodes) == [figures.OTHER_HEADS, "name mover", "negative name mover", "S-inhibition", "induction",
                           "duplicate token", figures.UNCLASSIFIED]
    for cls, heads in expected.items():
        t = nodes[cls]
        assert {tuple(cd) for cd in t["customdata"]} == heads, cls
        assert sorted(zip(t["x"], t["y"])) == sorted(heads)  # x = layer, y = head
        if cls in figures.HEAD_CLASS_COLOURS:
            assert t["marker"]["color"] == figures.HEAD_CLASS_COLOURS[cls]
    L, H = Run(run).config["n_layers"], Run(run).config["n_heads"]
    others = {tuple(cd) for cd in nodes[figures.OTHER_HEADS]["customdata"]}
    assert others == {(layer, head) for layer in range(L) for head in range(H)} - set().union(*expected.values())
    assert (0, 1) in others and nodes[figures.OTHER_HEADS]["marker"]["color"] == figures.OTHER_COLOUR
    # hover: the label, the class and the evidence of the table
    table = heads_table(L, H).set_index(["layer", "head"])
    hover = dict(zip(map(tuple, nodes["name mover"]["customdata"]), nodes["name mover"]["hovertext"]))
    assert "L5H3" in hover[(5, 3)] and "name mover (in the circuit)" in hover[(5, 3)]
    assert f"dla: {table.loc[(5, 3), 'dla']:.3g}" in hover[(5, 3)]
    assert f"attn_io: {table.loc[(5, 3), 'attn_io']:.3g}" in hover[(5, 3)]
    grey = dict(zip(map(tuple, nodes[figures.OTHER_HEADS]["customdata"]), nodes[figures.OTHER_HEADS]["hovertext"]))
    assert "L0H1" in grey[(0, 1)] and "previous token (not in the circuit)" in grey[(0, 1)]
    # the selected head is ringed
    ring = fig["layout"]["shapes"][0]
    assert (ring["x0"] + ring["x1"]) / 2 == 5 and (ring["y0"] + ring["y1"]) / 2 == 3
    # the summary's headline, null as n/a, a list left out
    text = str(parts)
    assert "task: ioi; model: smollm2; metric: logit_diff; clean_metric: 3.25; faithfulness: n/a" in text
    assert "edges:" not in text


def test_edges_are_as_wide_as_their_effect_and_coloured_by_sign(runs):
    run, _ = runs
    fig = circuit_view(Registry([run]), ViewState())[1]["circuit"]
    lines = [t for t in fig["data"] if t.get("mode") == "lines"]
    assert len(lines) == len(EDGES)
    by_edge = {tuple(t["meta"]["edge"]): t for t in lines}
    assert set(by_edge) == {(*s, *r) for s, r, _, _ in EDGES}
    ordered = sorted(EDGES, key=lambda e: abs(e[3]))
    widths = [by_edge[(*s, *r)]["line"]["width"] for s, r, _, _ in ordered]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)  # strictly by |effect|
    assert widths[-1] == figures.EDGE_WIDTH[1]
    assert np.allclose(widths, figures.edge_widths(np.array([e[3] for e in ordered])))
    for s, r, inp, effect in EDGES:
        t = by_edge[(*s, *r)]
        assert t["line"]["color"] == figures.EDGE_COLOURS[effect < 0]
        assert t["line"]["dash"] == figures.EDGE_DASH[inp] and t["meta"]["input"] == inp
        assert [t["x"][0], t["y"][0], t["x"][-1], t["y"][-1]] == [*s, *r]  # from sender to receiver
        assert f"({inp}): effect {effect:+.3f}" in t["hovertext"][0]
    # one legend entry per sign
    assert sum(bool(t["showlegend"]) for t in lines) == 2


# ------------------------------------------------------------------------------ the maps
def test_difference_map_is_atp_star_minus_abs_exact(runs):
    run, _ = runs
    L, H = Run(run).config["n_layers"], Run(run).config["n_heads"]
    table = attribution_table(L, H)
    whole = table[table.position == "all"].set_index(["layer", "head"])
    atp_star = np.array([[whole.loc[(layer, h), "atp_star"] for h in range(H)] for layer in range(L)])
    exact = np.array([[whole.loc[(layer, h), "exact"] for h in range(H)] for layer in range(L)])
    expected = {"atp_star": atp_star, "exact": exact, "difference": atp_star - np.abs(exact)}

    def check(figs):
        for name, want in expected.items():
            z = np.asarray(figs[name]["data"][0]["z"], dtype=float)
            assert z.shape == (L, H)
            assert np.array_equal(np.isnan(z), np.isnan(want)), name  # blank exactly where exact is missing
            assert np.allclose(z[~np.isnan(z)], want[~np.isnan(want)], atol=1e-4), name
            assert list(figs[name]["data"][0]["x"]) == list(range(H))
            assert list(figs[name]["data"][0]["y"]) == list(range(L))
        assert np.isnan(expected["difference"]).sum() == L * H - sum(inside for _, inside in CLASSES.values())

    # the figures, from the table the command saves
    maps = figures.attribution_maps(table)
    check({name: figure_dict(figures.layer_head_heatmap(maps, name, name, shape=(L, H))) for name in expected})
    # and the view, from the run
    attribution_loads(run)
    check(circuit_view(Registry([run]), ViewState())[1])


# ------------------------------------------------------------------------------ clicks
def test_a_click_selects_the_head_and_shows_its_recorded_pattern(runs):
    run, _ = runs
    reg, stored = Registry([run]), Run(run)
    s = ViewState(view="circuit", prompt=1)
    # a node of the graph (customdata) and a cell of a map (x = head, y = layer)
    s1 = apply_event(s, "circuit-graph", {"points": [{"x": 3, "y": 9, "customdata": [3, 9]}]})
    s2 = apply_event(s, "circuit-head", {"points": [{"x": 7, "y": 5, "z": 0.1}]})
    assert (s1.layer, s1.head) == (3, 9) and (s2.layer, s2.head) == (5, 7)
    assert apply_event(s, "circuit-graph", {"points": [{"x": 1.5, "y": 2}]}) == s  # an edge: nothing
    assert apply_event(s, "circuit-graph", None) == s
    for state in (s1, s2):
        parts, figs = circuit_view(reg, state)
        z = np.asarray(figs["circuit-pattern"]["data"][0]["z"], dtype=float)
        assert np.allclose(z, stored.pattern(1, state.layer, state.head), atol=1e-4)
        assert figs["circuit-pattern"]["layout"]["xaxis"]["ticktext"] == stored.str_tokens(1)
        assert f"L{state.layer}H{state.head} on prompt 1" in figs["circuit-pattern"]["layout"]["title"]["text"]
        ring = figs["circuit"]["layout"]["shapes"][0]
        assert (ring["x0"] + ring["x1"]) / 2 == state.layer and (ring["y0"] + ring["y1"]) / 2 == state.head
    text = str(circuit_view(reg, s1)[0])
    assert "L3H9" in text and "S-inhibition, in the circuit" in text


def test_a_click_reaches_the_state_through_the_apps_http_callback(runs):
    """What the browser posts when a map's cell is clicked: the pattern-matching id of the
    circuit panel's graph names the trigger; the state (and the URL) select that head."""
    run, _ = runs
    app = create_app([run])
    client = app.server.test_client()
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if "state.data" in d["output"])
    click = {"points": [{"x": 9, "y": 3, "z": 0.2}]}
    graph_id = {"type": "circuit", "kind": "head", "name": "exact"}

    def value(i):
        if isinstance(i["id"], str) and i["id"].startswith("{"):  # a pattern-matching input (ALL)
            pattern = json.loads(i["id"])
            return [{"id": graph_id, "property": i["property"], "value": click}] \
                if pattern.get("type") == "circuit" else []
        known = {"state.data": "?run=0&view=circuit&prompt=1"}
        return {"id": i["id"], "property": i["property"], "value": known.get(f"{i['id']}.{i['property']}")}

    outputs = [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in dep["output"].strip(".").split("...")]
    body = {"output": dep["output"], "outputs": outputs, "inputs": [value(i) for i in dep["inputs"]],
            "state": [value(i) for i in dep["state"]],
            "changedPropIds": [json.dumps(graph_id, sort_keys=True, separators=(",", ":")) + ".clickData"]}
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.data[:2000]
    state = from_query(r.get_json()["response"]["state"]["data"])
    assert (state.view, state.prompt, state.layer, state.head) == ("circuit", 1, 3, 9)


# ------------------------------------------------------------------------------ URL, missing
def test_the_circuit_view_round_trips_through_the_url(runs):
    run, _ = runs
    assert "circuit" in VIEWS
    s = ViewState(prompt=1, layer=5, head=3, view="circuit", queries=(2,))
    assert "view=circuit" in to_query(s)
    assert from_query(to_query(s)) == s and from_query(to_query(s).lstrip("?")) == s
    assert next_state(to_query(s), None, None, None, Registry([run])) == s  # in range: kept as it is


def test_a_run_without_a_circuit_names_the_command(runs, tmp_path):
    run, bare = runs
    parts, figs = circuit_view(Registry([bare]), ViewState())
    assert figs == {} and CIRCUIT_HEADS.produce in str(parts)
    assert "probe circuit ioi --model MODEL -o RUN" in str(parts)
    # a run with only some of the tables shows them and names what is missing
    partial = shutil.copytree(bare, tmp_path / "partial")
    cfg = Run(partial).config
    save_result(partial, "circuit_heads", heads_table(cfg["n_layers"], cfg["n_heads"]))
    (partial / "circuit").mkdir()
    (partial / "circuit" / "summary.json").write_text("{not json")
    parts, figs = circuit_view(Registry([partial]), ViewState())
    assert set(figs) == {"circuit", "circuit-pattern"}
    text = str(parts)
    assert CIRCUIT_EDGES.description in text and CIRCUIT_ATTRIBUTION.description in text
    assert "circuit/summary.json cannot be read" in text
    # an empty edge table is a circuit without paths, not a missing result
    save_result(partial, "circuit_edges", edges_table().iloc[:0])
    parts, figs = circuit_view(Registry([partial]), ViewState())
    assert "no paths were saved" in str(parts) and CIRCUIT_EDGES.description not in str(parts)
    assert not [t for t in figs["circuit"]["data"] if t.get("mode") == "lines"]
