"""models/training.py and `probe train` (probe/cli/train_command.py): training is
deterministic and learns, and the command writes a loadable checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

import models
from models.training import check_output, train
from probe.errors import InputError, StoreError


def test_short_training_is_deterministic_and_learns(tmp_path):
    a = train("coref", tmp_path / "a", steps=200, seed=3)
    b = train("coref", tmp_path / "b", steps=200, seed=3)
    c = train("coref", tmp_path / "c", steps=20, seed=4)
    wa, wb, wc = (models.load(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    curve = json.loads((a / "training_log.json").read_text())["loss_curve"]["loss"]
    assert curve[-1] < 0.5 * curve[0], curve  # from ~ln(vocab): it learns to name the right noun
    assert (a / "loss_curve.svg").read_text().startswith("<svg")


def test_train_cli_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ind"
    r = run_cli("train", "induction", "-o", str(out), "--steps", "20", "--seed", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    log = json.loads((out / "training_log.json").read_text())
    assert log["seed"] == 1 and log["hyperparameters"]["steps"] == 20
    assert log["command"].startswith("probe train induction")
    model = models.load(out)
    assert model.cfg.attn_only and model.cfg.n_layers == 2
    assert model.to_str_tokens("t1 t2") == ["<bos>", "t1", "t2"]
    r = run_cli("train", "nope", "-o", str(tmp_path / "x"), timeout=600)
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr


@pytest.mark.parametrize("kwargs, problem", [
    ({"steps": 0}, "steps must be a positive integer, not 0"),
    ({"steps": -5}, "steps must be a positive integer, not -5"),
    ({"batch_size": 0}, "batch_size must be a positive integer, not 0"),
    ({"lr": float("nan")}, "lr must be a finite number above 0, not nan"),
    ({"lr": float("inf")}, "lr must be a finite number above 0, not inf"),
    ({"lr": 0.0}, "lr must be a finite number above 0, not 0.0"),
    ({"lr": -1e-3}, "lr must be a finite number above 0, not -0.001"),
])
def test_nonsense_hyperparameters_are_refused_before_training(tmp_path, kwargs, problem):
    """Not 6,000 steps for 0, not an untrained checkpoint for -5, not a traceback from AdamW."""
    with pytest.raises(InputError, match=problem):
        train("induction", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_path_that_is_a_file_or_under_one_is_refused_before_training(tmp_path, capsys):
    from probe.cli import main

    (tmp_path / "file").write_text("keep me")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(StoreError, match=r"cannot write the checkpoint: .*file is a file"):
            train("induction", out, steps=1)
        with pytest.raises(StoreError, match=r"cannot write the checkpoint: .*file is a file"):
            check_output(out)
        assert main(["train", "induction", "-o", str(out), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("probe train: error: cannot write the checkpoint: ") and len(err.splitlines()) == 1
    assert (tmp_path / "file").read_text() == "keep me"


def test_the_translator_trains_deterministically_through_its_task_loss(tmp_path):
    """The encoder-decoder task path (training_loss, the tokenizer appending <eos>)."""
    a = train("translate", tmp_path / "a", steps=250, seed=2)
    b = train("translate", tmp_path / "b", steps=250, seed=2)
    wa, wb = models.load(a).state_dict(), models.load(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    curve = json.loads((a / "training_log.json").read_text())["loss_curve"]["loss"]
    assert curve[-1] < 0.5 * curve[0], curve
    model = models.load(a)
    assert model.cfg.encoder_decoder and model.to_str_tokens("the dog")[-1] == "<eos>"
