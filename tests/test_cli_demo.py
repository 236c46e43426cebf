"""`probe demo` (probe/cli/demo_command.py) end to end: it records, writes the coreference
report and head metrics, prints the heads attending most from "it" to "animal" (as
analyses/word_attention.py computes them) and, with --no-serve, the dashboard command
instead of serving; before the pipeline it asks the seed question of the language model
(--decoder, default smollm2), whose answers are checked here against transformers' own GGUF
load of the same file. (`probe demo` on an unsupported checkpoint is refused in
test_cli_attend.py's user-error test.)"""

from __future__ import annotations

import torch
from helpers import run_cli

from analyses.word_attention import top_heads, word_to_word_attention
from probe.cli.demo_command import SEED
from probe.prompts import load_prompts

DECODER_SECTION = "the seed question asked of a language model: smollm2"


def hf_logit_diffs(hf_smollm2) -> dict[str, float]:
    """transformers' logit(" animal") - logit(" street") after each twin and its forcing continuation."""
    hf, tok = hf_smollm2
    animal, street = (tok(w, add_special_tokens=False)["input_ids"] for w in (" animal", " street"))
    assert len(animal) == len(street) == 1
    out = {}
    for p in load_prompts("seed"):
        v = p.labels["variant"]
        with torch.no_grad():
            logits = hf(**tok(f"{p.text} The {v} one was the", return_tensors="pt")).logits[0, -1]
        out[v] = float(logits[animal[0]] - logits[street[0]])
    return out


def test_demo_cli_prints_the_heads(minilm, smollm2, hf_smollm2, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "-o", str(out), "-n", "40", "--no-serve", timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "analyses" / "coref" / "report.md").exists() and (out / "analyses" / "head_metrics.csv").exists()
    assert f"report: {out / 'analyses' / 'coref' / 'report.md'}" in r.stdout
    assert f"dashboard: probe dashboard {out} {out}-pos" in r.stdout  # --no-serve: the command, not a server
    best = top_heads(word_to_word_attention(minilm, SEED, "it", "animal"), 3)
    assert "heads attending most from 'it' to 'animal'" in r.stdout
    for h in best:
        assert f"{h.label:<6} {h.score:.3f}" in r.stdout
    # the seed question asked of minilm, then of the language model (--decoder's default), then the pipeline
    text = " ".join(r.stdout.split())  # unwrapped
    encoder = text.index("the model's answer: none. minilm is an encoder without a language-model head")
    decoder = text.index(DECODER_SECTION)
    assert encoder < decoder < text.index("recording ")
    lds = hf_logit_diffs(hf_smollm2)
    for variant, ld in lds.items():
        assert f"\"The animal didn't cross the street because it was {variant}. The {variant} one was the\" {ld:+.2f}" \
            in text[decoder:]
    if lds["tired"] > 0 > lds["wide"]:
        assert "its answer follows the adjective" in text
    elif (lds["tired"] > 0) == (lds["wide"] > 0):
        noun = "' animal'" if lds["tired"] > 0 else "' street'"
        assert f"it prefers {noun} in both twins: its answer does not follow the adjective" in text
    else:
        assert "its preference flips against the adjective" in text
    assert "'it' comes before the adjective and cannot see it" in text[decoder:]


def test_demo_decoder_none_skips_the_language_model(capsys, minilm):
    from probe.cli import main

    assert main(["demo", "--no-record", "--decoder", "none"]) == 0
    out = capsys.readouterr().out
    assert "minilm is an encoder without a language-model head" in " ".join(out.split())
    assert DECODER_SECTION not in out and "smollm2" not in out


def test_demo_refuses_a_missing_decoder_with_the_way_out(capsys, minilm):
    from probe.cli import main

    assert main(["demo", "--no-record", "--decoder", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "probe demo: error: unknown model 'no-such-model'" in err and "--decoder none" in err
