"""Head metrics: definitions checked on hand-made patterns (also planted in a model's
forward pass), the planted heads of toy-induction found from a recorded run and on repeated
random tokens, and SmolLM2's induction and previous-token heads found both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import probe
from analyses.head_metrics import head_metrics, pattern_metrics, random_repeat_scores, random_repeat_tokens
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


def test_random_repeat_scores_on_planted_patterns():
    """The scores on repeated random tokens read the pattern as the induction mosaic does:
    patterns written into toy-induction's layer 1 by a hook (a perfect induction head, a
    perfect previous-token head, uniform causal attention, attention to <bos>) score what
    their construction says."""
    model = models.load("toy-induction")
    data = random_repeat_tokens(model, 3, 10)
    assert data.start == 1 and data.half == 10 and data.ids.shape == (3, 21)
    assert data.ids[:, 0].eq(model.cfg.bos_token_id).all() and torch.equal(data.ids[:, 1:11], data.ids[:, 11:21])
    n = 21
    planted = torch.zeros(4, n, n)
    for q in range(n):
        planted[0, q, q - 9 if q >= 11 else q] = 1  # repeated half: the token after the earlier occurrence
        planted[1, q, max(q - 1, 0)] = 1
        planted[2, q, :q + 1] = 1 / (q + 1)
        planted[3, q, 0] = 1

    def plant(pattern, hook):
        return planted.expand_as(pattern).clone()

    with model.hooks([("blocks.1.attn.hook_pattern", plant)]):
        scores = random_repeat_scores(model, data=data)
    repeated, after_first = np.arange(11, 21), np.arange(2, 21)  # queries with a target; q - 1 a random token
    assert np.allclose(scores["induction_random"][1], [1, 0, (1 / (repeated + 1)).mean(), 0])
    assert np.allclose(scores["prev_token_random"][1], [0, 1, (1 / (after_first + 1)).mean(), 0])
    assert data.loss_positions() == (slice(0, 10), slice(11, 20))  # predictions of tokens 1-10 and 12-20


def test_induction_on_random_repeats_finds_the_planted_heads(induction_run):
    """``probe heads`` adds the induction and previous-token scores on fresh repeated random
    tokens when it can load the run's model; on toy-induction they rank the planted heads
    first (induction: L1H0, L1H2, L1H3; previous token: L0H0, L0H2)."""
    import pandas as pd

    from probe.cli import main

    assert main(["heads", str(induction_run.path)]) == 0
    table = pd.read_csv(induction_run.path / "analyses" / "head_metrics.csv")
    top3 = {(int(r.layer), int(r["head"])) for _, r in table.nlargest(3, "induction_random").iterrows()}
    assert top3 == {(1, 0), (1, 2), (1, 3)}
    others = table[(table.layer == 0) | (table["head"] == 1)].induction_random.max()
    assert table.induction_random.nlargest(3).min() > 1.5 * others
    top2 = {(int(r.layer), int(r["head"])) for _, r in table.nlargest(2, "prev_token_random").iterrows()}
    assert top2 == {(0, 0), (0, 2)}
    assert table.prev_token_random.nlargest(2).min() > 2 * table.prev_token_random.nlargest(3).iloc[-1]


def test_smollm2_induction_and_previous_token_heads_on_random_tokens(smollm2):
    """SmolLM2 (GQA: 9 query heads, 3 key/value heads) on repeated random tokens: one head
    puts most of the repeated half's attention on the induction target, far above the typical
    head, in a later layer than the strongest previous-token head (which it can compose with).
    Query heads sharing a key/value head have their own patterns, so their own scores."""
    data = random_repeat_tokens(smollm2, 4, 16, seed=1)
    assert data.start == 0  # SmolLM2's GGUF says to add no BOS
    scores = random_repeat_scores(smollm2, data=data)
    ind, prev = scores["induction_random"], scores["prev_token_random"]
    assert ind.shape == prev.shape == (30, 9)
    best_ind = np.unravel_index(ind.argmax(), ind.shape)
    best_prev = np.unravel_index(prev.argmax(), prev.shape)
    assert ind.max() > 0.6 and ind.max() > 10 * np.median(ind)
    assert prev.max() > 0.7 and prev.max() > 5 * np.median(prev)
    assert best_prev[0] < best_ind[0]
    group = best_ind[1] // 3  # the query heads of its key/value head
    assert np.ptp(ind[best_ind[0], 3 * group:3 * group + 3]) > 0.3


def test_smollm2_run_detector_agrees_with_random_tokens(smollm2, tmp_path):
    """`probe heads` on a SmolLM2 run of sentences said twice: the detector's induction score
    on the run's own tokens picks mostly the heads the random-token score picks (3 of the top
    5 at least), and the strongest previous-token head is the same on both."""
    import pandas as pd

    from probe.cli import main

    texts = ["The old lighthouse keeper walked slowly down to the harbour.",
             "Seven purple kites drifted over the quiet village square.",
             "A committee of engineers rejected the bridge design twice.",
             "Margaret sold her bicycle to a student from Lisbon."]
    run = probe.record(smollm2, [f"{t} {t}" for t in texts], tmp_path / "run", names=["blocks.*.attn.hook_pattern"],
                       progress=False)
    assert main(["heads", str(run.path)]) == 0
    table = pd.read_csv(run.path / "analyses" / "head_metrics.csv")
    assert len(table) == 270

    def top(metric, k):
        return {(int(r.layer), int(r["head"])) for _, r in table.nlargest(k, metric).iterrows()}

    assert len(top("induction", 5) & top("induction_random", 5)) >= 3
    assert top("prev_token", 1) == top("prev_token_random", 1)


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
