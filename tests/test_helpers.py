"""tests/helpers.py: the small real runs the dashboard tests use (test_dashboard_*.py) are
what those tests assume."""

from __future__ import annotations

from helpers import record_coref_run


def test_coref_run_has_every_analysis(tmp_path):
    run = record_coref_run(tmp_path / "run", n=12)
    names = {p.name for p in (run / "analyses").rglob("*.csv")}
    assert names >= {"ablation_coref.csv", "coref_heads.csv", "head_metrics.csv", "patch_heads.csv",
                     "patch_resid.csv", "probes_answer.csv"}
