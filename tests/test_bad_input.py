"""Bad input gets a clear error naming the problem and the fix; the CLI exits non-zero
without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import models


def test_unknown_model_name():
    with pytest.raises(models.ModelNotFound, match="unknown model 'no-such-model'.*minilm"):
        models.load("no-such-model")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(models.UnsupportedArchitecture, match="'t5' is not supported.*bert.*gpt2"):
        models.load(tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(models.ModelNotFound, match="no config.json"):
        models.load(tmp_path)


def test_missing_weights(hf_checkpoints, tmp_path):
    src = hf_checkpoints["gpt2"][0]
    shutil.copytree(src, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(models.CheckpointMismatch, match="has no weights"):
        models.load(tmp_path / "ckpt")


def test_weights_that_do_not_match_config(hf_checkpoints, tmp_path):
    src = hf_checkpoints["llama"][0]
    shutil.copytree(src, tmp_path / "more_layers")
    cfg = json.loads((src / "config.json").read_text())
    (tmp_path / "more_layers" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(models.CheckpointMismatch, match="lacks .* tensors"):
        models.load(tmp_path / "more_layers")
    shutil.copytree(src, tmp_path / "wider")
    (tmp_path / "wider" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(models.CheckpointMismatch, match="shapes do not match"):
        models.load(tmp_path / "wider")


def test_corrupt_weight_file(hf_checkpoints, tmp_path):
    shutil.copytree(hf_checkpoints["bert"][0], tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(models.CheckpointMismatch, match="not a readable safetensors"):
        models.load(tmp_path / "c")


def test_empty_text_and_too_long_text(minilm):
    with pytest.raises(models.InputError, match="empty"):
        minilm("")
    with pytest.raises(models.InputError, match="empty"):
        minilm(["fine", "   "])
    with pytest.raises(models.InputError, match="no text"):
        minilm([])
    long = "word " * 600
    with pytest.raises(models.InputError, match="at most 512.*truncate=True"):
        minilm(long)
    with pytest.warns(UserWarning, match="truncated"):
        toks = minilm.tokenize(long, truncate=True)
    assert toks.ids.shape[1] == 512 and toks.truncated == [0]
    with pytest.raises(models.InputError, match="at most"):
        minilm(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(models.InputError, match="token ids must lie"):
        minilm(torch.tensor([[1, 10**6]]))


def test_save_and_load_roundtrip(hf_checkpoints, tmp_path):
    """The project's own checkpoint format (safetensors + probe_config.json) round-trips."""
    model = models.load(hf_checkpoints["qwen2"][0])
    models.save(model, tmp_path / "mine")
    again = models.load(tmp_path / "mine")
    ids = torch.tensor([[4, 9, 17, 23]])
    assert torch.equal(model(ids), again(ids))
    assert again.cfg == model.cfg


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "probe.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_user_errors_exit_nonzero_without_traceback(tmp_path):
    r = run_cli("attend", "the cat sat", "--from", "cat", "--to", "sat", "--model", "nope")
    assert r.returncode == 2
    assert "unknown model 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("attend", "the cat sat", "--from", "dog", "--to", "sat")
    assert r.returncode == 2
    assert "word 'dog' does not occur" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    r = run_cli("demo", "--model", str(tmp_path))
    assert r.returncode == 2 and "not supported" in r.stderr and "Traceback" not in r.stderr


def test_mismatched_run_and_model_are_refused(tmp_path):
    """Interventions on a run need the model it was recorded with: a model with other weights
    is refused by digest, and a run without a digest (another tool's) by its architecture."""
    import probe
    from analyses.coref_interventions import check_model_matches

    toy = models.load("toy-coref")
    run = probe.record(toy, probe.load_prompts("toy-coref-test")[:4], tmp_path / "run",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    check_model_matches(toy, run)  # the same model passes
    retrained = models.load("toy-coref")
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)  # same architecture, other weights
    with pytest.raises(models.InputError, match="recorded with 'toy-coref'.*different weights"):
        check_model_matches(retrained, run)
    manifest = json.loads((run.path / "run.json").read_text())
    del manifest["model"]["weights_sha256"]
    (run.path / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(models.InputError, match="another architecture than 'toy-induction'"):
        check_model_matches(models.load("toy-induction"), probe.open(run.path))
    r = run_cli("ablate", "--run", str(run.path), "--model", "toy-induction")
    assert r.returncode == 2 and "another architecture" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_patching_a_run_that_has_nothing_to_measure_with(tmp_path):
    """A decoder run whose prompts ask no question (so the model's answer cannot measure a
    patch) and that lacks resid_post (so no antecedent probe can): a clear refusal."""
    import probe

    rows = []
    for p in probe.load_prompts("toy-coref-test")[:40]:
        labels = {k: v for k, v in p.labels.items() if k != "question_span"}
        rows.append(json.dumps({"text": p.text, **labels}))
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    run = probe.record(models.load("toy-coref"), tmp_path / "p.jsonl", tmp_path / "run",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    r = run_cli("patch", "--run", str(run.path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "record 'blocks.*.hook_resid_post'" in r.stderr
