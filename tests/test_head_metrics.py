"""Head metrics: definitions checked on hand-made patterns, and the planted heads of
toy-induction found from a recorded run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import probe
from analyses.head_metrics import head_metrics, pattern_metrics
from analyses.results import save_result
from models.tasks import induction


def test_metric_definitions_on_hand_made_patterns():
    tokens = np.array([7, 3, 5, 9, 3, 5])  # q=4 (3) -> induction target k=2; q=5 (5) -> k=3
    n = len(tokens)
    prev = np.zeros((n, n))
    prev[0, 0] = 1
    prev[np.arange(1, n), np.arange(n - 1)] = 1  # previous-token head
    first = np.zeros((n, n))
    first[:, 0] = 1
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    ind = np.eye(n)
    ind[4], ind[5] = 0, 0
    ind[4, 2] = ind[5, 3] = 1  # an induction head
    m = {k: v[0] / v[1] for k, v in pattern_metrics(np.stack([prev, first, uniform, ind]), tokens).items()}
    inv = 1 / np.arange(1, n + 1)  # uniform attention weights 1/(q+1)
    assert np.allclose(m["prev_token"], [1, 1 / 5, inv[1:].mean(), 0])
    assert np.allclose(m["first_token"], [2 / 6, 1, inv.mean(), 1 / 6])
    assert np.allclose(m["entropy"], [0, 0, np.log(np.arange(1, n + 1)).mean(), 0])
    assert np.allclose(m["induction"], [0, 0, (1 / 5 + 1 / 6) / 2, 1])
    assert np.allclose(m["duplicate_token"], [0, 0, (1 / 5 + 1 / 6) / 2, 0])
    assert np.allclose(m["self"], [1 / 6, 1 / 6, inv.mean(), 4 / 6])


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory):
    model = models.load("toy-induction")
    ids = induction.repeated_tokens(torch.Generator().manual_seed(21), 24)
    texts = [" ".join(model.to_str_tokens(row)[1:]) for row in ids]  # the model prepends <bos>
    run = probe.record(model, texts, tmp_path_factory.mktemp("ind") / "run", names=["blocks.*.attn.hook_pattern"],
                       progress=False)
    assert np.array_equal(run.tokens(0), ids[0].numpy())
    return run


def test_planted_heads_are_found(induction_run):
    table = head_metrics(induction_run)
    assert len(table) == 8
    by_prev = table.sort_values("prev_token", ascending=False)
    by_ind = table.sort_values("induction", ascending=False)
    top_prev, top_ind = by_prev.iloc[0], by_ind.iloc[0]
    assert top_prev["layer"] == 0 and top_prev["head"] in (0, 2)
    assert top_ind["layer"] == 1 and top_ind["head"] in (0, 2, 3)
    # the best head outside the planted layer scores far lower
    assert top_prev["prev_token"] > 2 * table[table.layer == 1].prev_token.max()
    assert top_ind["induction"] > 2 * table[table.layer == 0].induction.max()
    out = save_result(induction_run.path, "head_metrics", table)
    assert out.read_text().startswith("layer,head,entropy")
