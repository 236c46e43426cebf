"""The dashboard on grouped-query-attention runs: the grid shows every query head, and every
view that shows keys for a head shows those of the key/value head it attends with
(h // (n_heads / n_kv_heads)), labelled so. Checked against the shards read with plain h5py,
on a tiny random Llama-family model (6 query heads, 2 K/V heads) recorded here and on
SmolLM2-135M (30 layers, 9 query heads, 3 K/V heads) recorded with every hook."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import figure_dict, tiny_gqa_model

from dashboard.data import Registry
from dashboard.state import ViewState
from dashboard.views import grid_figure, head_card, render_view
from probe.hook_names import default_hook_names
from probe.recorder import record

PROMPTS = ["the animal didn't cross the street because it was tired", "a cat sat on the mat",
           "she said that he ran to the big red house", "the old man and the woman"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gqa") / "tiny"
    record(tiny_gqa_model(), PROMPTS, out, progress=False)
    return out


def read_all(run_dir, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A per-token hook over the whole run (one shard) and the prompt offsets, with h5py."""
    with h5py.File(run_dir / "shards" / "00000.h5", "r") as f:
        return f["act"][name][:], f["offsets"][:]


def read_pattern(run_dir, name: str, prompt: int) -> np.ndarray:
    with h5py.File(run_dir / "shards" / "00000.h5", "r") as f:
        off, aoff = f["offsets"][:], f["attn_offsets"][:]
        n = off[prompt + 1] - off[prompt]
        return f["attn"][name][aoff[prompt]:aoff[prompt + 1]].reshape(-1, n, n)


def plotted_points(fig: dict, kind: str, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token positions, [n, 2] coordinates) of the qk figure's ``kind`` points ("query" or
    "key"), each trace's points mapped back to the tokens its legend name says it holds."""
    own = {t["name"][len(kind) + 1:] for t in fig["data"] if t["name"].startswith(kind + " ")} - {"(other tokens)"}
    where, xy = [], []
    for t in fig["data"]:
        if not t["name"].startswith(kind + " "):
            continue
        label = t["name"][len(kind) + 1:]
        idx = [i for i, tok in enumerate(tokens) if (repr(tok) == label if label != "(other tokens)"
                                                      else repr(tok) not in own)]
        assert len(idx) == len(t["x"]), t["name"]
        where += idx
        xy += list(zip(t["x"], t["y"]))
    order = np.argsort(where)
    return np.asarray(where)[order], np.asarray(xy, dtype=float)[order]


def check_qk_view(registry: Registry, run_dir, layer: int, head: int, group: int) -> None:
    """The Q/K view of (layer, head) shows hook_q[:, head] and hook_k[:, head // group], says so,
    and plots their joint PCA (recomputed here, up to the sign of each component)."""
    data = registry.get("0")
    kv = head // group
    q_all, _ = read_all(run_dir, f"blocks.{layer}.attn.hook_q")
    k_all, _ = read_all(run_dir, f"blocks.{layer}.attn.hook_k")
    vectors = data.qk_vectors(layer, head)
    assert len(vectors["q"]) == data.run.n_tokens  # a small run: every token
    np.testing.assert_array_equal(vectors["q"], q_all[:, head])
    np.testing.assert_array_equal(vectors["k"], k_all[:, kv])
    out, msg = render_view(registry, ViewState(view="qk", layer=layer, head=head))
    assert msg is None
    shared = f"K/V head {kv} (shared by heads {kv * group}-{kv * group + group - 1})"
    fig = figure_dict(out["qk"])
    assert shared in fig["layout"]["title"]["text"]
    assert f"hook_k[:, {kv}]" in str(out["qk-msg"]) and f"hook_q[:, {head}]" in str(out["qk-msg"])
    x = np.concatenate([q_all[:, head], k_all[:, kv]]).astype(np.float64)
    centered = x - x.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    expected = centered @ vt[:2].T
    n = len(q_all)
    tokens = vectors["tokens"]
    for kind, part in (("query", expected[:n]), ("key", expected[n:])):
        where, xy = plotted_points(fig, kind, tokens)
        assert list(where) == list(range(n))
        for axis in range(2):
            sign = np.sign(xy[:, axis] @ part[:, axis]) or 1.0
            np.testing.assert_allclose(sign * xy[:, axis], part[:, axis], atol=2e-3, rtol=1e-3)
    assert head_card(data, layer, head) is not None and f"uses {shared}" in str(head_card(data, layer, head))


def test_grid_shows_every_query_head_of_every_layer(tiny_run):
    registry = Registry([tiny_run])
    data = registry.get("0")
    assert (data.n_layers, data.n_heads, data.n_kv_heads) == (2, 6, 2)
    assert "2 layers x 6 heads (2 key/value heads)" in data.status()
    fig = figure_dict(grid_figure(registry, ViewState(prompt=1)))
    assert fig["layout"]["xaxis"]["ticktext"] == [f"H{h}" for h in range(6)]
    assert fig["layout"]["yaxis"]["ticktext"] == ["L0", "L1"]
    z = np.asarray(fig["data"][0]["z"], dtype=float)
    offsets = read_all(tiny_run, "blocks.0.hook_resid_post")[1]
    n = int(offsets[2] - offsets[1])
    assert n <= 16  # short enough that a thumbnail is the pattern itself, scaled to its maximum
    assert z.shape == (2 * (n + 1), 6 * (n + 1))
    for layer in range(2):
        pattern = read_pattern(tiny_run, f"blocks.{layer}.attn.hook_pattern", 1)
        for h in range(6):
            cell = z[layer * (n + 1):layer * (n + 1) + n, h * (n + 1):h * (n + 1) + n]
            np.testing.assert_allclose(cell, pattern[h] / pattern[h].max(), atol=1e-3)


def test_qk_view_pairs_each_query_head_with_its_key_value_head(tiny_run):
    registry = Registry([tiny_run])
    for layer in range(2):
        for head in range(6):
            check_qk_view(registry, tiny_run, layer, head, group=3)


def test_layer_view_names_each_heads_key_value_head(tiny_run):
    registry = Registry([tiny_run])
    out, msg = render_view(registry, ViewState(view="layer", prompt=2, layer=1, head=4))
    assert msg is None
    fig = figure_dict(out["layer-view"])
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == ["H0 (K/V 0)", "H1 (K/V 0)", "H2 (K/V 0)", "H3 (K/V 1)", "<b>H4 (K/V 1) (selected)</b>",
                      "H5 (K/V 1)"]
    for h in range(6):
        np.testing.assert_allclose(fig["data"][h]["z"], read_pattern(tiny_run, "blocks.1.attn.hook_pattern", 2)[h],
                                   atol=1e-3)


@pytest.fixture(scope="module")
def smollm2_run(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("gqa") / "smollm2"
    record(smollm2, ["The cat sat on the mat.", "When Mary and John went to the store, John gave a drink to",
                     "The capital of France is"], out, progress=False)
    return out


def test_smollm2_run_records_every_hook_with_gqa_shapes(smollm2, smollm2_run):
    cfg = smollm2.cfg
    h, kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    assert (cfg.n_layers, h, kv, d) == (30, 9, 3, 64)
    manifest = json.loads((smollm2_run / "run.json").read_text())
    assert manifest["model"]["config"]["n_kv_heads"] == kv
    assert set(manifest["hooks"]) == set(default_hook_names(smollm2.hook_dict))
    with h5py.File(smollm2_run / "shards" / "00000.h5", "r") as f:
        n_tokens = int(f["offsets"][-1])
        lengths = np.diff(f["offsets"][:])
        for layer in range(cfg.n_layers):
            at = f"blocks.{layer}.attn."
            for name in ("hook_q", "hook_rot_q", "hook_z"):
                assert f["act"][at + name].shape == (n_tokens, h, d)
            for name in ("hook_k", "hook_v", "hook_rot_k"):
                assert f["act"][at + name].shape == (n_tokens, kv, d)
                assert manifest["hooks"][at + name]["shape"] == [kv, d]
            for name in ("hook_pattern", "hook_attn_scores"):
                assert f["attn"][at + name].shape == (int((h * lengths**2).sum()),)
            assert f["act"][f"blocks.{layer}.mlp.hook_post"].shape == (n_tokens, cfg.d_mlp)
        # the recorded keys are the model's own, for the prompt run alone
        ids = smollm2.tokenize("The capital of France is").ids
        with torch.no_grad():
            _, cache = smollm2.run_with_cache(ids, names_filter=lambda n: n.endswith(("attn.hook_k", "attn.hook_q")))
        a, b = f["offsets"][2:4]
        for layer in (0, 29):
            for name in ("hook_k", "hook_q"):
                np.testing.assert_allclose(f["act"][f"blocks.{layer}.attn.{name}"][a:b],
                                           cache[f"blocks.{layer}.attn.{name}"][0].numpy(), rtol=1e-4, atol=1e-4)


def test_dashboard_on_smollm2_shows_a_30_by_9_grid_and_pairs_heads(smollm2_run):
    registry = Registry([smollm2_run])
    data = registry.get("0")
    assert "30 layers x 9 heads (3 key/value heads)" in data.status()
    fig = figure_dict(grid_figure(registry, ViewState(prompt=0)))
    assert fig["layout"]["xaxis"]["ticktext"] == [f"H{h}" for h in range(9)]
    assert fig["layout"]["yaxis"]["ticktext"] == [f"L{layer}" for layer in range(30)]
    n = len(data.str_tokens(0))
    assert np.asarray(fig["data"][0]["z"]).shape == (30 * (n + 1), 9 * (n + 1))
    for head in range(9):
        check_qk_view(registry, smollm2_run, 5, head, group=3)
    out, msg = render_view(registry, ViewState(view="layer", layer=7, head=0))
    assert msg is None
    titles = [a["text"] for a in figure_dict(out["layer-view"])["layout"]["annotations"]]
    assert titles[1:] == [f"H{h} (K/V {h // 3})" for h in range(1, 9)]
