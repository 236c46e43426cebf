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
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 8}))
    with pytest.raises(models.UnsupportedArchitecture, match="'mamba' is not supported.*bert.*gpt2.*t5"):
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


# --- malformed checkpoint files: one CheckpointMismatch naming the file, never a traceback -------------

TOY = models.zoo()["toy-coref"]


def broken_copy(src, dst, file_name: str, content: str | bytes):
    shutil.copytree(src, dst)
    (dst / file_name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return dst


def edited(path, **changes) -> str:
    return json.dumps({**json.loads(path.read_text()), **changes})


@pytest.mark.parametrize("file_name, content, problem", [
    ("probe_config.json", "{not json", r"probe_config\.json is not valid JSON \(.* line 1, column 2\)"),
    ("probe_config.json", b"\xff\xfe{}", r"probe_config\.json is not UTF-8 text \(byte 0\)"),
    ("probe_config.json", "[1, 2]", r"probe_config\.json holds a JSON array, not an object"),
    ("probe_config.json", "1" * 5000, r"probe_config\.json is not valid JSON \(.*digits"),
    ("probe_config.json", "[" * 100_000, r"probe_config\.json is not valid JSON \(nested too deeply\)"),
    ("probe_config.json", lambda p: edited(p, bogus=1), r"probe_config\.json: unknown field 'bogus'"),
    ("probe_config.json", lambda p: edited(p, n_heads=0), r"probe_config\.json: n_heads must be a positive integer"),
    ("probe_config.json", lambda p: edited(p, n_heads=3, d_head=None),
     r"probe_config\.json: d_model=64 is not divisible by n_heads=3"),
    ("probe_config.json", lambda p: json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "d_model"}),
     r"probe_config\.json: lacks the field 'd_model'"),
    ("tokenizer.json", "{not json", r"tokenizer\.json is not valid JSON"),
    ("tokenizer.json", b"\xff{}", r"tokenizer\.json is not UTF-8 text"),
    ("tokenizer.json", "[1]", r"tokenizer\.json holds a JSON array, not an object"),
    ("tokenizer.json", "{}", r"toy-coref.*: the tokenizer files cannot be loaded \(KeyError"),
])
def test_a_malformed_probe_checkpoint_names_the_file(tmp_path, file_name, content, problem):
    if callable(content):
        content = content(TOY / file_name)
    ckpt = broken_copy(TOY, tmp_path / "toy-coref", file_name, content)
    with pytest.raises(models.CheckpointMismatch, match=problem) as caught:
        models.load(ckpt)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content, problem", [
    ("{not json", r"config\.json is not valid JSON"),
    (b"\xff\xfe{}", r"config\.json is not UTF-8 text"),
    ("[1, 2]", r"config\.json holds a JSON array, not an object"),
    (lambda p: edited(p, n_head=0), r"config\.json does not describe a valid gpt2 model: n_heads must be a positive"),
    (lambda p: edited(p, n_head=5), r"config\.json does not describe a valid gpt2 model: d_model=32 is not divisible"),
    (lambda p: edited(p, n_head="4"), r"config\.json does not describe a valid gpt2 model: n_heads must be an integer"),
])
def test_a_malformed_hugging_face_config_names_the_file(hf_checkpoints, tmp_path, content, problem):
    src = hf_checkpoints["gpt2"][0]
    if callable(content):
        content = content(src / "config.json")
    ckpt = broken_copy(src, tmp_path / "gpt2", "config.json", content)
    with pytest.raises(models.CheckpointMismatch, match=problem):
        models.load(ckpt)


def test_a_neox_config_with_no_heads_is_refused_before_dividing_by_them(hf_checkpoints, tmp_path):
    src = hf_checkpoints["neox"][0]
    ckpt = broken_copy(src, tmp_path / "neox", "config.json", edited(src / "config.json", num_attention_heads=0))
    with pytest.raises(models.CheckpointMismatch, match="n_heads must be a positive integer"):
        models.load(ckpt)


def test_the_cli_prints_a_malformed_checkpoint_as_one_line(tmp_path, capsys):
    from probe.cli import main

    ckpt = broken_copy(TOY, tmp_path / "toy-coref", "probe_config.json", "{not json")
    assert main(["attend", "the cat sat", "--from", "cat", "--to", "sat", "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe attend: error: ") and "probe_config.json is not valid JSON" in err
    assert len(err.strip().splitlines()) == 1
