"""`probe attend` (probe/cli/attend_command.py) end to end: user errors (an unknown model, a
word not in the text; and `probe demo` on an unsupported checkpoint) exit 2 with the problem
named and no traceback."""

from __future__ import annotations

from helpers import run_cli


def test_cli_user_errors_exit_nonzero_without_traceback(tmp_path):
    r = run_cli("attend", "the cat sat", "--from", "cat", "--to", "sat", "--model", "nope")
    assert r.returncode == 2
    assert "unknown model 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("attend", "the cat sat", "--from", "dog", "--to", "sat")
    assert r.returncode == 2
    assert "word 'dog' does not occur" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    r = run_cli("demo", "--model", str(tmp_path))
    assert r.returncode == 2 and "not supported" in r.stderr and "Traceback" not in r.stderr
