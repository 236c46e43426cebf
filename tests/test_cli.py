"""The `probe` command's contract (probe/cli/__init__.py): a user mistake is one line on stderr
and exit code 2; a bug keeps its traceback and exits 1; conflicting flags are refused by
argparse; `probe --help` lists every command in the pipeline's order."""

from __future__ import annotations

from pathlib import Path

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
    modules = {p.name[:-len("_command.py")] for p in (Path(__file__).parents[1] / "probe" / "cli").glob("*_command.py")}
    assert len(COMMANDS) == len(set(COMMANDS)) and set(COMMANDS) == modules  # every command module is listed


# --- a flag out of its range is refused by argparse, before any work ---------------------------------

@pytest.mark.parametrize("argv, problem", [
    (["attend", "a b", "--from", "a", "--to", "b", "--top", "-1"], "argument --top: must be a positive integer, not -1"),
    (["heads", "RUN", "--top", "-2"], "argument --top: must be a positive integer, not -2"),
    (["coref", "RUN", "--top", "0"], "argument --top: must be a positive integer, not 0"),
    (["coref", "RUN", "--seed", "-1"], "argument --seed: must be 0 or more, not -1"),
    (["probes", "RUN", "--label", "x", "--seed", "-1"], "argument --seed: must be 0 or more, not -1"),
    (["ablate", "--task", "induction", "-n", "0"], "argument -n: must be a positive integer, not 0"),
    (["ablate", "--task", "induction", "-n", "-3"], "argument -n: must be a positive integer, not -3"),
    (["ablate", "--task", "induction", "--top", "-1"], "argument --top: must be a positive integer, not -1"),
    (["patch", "--top", "-1"], "argument --top: must be a positive integer, not -1"),
    (["train", "induction", "-o", "x", "--steps", "0"], "argument --steps: must be a positive integer, not 0"),
    (["train", "induction", "-o", "x", "--steps", "-5"], "argument --steps: must be a positive integer, not -5"),
    (["train", "induction", "-o", "x", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["train", "induction", "-o", "x", "--lr", "nan"], "argument --lr: must be a finite number above 0, not nan"),
    (["train", "induction", "-o", "x", "--lr", "inf"], "argument --lr: must be a finite number above 0, not inf"),
    (["train", "induction", "-o", "x", "--lr", "0"], "argument --lr: must be a finite number above 0, not 0"),
    (["train", "induction", "-o", "x", "--lr", "fast"], "argument --lr: must be a number, not 'fast'"),
    (["dashboard", "RUN", "--port", "99999"], "argument --port: must be a port number from 1 to 65535, not 99999"),
    (["dashboard", "RUN", "--cache-mb", "-1"], "argument --cache-mb: must be 0 or more, not -1"),
    (["demo", "-n", "-1580"], "argument -n: must be a positive integer, not -1580"),
    (["demo", "--port", "0"], "argument --port: must be a port number from 1 to 65535, not 0"),
    (["heads", "RUN", "--top", "three"], "argument --top: must be a whole number, not 'three'"),
])
def test_a_flag_out_of_range_is_refused_by_argparse(argv, problem, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a flag accepted, what the command writes (-o x, runs/demo) lands here
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"probe {argv[0]}: error: {problem}" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def run_with_a_file_for_analyses(tmp_path_factory):
    from helpers import record_coref_run

    run = record_coref_run(tmp_path_factory.mktemp("blocked") / "run", n=12, analyses=False)
    (run / "analyses").write_text("someone's notes")
    return run


@pytest.mark.parametrize("command", [["heads", "--no-model"], ["probes", "--label", "answer"],
                                     ["coref", "--no-interventions"], ["ablate", "--run"], ["patch", "--run"]])
def test_a_command_that_saves_next_to_a_run_refuses_a_file_in_the_way_before_its_work(
        run_with_a_file_for_analyses, command, capsys):
    run = run_with_a_file_for_analyses
    argv = [command[0], *command[1:], str(run)] if command[-1] == "--run" else [command[0], str(run), *command[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"probe {command[0]}: error: cannot save results next to the run: {run / 'analyses'} is a file, "
                   "not a directory; name a directory to write into, or move the file away\n")
    assert (run / "analyses").read_text() == "someone's notes"
