"""The `probe` command's contract (probe/cli/__init__.py): a user mistake is one line on stderr
and exit code 2; a bug keeps its traceback and exits 1; conflicting flags are refused by
argparse; `probe --help` lists every command in the pipeline's order."""

from __future__ import annotations

import pytest
from helpers import run_cli

from probe.cli import COMMANDS, build_parser, main
from probe.errors import InputError, MissingHook, ProbeError, StoreError, is_user_error, one_line


def test_an_internal_key_error_is_a_bug_with_its_traceback():
    """A KeyError raised inside an analysis (here: head_metrics, injected) is not the user's
    mistake: the CLI must not turn it into one line and exit 2."""
    inject = ("import analyses.head_metrics as hm\n"
              "def broken(*a, **k):\n    return {}['internal_key']\n"
              "hm.head_metrics = broken\n")
    from pathlib import Path

    r = run_cli("heads", str(Path(__file__).parent), "--no-model",
                env_code=inject + "import probe.reader as r\n"
                "class Fake:\n    complete = True\n    n_prompts = 1\n"
                "r.open_run = lambda path: Fake()\n")
    assert r.returncode == 1, r.stderr
    assert "Traceback" in r.stderr and "KeyError: 'internal_key'" in r.stderr


def test_a_missing_hook_is_a_user_error_printed_as_its_message(capsys):
    """MissingHook is a KeyError (mapping lookups raise it) but prints without KeyError's quotes."""
    e = MissingHook("'blocks.9.hook_x' was not recorded in this run")
    assert isinstance(e, KeyError) and is_user_error(e)
    assert str(e) == one_line(e) == "'blocks.9.hook_x' was not recorded in this run"
    assert not is_user_error(KeyError("x")) and not is_user_error(ValueError("x"))
    assert is_user_error(FileNotFoundError(2, "No such file")) and is_user_error(StoreError("x"))
    assert issubclass(InputError, ValueError) and issubclass(InputError, ProbeError)


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    r = run_cli("heads", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("probe heads: error: ") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [
    ["record", "--prompts", "seed", "-o", "x", "--resume", "--overwrite"],
    ["probes", "RUN", "--label", "gender", "--task", "pos"],
    ["heads", "RUN", "--model", "minilm", "--no-model"],
    ["coref", "RUN", "--model", "minilm", "--no-interventions"],
    ["ablate", "--task", "induction", "--run", "RUN"],
    ["patch", "--pairs", "p.jsonl", "--clean-text", "a"],
])
def test_conflicting_flags_are_refused_by_argparse(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(flags)
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_lists_every_command_in_order(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    positions = [listed.index(name) for name in COMMANDS]
    assert positions == sorted(positions)
    assert len(COMMANDS) == len(set(COMMANDS)) == 10
