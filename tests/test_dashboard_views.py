"""dashboard/views.py called directly on small real runs: what each view (head, grid,
layer, metrics, results, Q/K, compare) reads and draws, the prompt list and search, and the
messages for missing, corrupt and newer runs and absent results. The browser tests
(test_dashboard_e2e.py) check the same views through Chromium."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import corrupt_copy, figure_dict

from analyses.results import load_results
from dashboard import figures
from dashboard.app import apply_event, next_state
from dashboard.data import Registry
from dashboard.state import ViewState
from dashboard.views import grid_figure, prompt_options, render_view
from probe.reader import Run


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


def test_prompt_search(registry, coref_run):
    texts = Run(coref_run).prompts
    word = texts[5].split()[1]
    opts = prompt_options(registry, "0", word.upper(), 0)
    assert [o["value"] for o in opts] == [0] * (word.lower() not in texts[0].lower()) + \
        [i for i, t in enumerate(texts) if word.lower() in t.lower()]
    assert all(o["label"].startswith(f"{o['value']}: ") for o in opts)


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

