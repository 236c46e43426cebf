"""models/loading.py: a model name or checkpoint directory that cannot be loaded gets a clear
error naming the problem and the fix; the project's own checkpoint format round-trips; the
zoo lists the shipped models."""

from __future__ import annotations

import json
import shutil

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


def test_save_and_load_roundtrip(hf_checkpoints, tmp_path):
    """The project's own checkpoint format (safetensors + probe_config.json) round-trips."""
    model = models.load(hf_checkpoints["qwen2"][0])
    models.save(model, tmp_path / "mine")
    again = models.load(tmp_path / "mine")
    ids = torch.tensor([[4, 9, 17, 23]])
    assert torch.equal(model(ids), again(ids))
    assert again.cfg == model.cfg


def test_toy_models_are_in_the_zoo():
    assert {"minilm", "toy-induction", "toy-coref"} <= set(models.zoo())
