"""The activation store: values read back equal `run_with_cache`, the documented layout
reads with plain h5py, and the reader's views slice lazily across shards."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import word_prompts

import models
import probe
from probe.errors import StoreError
from probe.hook_names import default_hook_names


@pytest.fixture(scope="module")
def gpt2(hf_checkpoints):
    return models.load(hf_checkpoints["gpt2"][0])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_values_read_back_equal_run_with_cache(gpt2, tmp_path, dtype):
    """Exactly equal, in the recorded dtype, to run_with_cache on the same forward pass:
    the prompt alone when recorded with batch size 1, its padded batch otherwise."""
    prompts = word_prompts(7)
    tdtype = getattr(torch, dtype)
    alone = probe.record(gpt2, prompts, tmp_path / "alone", batch_size=1, dtype=dtype, progress=False)
    batched = probe.record(gpt2, prompts, tmp_path / "batched", batch_size=3, dtype=dtype, progress=False)
    assert alone.complete and batched.n_prompts == 7
    assert set(alone.hooks) == set(default_hook_names(gpt2.hook_dict))
    for i, text in enumerate(prompts):
        _, single = gpt2.run_with_cache(text)
        b0 = i // 3 * 3
        _, batch = gpt2.run_with_cache(prompts[b0:b0 + 3])  # right-padded, as the recorder pads
        assert alone.str_tokens(i) == gpt2.to_str_tokens(text)
        assert alone.tokens(i).tolist() == gpt2.to_tokens(text)[0].tolist()
        got_alone, got_batched = alone.cache(i), batched.cache(i)
        assert set(got_alone) == set(single)
        for name in single:
            want = single[name].to(tdtype)
            assert got_alone[name].dtype == tdtype and torch.equal(got_alone[name], want), name
            in_batch = batch.unpadded(name, i - b0)[None].to(tdtype)
            assert torch.equal(got_batched[name], in_batch), name
            # Batching changes float rounding only (different GEMM shapes), never values.
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(got_batched[name]))
            assert torch.allclose(got_batched[name][finite].float(), want[finite].float(), rtol=1e-3, atol=1e-4)


def test_plain_h5py_reads_the_documented_layout(gpt2, tmp_path):
    prompts = word_prompts(5, seed=1)
    probe.record(gpt2, prompts, tmp_path / "run", batch_size=2, shard_mb=0.01, progress=False)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) > 1
    seen = 0
    for shard in manifest["shards"]:
        with h5py.File(tmp_path / "run" / shard["file"], "r") as f:
            off, aoff = f["offsets"][:], f["attn_offsets"][:]
            for i in range(shard["n_prompts"]):
                text = prompts[shard["first_prompt"] + i]
                _, cache = gpt2.run_with_cache(text)
                n = off[i + 1] - off[i]
                assert list(f["token_str"][off[i]:off[i + 1]].astype(str)) == gpt2.to_str_tokens(text)
                resid = f["act/blocks.1.hook_resid_post"][off[i]:off[i + 1]]
                assert np.allclose(resid, cache["resid_post", 1][0].numpy(), atol=2e-6)
                pattern = f["attn/blocks.0.attn.hook_pattern"][aoff[i]:aoff[i + 1]].reshape(-1, n, n)
                assert np.allclose(pattern, cache["pattern", 0][0].numpy(), atol=2e-6)
                seen += 1
    assert seen == 5
    assert [json.loads(line)["text"] for line in (tmp_path / "run" / "prompts.jsonl").read_text().splitlines()] \
        == prompts


def test_views_slice_across_shards(gpt2, tmp_path):
    prompts = word_prompts(9, seed=2)
    run = probe.record(gpt2, prompts, tmp_path / "run", batch_size=2, shard_mb=0.01, progress=False)
    assert len(run.manifest["shards"]) >= 3
    name = "blocks.0.hook_resid_pre"
    full = np.concatenate([run.prompt_activation(name, i) for i in range(9)])
    assert np.array_equal(run.activations(name), full)
    assert np.array_equal(run.activations(name, [3, 1]), np.concatenate([full[run.token_offsets()[3]:
                                                                          run.token_offsets()[4]],
                                                                          full[run.token_offsets()[1]:
                                                                          run.token_offsets()[2]]]))
    view = run[name]
    assert view.shape == full.shape and len(view) == len(full)
    for sl in [slice(0, 5), slice(3, 40), slice(10, None), slice(None, None, 3), slice(-7, -1)]:
        assert np.array_equal(view[sl], full[sl]), sl
    assert np.array_equal(view[5], full[5]) and np.array_equal(view[-1], full[-1])
    assert np.array_equal(view[[7, 2, 30]], full[[7, 2, 30]])
    assert np.array_equal(view[2:9, 3], full[2:9, 3])
    q = run["blocks.1.attn.hook_q"]
    assert q.shape[1:] == (gpt2.cfg.n_heads, gpt2.cfg.d_head)
    pat = run["blocks.1.attn.hook_pattern"]
    assert np.array_equal(pat[4, 2], run.pattern(4, 1, 2))
    assert np.array_equal(pat[4][2], run.pattern(4, 1)[2])


def test_names_globs_and_unknown_names(gpt2, tmp_path):
    run = probe.record(gpt2, word_prompts(3), tmp_path / "run", names=["blocks.*.attn.hook_pattern", "hook_embed"],
                       progress=False)
    assert run.hooks == ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    with pytest.raises(KeyError, match="was not recorded"):
        run["blocks.0.hook_resid_post"]
    with pytest.raises(StoreError, match="matches no hook point"):
        probe.record(gpt2, word_prompts(3), tmp_path / "run2", names=["blocks.*.hook_nothing"], progress=False)
    result = probe.record(gpt2, word_prompts(2), tmp_path / "run3", names=["blocks.0.attn.hook_result"],
                          progress=False)
    _, cache = gpt2.run_with_cache(word_prompts(2)[1], names_filter="blocks.0.attn.hook_result")
    assert np.allclose(result.prompt_activation("blocks.0.attn.hook_result", 1),
                       cache["blocks.0.attn.hook_result"][0].numpy(), atol=2e-6)


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_compressed_runs_read_back(gpt2, tmp_path, compression):
    prompts = word_prompts(4)
    plain = probe.record(gpt2, prompts, tmp_path / "plain", progress=False)
    packed = probe.record(gpt2, prompts, tmp_path / "packed", compression=compression, progress=False)
    for name in plain.hooks:
        for i in range(4):
            assert np.array_equal(plain.prompt_activation(name, i), packed.prompt_activation(name, i))


def test_labels_from_jsonl_are_kept(gpt2, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"text": "the cat sat", "label": "a", "n": 1}\n{"text": "a dog ran", "label": "b", "n": 2}\n')
    run = probe.record(gpt2, str(src), tmp_path / "run", progress=False)
    assert run.labels(1) == {"label": "b", "n": 2}
    assert run.manifest["label_fields"] == ["label", "n"]


def test_metadata_is_self_describing(gpt2, tmp_path):
    run = probe.record(gpt2, word_prompts(2), tmp_path / "run", dtype="float16", progress=False)
    m = run.manifest
    assert m["schema_version"] == 1 and m["package_version"] == probe.__version__
    assert m["dtype"] == "float16" and m["model"]["config"]["d_model"] == gpt2.cfg.d_model
    assert m["model"]["tokenizer"]["class"] and len(m["model"]["tokenizer"]["sha256"]) == 64
    assert m["hooks"]["blocks.0.attn.hook_q"] == {"kind": "token", "shape": [gpt2.cfg.n_heads, gpt2.cfg.d_head]}
    assert m["hooks"]["blocks.0.attn.hook_pattern"]["kind"] == "attention"
    # The weights digest changes when any weight changes.
    other = models.load(gpt2.cfg.model_name)
    with torch.no_grad():
        other.blocks[1].mlp.w_out.bias[0] += 1e-3
    from probe.recorder import weights_digest

    assert weights_digest(other) != m["model"]["weights_sha256"] == weights_digest(gpt2)


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_prompt_activation_index_reads_one_slice(gpt2, tmp_path, compression, monkeypatch):
    """``index`` picks along the trailing axes: the same values as slicing the full read,
    for prompts in every shard, on contiguous and chunked (compressed) shards alike, and
    h5py is asked for that slice only."""
    prompts = word_prompts(9, seed=3)
    run = probe.record(gpt2, prompts, tmp_path / "run", batch_size=2, shard_mb=0.01, compression=compression,
                       progress=False)
    shards = run.manifest["shards"]
    assert len(shards) >= 3
    H = gpt2.cfg.n_heads
    picks = {"blocks.1.attn.hook_q": [0, H - 1, -1, (2, 5)], "blocks.0.hook_resid_post": [(7,), -3],
             "blocks.1.attn.hook_pattern": [1, -1, (2, 0), (3, -1), (0, 1, 0)],
             "blocks.0.attn.hook_attn_scores": [2, (1, 2)]}  # scores hold -inf above the diagonal
    checked = 0
    for prompt in sorted({s["first_prompt"] for s in shards} | {s["first_prompt"] + s["n_prompts"] - 1
                                                                for s in shards}):
        for name, indices in picks.items():
            full = run.prompt_activation(name, prompt)
            for index in indices:
                key = (slice(None), *np.atleast_1d(index)) if not name.endswith(("pattern", "scores")) else \
                    tuple(np.atleast_1d(index))
                got = run.prompt_activation(name, prompt, index)
                assert got.shape == full[key].shape and np.array_equal(got, full[key]), (prompt, name, index)
                checked += 1
    assert checked >= 3 * 2 * 11
    assert np.array_equal(run.prompt_activation("blocks.1.attn.hook_q", 4, None),
                          run.prompt_activation("blocks.1.attn.hook_q", 4))
    # what h5py is asked for: the prompt's rows of one head, not all of them
    asked = []
    real_get = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: asked.append((self.name, key)) or
                        real_get(self, key))
    run.prompt_activation("blocks.1.attn.hook_q", 5, 3)
    (rows, head) = next(key for name, key in asked if name.endswith("hook_q"))
    n = len(run.tokens(5))
    assert rows.stop - rows.start == n and head == 3
    asked.clear()
    run.prompt_activation("blocks.1.attn.hook_pattern", 5, 2)
    (flat,) = [key for name, key in asked if name.endswith("hook_pattern")]
    assert flat.stop - flat.start == n * n  # one head's block of the prompt's H * n * n values


def test_prompt_activation_index_refusals(gpt2, tmp_path):
    run = probe.record(gpt2, word_prompts(2), tmp_path / "run", progress=False)
    H = gpt2.cfg.n_heads
    with pytest.raises(IndexError, match=f"index {H} on axis 0 is out of range"):
        run.prompt_activation("blocks.0.attn.hook_q", 0, H)
    with pytest.raises(IndexError, match="out of range"):
        run.prompt_activation("blocks.0.attn.hook_pattern", 0, (0, len(run.tokens(0))))
    with pytest.raises(IndexError, match="has 2 axes after the token axis"):
        run.prompt_activation("blocks.0.attn.hook_q", 0, (0, 0, 0))
    with pytest.raises(TypeError, match="integers"):
        run.prompt_activation("blocks.0.attn.hook_q", 0, (slice(0, 2),))
    with pytest.raises(IndexError, match="head 9 out of range"):
        run.pattern(0, 0, 9)
