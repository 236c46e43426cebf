"""`probe record --sample N [--sample-seed S]` (probe/cli/record_command.py): a balanced sample of
the prompt set is recorded, announced in one line, and resumable because it is deterministic;
flags out of range, and a sample too small for one balanced unit, are refused (exit 2, one line)
before any model is loaded."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import build_hf, run_cli

import probe
from probe.cli import main
from probe.design import balanced_sample
from probe.prompts import load_prompts


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """The smallest model a recording can use: a random 2-layer GPT-2 with a word-level tokenizer."""
    path = tmp_path_factory.mktemp("gpt2")
    build_hf("gpt2", path)
    return path


@pytest.mark.parametrize("flags, problem", [
    (["--sample", "0"], "argument --sample: must be a positive integer, not 0"),
    (["--sample", "many"], "argument --sample: must be a whole number, not 'many'"),
    (["--sample", "8", "--sample-seed", "-1"], "argument --sample-seed: must be 0 or more, not -1"),
])
def test_flags_out_of_range_are_refused_by_argparse(tmp_path, capsys, flags, problem):
    with pytest.raises(SystemExit) as exit_:
        main(["record", "--prompts", "winobias-dev", "-o", str(tmp_path / "run"), *flags])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"probe record: error: {problem}"


@pytest.mark.parametrize("flags, problem", [
    (["--sample-seed", "3"], "--sample-seed only seeds --sample; add --sample N or drop --sample-seed"),
    (["--sample", "3"], "a balanced sample of this set comes in units of 4 prompts (one twin group of each of "
                        "2 subsets: type=1; type=2); ask for at least 4 prompts, not 3"),
])
def test_a_sample_that_cannot_be_drawn_is_one_line_before_the_model(tmp_path, capsys, flags, problem):
    """A model name that does not exist: the refusal comes first, and nothing is written."""
    out = tmp_path / "run"
    code = main(["record", "--model", str(tmp_path / "no-such-model"), "--prompts", "winobias-dev", "-o", str(out),
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and err == f"probe record: error: {problem}\n"
    assert not out.exists()


def test_a_sample_is_recorded_balanced_and_resumes(tmp_path, tiny_gpt2):
    out = tmp_path / "run"
    args = ["record", "--model", tiny_gpt2, "--prompts", "winobias-dev", "-o", out, "--batch-size", "4",
            "--names", "blocks.0.hook_resid_post", "--sample", "8", "--sample-seed", "5"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    expected = balanced_sample(load_prompts("winobias-dev"), 8, seed=5)
    genders = Counter(p.labels["gender"] for p in expected)
    assert r.stdout.splitlines()[0] == (
        "sampled 8 of 1584 prompts of winobias-dev (seed 5; 4 twin groups): stereotype anti/pro 4/4, "
        f"type 1/2 4/4, gender female/male {genders['female']}/{genders['male']}")

    run = probe.open(out)
    records = run.prompt_records
    assert run.complete and run.n_prompts == 8
    assert records == [{"text": p.text, **p.labels} for p in expected]
    assert Counter((rec["stereotype"], rec["type"]) for rec in records) == {
        (s, t): 2 for s in ("pro", "anti") for t in (1, 2)}
    assert set(Counter(rec["pair_id"] for rec in records).values()) == {2}

    again = run_cli(*args, "--resume")  # the same sample: the prompts fingerprint matches
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr

    assert balanced_sample(load_prompts("winobias-dev"), 8, seed=6) != expected
    other = run_cli(*args[:-1], "6", "--resume")  # another seed is another prompt set
    assert other.returncode == 2
    assert other.stderr.startswith("probe record: error: cannot resume") and "prompts_sha256" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
