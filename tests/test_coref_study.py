"""The coreference study: aggregation and baselines checked by hand on the seed pair."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import probe
from analyses.coref import bootstrap_ci, candidate_attention, coref_heads, positional_baselines


@pytest.fixture(scope="module")
def seed_run(minilm, tmp_path_factory):
    return probe.record(minilm, "seed", tmp_path_factory.mktemp("seed") / "run",
                        names=["blocks.*.attn.hook_pattern"], progress=False)


def test_attention_aggregation_by_hand(seed_run):
    run = seed_run
    attn, gold, used = candidate_attention(run)
    assert used == [0, 1] and gold.tolist() == [0, 1]  # tired -> animal, wide -> street
    toks = run.str_tokens(0)
    it, animal, street = toks.index("it"), toks.index("animal"), toks.index("street")
    for layer in (0, 4):
        p = run.pattern(0, layer)
        assert np.allclose(attn[0, layer, :, 0], p[:, it, animal])
        assert np.allclose(attn[0, layer, :, 1], p[:, it, street])


def test_baselines_and_table(seed_run):
    attn, gold, used = candidate_attention(seed_run)
    base = positional_baselines(seed_run, used, gold)
    assert base == {"nearest mention": 0.5, "first mention": 0.5, "chance": 0.5}
    table, base2, n = coref_heads(seed_run)
    assert n == 2 and len(table) == 72
    expected = (attn.argmax(-1) == gold[:, None, None]).mean(0)
    assert np.allclose(table.accuracy.to_numpy().reshape(6, 12), expected)
    assert not table.beats_positional.any()  # two prompts are too few for any claim


def test_bootstrap_interval_covers_the_mean():
    correct = (np.random.default_rng(0).random((400, 3)) < [0.2, 0.5, 0.9]).astype(float)
    lo, hi = bootstrap_ci(correct)
    assert np.all(lo < correct.mean(0)) and np.all(correct.mean(0) < hi)
    assert np.all(hi - lo < 0.12) and np.all(hi - lo > 0.02)


def test_coref_cli_writes_report(seed_run, tmp_path):
    r = subprocess.run([sys.executable, "-m", "probe.cli", "coref", str(seed_run.path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = seed_run.path / "analyses" / "coref" / "report.md"
    assert "too few to claim" in report.read_text()
    assert (report.parent / "heads.html").exists() and (report.parent / "coref_heads.csv").exists()
    # a run without gold labels gets a clear error
    plain = probe.record(probe.load("minilm"), ["just a sentence here"], tmp_path / "plain",
                         names=["blocks.0.attn.hook_pattern"], progress=False)
    r = subprocess.run([sys.executable, "-m", "probe.cli", "coref", str(plain.path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "labels the study needs" in r.stderr
