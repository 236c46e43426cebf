"""models.utils: TransformerLens's `utils` helpers, each compared with TransformerLens 4.3's own
function (`transformer_lens.utilities.<name>`) on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import utilities as tl

import models
from models import activation_cache
from models import utils as ours
from probe.errors import MissingHook

ACT_NAMES = [("pattern", 3), ("scale", 2, "ln1"), ("k6",), ("resid_pre", 0), ("resid_mid", 1), ("resid_post", 2),
             ("attn_out", 1), ("mlp_out", 2), ("post", 1), ("pre", 0), ("z", 0), ("q", 1), ("result", 1),
             ("attn_scores", 0), ("attn", 0), ("normalized", 1, "ln2"), ("embed",), ("pos_embed",), ("scale",),
             ("blocks.0.hook_resid_pre",), ("attn_scores", 1, "a"), ("pattern1",), ("rot_q", 0), ("mlp_in", 0)]


@pytest.fixture(scope="module")
def gpt2(hf_checkpoints):
    return models.load(hf_checkpoints["gpt2"][0])


def test_get_act_name_is_the_one_act_name_and_agrees_with_transformerlens():
    assert ours.get_act_name is activation_cache.act_name
    for args in ACT_NAMES:
        assert ours.get_act_name(*args) == tl.get_act_name(*args), args
    with pytest.raises(MissingHook):  # TransformerLens answers "hook_resid_pre", which no model has
        ours.get_act_name("resid_pre")


@pytest.mark.parametrize("value", [
    torch.arange(6.0).reshape(2, 3), torch.randn(3, dtype=torch.bfloat16), torch.nn.Parameter(torch.ones(2)),
    torch.tensor([1, 2, 3]), [1.0, 2.0], (1, 2), np.zeros((2, 2), dtype=np.float16), 3, 2.5, True, "a"])
def test_to_numpy(value):
    a, b = ours.to_numpy(value), tl.to_numpy(value)
    assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        ours.to_numpy({"a": 1})


def test_lm_cross_entropy_loss_with_and_without_a_mask():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(2, 7, 40, generator=g)
    tokens = torch.randint(0, 40, (2, 7), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    for attention_mask in (None, mask, mask.bool()):
        for per_token in (False, True):
            a = ours.lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)
            b = tl.lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # one sequence without a batch axis
    torch.testing.assert_close(ours.lm_cross_entropy_loss(logits[0], tokens[0]),
                               tl.lm_cross_entropy_loss(logits[0], tokens[0]), atol=1e-6, rtol=0)


def test_lm_cross_entropy_loss_of_the_model_equals_its_loss(gpt2):
    tokens = torch.tensor([[4, 9, 17, 23, 8, 30]])
    logits = gpt2(tokens)
    torch.testing.assert_close(ours.lm_cross_entropy_loss(logits, tokens), gpt2(tokens, return_type="loss"))
    # the model's TransformerLens-named loss_fn is the same function, per token too
    per_token = gpt2.loss_fn(logits, tokens, per_token=True)
    torch.testing.assert_close(per_token, tl.lm_cross_entropy_loss(logits, tokens, per_token=True), atol=1e-6, rtol=0)
    torch.testing.assert_close(per_token, gpt2(tokens, return_type="loss", loss_per_token=True))


def test_get_device_is_transformerlens_choice_here():
    """No GPU here: TransformerLens's get_device and ours both pick the CPU."""
    assert str(ours.get_device()) == str(tl.get_device()) == ("cuda" if torch.cuda.is_available() else "cpu")


def _documents(n: int) -> list[str]:
    words = "the cat sat on mat dog ran to house big small red".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(i % 9 + 1)) for i in range(n)]


@pytest.mark.parametrize("max_length,add_bos_token,n_docs", [(16, True, 1200), (9, False, 40), (512, True, 5)])
def test_tokenize_and_concatenate_equals_transformerlens(gpt2, max_length, add_bos_token, n_docs):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": _documents(n_docs), "id": list(range(n_docs))})
    kw = {"max_length": max_length, "add_bos_token": add_bos_token, "num_proc": None}
    a = ours.tokenize_and_concatenate(data, gpt2.tokenizer, **kw)
    b = tl.tokenize_and_concatenate(data, gpt2.tokenizer, **kw)
    assert a.column_names == b.column_names == ["tokens"]
    rows_a, rows_b = a[:]["tokens"], b[:]["tokens"]  # torch format: one [n, max_length] tensor
    assert torch.equal(rows_a, rows_b)
    assert rows_a.shape[1] == max_length


def test_tokenize_and_concatenate_streams(gpt2):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": _documents(50)}).to_iterable_dataset()
    kw = {"streaming": True, "max_length": 12, "set_format": False}
    a = [list(row["tokens"]) for row in ours.tokenize_and_concatenate(data, gpt2.tokenizer, **kw)]
    b = [list(row["tokens"]) for row in tl.tokenize_and_concatenate(data, gpt2.tokenizer, **kw)]
    assert a == b and len(a) > 1


@pytest.mark.parametrize("answer,kwargs", [
    ("mat", {}), ("mat dog", {}), (["mat", " dog", "cat"], {}), ("mat", {"prepend_bos": False, "top_k": 3}),
    ("mat", {"print_details": False}), (" mat", {"prepend_space_to_answer": False})])
def test_test_prompt_prints_transformerlens_report(gpt2, capsys, answer, kwargs):
    """TransformerLens's own test_prompt runs on this model; both print the same report."""
    ours.test_prompt("the cat sat on the", answer, gpt2, **kwargs)
    mine = capsys.readouterr().out
    tl.test_prompt("the cat sat on the", answer, gpt2, **kwargs)
    theirs = capsys.readouterr().out
    assert mine == theirs
    assert "Ranks of the answer tokens:" in mine


def test_get_corner_of_tensors_and_factored_matrices():
    from transformer_lens import FactoredMatrix as TLFactored

    from models import FactoredMatrix

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 7, generator=g)
    assert torch.equal(ours.get_corner(x), tl.get_corner(x)) and ours.get_corner(x, 2).shape == (2, 2, 2)
    a, b = torch.randn(4, 8, 3, generator=g), torch.randn(4, 3, 8, generator=g)
    corner = ours.get_corner(FactoredMatrix(a, b))
    assert corner.shape == (3, 3, 3)
    torch.testing.assert_close(corner, (a @ b)[:3, :3, :3])
    torch.testing.assert_close(corner, tl.get_corner(TLFactored(a, b)[:3, :3, :3].AB))
