"""`probe demo` (probe/cli/demo_command.py) end to end: it records, writes the coreference
report and head metrics, prints the heads attending most from "it" to "animal" (as
analyses/word_attention.py computes them) and, with --no-serve, the dashboard command
instead of serving. (`probe demo` on an unsupported checkpoint is refused in
test_cli_attend.py's user-error test.)"""

from __future__ import annotations

from helpers import run_cli

from analyses.word_attention import top_heads, word_to_word_attention
from probe.cli.demo_command import SEED


def test_demo_cli_prints_the_heads(minilm, tmp_path):
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
