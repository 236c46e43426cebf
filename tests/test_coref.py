"""The coreference study (analyses/coref.py; its report, analyses/coref_report.py; `probe
coref` end to end): aggregation and baselines checked by hand on the seed pair. The
interventions it runs are tested in test_coref_interventions.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from helpers import assert_saved, run_cli

import probe
from analyses.coref import (
    INTERVENTIONS_NEED_PROBE,
    NO_MODEL,
    NO_TWIN_PAIRS,
    PROBES_NEED_RESID,
    CorefStudy,
    NearMajority,
    TooFewPrompts,
    bootstrap_ci,
    candidate_attention,
    coref_heads,
    coref_study,
    positional_baselines,
    save_study,
)
from analyses.coref_interventions import AblationSummary
from analyses.coref_report import render_report


@pytest.fixture(scope="module")
def seed_run(minilm, tmp_path_factory):
    return probe.record(minilm, "seed", tmp_path_factory.mktemp("seed") / "run",
                        names=["blocks.*.attn.hook_pattern"], progress=False)


def test_attention_aggregation_by_hand(seed_run):
    run = seed_run
    attn, gold, used = candidate_attention(run)
    assert used == [0, 1] and gold.tolist() == [0, 1]  # tired -> animal, wide -> street
    toks = run.str_tokens(0)
    it, animal, street = toks.index("it"), toks.index("animal"), toks.index("street")
    for layer in (0, 4):
        p = run.pattern(0, layer)
        assert np.allclose(attn[0, layer, :, 0], p[:, it, animal])
        assert np.allclose(attn[0, layer, :, 1], p[:, it, street])


def test_baselines_and_table(seed_run):
    attn, gold, used = candidate_attention(seed_run)
    base = positional_baselines(seed_run, used, gold)
    assert base == {"nearest mention": 0.5, "first mention": 0.5, "chance": 0.5}
    table, base2, n = coref_heads(seed_run)
    assert n == 2 and len(table) == 72
    expected = (attn.argmax(-1) == gold[:, None, None]).mean(0)
    assert np.allclose(table.accuracy.to_numpy().reshape(6, 12), expected)
    assert not table.beats_baselines.any()  # two prompts are too few for any claim


def files_under(path):
    return sorted(str(f.relative_to(path)) for f in path.rglob("*"))


def test_the_seed_study_as_data(seed_run, minilm):
    """Two prompts with patterns only: the per-head table and the baselines as coref_heads
    computes them, the top heads by accuracy named, a too-few-prompts caution, no probes (no
    resid_post), no interventions (none without a model; with one, too few prompts for the
    probe that measures them), and nothing written."""
    before = files_under(seed_run.path)
    study = coref_study(seed_run)
    assert files_under(seed_run.path) == before
    table, base, n = coref_heads(seed_run)
    assert study.n_prompts == n == 2 and study.baselines == base and study.best_positional == 0.5
    assert study.heads.drop(columns="accuracy_head").equals(table) and study.n_beating == 0
    attn, gold, _ = candidate_attention(seed_run)
    accuracy = (attn.argmax(-1) == gold[:, None, None]).mean(0)  # [layer, head]
    assert len(study.named_heads) == 5
    assert [accuracy[la, h] for la, h in study.named_heads] == sorted(accuracy.flatten(), reverse=True)[:5]
    assert study.notes == (TooFewPrompts(2),)
    assert study.probes is None and study.probes_not_run == PROBES_NEED_RESID
    assert study.interventions_not_run == NO_MODEL and study.ablation is None and study.ablation_sweep is None
    assert study.patch_heads is None and study.patch_resid is None and study.patching_not_run is None
    with_model = coref_study(seed_run, model=minilm)
    assert with_model.interventions_not_run == INTERVENTIONS_NEED_PROBE and with_model.ablation is None
    assert files_under(seed_run.path) == before


@pytest.mark.parametrize("top", [0, -1])
def test_the_study_refuses_a_top_below_one(seed_run, top):
    from probe.errors import InputError

    with pytest.raises(InputError, match=f"top must be a positive integer .*, not {top}"):
        coref_study(seed_run, top=top)


def test_positional_baselines_on_hand_made_prompts(minilm, tmp_path):
    """Prompts where the nearest and the first mention disagree, with the answers known by
    construction: nearest is right on 1 of 4, first on 2 of 4."""
    import json

    def prompt(text, cands, pronoun, answer):
        spans = [[text.index(c), text.index(c) + len(c)] for c in cands]
        start = text.index(pronoun, spans[0][1])
        return {"text": text, "candidates": cands, "candidate_spans": spans, "answer": answer,
                "pronoun": pronoun, "pronoun_span": [start, start + len(pronoun)]}

    rows = [prompt("The cat chased the dog because it was hungry.", ["cat", "dog"], "it", 0),  # first, not nearest
            prompt("The cat chased the dog because it was bored.", ["cat", "dog"], "it", 0),  # first, not nearest
            prompt("The cat chased the dog because it was slow.", ["cat", "dog"], "it", 1),  # nearest, not first
            prompt("The cat saw that it was near the dog.", ["cat", "dog"], "it", 1)]  # neither (only cat precedes)
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = probe.record(minilm, path, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    _, gold, used = candidate_attention(run, prompts=None)
    assert used == [0, 1, 2, 3] and gold.tolist() == [0, 0, 1, 1]
    base = positional_baselines(run, used, gold)
    assert base == {"nearest mention": 0.25, "first mention": 0.5, "chance": 0.5}


def record_toy_coref(tmp_path, second_prompt: dict | None = None):
    """toy-coref on 12 of its test prompts, each with extra label fields that are no span
    (``pronoun`` a string, ``answer`` an int, ``candidate_spans`` a list of spans); the second
    prompt's labels changed by ``second_prompt``."""
    import json

    import models

    rows = [{"text": p.text, **p.labels} for p in probe.load_prompts("toy-coref-test")[:12]]
    rows[1].update(second_prompt or {})
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return probe.record(models.load("toy-coref"), path, tmp_path / "run", names=["blocks.*.attn.hook_pattern"],
                        progress=False)


@pytest.mark.parametrize("query, shown", [("answer", "0"), ("pronoun", "'it'"),
                                          ("candidate_spans", r"\[\[4, 10\], \[28, 34\]\]")])
def test_a_query_that_is_no_span_field_is_refused_by_name(tmp_path, capsys, query, shown):
    from probe.cli import main
    from probe.errors import InputError

    run = record_toy_coref(tmp_path)
    problem = (rf"prompt 0 of .*run: {query!r} is {shown}, not a \[start, end\] character span .*; give --query a "
               "field that holds one span, e.g. pronoun_span")
    with pytest.raises(InputError, match=problem):
        candidate_attention(run, query=query)
    assert main(["coref", str(run.path), "--no-interventions", "--query", query]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe coref: error: prompt 0 of ") and len(err.splitlines()) == 1
    assert not (run.path / "analyses").exists()


@pytest.mark.parametrize("labels, problem", [
    ({"pronoun_span": "43-45"}, r"'pronoun_span' is '43-45', not a \[start, end\] character span"),
    ({"pronoun_span": [43]}, r"'pronoun_span' is \[43\], not a \[start, end\] character span"),
    ({"pronoun_span": [43.0, 45.0]}, r"'pronoun_span' is \[43.0, 45.0\], not a \[start, end\] character span"),
    ({"candidate_spans": [[4, 10], [28]]}, r"'candidate_spans\[1\]' is \[28\], not a \[start, end\] character"),
    ({"candidate_spans": "4-10"}, r"'candidate_spans' is '4-10', not a list of \[start, end\] character spans"),
    ({"candidate_spans": [[4, 10]]}, r"'candidate_spans' holds 1 span; the study compares exactly two candidate"),
    ({"answer": "first"}, r"'answer' is 'first'; it must be 0 or 1, the index of the antecedent"),
    ({"answer": 2}, r"'answer' is 2; it must be 0 or 1"),
])
def test_malformed_span_labels_are_refused_with_the_prompt_named(tmp_path, labels, problem):
    from probe.errors import InputError

    run = record_toy_coref(tmp_path, labels)
    with pytest.raises(InputError, match=rf"^prompt 1 of .*run: {problem}.*fix the prompt file"):
        coref_study(run)


def test_bootstrap_interval_covers_the_mean():
    correct = (np.random.default_rng(0).random((400, 3)) < [0.2, 0.5, 0.9]).astype(float)
    lo, hi = bootstrap_ci(correct)
    assert np.all(lo < correct.mean(0)) and np.all(correct.mean(0) < hi)
    assert np.all(hi - lo < 0.12) and np.all(hi - lo > 0.02)


def test_coref_cli_writes_report(seed_run, tmp_path):
    r = run_cli("coref", str(seed_run.path))
    assert r.returncode == 0, r.stderr
    report = seed_run.path / "analyses" / "coref" / "report.md"
    study = coref_study(seed_run, model=probe.load("minilm"))  # the CLI loads the run's own model
    assert report.read_text() == render_report(study)
    assert "too few to claim" in report.read_text() and "No interventions:" in report.read_text()
    import re

    # the long study says where it is, stage by stage, on stderr
    assert re.search(r"^coref \[\d+s\]: antecedent probes per layer \.\.\.$", r.stderr, re.M), r.stderr
    assert (report.parent / "heads.html").exists()
    assert_saved(report.parent / "coref_heads.csv", study.heads)
    # the figures open offline: plotly.js lies beside them, not on a CDN
    assert (report.parent / "plotly.min.js").exists() and "cdn.plot.ly" not in (report.parent / "heads.html").read_text()
    # a run without gold labels gets a clear error
    plain = probe.record(probe.load("minilm"), ["just a sentence here"], tmp_path / "plain",
                         names=["blocks.0.attn.hook_pattern"], progress=False)
    r = run_cli("coref", str(plain.path))
    # it lacks patterns of layers 1-5: the error names them and how to record them
    assert r.returncode == 2 and "lacks blocks.1.attn.hook_pattern" in r.stderr, r.stderr
    assert "--names 'blocks.*.attn.hook_pattern'" in r.stderr and "Traceback" not in r.stderr
    plain = probe.record(probe.load("minilm"), ["just a sentence here"], tmp_path / "plain2",
                         names=["blocks.*.attn.hook_pattern"], progress=False)
    r = run_cli("coref", str(plain.path))
    assert r.returncode == 2 and "labels the study needs" in r.stderr


def test_toy_coref_study_names_heads_whose_ablation_matters(tmp_path):
    """On toy-coref the study, asked from the question position where the model answers,
    names layer-1 heads that attend to the antecedent. Asked from the pronoun, it finds no head
    better than chance, and says so.

    Which accuracy: the model's top-1 answer over its whole vocabulary at the last token (its
    free answer). Zero-ablating the named heads drops it from 1.0 to chance level (measured
    0.54, asserted <= 0.65). The wrong answers are a third noun, never the other candidate: the
    forced choice between the two candidates (is the antecedent's logit above the other's?)
    stays at 1.0, so by the two-candidate accuracy the named heads' ablation does NOT drop the
    model toward chance. Both are asserted, so the claim is not overstated."""
    import torch

    import models
    from analyses.ablation import ablate_heads_hooks
    from models.tasks import coref
    from models.tokens import pad

    model = models.load("toy-coref")
    prompts = probe.load_prompts("toy-coref-test")[:200]
    run = probe.record(model, prompts, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    study = coref_study(run, query="question_span")
    table = study.heads
    beating = {(int(r.layer), int(r["head"])) for _, r in table[table.beats_baselines].iterrows()}
    named = list(study.named_heads)
    assert named and set(named) == beating and all(layer == 1 for layer, _ in named)
    assert study.n_prompts == 200 and study.notes == ()
    examples = coref.all_examples("test")[:200]
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    tok = pad([coref.ids_of(e, vocab) for e in examples], vocab["<pad>"], "right")
    answer = torch.tensor([vocab[e.answer] for e in examples])
    other = torch.tensor([vocab[e.other] for e in examples])

    def accuracies(heads):
        """(top-1 accuracy, two-candidate accuracy, share of answers that are the other candidate)"""
        with torch.no_grad(), model.hooks(ablate_heads_hooks(model, heads)):
            logits = model(tok.ids, attention_mask=tok.attention_mask)
        last = logits[torch.arange(len(examples)), tok.attention_mask.sum(1) - 1]
        top = last.argmax(-1)
        two = last.gather(1, answer[:, None]) > last.gather(1, other[:, None])
        return (top == answer).float().mean().item(), two.float().mean().item(), (top == other).float().mean().item()

    assert coref.predictions(model, examples[:8]) == [e.answer for e in examples[:8]]  # the same readout
    clean_top, clean_two, _ = accuracies([])
    assert clean_top > 0.95 and clean_two > 0.95
    ablated_top, ablated_two, to_other = accuracies(named)
    assert ablated_top <= 0.65  # the free answer drops to chance level
    assert to_other == 0.0 and ablated_two > 0.95  # but never to the other candidate: the forced choice survives
    from_pronoun = coref_study(run, query="pronoun_span")
    assert not from_pronoun.heads.beats_baselines.any() and from_pronoun.n_beating == 0
    assert "No head beats the binding baseline" in render_report(from_pronoun)


def test_head_metrics_include_the_antecedent_score(seed_run):
    from analyses.head_metrics import head_metrics

    table = head_metrics(seed_run)
    assert "antecedent" in table.columns
    toks = seed_run.str_tokens(0)
    it, animal, street = toks.index("it"), toks.index("animal"), toks.index("street")
    # prompt 0 (tired): gold animal; prompt 1 (wide): gold street
    p0, p1 = seed_run.pattern(0, 3), seed_run.pattern(1, 3)
    expected = ((p0[:, it, animal] - p0[:, it, street]) + (p1[:, it, street] - p1[:, it, animal])) / 2
    assert np.allclose(table[table.layer == 3].antecedent.to_numpy(), expected, atol=1e-6)


def test_coref_cli_on_toy_coref(tmp_path):
    """The study on a toy-coref run, asked from the question position: it names the layer-1
    heads that beat the baselines, probes the antecedent per layer, ablates and patches the
    heads with the run's own model (which answers itself: logit differences too); `probe
    coref` end to end writes that study: its report and the tables next to the run."""
    import models
    from probe.cli import main

    toy = models.load("toy-coref")
    run = probe.record(toy, probe.load_prompts("toy-coref-test")[::10][:200], tmp_path / "toy",
                       names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"], progress=False)
    study = coref_study(run, model=toy, query="question_span")
    named = study.heads[study.heads.beats_baselines]
    assert len(named) and (named.layer == 1).all()
    assert set(study.named_heads) == set(zip(named.layer, named["head"]))
    assert list(study.probes.layer) == [0, 1] and study.probes.test_acc.iloc[-1] > 0.9
    summary = study.ablation
    assert summary.heads == study.named_heads and summary.logit_diff is not None
    assert summary.n_train + summary.n_held_out == study.n_prompts
    assert summary.clean > 0.95 and summary.logit_diff.clean > 0
    assert len(study.ablation_sweep) == toy.cfg.n_layers * toy.cfg.n_heads
    assert study.patching_not_run is None and study.patch_heads.metric.iloc[0] == "logit difference"
    assert study.interventions_not_run is None

    assert main(["coref", str(run.path), "--query", "question_span"]) == 0
    report = (run.path / "analyses" / "coref" / "report.md").read_text()
    assert report == render_report(study)
    for section in ("## Antecedent probes", "## Ablation", "## Patching"):
        assert section in report
    analyses = run.path / "analyses"
    for name, table in (("coref/coref_heads", study.heads), ("probes_antecedent_question_span", study.probes),
                        ("ablation_accuracy", study.ablation_sweep), ("patch_heads_antecedent", study.patch_heads),
                        ("patch_resid_antecedent", study.patch_resid)):
        assert_saved(analyses / f"{name}.csv", table)
    assert {"heads.html", "ablation.html", "patching.html", "plotly.min.js"} <= set(files_under(analyses / "coref"))


def hand_built_study(run_path, **changes) -> CorefStudy:
    """A study of a 2-layer, 2-head model whose every number is chosen here: L1H0 and L0H1
    beat the baselines (best positional 0.6); mean-ablating them drops the measure from 0.62
    to 0.30, below every random pair (0.55-0.61)."""
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "accuracy": [0.55, 0.8, 0.9, 0.4],
                          "ci_low": [0.45, 0.7, 0.85, 0.3], "ci_high": [0.65, 0.9, 0.95, 0.5],
                          "balanced_accuracy": [0.55, 0.8, 0.9, 0.4], "balanced_ci_low": [0.45, 0.7, 0.85, 0.3],
                          "balanced_ci_high": [0.65, 0.9, 0.95, 0.5], "p_value": [0.3, 0.001, 0.0001, 1.0],
                          "p_holm": [0.6, 0.003, 0.0004, 1.0], "beats_baselines": [False, True, True, False],
                          "attn_gold": [0.1, 0.3, 0.5, 0.05], "attn_other": [0.1, 0.2, 0.1, 0.06]})
    probes = pd.DataFrame({"layer": [0, 1], "test_acc": [0.6, 0.7], "majority_baseline": [0.58, 0.58],
                           "control_test_acc": [0.5, 0.55], "selectivity": [0.1, 0.15], "dev_acc": [0.6, 0.7]})
    ablation = AblationSummary(heads=((1, 0), (0, 1)), measure="antecedent probe accuracy (layer 1)", n_train=30,
                               n_held_out=12, clean=0.62, mean_ablated=0.3, zero_ablated=0.25, random_mean=0.58,
                               random_min=0.55, random_max=0.61, n_random=10, n_random_sets=15, logit_diff=None)
    sweep = heads[["layer", "head"]].assign(effect=[0.0, -0.25, -0.1, 0.05])
    patch_heads = heads[["layer", "head"]].assign(normalized=[0.1, 0.8, 0.3, -0.2], n_pairs=3,
                                                  metric="probe log-odds", clean=2.5, corrupt=-1.25)
    patch_resid = pd.DataFrame({"layer": [0, 0, 1, 1], "position": [0, 1, 0, 1], "normalized": [0.0, 1.0, 0.5, 0.5],
                                "token": ["[CLS]", "it", "[CLS]", "it"]})
    study = CorefStudy(run_path=run_path, model_name="hand-made", query="pronoun_span", top=3, heads=heads,
                       baselines={"nearest mention": 0.4, "first mention": 0.6, "chance": 0.5}, n_prompts=42,
                       probes=probes, probes_not_run=None, named_heads=((1, 0), (0, 1)), interventions_not_run=None,
                       ablation=ablation, ablation_sweep=sweep, patch_heads=patch_heads, patch_resid=patch_resid,
                       patching_not_run=None, notes=(NearMajority(0.62, 0.58),), n_balanced=42, n_groups=21,
                       n_balanced_groups=21, binding=("first mention", 0.6))
    return dataclasses.replace(study, **changes)


def test_render_report_words_a_hand_built_study(tmp_path):
    """Every number of the report is the study's, in the study's order: the top 3 heads by
    accuracy, the two that beat the baselines named, their ablation beating every random set,
    the near-majority caution, the largest single-head drops, the patching restorations."""
    study = hand_built_study(tmp_path / "run")
    report = render_report(study)
    lines = report.splitlines()
    assert lines[0] == "# Coreference study: hand-made" and report.endswith(".\n")
    assert lines[2].startswith("**How to read this.** Claims are made on the balanced set (42 of 42 prompts, 21 "
                               "twin groups), against the best baseline there, which binds: first mention (0.600).")
    assert "Found: 2 of 4 heads beat the baselines; the best head, L1H0, is right on 0.900 [0.850, 0.950]" in lines[2]
    assert lines[4].startswith(f"42 prompts with gold antecedents from `{tmp_path / 'run'}` (21 twin groups). For "
                               "each head, attention from the pronoun to each candidate")
    top = [line for line in lines if line.startswith("| L")]
    assert top[:3] == ["| L1H0 | 0.900 | [0.850, 0.950] | 0.0004 | 0.900 [0.850, 0.950] | 0.500 / 0.100 | beats the "
                       "baselines (binding: first mention) |",
                       "| L0H1 | 0.800 | [0.700, 0.900] | 0.003 | 0.800 [0.700, 0.900] | 0.300 / 0.200 | beats the "
                       "baselines (binding: first mention) |",
                       "| L0H0 | 0.550 | [0.450, 0.650] | 0.6 | 0.550 [0.450, 0.650] | 0.100 / 0.100 | does not beat "
                       "the binding baseline (first mention) |"]
    assert "2 of 4 heads beat the binding baseline (first mention, 0.600 on the balanced set) by the test above." in lines
    assert "| 1 | 0.700 | 0.580 | 0.550 | 0.150 |" in lines and "Caution: layer 0" not in report
    assert ("The heads that beat the baselines (L1H0, L0H1) mean-ablated together (reference: the 30 train prompts), "
            "measured by antecedent probe accuracy (layer 1) on 12 held-out prompts:") in lines
    assert "| these heads mean-ablated | 0.300 |" in lines and "logit difference" not in report
    assert ("| 2 random other heads of the same layers mean-ablated (10 draws) | mean 0.580, range [0.550, 0.610] |"
            in lines)
    assert ("Ablating them lowers accuracy by 0.320, more than any random set of as many heads: they matter."
            in lines)
    assert ("Caution: on clean prompts the measure (0.620) is barely above the majority baseline (0.580), so no "
            "ablation can show a large drop here.") in lines
    assert "Largest drops from one head: L0H1 -0.250, L1H0 -0.100, L0H0 +0.000." in lines
    assert ("3 twin pair(s) (clean -> corrupted, denoising), metric: the probe log-odds between the clean antecedent "
            "and the other candidate (clean 2.50, corrupted -1.25); normalised (patched - corrupt) / (clean - "
            "corrupt).") in lines
    assert ("Heads whose clean output restores most: L0H1 0.80, L1H0 0.30, L0H0 0.10; the study's heads: L1H0 0.30, "
            "L0H1 0.80.") in lines

    # the reasons for what was not run, each in its place
    few = render_report(hand_built_study(tmp_path, probes=None, probes_not_run=PROBES_NEED_RESID, ablation=None,
                                         interventions_not_run=NO_MODEL, notes=(TooFewPrompts(8),)))
    assert "Only 8 prompts: too few to claim that any head beats the baselines" in few
    assert "## Antecedent probes\n\nNot run: record `blocks.*.hook_resid_post` too" in few
    assert few.endswith("run `probe coref RUN --model MODEL` (the model the run was recorded with) to ablate and "
                        "patch the heads.\n") and "## Ablation" not in few
    no_twins = render_report(hand_built_study(tmp_path, patch_heads=None, patch_resid=None,
                                              patching_not_run=NO_TWIN_PAIRS))
    assert no_twins.endswith("## Patching\n\nNo twin prompts (same `pair_id`, different antecedent, same token "
                             "length) in this run, so nothing to patch; the seed set and toy-coref-test have them.\n")


def test_heads_after_the_layer_the_probe_reads_are_not_measurable(tmp_path):
    """A probe at layer 0 cannot see a layer-1 head (ablating or patching it changes nothing
    there, by construction): such a head gets "not measurable", never "no evidence", and is
    left out of the largest single-head drops; with every named head after it, no verdict."""
    study = hand_built_study(tmp_path / "run")
    probe_at_0 = dataclasses.replace(study.ablation, measure="antecedent probe accuracy (layer 0)", metric_layer=0)
    lines = render_report(dataclasses.replace(study, ablation=probe_at_0)).splitlines()
    assert ("Ablating them lowers accuracy by 0.320, more than any random set of as many heads: they matter. (L1H0: "
            "not measurable with this metric, after layer 0, which the probe reads.)") in lines
    assert ("The probe reads layer 0: heads of later layers cannot change it, so they are not measurable with this "
            "metric and are left out below.") in lines
    assert "Largest drops from one head: L0H1 -0.250, L0H0 +0.000." in lines
    assert any(line.endswith("the study's heads: L1H0 not measurable (after the probe's layer), L0H1 0.80.")
               for line in lines)
    later = dataclasses.replace(probe_at_0, heads=((1, 0), (1, 1)), mean_ablated=0.62, zero_ablated=0.62)
    report = render_report(dataclasses.replace(study, ablation=later, named_heads=((1, 0), (1, 1))))
    assert ("Not measurable with this metric: every one of these heads sits after layer 0, which the probe reads, so "
            "ablating them cannot change it (this is no evidence either way).") in report.splitlines()
    assert "no evidence that they matter" not in report


def test_save_study_writes_the_report_and_tables(tmp_path):
    """save_study writes the rendered report, the figures and every table, the run's tables
    through save_result next to the run."""
    study = hand_built_study(tmp_path / "run")
    report = save_study(study)
    assert report == tmp_path / "run" / "analyses" / "coref" / "report.md"
    assert report.read_text() == render_report(study)
    assert {"coref_heads.csv", "heads.html", "ablation.html", "patching.html"} <= set(files_under(report.parent))
    analyses = tmp_path / "run" / "analyses"
    for name, table in (("coref/coref_heads", study.heads), ("probes_antecedent", study.probes),
                        ("ablation_accuracy", study.ablation_sweep), ("patch_heads_antecedent", study.patch_heads),
                        ("patch_resid_antecedent", study.patch_resid)):
        assert_saved(analyses / f"{name}.csv", table)
    without = hand_built_study(tmp_path / "run", ablation=None, ablation_sweep=None, patch_heads=None, patch_resid=None,
                               interventions_not_run=NO_MODEL)
    elsewhere = save_study(without, tmp_path / "out")
    assert elsewhere == tmp_path / "out" / "report.md"
    assert {"ablation.html", "patching.html"}.isdisjoint(files_under(tmp_path / "out"))


@pytest.mark.parametrize("blocked", ["analyses", "analyses/coref"])
def test_save_study_refuses_a_file_where_its_folder_goes_and_writes_nothing(tmp_path, blocked):
    from probe.errors import StoreError

    study = hand_built_study(tmp_path / "run")
    (tmp_path / "run" / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / blocked).write_text("someone's notes")
    with pytest.raises(StoreError, match=rf"cannot write the coreference study: .*{blocked} is a file"):
        save_study(study)
    assert (tmp_path / "run" / blocked).read_text() == "someone's notes"
    assert files_under(tmp_path / "run") == {"analyses": ["analyses"], "analyses/coref": ["analyses", blocked]}[blocked]
