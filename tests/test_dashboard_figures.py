"""dashboard/figures.py called directly on synthetic patterns and tables: long prompts
cropped and sparsified, the line view's far top keys and moving window, the R^2 axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import figure_dict

from dashboard import figures
from dashboard.app import apply_event
from dashboard.state import ViewState, from_query, to_query


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


def test_r2_axis_keeps_useful_layers_readable():
    """R^2 is unbounded below: a layer at -40 is left off the axis, with a note, rather
    than flattening the others against 1."""
    table = pd.DataFrame({"layer": [0, 1, 2], "test_r2": [-40.0, 0.3, 0.9], "mean_baseline_r2": -0.01})
    fig = figure_dict(figures.probe_curves(table, "t"))
    assert fig["layout"]["yaxis"]["range"][0] == pytest.approx(-1.02)
    assert "off the axis (lowest -40.00)" in fig["layout"]["annotations"][0]["text"]
    mild = figure_dict(figures.probe_curves(table.assign(test_r2=[-0.2, 0.3, 0.9]), "t"))
    assert mild["layout"]["yaxis"]["range"][0] == pytest.approx(-0.22) and not mild["layout"].get("annotations")


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



def test_residual_norm_colours_leave_out_massive_activations():
    """A real LM's first position can have a residual norm ~30x the rest (SmolLM2: ~22,000
    against 100-900): the colour scale ends below it and the title names it."""
    norms = np.array([[50.0, 40.0, 60.0], [22000.0, 300.0, 900.0]])
    assert figures.colour_cap(norms) == 900.0
    assert figures.colour_cap(np.array([[1.0, 2.0], [3.0, 4.0]])) is None  # nothing to leave out
    fig = figure_dict(figures.residual_norms(norms, ["The", " cat", " sat"], "hook_resid_post"))
    trace = fig["data"][0]
    assert (trace["zmin"], trace["zmax"]) == (40.0, 900.0)
    assert np.allclose(np.asarray(trace["z"], dtype=float), norms)  # hover still shows every value
    assert "up to 22,000, layer 1 position 0 'The'" in fig["layout"]["title"]["text"]
    plain = figure_dict(figures.residual_norms(norms[:1], ["The", " cat", " sat"], "hook_resid_post"))
    assert "zmax" not in plain["data"][0] and "colours end" not in plain["layout"]["title"]["text"]


def test_layer_view_puts_each_key_value_group_on_its_own_row():
    patterns = np.random.default_rng(0).random((9, 5, 5))
    fig = figure_dict(figures.layer_view(patterns, list("abcde"), 3, selected=4, kv_heads=[h // 3 for h in range(9)]))
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles[4] == "<b>H4 (K/V 1) (selected)</b>" and titles[8] == "H8 (K/V 2)"
    rows = [tuple(fig["layout"][f"yaxis{'' if h == 0 else h + 1}"]["domain"]) for h in range(9)]
    assert [rows.index(r) for r in rows] == [0, 0, 0, 3, 3, 3, 6, 6, 6]  # 3 panels a row: a row per K/V head
    # without grouped-query attention: no K/V names, six panels a row as before
    fig = figure_dict(figures.layer_view(patterns, list("abcde"), 3, kv_heads=list(range(9))))
    assert [a["text"] for a in fig["layout"]["annotations"]] == [f"H{h}" for h in range(9)]
    assert fig["layout"]["yaxis6"]["domain"] == fig["layout"]["yaxis"]["domain"] != fig["layout"]["yaxis7"]["domain"]
    assert figures.kv_head_text(1, range(3, 6)) == "K/V head 1 (shared by heads 3-5)"
    assert figures.kv_head_text(4, [4]) == "K/V head 4"
