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
