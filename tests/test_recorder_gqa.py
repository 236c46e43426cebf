"""probe/recorder.py (and the reader's head pairing) on a grouped-query-attention model: a
tiny random Llama-family model with 6 query heads and 2 key/value heads (3 query heads per
K/V head) is recorded with every hook, and what lands in the shards, read with plain h5py,
is checked against the model's own forward pass on each prompt alone and against attention
recomputed here from the recorded queries and keys (docs/cache-format.md, "Attention heads
and grouped-query attention")."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from helpers import tiny_gqa_model

import probe
from probe.hook_names import default_hook_names
from probe.recorder import record

N_HEADS, N_KV, D_HEAD, N_LAYERS = 6, 2, 8, 2
GROUP = N_HEADS // N_KV
PROMPTS = ["the animal didn't cross the street because it was tired", "a cat sat on the mat",
           "she said that he ran to the big red house and the dog ran too", "the old man"]


@pytest.fixture(scope="module")
def model():
    return tiny_gqa_model(N_HEADS, N_KV, seed=13, rotary_base=500.0, norm_eps=1e-6)


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gqa") / "run"
    record(model, PROMPTS, out, batch_size=3, progress=False)  # batches of different lengths: padding
    return out


def shard_rows(run_dir, name: str, prompt: int) -> np.ndarray:
    """One prompt's rows of a hook, read with h5py from the one shard of the run."""
    with h5py.File(run_dir / "shards" / "00000.h5", "r") as f:
        off = f["offsets"][:]
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            a, b = f["attn_offsets"][prompt:prompt + 2]
            n = off[prompt + 1] - off[prompt]
            return f["attn"][name][a:b].reshape(-1, n, n)
        return f["act"][name][off[prompt]:off[prompt + 1]]


def test_every_hook_is_recorded_with_the_shape_the_model_gives_it(model, run_dir):
    manifest = json.loads((run_dir / "run.json").read_text())
    assert set(manifest["hooks"]) == set(default_hook_names(model.hook_dict))
    assert manifest["model"]["config"]["n_heads"] == N_HEADS and manifest["model"]["config"]["n_kv_heads"] == N_KV
    for layer in range(N_LAYERS):
        hooks = {k.rsplit(".", 1)[1]: v for k, v in manifest["hooks"].items() if k.startswith(f"blocks.{layer}.attn.")}
        for name in ("hook_q", "hook_rot_q", "hook_z"):
            assert hooks[name] == {"kind": "token", "shape": [N_HEADS, D_HEAD]}
        for name in ("hook_k", "hook_v", "hook_rot_k"):
            assert hooks[name] == {"kind": "token", "shape": [N_KV, D_HEAD]}
        for name in ("hook_pattern", "hook_attn_scores"):
            assert hooks[name] == {"kind": "attention", "shape": [N_HEADS]}
    # every hook of every prompt equals the model's own forward on that prompt alone (the
    # recorder ran them right-padded in batches of 3)
    for i, text in enumerate(PROMPTS):
        ids = model.tokenize(text).ids
        with torch.no_grad():
            _, cache = model.run_with_cache(ids)
        for name in manifest["hooks"]:
            stored = shard_rows(run_dir, name, i)
            expected = cache[name][0].numpy()
            assert stored.shape == expected.shape, name
            np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        assert shard_rows(run_dir, "blocks.1.attn.hook_k", i).shape == (ids.shape[1], N_KV, D_HEAD)


def causal_softmax(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(d_head)) over past and present keys: [n, d] x [n, d] -> [n, n]."""
    n = len(q)
    scores = np.where(np.triu(np.ones((n, n), bool), 1), -np.inf, q @ k.T / np.sqrt(D_HEAD))
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_query_head_h_attends_with_key_value_head_h_over_the_group_size(run_dir):
    """The pairing the format documents, recomputed from the recorded rotated queries and keys:
    pattern head h = softmax(rot_q[:, h] . rot_k[:, h // 3] / sqrt(d_head)), causal; and z head
    h = pattern head h times v[:, h // 3]. Another pairing (h % n_kv) does not fit."""
    for prompt in range(len(PROMPTS)):
        for layer in range(N_LAYERS):
            at = f"blocks.{layer}.attn."
            q, k, v = (shard_rows(run_dir, at + n, prompt).astype(np.float64)
                       for n in ("hook_rot_q", "hook_rot_k", "hook_v"))
            pattern, z = shard_rows(run_dir, at + "hook_pattern", prompt), shard_rows(run_dir, at + "hook_z", prompt)
            for h in range(N_HEADS):
                np.testing.assert_allclose(pattern[h], causal_softmax(q[:, h], k[:, h // GROUP]), atol=1e-5)
                np.testing.assert_allclose(z[:, h], pattern[h] @ v[:, h // GROUP], atol=1e-5)
                if h // GROUP != h % N_KV and len(q) > 2:
                    assert not np.allclose(pattern[h], causal_softmax(q[:, h], k[:, h % N_KV]), atol=1e-3)


def test_the_reader_pairs_heads_and_reads_one_key_value_head(run_dir, tmp_path):
    run = probe.open(run_dir)
    assert (run.n_heads, run.n_kv_heads) == (N_HEADS, N_KV)
    assert [run.kv_head(h) for h in range(N_HEADS)] == [0, 0, 0, 1, 1, 1]
    assert [list(run.query_heads(kv)) for kv in range(N_KV)] == [[0, 1, 2], [3, 4, 5]]
    for bad in (-1, N_HEADS, True, 1.0):
        with pytest.raises(IndexError, match="out of range"):
            run.kv_head(bad)
    with pytest.raises(IndexError, match="out of range"):
        run.query_heads(N_KV)
    # one K/V head's keys for a query head, read as that hyperslab
    for h in range(N_HEADS):
        np.testing.assert_array_equal(run.prompt_activation("blocks.0.attn.hook_k", 2, index=run.kv_head(h)),
                                      shard_rows(run_dir, "blocks.0.attn.hook_k", 2)[:, h // GROUP])
    # indexing keys by a query head past the K/V heads is an error, not another head's keys
    with pytest.raises(IndexError, match="has 2 there"):
        run.prompt_activation("blocks.0.attn.hook_k", 0, index=N_HEADS - 1)
    # a manifest without n_kv_heads (another tool's) says it through the keys' recorded shape
    other = tmp_path / "foreign"
    shutil.copytree(run_dir, other)
    manifest = json.loads((other / "run.json").read_text())
    del manifest["model"]["config"]["n_kv_heads"]
    (other / "run.json").write_text(json.dumps(manifest))
    foreign = probe.open(other)
    assert foreign.n_kv_heads == N_KV and foreign.kv_head(4) == 1
