"""The dashboard on an encoder-decoder run (a toy-translate recording): the attention switch
(encoder / decoder / cross) in the view state and its URL, the cross view with target tokens on
the query axis and source tokens on the key axis, the line view between the two sentences, the
grid of cross heads coloured by their alignment score, and the views that do not take such runs
saying so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import figure_dict, run_cli

import models
from dashboard.app import apply_event, next_state
from dashboard.data import Registry
from dashboard.state import ViewState, from_query, to_query
from dashboard.views import grid_figure, render_view, token_checklist
from models.tasks import translate as tr
from probe.reader import Run
from probe.recorder import record


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory):
    prompts = tmp_path_factory.mktemp("prompts") / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in tr.prompt_records("test", 12, seed=5)))
    path = tmp_path_factory.mktemp("runs") / "translate"
    record(models.load("toy-translate"), prompts, path, progress=False,
           names=["encoder.*.attn.hook_pattern", "decoder.*.attn.hook_pattern", "decoder.*.cross_attn.hook_pattern"])
    assert run_cli("heads", str(path)).returncode == 0
    return path


@pytest.fixture(scope="module")
def registry(translation_run):
    return Registry([translation_run])


def test_the_attention_is_part_of_the_url_and_defaults_to_cross(registry):
    state = next_state("?run=0&layer=1&head=2", None, None, None, registry)
    assert state.attention == "cross"
    assert from_query(to_query(state)) == state
    assert "attention=cross" in to_query(state)
    moved = next_state(None, to_query(state.with_(queries=(1,))), "attention", "encoder", registry)
    assert moved.attention == "encoder" and moved.queries == ()  # other tokens: selection cleared
    assert apply_event(ViewState(), "attention", None) == ViewState()  # an emptied control changes nothing


def test_cross_view_puts_target_on_the_query_axis_and_source_on_the_key_axis(registry, translation_run):
    run = Run(translation_run)
    s = ViewState(prompt=3, layer=1, head=2, attention="cross", queries=(2,))
    out, msg = render_view(registry, s)
    assert msg is None
    heat = figure_dict(out["head-heatmap"])
    want = run.prompt_activation("decoder.1.cross_attn.hook_pattern", 3)[2]  # [target, source]
    assert np.allclose(np.array(heat["data"][0]["z"], dtype=float), want, atol=1e-4)
    assert heat["layout"]["yaxis"]["ticktext"] == run.str_tokens(3, "target")
    assert heat["layout"]["xaxis"]["ticktext"] == run.str_tokens(3)
    assert "cross-attention L1H2" in heat["layout"]["title"]["text"]
    lines = figure_dict(out["head-lines"])
    queries = next(t for t in lines["data"] if t.get("name") == "queries")
    keys = next(t for t in lines["data"] if t.get("name") == "keys")
    assert queries["text"] == run.str_tokens(3, "target") and keys["text"] == run.str_tokens(3)
    # the selected query's strongest key is the source word its target word translates
    gold = run.labels(3)["alignment"][2]
    assert int(np.argmax(want[2])) == gold
    bar = figure_dict(out["head-summed"])
    assert np.allclose(np.array(bar["data"][0]["y"], dtype=float), want[2], atol=1e-3)
    options, text, _ = token_checklist(registry, s)
    assert [o["label"] for o in options] == run.str_tokens(3, "target") and "→" in text


def test_encoder_and_decoder_views_and_the_grid(registry, translation_run):
    run = Run(translation_run)
    for attention, name, sequence in (("encoder", "encoder.0.attn.hook_pattern", "source"),
                                      ("decoder", "decoder.0.attn.hook_pattern", "target")):
        out, msg = render_view(registry, ViewState(prompt=1, layer=0, head=1, attention=attention))
        assert msg is None
        heat = figure_dict(out["head-heatmap"])
        assert np.allclose(np.array(heat["data"][0]["z"], dtype=float), run.prompt_activation(name, 1)[1], atol=1e-4)
        assert heat["layout"]["xaxis"]["ticktext"] == run.str_tokens(1, sequence)
        layer, _ = render_view(registry, ViewState(prompt=1, layer=0, view="layer", attention=attention))
        assert len(figure_dict(layer["layer-view"])["data"]) == 4
    thumbs = figure_dict(grid_figure(registry, ViewState(prompt=0, attention="cross")))
    assert thumbs["data"][0]["type"] == "heatmap"
    coloured = figure_dict(grid_figure(registry, ViewState(metric="cross:alignment", attention="cross")))
    z = np.array(coloured["data"][0]["z"], dtype=float)
    assert z.shape == (2, 4) and np.nanmax(z) == 1.0  # the aligning heads of the toy
    msg = render_view(registry, ViewState(view="qk", attention="cross"))[1]
    assert "does not take encoder-decoder runs yet" in msg
