"""Encoder-decoder runs (probe/recorder.py, probe/store.py, probe/reader.py; the format in
docs/cache-format.md, "Encoder-decoder runs"): `probe record` of toy-translate stores the
encoder's, the decoder's and the cross-attention's activations, each over its own sequence,
equal to `run_with_cache` on each prompt alone and readable with plain h5py; `probe heads`
scores the cross-attention heads against the gold alignment as analyses.cross_attention does
on the model; `probe ablate --run` ablates cross-attention heads; bad input is refused."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_cli

import models
from analyses.cross_attention import alignment_scores, run_translation_set
from models.tasks import translate as tr
from probe.errors import InputError
from probe.recorder import record
from probe.store import StoreError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return models.load("toy-translate")


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory, toy):
    prompts = tmp_path_factory.mktemp("prompts") / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in tr.prompt_records("test", 40, seed=3)))
    path = tmp_path_factory.mktemp("runs") / "translate"
    return record(toy, prompts, path, batch_size=16, progress=False)


def test_every_hook_equals_run_with_cache_on_the_prompt_alone(translation_run, toy):
    run = translation_run
    assert run.manifest["schema_version"] == 2 and run.is_encoder_decoder
    assert run.sequence("encoder.0.attn.hook_pattern") == "source"
    assert run.sequence("decoder.0.attn.hook_pattern") == "target"
    assert run.sequence("decoder.0.cross_attn.hook_pattern") == "cross"
    assert run.sequence("decoder.0.cross_attn.hook_k") == "source"  # keys over the source
    for i in (0, 17, 39):  # across shards' batches, different lengths
        source, target = run.tokens(i), run.tokens(i, "target")
        assert run.str_tokens(i)[-1] == "<eos>" and run.str_tokens(i, "target")[0] == "<bos>"
        with torch.no_grad():
            _, cache = toy.run_with_cache(torch.tensor([source.tolist()]), decoder_input=torch.tensor([target.tolist()]))
        for name in run.hooks:
            want, got = cache[name][0].numpy(), run.prompt_activation(name, i)
            assert got.shape == want.shape, name
            finite = np.isfinite(want)  # masked scores are -inf in both
            assert np.array_equal(finite, np.isfinite(got)), name
            assert np.abs(got[finite] - want[finite]).max() < 1e-4, name
    assert run["decoder.1.hook_resid_post"].shape[0] == sum(len(run.tokens(i, "target")) for i in range(40))


def test_plain_h5py_reads_it_as_the_format_page_says(translation_run):
    run = translation_run
    manifest = json.loads((run.path / "run.json").read_text())
    n_heads = manifest["model"]["config"]["n_heads"]
    shard = manifest["shards"][0]
    with h5py.File(run.path / shard["file"], "r") as f:
        i = 2
        s0, s1 = f["offsets"][i:i + 2]
        t0, t1 = f["target_offsets"][i:i + 2]
        s, t = s1 - s0, t1 - t0
        a = f["cross_attn_offsets"][i]
        cross = f["attn/decoder.1.cross_attn.hook_pattern"][a:a + n_heads * t * s].reshape(n_heads, t, s)
        target = f["target_token_str"][t0:t1].astype(str).tolist()
        stream = f["act/decoder.1.hook_resid_post"][t0:t1]
    assert np.array_equal(cross, run.prompt_activation("decoder.1.cross_attn.hook_pattern", 2))
    assert target == run.str_tokens(2, "target")
    assert np.array_equal(stream, run.prompt_activation("decoder.1.hook_resid_post", 2))


def test_probe_heads_scores_cross_attention_against_the_gold_alignment(translation_run, toy):
    r = run_cli("heads", str(translation_run.path))
    assert r.returncode == 0, r.stderr
    assert "cross:" in r.stdout and "baselines: monotonic diagonal" in r.stdout
    table = pd.read_csv(translation_run.path / "analyses" / "head_metrics.csv")
    assert set(table.attention) == {"encoder", "decoder", "cross"}
    cross = table[table.attention == "cross"].set_index(["layer", "head"])
    # the same scores from the model on the same sentences (teacher forcing), not from the run
    want = alignment_scores(toy, run_translation_set(translation_run)).set_index(["layer", "head"])
    for column in ("alignment", "gold_attention", "previous", "diagonal", "uniform"):
        assert np.allclose(cross[column], want.loc[cross.index, column], atol=1e-5), column
    assert cross.alignment.max() == 1.0 and cross.diagonal.iloc[0] < 0.5


def test_probe_ablate_on_the_run_ablates_cross_attention_heads(translation_run):
    r = run_cli("ablate", "--run", str(translation_run.path), "--ablate-heads", "L1H1", "L1H2")
    assert r.returncode == 0, r.stderr
    assert "clean   1.0000" in r.stdout and "ablated 0.0000" in r.stdout
    r = run_cli("ablate", "--run", str(translation_run.path))
    assert r.returncode == 0, r.stderr
    sweep = pd.read_csv(translation_run.path / "analyses" / "ablation_exact_match.csv")
    assert len(sweep) == 8 and (sweep.clean == 1.0).all()
    assert sweep.effect.min() < -0.3  # some head the translation needs
    r = run_cli("ablate", "--run", str(translation_run.path), "--metric", "loss")
    assert r.returncode == 2 and "exact-match" in r.stderr and "Traceback" not in r.stderr


def test_what_an_encoder_decoder_run_cannot_take_is_refused(tmp_path, toy, translation_run):
    no_target = tmp_path / "sources.txt"
    no_target.write_text("the big dog sees a small cat\n")
    with pytest.raises(StoreError, match="has no 'target' text"):
        record(toy, no_target, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(InputError, match="sequence must be"):
        translation_run.tokens(0, "both")


def test_probe_patch_on_the_run_patches_cross_attention_heads(translation_run):
    r = run_cli("patch", "--run", str(translation_run.path))
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(translation_run.path / "analyses" / "patch_heads_cross.csv")
    assert len(table) == 8 and set(table.direction) == {"denoise"}
    best = table.sort_values("normalized").iloc[-1]
    assert (int(best.layer), int(best["head"])) in {(1, 1), (1, 2)}
