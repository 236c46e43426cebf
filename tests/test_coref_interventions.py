"""The causal half of the coreference study (analyses/coref_interventions.py, and `probe
coref`/`patch`/`ablate` on a run): metrics on internal activations (probe,
antecedent attention) checked against independent computations, the sweep's exact
shortcuts (resume at the ablated block, skip blocks after what the metric reads) against
plain full runs, padded batches, and the study's verdicts on the toy model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_saved, run_cli

import models
import probe
from analyses import coref_interventions as ci
from analyses.ablation import ablate_heads_hooks, evaluate, head_ablation_sweep, probe_margin, reference_z
from analyses.coref import NearMajority, candidate_attention, coref_study, save_study
from analyses.run_checks import check_model_matches
from models import InputError


@pytest.fixture(scope="module")
def wb_run(minilm, tmp_path_factory):
    prompts = probe.load_prompts("seed") + probe.load_prompts("winobias-dev")[::8][:60]
    return probe.record(minilm, prompts, tmp_path_factory.mktemp("wb") / "run",
                        names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"], progress=False)


def test_antecedent_score_equals_the_study_attention(minilm, wb_run):
    """The metric's per-example score (torch, from a fresh padded forward) equals gold minus
    other attention computed from the run's stored patterns (numpy, coref.candidate_attention)."""
    attn, gold, used = candidate_attention(wb_run)
    batch = ci.coref_batch(minilm, wb_run, used)
    for heads in ([(2, 5)], [(0, 1), (4, 7)]):
        metric = ci.antecedent_score(heads, batch.query, batch.candidates, batch.gold)
        with torch.no_grad():
            ours = evaluate(minilm, batch.tokens, metric, attention_mask=batch.mask)[0].numpy()
        g = gold[:, None]
        per_head = [np.take_along_axis(attn[:, la, h], g, 1)[:, 0] - np.take_along_axis(attn[:, la, h], 1 - g, 1)[:, 0]
                    for la, h in heads]
        assert np.allclose(ours, np.mean(per_head, 0), atol=1e-4)


def test_sweep_shortcuts_equal_full_runs_on_padded_prompts(minilm, wb_run):
    """Probe metric at layer 2 on prompts of different lengths, mean ablation with a padded
    reference: the sweep (which resumes at each block and skips blocks 3-5) equals ablating one
    head at a time in a plain full forward pass; heads after layer 2 have effect exactly 0."""
    _, _, used = candidate_attention(wb_run)
    setup = ci.ablation_setup(minilm, wb_run, used, layer=2)
    d = setup.data
    assert len(set(d.mask.sum(1).tolist())) > 1  # really padded
    metric = probe_margin(setup.probe.probe, setup.probe.hook, d.query, d.gold.numpy())
    table = head_ablation_sweep(minilm, d.tokens, metric, "mean", setup.reference, attention_mask=d.mask,
                                reference_mask=setup.reference_mask)
    refs = reference_z(minilm, setup.reference, setup.reference_mask)
    full = {}
    with torch.no_grad():
        for layer, head in [(0, 3), (1, 7), (2, 11), (4, 0)]:
            hooks = ablate_heads_hooks(minilm, [(layer, head)], "mean", refs)
            plain = minilm.run_with_hooks(d.tokens, hooks + [(setup.probe.hook, lambda x, hook: full.update(x=x))],
                                          attention_mask=d.mask)
            assert plain is not None
            value = metric(None, d.tokens, {setup.probe.hook: full["x"]}).mean().item()
            row = table[(table.layer == layer) & (table["head"] == head)].iloc[0]
            assert abs(row.ablated - value) < 1e-4, (layer, head)
    assert (table[table.layer > 2].effect == 0).all()
    assert table[table.layer <= 2].effect.abs().max() > 0


def test_mean_ablation_skips_padding_in_the_reference():
    from analyses.ablation import replacement

    ref = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("nan"), float("nan")]])[..., None]  # [2, 3, 1]
    out = replacement("mean", torch.zeros(1, 3, 1), ref)
    assert out[0, :, 0].tolist() == [2.0, 2.0, 2.0]  # position 2 has no reference: the mean over all real ones
    with pytest.raises(InputError, match="resample"):
        replacement("resample", torch.zeros(1, 3, 1), ref)


def test_mismatched_model_is_refused(wb_run):
    with pytest.raises(InputError, match="recorded with 'minilm'"):
        check_model_matches(models.load("toy-coref"), wb_run)
    with pytest.raises(InputError, match="recorded with 'minilm'"):
        coref_study(wb_run, model=models.load("toy-coref"))
    r = run_cli("coref", str(wb_run.path), "--model", "toy-coref")
    assert r.returncode == 2 and "recorded with 'minilm'" in r.stderr


def test_twin_pairs_flip_the_antecedent(wb_run):
    _, _, used = candidate_attention(wb_run)
    pairs = ci.twin_pairs(wb_run, used)
    assert pairs == [(0, 1)]  # the tired/wide seed pair; WinoBias pro/anti pairs keep the antecedent
    assert wb_run.labels(0)["answer"] == 0 and wb_run.labels(1)["answer"] == 1


def test_coref_study_runs_the_interventions_on_minilm(minilm, wb_run):
    """minilm is an encoder: the antecedent probe (at its best dev layer) measures the
    ablations; the seed twins are the one pair patched; the files hold the study's tables."""
    study = coref_study(wb_run, model=minilm)
    assert study.interventions_not_run is None and study.patching_not_run is None
    assert list(study.probes.layer) == list(range(6))
    best_dev = study.probes.sort_values(["dev_acc", "layer"], ascending=[False, False]).layer.iloc[0]
    summary = study.ablation
    assert summary.measure == f"antecedent probe accuracy (layer {best_dev})" and summary.logit_diff is None
    assert summary.heads == study.named_heads and len(summary.heads) == 5
    assert summary.n_train + summary.n_held_out == study.n_prompts == 62
    assert summary.random_min <= summary.random_mean <= summary.random_max
    majority = float(study.probes.majority_baseline.iloc[0])
    near = study.caution(NearMajority)
    assert (near is not None) == (summary.clean <= majority + 0.05)
    assert near is None or near == NearMajority(summary.clean, majority)
    sweep = study.ablation_sweep
    assert len(sweep) == 72 and {"layer", "head", "effect"} <= set(sweep.columns)
    assert study.patch_resid.token.iloc[0] == "[CLS]" and study.patch_resid.n_pairs.iloc[0] == 1
    assert study.patch_heads.metric.iloc[0] == "probe log-odds"
    report = save_study(study)
    for section in ("## Antecedent probes", "## Ablation", "## Patching"):
        assert section in report.read_text()
    assert_saved(wb_run.path / "analyses" / "ablation_accuracy.csv", sweep)
    assert_saved(wb_run.path / "analyses" / "probes_antecedent.csv", study.probes)
    # the same patching from `probe patch --run` (an encoder: the probe measures), and the sweep
    r = run_cli("patch", "--run", str(wb_run.path), "--layer", "3", timeout=600)
    assert r.returncode == 0 and "probe log-odds" in r.stdout, r.stderr
    heads = pd.read_csv(wb_run.path / "analyses" / "patch_heads_antecedent.csv")
    assert len(heads) == 72 and heads.normalized.notna().all()
    r = run_cli("ablate", "--run", str(wb_run.path), "--metric", "antecedent-score", "--heads", "L3H1", "L5H11",
                timeout=600)
    assert r.returncode == 0, r.stderr
    score = pd.read_csv(wb_run.path / "analyses" / "ablation_antecedent_score.csv")
    # a head's ablation cannot move patterns of its own layer or earlier ones: layer 5 does nothing
    assert score[score.layer == 5].effect.abs().max() < 1e-6 < score[score.layer < 5].effect.abs().max()



@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """toy-coref on 200 held-out prompts (whole twin groups, spread over the nouns)."""
    toy = models.load("toy-coref")
    prompts = probe.load_prompts("toy-coref-test")
    groups = sorted({p.labels["pair_id"] for p in prompts})[::7]
    prompts = [p for p in prompts if p.labels["pair_id"] in set(groups)][:200]
    return probe.record(toy, prompts, tmp_path_factory.mktemp("toy") / "run",
                        names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"], progress=False)


def test_toy_coref_heads_matter_by_the_models_own_answer(toy_run):
    """toy-coref answers itself: the study's heads (layer 1), ablated together, lower the
    held-out logit difference (antecedent vs other candidate; the forced choice survives, and
    with the free answer test_coref.py shows the drop toward chance), while the layer-0
    heads carry the decision; patching the twins' layer-0 residual stream restores the clean
    answer only at the adjective positions."""
    from analyses.coref import coref_heads

    toy, run = models.load("toy-coref"), toy_run
    table, _, _ = coref_heads(run, query="question_span")
    named = [(int(r.layer), int(r["head"])) for _, r in table[table.beats_baselines].iterrows()]
    _, _, used = candidate_attention(run, query="question_span")
    setup = ci.ablation_setup(toy, run, used, layer=1, query="question_span")
    assert setup.own_answer
    summary = ci.ablation_tests(toy, setup, named)
    assert summary.clean > 0.95 and summary.heads == tuple(named)
    assert summary.n_train == len(setup.train) and summary.n_held_out == len(setup.data.prompts)
    # the heads that attend to the antecedent carry part of the decision (a quarter or more of
    # the logit difference), but the forced choice survives them; the layer-0 heads, which
    # read the adjective, carry the rest: without them the choice is at chance
    assert summary.logit_diff.zero_ablated < 0.75 * summary.logit_diff.clean
    layer0 = ci.ablation_tests(toy, setup, [(0, h) for h in range(toy.cfg.n_heads)])
    assert layer0.zero_ablated < 0.7 and layer0.logit_diff.zero_ablated < 0.1 * layer0.logit_diff.clean
    # toy-coref has 8 heads: the 4 others are the only set of as many, drawn every time
    assert layer0.n_random_sets == 1 and layer0.few_random_sets and layer0.random_min == layer0.random_max
    pairs = ci.twin_pairs(run, used)
    heads, resid = ci.patching_tests(toy, run, pairs, None, "question_span")
    assert heads.metric.iloc[0] == "logit difference" and heads.n_pairs.iloc[0] >= 5
    # ground truth by construction: at layer 0 the residual stream is the token embedding, so
    # patching a position where the twins' tokens agree changes nothing (exactly 0); only the
    # two adjective positions (sentence and question) can restore the clean answer
    layer0 = resid[resid.layer == 0].set_index("position").normalized
    width = resid.position.max() + 1
    patched = [(c, w) for c, w in pairs if len(run.tokens(c)) == width]
    assert len(patched) == heads.n_pairs.iloc[0]
    differ = sorted({int(p) for c, w in patched for p in np.flatnonzero(run.tokens(c) != run.tokens(w))})
    assert 0 < len(differ) < width
    assert layer0.drop(differ).abs().max() < 1e-4
    assert layer0[differ].max() > 0.3


def test_patch_run_noising_on_toy_coref(toy_run):
    """`probe patch --run RUN --direction noise` noises (corrupted activations into the clean
    run): at layer 0 the residual stream is the token embedding, so noising a position where
    the twins' tokens agree leaves the clean answer untouched (normalised exactly 1), while
    noising an adjective position damages it."""
    r = run_cli("patch", "--run", str(toy_run.path), "--query", "question_span", "--direction", "noise", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "noise patches of" in r.stdout
    resid = pd.read_csv(toy_run.path / "analyses" / "patch_resid_antecedent_noise.csv")  # beside the denoising one
    assert set(resid.direction) == {"noise"} and resid.clean.iloc[0] > 0 > resid.corrupt.iloc[0]
    width = resid.position.max() + 1
    _, _, used = candidate_attention(toy_run, query="question_span")
    patched = [(c, w) for c, w in ci.twin_pairs(toy_run, used) if len(toy_run.tokens(c)) == width]
    differ = sorted({int(p) for c, w in patched for p in np.flatnonzero(toy_run.tokens(c) != toy_run.tokens(w))})
    layer0 = resid[resid.layer == 0].set_index("position").normalized
    assert (layer0.drop(differ) - 1).abs().max() < 1e-4
    assert layer0[differ].min() < 0.7


def test_ablate_run_ablates_a_set_of_heads_on_toy_coref(toy_run, tmp_path):
    """`probe ablate --run RUN --ablate-heads` on toy-coref (the model's own two-candidate
    answer on the held-out prompts): zero-ablating all layer-0 heads, which read the adjective,
    puts the choice near chance, while the clean choice is right on held-out prompts; the
    numbers equal zero-ablation hooks written here on the same held-out batch."""
    out = tmp_path / "set.csv"
    r = run_cli("ablate", "--run", str(toy_run.path), "--query", "question_span", "--method", "zero",
                "--ablate-heads", "L0H0", "L0H1", "L0H2", "L0H3", "-o", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    row = pd.read_csv(out).iloc[0]
    assert row.clean > 0.95 and row.ablated < 0.7
    toy = models.load("toy-coref")
    _, _, used = candidate_attention(toy_run, query="question_span")
    d = ci.ablation_setup(toy, toy_run, used, layer=1, query="question_span").data
    last = d.mask.sum(1) - 1
    gold = d.answer_ids.gather(1, d.gold[:, None])[:, 0]
    other = d.answer_ids.gather(1, 1 - d.gold[:, None])[:, 0]

    def zero_layer0(z, hook):
        return torch.zeros_like(z)

    with torch.no_grad():
        logits = toy.run_with_hooks(d.tokens, [("blocks.0.attn.hook_z", zero_layer0)], attention_mask=d.mask)
    final = logits[torch.arange(len(last)), last]
    by_hand = (final.gather(1, gold[:, None]) > final.gather(1, other[:, None])).float().mean().item()
    assert abs(row.ablated - by_hand) < 1e-6
