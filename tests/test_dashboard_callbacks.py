"""The dashboard's logic called directly on small real runs: what each view reads and
draws, the URL state, clicks, refusals and error messages. The browser tests
(test_dashboard_e2e.py) check the same app through Chromium."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from helpers import corrupt_copy, record_plain_run

from analyses.results import load_results
from dashboard import figures
from dashboard.app import apply_event, create_app, next_state
from dashboard.data import Registry, UnknownRun
from dashboard.server import check_runs, url_of
from dashboard.state import ViewState, from_query, to_query
from dashboard.views import grid_figure, prompt_options, render_view
from probe.errors import StoreError
from probe.reader import Run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return record_plain_run(tmp_path_factory.mktemp("dash") / "seed")


@pytest.fixture(scope="module")
def registry(coref_run, plain_run):
    return Registry([coref_run, plain_run])


def figure_dict(fig) -> dict:
    """The figure as the browser receives it (JSON), numeric arrays decoded from plotly's
    base64 typed arrays."""
    return decode(json.loads(fig.to_json()))


def decode(obj):
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
            return a.reshape([int(n) for n in str(obj["shape"]).split(",")]) if "shape" in obj else a
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


# ----------------------------------------------------------------------- head view
def test_head_heatmap_is_the_runs_pattern_with_its_tokens(registry, coref_run):
    run = Run(coref_run)
    for prompt, layer, head in [(0, 0, 0), (3, 1, 2), (11, 1, 3)]:
        out, msg = render_view(registry, ViewState(prompt=prompt, layer=layer, head=head))
        assert msg is None
        fig = figure_dict(out["head-heatmap"])
        z = np.array(fig["data"][0]["z"], dtype=float)
        assert np.allclose(z, run.pattern(prompt, layer, head), atol=1e-4)
        tokens = run.str_tokens(prompt)
        assert fig["layout"]["xaxis"]["ticktext"] == tokens
        assert fig["layout"]["yaxis"]["ticktext"] == tokens
        assert fig["data"][0]["hovertext"][2][1] == f"query 2 {tokens[2]!r} -> key 1 {tokens[1]!r}"
        assert f"L{layer}H{head} on prompt {prompt}" in fig["layout"]["title"]["text"]


def test_summed_attention_of_selected_queries(registry, coref_run):
    run = Run(coref_run)
    p = run.pattern(2, 1, 0)
    queries = [4, 7, 9]
    assert np.allclose(figures.summed_attention(p, queries), p[4] + p[7] + p[9])
    out, _ = render_view(registry, ViewState(prompt=2, layer=1, head=0, queries=tuple(queries)))
    bar = figure_dict(out["head-summed"])
    assert np.allclose(bar["data"][0]["y"], p[4] + p[7] + p[9], atol=1e-4)
    lines = figure_dict(out["head-lines"])
    keys = next(t for t in lines["data"] if t.get("name") == "keys")
    assert np.allclose(keys["customdata"], p[4] + p[7] + p[9], atol=1e-3)
    # each query draws at most top_k lines; the selected ones in red, one trace per line
    red = [t for t in lines["data"] if t.get("mode") == "lines" and t["line"]["color"] == figures.SELECTED]
    assert 0 < len(red) <= 3 * figures.TOP_K


def test_long_prompts_are_cropped_and_sparsified():
    rng = np.random.default_rng(0)
    n = 300
    p = rng.random((n, n))
    p /= p.sum(1, keepdims=True)
    tokens = [f"t{i}" for i in range(n)]
    assert figures.crop_window(n) == (n - figures.MAX_TOKENS, n)
    assert figures.crop_window(n, focus=[10]) == (0, figures.MAX_TOKENS)
    a, b = figures.crop_window(n, focus=[150])
    assert b - a == figures.MAX_TOKENS and a <= 150 < b
    fig = figure_dict(figures.head_heatmap(p, tokens, window=(a, b)))
    assert fig["layout"]["xaxis"]["ticktext"] == tokens[a:b]
    assert np.allclose(np.array(fig["data"][0]["z"]), p[a:b, a:b], atol=1e-4)
    sparse = figures.sparsify_topk(p, 5)
    assert ((sparse > 0).sum(1) == 5).all()
    assert np.allclose(np.sort(sparse, 1)[:, -5:], np.sort(p, 1)[:, -5:])
    pooled = figures.pool(p, 16)
    assert pooled.shape == (16, 16) and np.isclose(pooled.mean(), p.mean(), rtol=0.05)
    # the line view draws top-k lines per query only
    lines = figure_dict(figures.line_view(p, tokens, window=(a, b), top_k=3))
    n_lines = sum(int(np.isnan(t["x"]).sum()) for t in lines["data"] if t["mode"] == "lines")
    assert n_lines <= 3 * figures.MAX_TOKENS


# ----------------------------------------------------------------------- grid
def test_grid_coloured_by_a_metric_uses_head_metrics_csv(registry, coref_run):
    table = pd.read_csv(coref_run / "analyses" / "head_metrics.csv")
    for metric in ("induction", "prev_token", "entropy"):
        z = np.array(figure_dict(grid_figure(registry, ViewState(metric=metric)))["data"][0]["z"], dtype=float)
        expected = table.pivot(index="layer", columns="head", values=metric).to_numpy()
        assert np.allclose(z, expected, atol=1e-4)
    # ablation effects and coref accuracy colour it too, found by their kind
    abl = pd.read_csv(coref_run / "analyses" / "ablation_coref.csv")
    z = np.array(figure_dict(grid_figure(registry, ViewState(metric="ablation_coref")))["data"][0]["z"], dtype=float)
    assert np.allclose(z, abl.pivot(index="layer", columns="head", values="effect").to_numpy(), atol=1e-4)
    msg = figure_dict(grid_figure(registry, ViewState(metric="no_such_metric")))
    assert "no metric 'no_such_metric'" in msg["layout"]["annotations"][0]["text"]


def test_grid_thumbnails_and_clicks_select_heads(registry, coref_run):
    run = Run(coref_run)
    fig = figure_dict(grid_figure(registry, ViewState(prompt=1, layer=1, head=3)))
    z = np.array(fig["data"][0]["z"], dtype=float)
    L, H = run.config["n_layers"], run.config["n_heads"]
    n = len(run.str_tokens(1))
    t = min(n, figures.THUMB)
    assert z.shape == (L * (t + 1), H * (t + 1))
    cell = z[1 * (t + 1):1 * (t + 1) + t, 2 * (t + 1):2 * (t + 1) + t]  # layer 1, head 2
    expected = figures.pool(run.pattern(1, 1, 2), t)
    assert np.allclose(cell, expected / expected.max(), atol=1e-3)
    assert fig["layout"]["shapes"][0]["x0"] == 2.5 and fig["layout"]["shapes"][0]["y0"] == 0.5
    # a click anywhere inside a thumbnail names its head (cell j of the row is at x0 + j * dx)
    trace = fig["data"][0]
    x_of = lambda j: trace["x0"] + j * trace["dx"]  # noqa: E731
    for j in (2 * (t + 1), 2 * (t + 1) + t - 1):  # the first and last column of head 2
        click = {"points": [{"x": x_of(j), "y": trace["y0"] + (1 * (t + 1)) * trace["dy"]}]}
        assert figures.head_of_click(click) == (1, 2)
    s = apply_event(ViewState(), "grid", click)
    assert (s.layer, s.head) == (1, 2)


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


# ----------------------------------------------------------------------- URL state
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


# ----------------------------------------------------------------------- refusals and errors
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


def test_missing_corrupt_and_newer_runs_show_a_message(coref_run, tmp_path):
    broken = {"missing": tmp_path / "nope",
              "json": corrupt_copy(coref_run, tmp_path / "json", "json"),
              "schema": corrupt_copy(coref_run, tmp_path / "schema", "schema"),
              "shard": corrupt_copy(coref_run, tmp_path / "shard", "shard")}
    reg = Registry([coref_run, *broken.values()])
    expect = {"1": "does not exist", "2": "corrupt", "3": "newer than this probe reads", "4": "damaged"}
    for run_id, words in expect.items():
        # a run whose manifest reads but whose shards do not still shows its saved analyses
        views = ("head", "layer", "qk", "compare") if run_id == "4" else \
            ("head", "layer", "metrics", "results", "qk", "compare")
        for view in views:
            out, msg = render_view(reg, ViewState(run=run_id, view=view))
            assert out == {} and words in msg, (run_id, view, msg)
        grid = figure_dict(grid_figure(reg, ViewState(run=run_id)))
        assert words in grid["layout"]["annotations"][0]["text"]
        assert prompt_options(reg, run_id, None, 0) in ([], prompt_options(reg, "0", None, 0))
    # the good run still works beside them
    out, msg = render_view(reg, ViewState(run="0"))
    assert msg is None and "head-heatmap" in out
    assert "unavailable" in reg.options()[1]["label"] and "unavailable" not in reg.options()[0]["label"]


def test_analysis_results_are_found_by_kind_and_absent_ones_say_how(registry, coref_run):
    # saved by save_result (with a sidecar) or by `probe patch -o` and the study's to_csv (without)
    kinds = {t.name: t.kind for t in load_results(coref_run)}
    expected = {"head_metrics": "head_metrics", "coref_heads": "coref", "probes_answer": "probes",
                "ablation_coref": "ablation", "patch_heads": "patch_heads", "patch_resid": "patch_resid"}
    assert {k: kinds.get(k) for k in expected} == expected  # (the coref study may save more tables)
    out, msg = render_view(registry, ViewState(view="results"))
    titles = [figure_dict(g.figure)["layout"]["title"]["text"] for g in out["results"] if hasattr(g, "figure")]
    assert any(t.startswith("probes_answer") for t in titles) and any("ablation_coref" in t for t in titles)
    assert any("patch_resid" in t for t in titles) and any("coref_heads" in t for t in titles)
    probe = next(figure_dict(g.figure) for g in out["results"]
                 if hasattr(g, "figure") and "probes_answer" in str(g.figure.layout.title.text))
    table = pd.read_csv(coref_run / "analyses" / "probes_answer.csv")
    test_acc = next(t for t in probe["data"] if t["name"] == "test_acc")
    assert np.allclose(test_acc["y"], table.test_acc, atol=1e-4)
    # the plain run has none of them: each view names the command that computes it
    text = str(render_view(registry, ViewState(run="1", view="results"))[0]["results"])
    for command in ("probe probes RUN", "probe ablate", "probe patch", "probe coref RUN"):
        assert command in text
    assert "probe heads RUN" in str(render_view(registry, ViewState(run="1", view="metrics"))[0])
    qk = render_view(registry, ViewState(run="1", view="qk"))[0]
    assert "blocks.*.attn.hook_q" in str(qk["qk-msg"])
    layer = figure_dict(render_view(registry, ViewState(run="1", view="layer"))[0]["resid-norm"])
    assert "hook_resid_post" in layer["layout"]["annotations"][0]["text"]


@pytest.fixture(scope="module")
def numeric_run(tmp_path_factory):
    """toy-coref on 40 prompts of 14, 15 and 17 words from a JSONL file whose prompts carry
    their length in characters (a real-valued label), with ridge probes saved: the CLI's
    (no control task) and one with the control task, through the analysis API."""
    import models
    import probe
    from analyses.probe_features import prompt_features
    from analyses.results import save_result
    from analyses.ridge_probes import layer_ridge_probes
    from probe.cli import main

    prompts = probe.load_prompts("toy-coref-test")[::83][:40]
    path = tmp_path_factory.mktemp("ridge") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": p.text, "n_chars": len(p.text), "noun": p.labels["candidates"][0]})
                            + "\n" for p in prompts))
    run = probe.record(models.load("toy-coref"), path, path.parent / "run", names=["blocks.*.hook_resid_post"],
                       progress=False)
    assert main(["probes", str(run.path), "--label", "n_chars"]) == 0
    layers = range(run.config["n_layers"])
    with_control = layer_ridge_probes(prompt_features(run, layers), np.array([len(t) for t in run.prompts]),
                                      np.arange(run.n_prompts), types=[run.labels(i)["noun"]
                                                                       for i in range(run.n_prompts)])
    save_result(run.path, "probes_n_chars_control", with_control)
    return run.path


def test_ridge_probe_tables_are_drawn_as_r2_per_layer(numeric_run):
    kinds = {t.name: t.kind for t in load_results(numeric_run)}
    assert kinds == {"probes_n_chars": "probes", "probes_n_chars_control": "probes"}
    out, msg = render_view(Registry([numeric_run]), ViewState(view="results", layer=1))
    assert msg is None
    graphs = {g.id["name"]: g for g in out["results"] if hasattr(g, "figure")}
    for name in ("probes_n_chars", "probes_n_chars_control"):
        table = pd.read_csv(numeric_run / "analyses" / f"{name}.csv")
        fig = figure_dict(graphs[name].figure)
        traces = {t["name"]: t for t in fig["data"]}
        assert "test_acc" not in traces
        assert list(traces["test_r2"]["x"]) == list(table.layer)
        assert np.allclose(traces["test_r2"]["y"], table.test_r2, atol=1e-4)
        assert np.allclose(traces["dev_r2"]["y"], table.dev_r2, atol=1e-4)
        # the mean predictor's R^2 is the reference line: one value at every layer
        assert np.allclose(traces["mean_baseline_r2"]["y"], table.mean_baseline_r2.iloc[0], atol=1e-4)
        assert fig["layout"]["yaxis"]["title"]["text"] == "R^2" and "R^2" in fig["layout"]["title"]["text"]
        assert "accuracy" not in json.dumps(fig["layout"])
        assert [sh["x0"] for sh in fig["layout"]["shapes"]] == [1]  # the selected layer is marked
        # a click on a layer's point selects that layer, as on the accuracy curves
        assert graphs[name].id["kind"] == "probe"
        last = int(traces["test_r2"]["x"][-1])
        click = {"points": [{"x": last, "y": float(traces["test_r2"]["y"][-1]), "curveNumber": 0}]}
        assert apply_event(ViewState(view="results", layer=0), "result-probe", click).layer == last
    control = pd.read_csv(numeric_run / "analyses" / "probes_n_chars_control.csv")
    assert control.control_test_r2.notna().all()  # the control task ran (40 prompts, several nouns)
    traces = {t["name"]: t for t in figure_dict(graphs["probes_n_chars_control"].figure)["data"]}
    assert np.allclose(traces["control_test_r2"]["y"], control.control_test_r2, atol=1e-4)
    assert np.allclose(traces["selectivity"]["y"], control.selectivity, atol=1e-4)
    assert "control_test_r2" not in {t["name"] for t in figure_dict(graphs["probes_n_chars"].figure)["data"]}


def test_r2_axis_keeps_useful_layers_readable():
    """R^2 is unbounded below: a layer at -40 is left off the axis, with a note, rather
    than flattening the others against 1."""
    table = pd.DataFrame({"layer": [0, 1, 2], "test_r2": [-40.0, 0.3, 0.9], "mean_baseline_r2": -0.01})
    fig = figure_dict(figures.probe_curves(table, "t"))
    assert fig["layout"]["yaxis"]["range"][0] == pytest.approx(-1.02)
    assert "off the axis (lowest -40.00)" in fig["layout"]["annotations"][0]["text"]
    mild = figure_dict(figures.probe_curves(table.assign(test_r2=[-0.2, 0.3, 0.9]), "t"))
    assert mild["layout"]["yaxis"]["range"][0] == pytest.approx(-0.22) and not mild["layout"].get("annotations")


def test_metrics_scatter_layer_view_compare_and_qk(registry, coref_run):
    run = Run(coref_run)
    cols = registry.get("0").head_columns()
    s = next_state("?view=metrics&layer=1&head=2", None, None, None, registry)
    assert (s.x, s.y) == ("induction", "ablation_coref")
    fig = figure_dict(render_view(registry, s)[0]["scatter"])
    pts = fig["data"][0]
    got = {(int(c[0]), int(c[1])): (x, y) for c, x, y in zip(pts["customdata"], pts["x"], pts["y"])}
    assert np.allclose(got[(1, 2)], (cols["induction"][(1, 2)], cols["ablation_coref"][(1, 2)]), atol=1e-4)
    # layer view: every head of the layer, the residual norm per layer and position
    out = render_view(registry, ViewState(view="layer", prompt=2, layer=1))[0]
    layer = figure_dict(out["layer-view"])
    assert len(layer["data"]) == run.config["n_heads"]
    assert np.allclose(layer["data"][3]["z"], run.pattern(2, 1, 3), atol=1e-3)
    norms = np.array(figure_dict(out["resid-norm"])["data"][0]["z"])
    expected = [np.linalg.norm(run.prompt_activation(f"blocks.{i}.hook_resid_post", 2), axis=-1)
                for i in range(run.config["n_layers"])]
    assert np.allclose(norms, expected, rtol=1e-3)
    # compare: A, B and B - A of the same head
    out = render_view(registry, ViewState(view="compare", prompt=0, compare=1, layer=1, head=0))[0]
    cmp = figure_dict(out["compare-graph"])
    pa, pb = run.pattern(0, 1, 0), run.pattern(1, 1, 0)
    assert np.allclose(cmp["data"][2]["z"], pb - pa, atol=1e-3)
    # Q/K: the head's query and key vectors over the run's first tokens, in a PCA plane
    out = render_view(registry, ViewState(view="qk", layer=1, head=2))[0]
    qk = figure_dict(out["qk"])
    n_points = sum(len(t["x"]) for t in qk["data"])
    assert n_points == 2 * run.n_tokens  # the run is small: all its tokens
    q = np.concatenate([run.prompt_activation("blocks.1.attn.hook_q", i)[:, 2] for i in range(run.n_prompts)])
    xy, var = figures.pca_2d(np.concatenate([q, q]))
    assert xy.shape == (2 * len(q), 2) and 0 < var[0] <= 1


def test_a_run_being_recorded_shows_what_is_published_and_refreshes(coref_run, tmp_path):
    import shutil

    live = tmp_path / "live"
    shutil.copytree(coref_run, live)
    full = json.loads((live / "run.json").read_text())
    # what a recorder writes after its first shard of several: fewer prompts, not complete
    tiny = tmp_path / "tiny"
    import models
    import probe

    probe.record(models.load("toy-coref"), Run(coref_run).prompts, tiny, names=["blocks.*.attn.hook_pattern"],
                 shard_mb=0.001, batch_size=2, progress=False)
    manifest = json.loads((tiny / "run.json").read_text())
    assert len(manifest["shards"]) > 2
    partial = dict(manifest, shards=manifest["shards"][:2], complete=False)
    partial.pop("finished", None)
    (tiny / "run.json").write_text(json.dumps(partial))
    reg = Registry([tiny])
    data = reg.get("0")
    published = sum(s["n_prompts"] for s in partial["shards"])
    assert data.n_prompts == published and "still being recorded" in data.status()
    assert len(prompt_options(reg, "0", None, 0)) == published
    out, msg = render_view(reg, ViewState(prompt=published))  # clamped by next_state in the app; here: refused
    assert "out of range" in msg
    (tiny / "run.json").write_text(json.dumps(manifest))
    data.refresh()
    assert data.n_prompts == full["n_prompts"] and "complete" in data.status()
    assert render_view(reg, ViewState(prompt=published))[1] is None


def test_prompt_search(registry, coref_run):
    texts = Run(coref_run).prompts
    word = texts[5].split()[1]
    opts = prompt_options(registry, "0", word.upper(), 0)
    assert [o["value"] for o in opts] == [0] * (word.lower() not in texts[0].lower()) + \
        [i for i, t in enumerate(texts) if word.lower() in t.lower()]
    assert all(o["label"].startswith(f"{o['value']}: ") for o in opts)


# ----------------------------------------------------------------------- command line
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


def test_results_saved_while_serving_appear_without_a_restart(plain_run, tmp_path):
    import shutil

    from analyses.head_metrics import head_metrics
    from analyses.results import save_result

    run_dir = tmp_path / "seed"
    shutil.copytree(plain_run, run_dir)
    reg = Registry([run_dir])
    assert reg.get("0").head_columns() == {}
    assert "probe heads RUN" in str(render_view(reg, ViewState(view="metrics"))[0]["metrics-msg"])
    table = head_metrics(Run(run_dir))
    save_result(run_dir, "head_metrics", table)
    cols = reg.get("0").head_columns()
    assert set(cols) >= {"entropy", "prev_token", "induction"}
    assert np.isclose(reg.get("0").head_values(3, 1)["entropy"], table.set_index(["layer", "head"]).entropy[(3, 1)])


def test_a_result_is_shown_as_the_kind_its_sidecar_names(plain_run, tmp_path):
    import shutil

    from analyses.results import save_result

    run_dir = tmp_path / "seed"
    shutil.copytree(plain_run, run_dir)
    reg = Registry([run_dir])
    n_layers, n_heads = reg.get("0").n_layers, reg.get("0").n_heads
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    effect = np.linspace(-1, 1, n_layers * n_heads)
    # per-head "effect" numbers that the columns alone would take for an ablation sweep
    save_result(run_dir, "effect_scores", pd.DataFrame({"layer": layer, "head": head, "effect": effect}),
                kind="head_metrics", command="probe heads RUN")

    def shown() -> tuple[set[str], str]:
        results = render_view(reg, ViewState(view="results"))[0]["results"]
        return set(reg.get("0").head_columns()), str(results)

    columns, results = shown()
    assert columns == {"effect_scores.effect"}  # a head metric: it colours the grid by its column name
    assert "ablation" not in {t.kind for t in reg.get("0").tables()}
    assert "No ablation sweep" in results and "effect_scores" not in results
    z = figure_dict(grid_figure(reg, ViewState(metric="effect_scores.effect")))["data"][0]["z"]
    assert np.allclose(np.array(z, dtype=float), effect.reshape(n_layers, n_heads), atol=1e-4)
    # without its sidecar the same CSV is judged by its columns: an ablation sweep, drawn as one
    (run_dir / "analyses" / "effect_scores.json").unlink()
    columns, results = shown()
    assert columns == {"effect_scores"} and "effect_scores: effect of ablating each head" in results


def test_refresh_rereads_a_run_recorded_again_in_place(tmp_path):
    import models
    import probe

    model = models.load("toy-coref")
    texts = [p.text for p in probe.load_prompts("toy-coref-test")]
    first, second = texts[:2], [t for t in texts if len(t.split()) != len(texts[0].split())][:3]
    probe.record(model, first, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    reg = Registry([tmp_path / "run"])
    data = reg.get("0")
    old_tokens = data.str_tokens(0)
    assert data.prompts() == first and old_tokens == Run(tmp_path / "run").str_tokens(0)
    probe.record(model, second, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False,
                 overwrite=True)
    data.refresh()
    fresh = Run(tmp_path / "run")
    # the run's own caches are dropped: its prompt list and the shards it had open
    assert data.prompts() == second and data.str_tokens(0) == fresh.str_tokens(0) != old_tokens
    assert np.array_equal(data.pattern(1, 0, 0), fresh.pattern(1, 0, 0))


# ----------------------------------------------------------------------- memory
def test_the_slice_cache_is_bounded_by_bytes_not_entries(coref_run):
    from dashboard.data import LRU

    mib = 2**20
    cache = LRU(max_bytes=10 * mib)
    made = []

    def make(i, size=3 * mib):
        made.append(i)
        return np.zeros(size // 4, np.float32)

    for i in range(3):
        cache.get(i, lambda i=i: make(i))
    assert cache.bytes == 9 * mib and all(i in cache for i in range(3))
    cache.get(0, lambda: make("again"))  # a hit: not re-made, and now the most recent
    assert made == [0, 1, 2]
    cache.get(3, lambda: make(3))  # 12 MiB > 10: the least recently used (1) goes
    assert 1 not in cache and all(i in cache for i in (0, 2, 3)) and cache.bytes == 9 * mib
    big = cache.get("huge", lambda: make("huge", 11 * mib))  # bigger than the budget: returned, not kept
    assert big.nbytes == 11 * mib and "huge" not in cache and cache.bytes == 9 * mib
    # a run's cache stays under its budget while the grid reads every layer of every prompt
    run = Run(coref_run)
    per_layer = run.pattern(0, 0).nbytes
    reg = Registry([coref_run], cache_bytes=3 * per_layer)
    data = reg.get("0")
    for prompt in range(run.n_prompts):
        assert np.array_equal(data.all_patterns(prompt)[1], run.pattern(prompt, 1))
        assert data._cache.bytes <= 3 * per_layer
    assert ("layer", run.n_prompts - 1, run.config["n_layers"] - 1) in data._cache
    assert ("layer", 0, 0) not in data._cache


# ----------------------------------------------------------------------- long prompts
def test_late_queries_keep_their_far_top_keys_and_the_window_moves(tmp_path):
    n = 300
    rng = np.random.default_rng(1)
    p = np.tril(rng.random((n, n)) * 0.01)
    p[:, 0] += 0.5  # a BOS sink, far before the default window of late queries
    p[290, 7] += 3.0  # query 290's strongest key: a distant antecedent
    p /= p.sum(1, keepdims=True)
    tokens = [f"t{i}" for i in range(n)]
    a, b = figures.crop_window(n)
    assert a > 7  # the old window cut both keys off
    lines = figure_dict(figures.line_view(p, tokens, window=(a, b)))
    keys = next(t for t in lines["data"] if t.get("name") == "keys")
    queries = next(t for t in lines["data"] if t.get("name") == "queries")
    top = lines["layout"]["meta"]["top"]
    row = 290 - a
    # hover: query 290's top keys, as key rows, are the true top keys of the full row
    expected = np.argsort(-p[290])[:figures.TOP_K]
    got = [keys["text"][k] for k, _ in top[row]]
    assert got == [f"t{k} @{k}" if not a <= k < b else f"t{k}" for k in expected]
    assert got[0] == "t7 @7" and got[1] == "t0 @0"
    assert np.isclose(top[row][0][1], p[290, 7], atol=1e-4)
    assert "7 't7'" in queries["hovertext"][row].split("<br>")[0]
    # the query sits level with itself among the keys
    assert keys["text"][lines["layout"]["meta"]["qy"][row]] == "t290"
    assert queries["y"][row] == lines["layout"]["meta"]["qy"][row]
    # a drawn line joins query 290 to key 7's row
    ys = np.concatenate([np.asarray(t["y"], float) for t in lines["data"] if t["mode"] == "lines"])
    pairs = set(zip(ys[0::3].tolist(), ys[1::3].tolist()))
    assert (queries["y"][row], float(keys["text"].index("t7 @7"))) in pairs
    # the heatmap's window starts where the state says, and the start lives in the URL
    assert figures.crop_window(n, start=0) == (0, figures.MAX_TOKENS)
    assert figures.crop_window(n, start=250) == (n - figures.MAX_TOKENS, n)
    s = ViewState(window=5, queries=(290,))
    assert from_query(to_query(s)) == s and "window=5" in to_query(s)
    assert apply_event(s, "window", 40).window == 40 and apply_event(s, "window", None).window is None
    assert apply_event(s, "prompt", 3).window is None  # a new prompt: the automatic window again


# ----------------------------------------------------------------------- Q/K
def test_qk_sample_is_cached_apart_from_the_selected_prompt_and_reads_one_head(coref_run, monkeypatch):
    run = Run(coref_run)
    data = Registry([coref_run]).get("0")
    reads = []
    real = type(data)._head_rows
    monkeypatch.setattr(type(data), "_head_rows", lambda self, name, p, h: reads.append((name, p)) or real(
        self, name, p, h))
    budget = 3 * run.n_tokens // run.n_prompts  # about three prompts' tokens: a sample of the run
    first = data.qk_vectors(1, 2, max_tokens=budget, include=0)
    sampled = sorted({p for _, p in reads})
    assert 2 <= len(sampled) < run.n_prompts and 0 in sampled
    outside = next(p for p in range(run.n_prompts) if p not in sampled)
    reads.clear()
    other = data.qk_vectors(1, 2, max_tokens=budget, include=outside)  # a prompt switch
    assert sorted({p for _, p in reads}) == [outside]  # the sample is not read again
    reads.clear()
    assert data.qk_vectors(1, 2, max_tokens=budget, include=sampled[1]) is first and reads == []
    # the vectors are the run's, one head's, with their prompts and tokens, in prompt order
    prompts = sorted({*sampled, outside})
    assert sorted(set(other["prompt"].tolist())) == prompts
    q = np.concatenate([run.prompt_activation("blocks.1.attn.hook_q", p)[:, 2] for p in prompts])
    k = np.concatenate([run.prompt_activation("blocks.1.attn.hook_k", p)[:, 2 * run.manifest["hooks"][
        "blocks.1.attn.hook_k"]["shape"][0] // run.config["n_heads"]] for p in prompts])
    assert np.allclose(other["q"], q) and np.allclose(other["k"], k)
    assert other["tokens"] == [t for p in prompts for t in run.str_tokens(p)]
    assert data._head_rows("blocks.1.attn.hook_q", 3, 2).shape == run.prompt_activation("blocks.1.attn.hook_q",
                                                                                         3)[:, 2].shape
    # and what h5py is asked for is that head's slice, not every head
    import h5py

    asked = []
    real_get = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: asked.append(key) or real_get(self, key))
    data._head_rows("blocks.1.attn.hook_q", 4, 3)
    rows = [key for key in asked if isinstance(key, tuple)]  # (the other read is the prompt's offsets)
    assert len(rows) == 1 and rows[0][1] == 3


# ----------------------------------------------------------------------- compare
def test_compare_defaults_to_the_prompts_twin(registry, coref_run, plain_run):
    run = Run(coref_run)
    pair = [run.labels(i)["pair_id"] for i in range(run.n_prompts)]
    prompt = 0
    twin = next(i for i in range(run.n_prompts) if i != prompt and pair[i] == pair[prompt])
    assert twin != prompt + 1  # in this run the twin is not the next prompt
    out, msg = render_view(registry, ViewState(view="compare", prompt=prompt, layer=1, head=0))
    assert msg is None
    cmp = figure_dict(out["compare-graph"])
    assert np.allclose(cmp["data"][2]["z"], run.pattern(twin, 1, 0) - run.pattern(prompt, 1, 0), atol=1e-3)
    assert f"prompt {twin} (B)" in cmp["layout"]["title"]["text"]
    assert run.prompts[twin] in str(out["compare-msg"])
    # the seed pair: tired and wide are each other's twins
    seed = Run(plain_run)
    variants = [seed.labels(i)["variant"] for i in range(seed.n_prompts)]
    tired, wide = variants.index("tired"), variants.index("wide")
    assert registry.get("1").twin(wide) == tired and registry.get("1").twin(tired) == wide
    # a prompt whose twin was not recorded compares with the next prompt
    lonely = Registry([record_plain_run_subset(coref_run, plain_run)]).get("0")
    assert lonely.twin(0) is None
    out, _ = render_view(Registry([lonely.path]), ViewState(view="compare", prompt=0))
    assert "prompt 1 (B)" in figure_dict(out["compare-graph"])["layout"]["title"]["text"]


def record_plain_run_subset(coref_run, plain_run):
    """A run of two prompts of different pairs (the coref run's first two)."""
    import models
    import probe

    out = plain_run.parent / "no-twins"
    if not out.exists():
        first = Run(coref_run).prompts[:2]
        prompts = [p for p in probe.load_prompts("toy-coref-test") if p.text in first][:2]
        assert len({p.labels["pair_id"] for p in prompts}) == 2
        probe.record(models.load("toy-coref"), prompts, out, names=["blocks.*.attn.hook_pattern"], progress=False)
    return out


def test_grid_coloured_by_the_antecedent_metric(registry, coref_run):
    run = Run(coref_run)
    L, H = run.config["n_layers"], run.config["n_heads"]
    # ground truth from the patterns: the pronoun's attention to the gold candidate minus
    # to the other one, averaged over the pronoun's tokens and the prompts
    scores = []
    for i in range(run.n_prompts):
        labels = run.labels(i)
        pron = run.tokens_in(i, *labels["pronoun_span"])
        cands = [run.tokens_in(i, *span) for span in labels["candidate_spans"]]
        gold, other = cands[labels["answer"]], cands[1 - labels["answer"]]
        per = np.zeros((L, H))
        for layer in range(L):
            for head in range(H):
                p = run.pattern(i, layer, head)
                per[layer, head] = np.mean([p[q, gold].sum() - p[q, other].sum() for q in pron])
        scores.append(per)
    expected = np.mean(scores, 0)
    assert np.ptp(expected) > 0.01  # heads differ: a constant grid would prove nothing
    fig = figure_dict(grid_figure(registry, ViewState(metric="antecedent", layer=1, head=2)))
    z = np.array(fig["data"][0]["z"], dtype=float)
    assert np.allclose(z, expected, atol=1e-3)
    assert "antecedent per head" in fig["layout"]["title"]["text"]
    assert fig["layout"]["shapes"][0]["x0"] == 1.5 and fig["layout"]["shapes"][0]["y0"] == 0.5
