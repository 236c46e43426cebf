"""`probe circuit induction` held to ground truth: on the shipped toy-induction model, whose
previous-token heads (L0H0, L0H2) and induction heads (L1H0, L1H2, L1H3) are known from
models/zoo/README.md (and tests/test_tasks.py), the circuit command recovers exactly those
heads in those classes; the saved tables load for the dashboard."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_cli

from analyses.results import load_results

PLANTED = {"induction": ["L1H0", "L1H2", "L1H3"], "previous token": ["L0H0", "L0H2"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("circuit") / "run"
    proc = run_cli("circuit", "induction", "--model", "toy-induction", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_the_circuit_command_recovers_the_planted_heads(study):
    out, proc = study
    summary = json.loads((out / "circuit" / "summary.json").read_text())
    for cls, heads in PLANTED.items():
        assert summary["classes"][cls] == heads
    heads = pd.read_csv(out / "analyses" / "circuit_heads.csv")
    # the planted heads are what the interventions say: induction heads' patching costs most of the
    # repeat's benefit, previous-token heads act through the induction heads' keys
    gap = summary["clean_metric"] - summary["corrupt_metric"]
    induction = heads[heads.head_class == "induction"]
    assert (induction.exact < -0.3 * gap).all() and (induction.induction_random > 0.4).all()
    previous = heads[heads.head_class == "previous token"]
    assert (previous.path_to_induction_keys < -0.5 * gap).all()
    assert "L1H0" in proc.stdout and "previous token" in proc.stdout


def test_the_saved_circuit_loads_for_the_dashboard(study):
    out, _ = study
    problems: list[str] = []
    kinds = {r.kind for r in load_results(out, problems)}
    assert problems == []
    assert {"circuit_heads", "circuit_edges", "circuit_attribution"} <= kinds
    edges = pd.read_csv(out / "analyses" / "circuit_edges.csv")
    assert set(zip(edges.sender_layer, edges.sender_head)) == {(0, 0), (0, 2)}
    assert (edges.receiver_input == "k").all() and (edges.effect < 0).all()


def test_a_run_that_exists_is_not_replaced(tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    proc = run_cli("circuit", "induction", "--model", "toy-induction", "-o", str(out))
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (out / "mine.txt").read_text() == "x"
