"""analyses/ioi.py: the IOI baseline and per-head direct logit attribution, against hand
computations on a random GPT-2 (weights processed as TransformerLens does) with IOI prompts whose
names are words of the test tokenizer."""

from __future__ import annotations

import pytest
import torch
from helpers import processed_model

from analyses.ioi import head_dla, ioi_baseline, ioi_batches
from probe.errors import InputError
from probe.ioi_prompts import ioi_prompts
from probe.prompts import Prompt

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "man", "woman", "house", "street", "animal"]


@pytest.fixture(scope="module")
def setup(hf_checkpoints):
    model = processed_model(hf_checkpoints["gpt2"][0]).eval()
    return model, ioi_prompts(16, seed=2, tokenizer=model.tokenizer, names=NAMES)


def last_logit_diff(model, text, io, s):
    with torch.no_grad():
        last = model(model.to_tokens(text))[0, -1]
    return float(last[model.to_single_token(io)] - last[model.to_single_token(s)])


def test_baseline_is_each_prompts_logit_difference(setup):
    model, prompts = setup
    base = ioi_baseline(model, prompts)
    assert base.n == 16 and len(ioi_batches(model, prompts)) >= 1
    want = [last_logit_diff(model, p.text, p.labels["answer"], p.labels["wrong"]) for p in prompts]
    got = base.per_prompt
    # batches group prompts by length: match rows to prompts by their order within each group
    order = [i for b in ioi_batches(model, prompts) for i in [prompts.index(p) for p in b.prompts]]
    for row, i in enumerate(order):
        assert abs(got.text_logit_diff.iloc[row] - want[i]) < 1e-4
        p = prompts[i]
        swap = last_logit_diff(model, p.labels["swap"], p.labels["answer"], p.labels["wrong"])
        assert abs(got.swap_logit_diff.iloc[row] - swap) < 1e-4
    assert abs(base.logit_diff - sum(want) / len(want)) < 1e-5
    assert base.accuracy == sum(w > 0 for w in want) / len(want)
    assert base.logit_diff_ci[0] <= base.logit_diff <= base.logit_diff_ci[1]
    assert set(base.by_order) == {"ABBA", "BABA"}


def test_head_dla_equals_a_hand_projection(setup):
    """A head's direct term at END: z W_O, centred (LayerNorm), divided by ln_final's cached scale,
    dotted with W_U[:, IO] - W_U[:, S]; averaged over prompts."""
    model, prompts = setup
    table = head_dla(model, prompts).set_index(["layer", "head"])
    assert table.processed.all() and len(table) == model.cfg.n_layers * model.cfg.n_heads
    terms = {key: [] for key in table.index}
    for batch in ioi_batches(model, prompts):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.tokens["text"])
        scale = cache["ln_final.hook_scale"][:, -1]  # [b, 1]
        direction = model.W_U[:, batch.io] - model.W_U[:, batch.s]  # [m, b]
        for layer, head in table.index:
            out = cache["z", layer][:, -1, head] @ model.W_O[layer, head]  # [b, m]
            out = (out - out.mean(-1, keepdim=True)) / scale
            terms[(layer, head)] += (out * direction.T).sum(-1).tolist()
    for key, values in terms.items():
        assert abs(table.dla[key] - sum(values) / len(values)) < 1e-4


def test_prompts_without_ioi_labels_are_refused(setup):
    model, _ = setup
    with pytest.raises(InputError, match="no answer"):
        ioi_batches(model, [Prompt("the cat sat")])
