"""analyses/run_checks.py: a model the run was not recorded with is refused
(`check_model_matches`), in Python and through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

import models


def test_mismatched_run_and_model_are_refused(tmp_path):
    """Interventions on a run need the model it was recorded with: a model with other weights
    is refused by digest, and a run without a digest (another tool's) by its architecture."""
    import probe
    from analyses.run_checks import check_model_matches

    toy = models.load("toy-coref")
    run = probe.record(toy, probe.load_prompts("toy-coref-test")[:4], tmp_path / "run",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    check_model_matches(toy, run)  # the same model passes
    retrained = models.load("toy-coref")
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)  # same architecture, other weights
    with pytest.raises(models.InputError, match="recorded with 'toy-coref'.*different weights"):
        check_model_matches(retrained, run)
    manifest = json.loads((run.path / "run.json").read_text())
    del manifest["model"]["weights_sha256"]
    (run.path / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(models.InputError, match="another architecture than 'toy-induction'"):
        check_model_matches(models.load("toy-induction"), probe.open(run.path))
    r = run_cli("ablate", "--run", str(run.path), "--model", "toy-induction")
    assert r.returncode == 2 and "another architecture" in r.stderr and "Traceback" not in r.stderr, r.stderr
