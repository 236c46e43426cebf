"""The coreference study against the confounds that can fool attention: a synthetic head that
always attends to the stereotypical occupation must not be called a coreference head, on a
balanced WinoBias sample or on an unbalanced one; a head that attends to the antecedent must.

The patterns are built by the test on a real MiniLM run (its tokens, offsets and labels): the
run's recorded patterns are replaced, head by head, by attention the test constructs, so the
ground truth of every head is known."""

from __future__ import annotations

import numpy as np
import pytest

import probe
from analyses.coref import coref_study, mention_span
from analyses.coref_report import render_report
from probe.design import balanced_sample
from probe.prompts import load_prompts

STEREO, ANTECEDENT, NEAREST = 0, 1, 2  # heads of layer 0 the test writes; every other head is uniform


def occupation_index(labels: dict, gender: str) -> int:
    """Which candidate's occupation the WinoBias lists stereotype with ``gender`` (read from the files)."""
    from importlib import resources

    folder = resources.files("probe").joinpath("prompt_sets", "winobias")
    words = {w.strip().lower() for w in folder.joinpath(f"{gender}_occupations.txt").read_text().splitlines() if w.strip()}
    matches = [k for k, occ in enumerate(labels["candidate_occupations"]) if occ.lower() in words]
    assert len(matches) == 1
    return matches[0]


class SyntheticPatterns:
    """A recorded run whose attention patterns are the test's: every query token of head
    STEREO attends to the stereotypical occupation, ANTECEDENT to the gold antecedent, NEAREST
    to the candidate nearest before the pronoun; the other heads spread attention evenly."""

    def __init__(self, run):
        self._run = run

    def __getattr__(self, name):
        return getattr(self._run, name)

    def pattern(self, prompt: int, layer: int, head: int | None = None) -> np.ndarray:
        real = self._run.pattern(prompt, layer)  # [head, q, k]
        n_heads, q, k = real.shape
        out = np.full((n_heads, q, k), 1.0 / k)
        if layer == 0:
            labels = self._run.labels(prompt)
            spans = labels["candidate_spans"]
            before = [j for j, s in enumerate(spans) if s[0] < labels["pronoun_span"][0]]
            targets = {STEREO: occupation_index(labels, labels["gender"]), ANTECEDENT: labels["answer"],
                       NEAREST: max(before, key=lambda j: spans[j][0])}
            for h, cand in targets.items():
                toks = self._run.tokens_in(prompt, *spans[cand])
                out[h] = 0.0
                out[h][:, toks] = 1.0 / len(toks)
        return out if head is None else out[head]


@pytest.fixture(scope="module")
def balanced_run(minilm, tmp_path_factory):
    prompts = balanced_sample(load_prompts("winobias-dev"), 200, seed=0)
    return SyntheticPatterns(probe.record(minilm, prompts, tmp_path_factory.mktemp("wb") / "balanced",
                                          names=["blocks.*.attn.hook_pattern"], progress=False))


@pytest.fixture(scope="module")
def pro_run(minilm, tmp_path_factory):
    """The first 40 sentences of WinoBias dev: all pro-stereotyped type 1, no twin of them."""
    prompts = load_prompts("winobias-dev")[:40]
    assert {p.labels["stereotype"] for p in prompts} == {"pro"} and {p.labels["type"] for p in prompts} == {1}
    return SyntheticPatterns(probe.record(minilm, prompts, tmp_path_factory.mktemp("wb") / "pro",
                                          names=["blocks.*.attn.hook_pattern"], progress=False))


def row(study, head: int):
    return study.heads[(study.heads.layer == 0) & (study.heads["head"] == head)].iloc[0]


def test_a_stereotype_head_is_no_coreference_head_on_a_balanced_set(balanced_run):
    study = coref_study(balanced_run)
    assert study.n_balanced == 200 and study.n_balanced_groups == 100
    stereo, antecedent = row(study, STEREO), row(study, ANTECEDENT)
    # by construction: right on every pro sentence, wrong on every anti twin
    assert stereo["acc_stereotype=pro"] == 1.0 and stereo["acc_stereotype=anti"] == 0.0
    assert stereo.balanced_accuracy == 0.5 and not stereo.beats_baselines
    assert study.baselines["gender stereotype"] == 0.5  # the stereotype baseline: half right on a balanced set
    assert antecedent.balanced_accuracy == 1.0 and antecedent.beats_baselines
    assert study.n_beating == 1 and study.named_heads[0] == (0, ANTECEDENT)
    # the nearest mention is the binding baseline here (type 2 sentences: always the nearest); a head that
    # follows it ties it and is no claim
    assert study.binding[0] == "nearest mention"
    assert row(study, NEAREST).balanced_accuracy == pytest.approx(study.binding[1]) and not row(study, NEAREST).beats_baselines
    text = render_report(study)
    assert "**How to read this.**" in text and "binds: nearest mention" in text
    assert "beats the baselines (binding: nearest mention)" in text


def test_a_stereotype_head_on_pro_sentences_only_is_no_claim(pro_run):
    """Where every sentence is pro-stereotyped (the first 400 of WinoBias dev nearly are), the
    stereotype head is always right and clears the positional baselines by far; the study
    still names no head: there is no balanced set, and the stereotype baseline is 1.0."""
    study = coref_study(pro_run)
    stereo = row(study, STEREO)
    assert stereo.accuracy == 1.0 and stereo.ci_low > study.best_positional  # what fooled the old study
    assert study.baselines["gender stereotype"] == 1.0
    assert study.n_balanced == 0 and study.n_beating == 0
    assert "no balanced set" in render_report(study).lower()


def test_head_word_mentions():
    text = "The construction worker argued with the designer."
    assert mention_span(text, (0, 23), "head") == (17, 23) and text[17:23] == "worker"
    assert mention_span(text, (0, 23), "span") == (0, 23)
    assert mention_span("someone", (0, 7), "head") == (0, 7)


def test_the_report_gives_the_other_mention_convention(balanced_run):
    span = coref_study(balanced_run)
    head = coref_study(balanced_run, mention="head")
    assert np.allclose(span.heads.accuracy_head, head.heads.accuracy)
    assert np.allclose(head.heads.accuracy_span, span.heads.accuracy)
    assert "## The mention convention" in render_report(span) and "`--mention head`" in render_report(span)


def test_the_figure_has_a_panel_per_subset(balanced_run, tmp_path):
    from analyses.coref import save_study

    study = coref_study(balanced_run)
    report = save_study(study, tmp_path / "out")
    figure = (report.parent / "heads.html").read_text()
    for title in ("balanced set (200 prompts)", "all 200 prompts", "stereotype=pro", "stereotype=anti", "type=1",
                  "type=2"):
        assert title in figure
    subsets = (report.parent / "coref_subsets.csv").read_text().splitlines()
    assert subsets[0].startswith("subset,n_prompts,n_groups,nearest mention,first mention,gender stereotype,chance")
    assert subsets[3].startswith("stereotype=anti,100,100,") and subsets[4].startswith("stereotype=pro,100,100,")


def test_the_probe_that_measures_reads_at_or_after_the_named_heads():
    """Layer 1 is the best probe on dev, but a named head sits in layer 3: a layer-1 probe
    could not see it, so the interventions read the best layer from 3 on (ties: the later)."""
    import pandas as pd

    from analyses.coref import probe_layer

    probes = pd.DataFrame({"layer": [0, 1, 2, 3, 4, 5], "dev_acc": [0.6, 0.9, 0.8, 0.7, 0.75, 0.75]})
    assert probe_layer(probes, ((0, 1), (1, 2))) == 1
    assert probe_layer(probes, ((3, 0), (1, 2))) == 5
    assert probe_layer(probes, ((5, 0),)) == 5
