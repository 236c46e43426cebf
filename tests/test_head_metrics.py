"""Head metrics: definitions checked on hand-made patterns, and the planted heads of
toy-induction found from a recorded run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import probe
from analyses.head_metrics import head_metrics, pattern_metrics
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
    # the detector scores count every query (TransformerLens's head detector): 6 here
    assert np.allclose(m["prev_token"], [5 / 6, 1 / 6, inv[1:].sum() / 6, 0])
    assert np.allclose(m["first_token"], [2 / 6, 1, inv.mean(), 1 / 6])
    assert np.allclose(m["entropy"], [0, 0, np.log(np.arange(1, n + 1)).mean(), 0])
    assert np.allclose(m["induction"], [0, 0, (1 / 5 + 1 / 6) / 6, 2 / 6])
    assert np.allclose(m["duplicate_token"], [0, 0, (1 / 5 + 1 / 6) / 6, 0])
    assert np.allclose(m["self"], [1 / 6, 1 / 6, inv.mean(), 4 / 6])


def tl_detector_scores(pattern: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """TransformerLens's own head detector (mul) on a [head, q, k] pattern: the reference."""
    from transformer_lens import head_detector as hd

    t = torch.as_tensor(tokens)[None]
    detectors = {"prev_token": hd.get_previous_token_head_detection_pattern(t),
                 "duplicate_token": hd.get_duplicate_token_head_detection_pattern(t),
                 "induction": hd.get_induction_head_detection_pattern(t)}
    return {name: np.array([hd.compute_head_attention_similarity_score(
        torch.as_tensor(p, dtype=torch.float32), detection_pattern=det, exclude_bos=False, exclude_current_token=False,
        error_measure="mul") for p in pattern]) for name, det in detectors.items()}


def test_detector_scores_equal_transformer_lens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, 12)  # small vocabulary: many duplicates and induction targets
    logits = rng.normal(size=(5, 12, 12)) * 2
    logits[:, np.triu_indices(12, 1)[0], np.triu_indices(12, 1)[1]] = -np.inf
    pattern = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ours = {k: v[0] / v[1] for k, v in pattern_metrics(pattern, tokens).items()}
    for name, ref in tl_detector_scores(pattern, tokens).items():
        assert np.allclose(ours[name], ref, atol=1e-6), name


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
    # over a run: the mean over prompts of TransformerLens's detector score of each prompt
    ref = np.mean([[tl_detector_scores(induction_run.pattern(i, layer), np.asarray(induction_run.tokens(i)))["induction"]
                    for layer in range(2)] for i in range(induction_run.n_prompts)], axis=0)
    assert np.allclose(table.induction.to_numpy().reshape(2, 4), ref, atol=1e-6)


def test_induction_on_random_repeats_finds_the_planted_heads(induction_run):
    """``probe heads`` adds the detector's induction score on fresh repeated random tokens
    when it can load the run's model; on toy-induction it ranks the planted heads first."""
    import pandas as pd

    from analyses.head_metrics import random_repeat_tokens
    from probe.cli import main

    model = models.load("toy-induction")
    ids = random_repeat_tokens(model, 4, 10)
    assert ids[:, 0].eq(model.cfg.bos_token_id).all() and torch.equal(ids[:, 1:11], ids[:, 11:21])
    assert main(["heads", str(induction_run.path)]) == 0
    table = pd.read_csv(induction_run.path / "analyses" / "head_metrics.csv")
    top3 = {(int(r.layer), int(r["head"])) for _, r in table.nlargest(3, "induction_random").iterrows()}
    assert top3 == {(1, 0), (1, 2), (1, 3)}
    others = table[(table.layer == 0) | (table["head"] == 1)].induction_random.max()
    assert table.induction_random.nlargest(3).min() > 2 * others


def test_heads_cli_on_a_short_context_model_and_a_wrong_model(tmp_path, capsys):
    """toy-coref takes 32 tokens: the repeated random tokens shrink to fit, so `probe heads`
    still adds induction_random; a --model that is not the run's is refused."""
    import pandas as pd

    from probe.cli import main

    toy = models.load("toy-coref")
    run = probe.record(toy, probe.load_prompts("toy-coref-test")[:6], tmp_path / "toy",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    assert main(["heads", str(run.path)]) == 0
    table = pd.read_csv(run.path / "analyses" / "head_metrics.csv")
    assert len(table) == 8 and table.induction_random.notna().all()
    assert main(["heads", str(run.path), "--model", "toy-induction"]) == 2
    assert "recorded with 'toy-coref'" in capsys.readouterr().err
