"""The coreference study on a decoder language model (analyses/coref.py, coref_interventions.py,
coref_report.py; `probe coref`): the model is asked a question after each prompt and its answer
(which candidate's continuation it finds more probable) measures the ablation and patching.

- SmolLM2: the answer's log-probabilities equal transformers' own GGUF load of the same file,
  computed here the plain way (the whole text tokenized by transformers' tokenizer, one
  sequence per candidate, log-softmax over the full logits); the study on a small run is
  measured by that answer, and its zero ablation equals ablation hooks run here on those
  plain sequences.
- A tiny random-weight Llama (2 layers, so patching and the CLI are cheap): patching the seed
  twins by the model's answer, against the ground truth of layer 0 (the residual stream is
  the token embedding there, so only the position where the twins differ can restore the
  clean answer, and it restores all of it).
- The question template and the candidates' continuations on hand-made text; refusals.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_saved, build_hf

import models
import probe
from analyses import coref_interventions as ci
from analyses.coref import (
    NO_TWIN_PAIRS,
    answer_texts,
    candidate_phrase,
    check_question,
    coref_study,
    save_study,
)
from analyses.coref_report import render_report
from probe.errors import InputError

QUESTION = " The pronoun '{}' refers to"  # as the issue words it, the default
WINOBIAS = probe.load_prompts("winobias-dev")[::100][:12]  # both types, pro and anti, one- and two-token occupations


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture in conftest.py


def continuations(prompt) -> list[str]:
    """WinoBias candidates ("The developer", "the designer") as the answer names them: " the developer"."""
    out = []
    for c in prompt.labels["candidates"]:
        determiner, words = c.split(" ", 1)
        assert determiner.lower() in ("the", "a", "an"), c
        out.append(" the " + words)
    return out


def plain_logprob(logits_of, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over its tokens: the whole text tokenized at
    once, the continuation's tokens those after the context's."""
    ctx = tokenizer(context)["input_ids"]
    full = tokenizer(context + continuation)["input_ids"]
    assert full[:len(ctx)] == ctx and len(full) > len(ctx)
    logp = logits_of(torch.tensor([full]))[0].float().log_softmax(-1)
    return sum(float(logp[p - 1, full[p]]) for p in range(len(ctx), len(full)))


@pytest.fixture(scope="module")
def hf_answers(hf_smollm2):
    """{text: (log p(candidate 0), log p(candidate 1))} from transformers."""
    hf, tokenizer = hf_smollm2
    out = {}
    with torch.no_grad():
        for p in WINOBIAS:
            context = p.text + QUESTION.format(p.labels["pronoun"])
            out[p.text] = tuple(plain_logprob(lambda ids: hf(ids).logits, tokenizer, context, c)
                                for c in continuations(p))
    return out


@pytest.fixture(scope="module")
def wb_run(smollm2, tmp_path_factory):
    return probe.record(smollm2, WINOBIAS, tmp_path_factory.mktemp("wb") / "run", names=["blocks.*.attn.hook_pattern"],
                        progress=False)


def test_smollm2_answer_equals_transformers(smollm2, wb_run, hf_answers):
    table = ci.answer_table(smollm2, wb_run, list(range(len(WINOBIAS))))
    batch = ci.continuation_batch(smollm2, wb_run, list(range(len(WINOBIAS))))
    assert batch.tokens.shape[0] > len(WINOBIAS)  # some prompt's candidates both keep two tokens: a second row
    assert list(table.prompt) == list(range(len(WINOBIAS)))
    for (_, row), p in zip(table.iterrows(), WINOBIAS):
        gold = p.labels["answer"]
        theirs = hf_answers[p.text]
        assert row.question == QUESTION.format(p.labels["pronoun"])
        assert (" " + row.gold, " " + row.other) == (continuations(p)[gold], continuations(p)[1 - gold])
        assert row.logp_gold == pytest.approx(theirs[gold], abs=2e-3)
        assert row.logp_other == pytest.approx(theirs[1 - gold], abs=2e-3)
        assert row.difference == pytest.approx(theirs[gold] - theirs[1 - gold], abs=2e-3)
        assert row.correct == (theirs[gold] > theirs[1 - gold])


def test_a_mention_holding_the_first_token_is_a_caution_on_a_decoder(wb_run):
    """SmolLM2 adds no BOS, so a sentence that opens with its first candidate ("The developer
    argued ...") puts the sequence's first token, a decoder's attention sink, inside that
    mention's span; its head word ("developer") never is the first token."""
    from analyses.coref import FirstTokenInMention, first_token_caution

    used = list(range(wb_run.n_prompts))
    opening = sum(wb_run.labels(i)["candidate_spans"][0][0] == 0 for i in used)  # mentions at character 0
    assert opening > 0
    assert first_token_caution(wb_run, used, "span") == FirstTokenInMention(opening, len(used))
    assert first_token_caution(wb_run, used, "head") is None


def test_smollm2_study_is_measured_by_its_own_answer(smollm2, hf_answers, tmp_path):
    """Two WinoBias prompts (one answered from one row, one needing a row per candidate): the
    study asks SmolLM2, its clean numbers are transformers', its zero ablation is ablation
    hooks on the plain sequences, every layer's heads move the answer (the measure is the
    output), and the files hold what the study computed."""
    from analyses.ablation import ablate_heads_hooks

    prompts = [WINOBIAS[0], WINOBIAS[3]]  # developer/designer; construction worker/housekeeper
    run = probe.record(smollm2, prompts, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    study = coref_study(run, model=smollm2, top=3)
    assert study.interventions_not_run is None and study.patching_not_run == NO_TWIN_PAIRS
    theirs = [hf_answers[p.text] for p in prompts]
    gold = [p.labels["answer"] for p in prompts]
    diffs = np.array([t[g] - t[1 - g] for t, g in zip(theirs, gold)])
    a = study.answers
    assert a.question == QUESTION.replace("{}", "{pronoun}") and a.n_prompts == 2
    assert a.accuracy == np.mean(diffs > 0) and a.mean_difference == pytest.approx(diffs.mean(), abs=2e-3)

    s = study.ablation
    assert s.heads == study.named_heads and not s.held_out and s.n_train == s.n_held_out == 2
    assert s.metric_layer is None and s.logit_diff.name == "log-prob difference"
    assert s.clean == np.mean(diffs > 0) and s.logit_diff.clean == pytest.approx(diffs.mean(), abs=2e-3)
    hooks = ablate_heads_hooks(smollm2, list(s.heads), "zero")
    zeroed = []
    with torch.no_grad():
        for p, g in zip(prompts, gold):
            context = p.text + QUESTION.format(p.labels["pronoun"])
            lp = [plain_logprob(lambda ids: smollm2.run_with_hooks(ids, hooks), smollm2.tokenizer, context, c)
                  for c in continuations(p)]
            zeroed.append(lp[g] - lp[1 - g])
    assert s.logit_diff.zero_ablated == pytest.approx(np.mean(zeroed), abs=2e-3)
    assert s.zero_ablated == np.mean(np.array(zeroed) > 0)

    sweep = study.ablation_sweep
    assert len(sweep) == 30 * 9 and set(sweep.metric) == {"log-prob difference antecedent - other"}
    assert sweep.clean.iloc[0] == pytest.approx(diffs.mean(), abs=2e-3)
    assert (sweep.groupby("layer").effect.apply(lambda e: e.abs().max()) > 1e-4).all()  # every layer, the last too

    report = save_study(study)
    text = report.read_text()
    assert text == render_report(study)
    assert "## The model's answer" in text and "every head can move it" in text and "not measurable" not in text
    assert "Only 2 prompts: too few" in text
    pd.testing.assert_frame_equal(pd.read_csv(report.parent / "answers.csv"), a.table, check_dtype=False)
    assert_saved(run.path / "analyses" / "ablation_difference.csv", sweep)
    assert not (run.path / "analyses" / "ablation_accuracy.csv").exists()


# ------------------------------------------------------------------ a tiny Llama: patching and the CLI
TINY_QUESTION = " {pronoun} was"  # in the tiny tokenizer's word list, as " the animal" and " the street" are


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, run): a 2-layer random-weight Llama with a word-level tokenizer, on the seed twins."""
    path = tmp_path_factory.mktemp("llama")
    build_hf("llama", path)
    model = models.load(path)
    run = probe.record(model, "seed", tmp_path_factory.mktemp("tiny") / "run", names=["blocks.*.attn.hook_pattern"],
                       progress=False)
    return model, run


def test_patching_by_the_models_answer_has_the_layer_zero_ground_truth(tiny):
    model, run = tiny
    assert not ci.answers_by_continuation(model, run, [0, 1])  # the default question's words are not in its vocabulary
    assert ci.answers_by_continuation(model, run, [0, 1], TINY_QUESTION)
    study = coref_study(run, model=model, top=2, question=TINY_QUESTION)
    assert study.patching_not_run is None and study.answers.question == TINY_QUESTION
    heads, resid = study.patch_heads, study.patch_resid
    assert set(heads.metric) == set(resid.metric) == {"log-prob difference"} and heads.n_pairs.iloc[0] == 1
    # the clean and corrupted values, computed here on the plain sequences (clean antecedent: animal)
    texts = [run.prompt_records[i]["text"] for i in (0, 1)]
    assert [run.labels(i)["answer"] for i in (0, 1)] == [0, 1]
    with torch.no_grad():
        values = []
        for text in texts:
            lp = [plain_logprob(model, model.tokenizer, text + " it was", c) for c in (" the animal", " the street")]
            values.append(lp[0] - lp[1])
    assert heads.clean.iloc[0] == pytest.approx(values[0], abs=1e-4)
    assert heads.corrupt.iloc[0] == pytest.approx(values[1], abs=1e-4)
    # layer 0 is the token embedding: the twins differ at one position (tired/wide), which restores all
    clean, corrupt = run.tokens(0), run.tokens(1)
    differ = np.flatnonzero(clean != corrupt)
    assert len(differ) == 1
    layer0 = resid[resid.layer == 0].set_index("position").normalized
    assert len(layer0) > len(clean)  # the question and the candidate are patched too
    assert layer0[differ[0]] == pytest.approx(1.0, abs=1e-4)
    # exactly 0 in exact arithmetic; float32 noise of the batched patch reached 1.15e-5 in one clean-clone run
    # (1e-5 had no margin), so the same 1e-4 as the restoring position's check, on a scale of 1
    assert layer0.drop(differ[0]).abs().max() < 1e-4
    assert resid.token.iloc[len(clean)] == "it"  # positions after the sentence are the question's tokens


def test_coref_cli_on_a_decoder_writes_the_study(tiny):
    from probe.cli import main

    model, run = tiny
    assert main(["coref", str(run.path), "--top", "2", "--question", TINY_QUESTION]) == 0
    study = coref_study(run, model=model, top=2, question=TINY_QUESTION)
    folder = run.path / "analyses" / "coref"
    assert (folder / "report.md").read_text() == render_report(study)
    assert {"answers.csv", "ablation.html", "patching.html"} <= {f.name for f in folder.iterdir()}
    for name, table in (("ablation_difference", study.ablation_sweep), ("patch_heads_antecedent", study.patch_heads),
                        ("patch_resid_antecedent", study.patch_resid)):
        assert_saved(run.path / "analyses" / f"{name}.csv", table)


@pytest.mark.parametrize("args, problem", [
    (["--no-interventions", "--question", " {pronoun} was"], "a question is asked of the model, and no model is given"),
    (["--question", " it was"], "must name the pronoun as {pronoun} and no other field"),
    (["--question", " {pronoun} was {what}"], "must name the pronoun as {pronoun} and no other field"),
    (["--question", " {pronoun was"], "is not a template"),
    (["--question", " {pronoun} was "], "ends in a space"),
])
def test_bad_questions_are_refused_in_one_line(tiny, capsys, args, problem):
    from probe.cli import main

    _, run = tiny
    assert main(["coref", str(run.path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe coref: error: ") and problem in err and len(err.strip().splitlines()) == 1


def test_a_question_for_a_model_that_is_not_asked_one_is_refused(minilm, tmp_path):
    run = probe.record(minilm, "seed", tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    with pytest.raises(InputError, match="minilm is not asked a question: it is no decoder language model"):
        coref_study(run, model=minilm, question=" {pronoun} was")
    assert not ci.answers_by_continuation(minilm, run, [0, 1])
    toy = models.load("toy-coref")  # answers the question its prompts end in
    toy_run = probe.record(toy, probe.load_prompts("toy-coref-test")[:2], tmp_path / "toy",
                           names=["blocks.*.attn.hook_pattern"], progress=False)
    assert ci.answers_in_output(toy, toy_run, [0, 1]) and not ci.answers_by_continuation(toy, toy_run, [0, 1])


def test_the_candidates_continuations_and_the_question(tmp_path):
    text = "The animal didn't cross the street because it was tired. Someone saw a dog, an owl and bathe cat."
    find = [(w, text.index(w)) for w in ("The animal", "street", "Someone", "dog", "owl", "cat")]
    spans = {w: (i, i + len(w)) for w, i in find}
    assert candidate_phrase(text, spans["The animal"]) == "the animal"  # a definite reference
    assert candidate_phrase(text, spans["street"]) == "the street"  # a bare mention after its determiner
    assert candidate_phrase(text, spans["Someone"]) == "Someone"  # none: as written
    assert candidate_phrase(text, spans["dog"]) == "the dog" and candidate_phrase(text, spans["owl"]) == "the owl"
    assert candidate_phrase(text, spans["cat"]) == "cat"  # "bathe " does not end in the word "the"
    assert candidate_phrase("A student met an owl.", (0, 9)) == "the student"
    assert check_question(" {pronoun} was") == " {pronoun} was"
    for bad in ("", "   ", " it was", " {} was", " {pronoun} {0}", " {pronoun} was\n"):
        with pytest.raises(InputError):
            check_question(bad)
    it = text.index(" it ") + 1
    rows = [{"text": text, "pronoun_span": [it, it + 2], "candidate_spans": [list(spans["The animal"]),
                                                                             list(spans["street"])], "answer": 0}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = probe.record(models.load("minilm"), tmp_path / "p.jsonl", tmp_path / "run",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    assert answer_texts(run, 0) == (" The pronoun 'it' refers to", (" the animal", " the street"))
