"""`probe circuit`'s contract with its user: bad input gets one line and exit 2 before anything is
written; a model that cannot do the task is refused, not analysed."""

from __future__ import annotations

from helpers import run_cli


def test_too_many_ioi_prompts_is_refused_before_any_file(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("circuit", "ioi", "--model", "toy-induction", "-o", str(out), "--prompts", "300")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("probe circuit: error: --prompts: at most 256")
    assert not out.exists()


def test_a_tokenizer_without_single_token_names_is_refused_before_recording(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("circuit", "ioi", "--model", "toy-induction", "-o", str(out))
    assert proc.returncode == 2
    assert "single tokens" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_an_unknown_task_is_refused_by_the_parser(tmp_path):
    proc = run_cli("circuit", "coreference", "--model", "toy-induction", "-o", str(tmp_path / "run"))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_the_ioi_circuit_of_smollm2_end_to_end(smollm2_file, tmp_path):
    """The command on SmolLM2, small (8 prompts, 6 candidates): it writes the run, the report and
    the tables the dashboard reads, and every class in the table is the one its rule gives for
    the evidence saved beside it."""
    import json

    import pandas as pd

    from analyses.results import load_results

    out = tmp_path / "run"
    proc = run_cli("circuit", "ioi", "--model", "smollm2", "-o", str(out), "--prompts", "8", "--candidates", "6",
                   "--controls", "1", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "circuit" / "summary.json").read_text())
    assert summary["n_prompts"] == 8 and summary["clean_metric"] > 1  # SmolLM2 does the task
    report = (out / "circuit" / "report.md").read_text()
    for section in ("## How to read this", "## The circuit", "## Compared with GPT-2 small", "## Path patching",
                    "## AtP* against exact patching"):
        assert section in report
    problems: list[str] = []
    kinds = {r.kind for r in load_results(out, problems)}
    assert problems == [] and {"circuit_heads", "circuit_edges", "circuit_attribution"} <= kinds
    heads = pd.read_csv(out / "analyses" / "circuit_heads.csv").fillna({"head_class": ""})
    ld, t = summary["clean_metric"], summary["thresholds"]
    assert len(heads) == 30 * 9 and heads.candidate.sum() == 6
    for r in heads.itertuples():
        if r.head_class == "name mover":
            assert r.dla >= t["direct"] * ld and r.attn_end_io > r.attn_end_s2 and r.copy >= t["copy"]
        elif r.head_class == "negative name mover":
            assert r.dla <= -t["direct"] * ld and r.attn_end_io > r.attn_end_s2 and r.neg_copy >= t["copy"]
        elif r.head_class == "S-inhibition":
            assert r.path_to_movers <= -t["s_inhibition"] * ld and r.attn_end_s2 > r.attn_end_io
    attribution = pd.read_csv(out / "analyses" / "circuit_attribution.csv")
    whole = attribution[attribution.position == "all"]
    assert whole.exact.notna().sum() == 7  # the candidates and the control
