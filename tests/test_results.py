"""analyses.results: results saved with a sidecar that says what they are, read back with
their kind; foreign CSVs judged by their columns; bad tables named, not fatal."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from analyses.results import KINDS, SIDECAR_SCHEMA, kind_for_name, load_results, save_result


@pytest.fixture
def run_dir(tmp_path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def heads_table(**columns) -> pd.DataFrame:
    """A per-head table of a 2-layer, 2-head model with the given extra columns."""
    return pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], **columns})


def test_save_result_writes_the_table_and_a_sidecar_saying_what_it_is(run_dir):
    table = heads_table(effect=[0.1, -0.2, 0.3, 0.0], method="mean")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    out = save_result(run_dir, "ablation_accuracy", table, command=["probe", "ablate", "--run", "my run"])
    assert out == run_dir / "analyses" / "ablation_accuracy.csv"
    pd.testing.assert_frame_equal(pd.read_csv(out), table)
    sidecar = json.loads((run_dir / "analyses" / "ablation_accuracy.json").read_text())
    assert set(sidecar) == {"kind", "schema_version", "created", "command", "columns"}
    assert sidecar["kind"] == "ablation" and sidecar["schema_version"] == SIDECAR_SCHEMA
    assert sidecar["columns"] == ["layer", "head", "effect", "method"]
    assert sidecar["command"] == "probe ablate --run 'my run'"  # an argv list becomes a pasteable line
    created = datetime.fromisoformat(sidecar["created"])
    assert created.utcoffset() == timedelta(0) and before <= created <= datetime.now(timezone.utc)
    # the positional call of the analyses and the CLI: no command recorded; no temp files left behind
    save_result(run_dir, "head_metrics", heads_table(entropy=[1.0, 2.0, 3.0, 4.0]))
    assert json.loads((run_dir / "analyses" / "head_metrics.json").read_text())["command"] is None
    assert sorted(p.name for p in (run_dir / "analyses").iterdir()) == [
        "ablation_accuracy.csv", "ablation_accuracy.json", "head_metrics.csv", "head_metrics.json"]


@pytest.mark.parametrize("name, kind", [
    ("head_metrics", "head_metrics"), ("ablation_accuracy", "ablation"), ("ablation_coref", "ablation"),
    ("patch_heads", "patch_heads"), ("patch_heads_antecedent_noise", "patch_heads"),
    ("patch_resid_antecedent", "patch_resid"), ("probes_gender", "probes"), ("probes_antecedent", "probes"),
    ("coref_heads", "coref"), ("coref/coref_heads", "coref")])
def test_the_kind_is_inferred_from_the_name(name, kind):
    assert kind_for_name(name).name == kind


def test_results_where_a_file_blocks_them_are_refused_and_the_file_is_kept(run_dir):
    from analyses.results import check_results_dir
    from probe.errors import StoreError

    (run_dir / "analyses").write_text("someone's notes")
    with pytest.raises(StoreError, match=r"cannot save the result 'head_metrics' next to the run: .*analyses/"
                                         r"head_metrics\.csv cannot be created: .*analyses is a file"):
        save_result(run_dir, "head_metrics", heads_table())
    with pytest.raises(StoreError, match=r"cannot save results next to the run: .*analyses is a file, not a dir"):
        check_results_dir(run_dir)
    assert (run_dir / "analyses").read_text() == "someone's notes"
    (run_dir / "analyses").unlink()
    (run_dir / "analyses" / "head_metrics.csv").mkdir(parents=True)
    with pytest.raises(StoreError, match=r"head_metrics\.csv is a directory"):
        save_result(run_dir, "head_metrics", heads_table())
    assert check_results_dir(run_dir) == run_dir / "analyses"


def test_a_name_that_means_no_kind_is_refused_and_nothing_is_written(run_dir):
    with pytest.raises(ValueError, match="matches no result kind"):
        save_result(run_dir, "my_scores", heads_table(score=[1, 2, 3, 4]))
    with pytest.raises(ValueError, match="no result kind 'scores'"):
        save_result(run_dir, "my_scores", heads_table(score=[1, 2, 3, 4]), kind="scores")
    for name in ("../escape", "/abs/path", "a/b/c", "head_metrics.csv", ""):
        with pytest.raises(ValueError):
            save_result(run_dir, name, heads_table(score=[1, 2, 3, 4]), kind="head_metrics")
    assert not (run_dir / "analyses").exists() and not (run_dir.parent / "escape.csv").exists()


def test_a_table_without_its_kinds_columns_is_refused(run_dir):
    with pytest.raises(ValueError, match=r"ablation table but lacks the columns \['effect'\]"):
        save_result(run_dir, "ablation_x", heads_table(score=[1, 2, 3, 4]))
    with pytest.raises(ValueError, match="test_acc or test_r2"):
        save_result(run_dir, "probes_x", pd.DataFrame({"layer": [0, 1], "dev_acc": [0.5, 0.6]}))
    with pytest.raises(ValueError, match="'position'"):
        save_result(run_dir, "scores", heads_table(normalized=[0.0, 1.0, 0.5, 0.2]), kind="patch_resid")
    assert not (run_dir / "analyses").exists()


def test_load_results_round_trips_every_kind(run_dir):
    tables = {
        "head_metrics": heads_table(entropy=[1.0, 2.0, 3.0, 4.0], prev_token=[0.1, 0.2, 0.3, 0.4]),
        "ablation_accuracy": heads_table(effect=[0.1, -0.2, 0.3, 0.0]),
        "patch_heads_antecedent": heads_table(normalized=[0.0, 1.0, 0.5, 0.2], direction="denoise"),
        "patch_resid_antecedent": pd.DataFrame({"layer": [0, 0, 1], "position": [0, 1, 0], "normalized": [1, 0, .5]}),
        "probes_gender": pd.DataFrame({"layer": [0, 1], "test_acc": [0.6, 0.9]}),
        "probes_n_chars": pd.DataFrame({"layer": [0, 1], "test_r2": [-0.3, 0.7]}),  # a ridge probe's
        "coref/coref_heads": heads_table(accuracy=[.5, .6, .7, .8], ci_low=[.4, .5, .6, .7], ci_high=[.6, .7, .8, .9]),
        "circuit_heads": heads_table(head_class=["name mover", "", "induction", ""], in_circuit=[True, False, True, False]),
        "circuit_edges": pd.DataFrame({"sender_layer": [0], "sender_head": [1], "receiver_layer": [1], "receiver_head": [0],
                                       "receiver_input": ["q"], "effect": [-0.2]}),
        "circuit_attribution": pd.DataFrame({"layer": [0, 0], "head": [1, 1], "position": ["all", "S2"],
                                             "atp": [0.1, 0.2], "atp_star": [0.3, 0.2], "exact": [0.1, float("nan")]}),
    }
    for name, table in tables.items():
        save_result(run_dir, name, table, command=f"probe something {name}")
    problems: list[str] = []
    results = {r.name: r for r in load_results(run_dir, problems)}
    assert problems == []
    assert {n: r.kind for n, r in results.items()} == {
        "head_metrics": "head_metrics", "ablation_accuracy": "ablation", "patch_heads_antecedent": "patch_heads",
        "patch_resid_antecedent": "patch_resid", "probes_gender": "probes", "probes_n_chars": "probes",
        "coref_heads": "coref", "circuit_heads": "circuit_heads", "circuit_edges": "circuit_edges",
        "circuit_attribution": "circuit_attribution"}
    assert set(r.kind for r in results.values()) == set(KINDS)
    for name, table in tables.items():
        r = results[Path(name).name]
        loaded = r.table.fillna({"head_class": ""}) if "head_class" in r.table else r.table  # CSV: "" reads as NaN
        pd.testing.assert_frame_equal(loaded, table, check_dtype=False)
        assert r.path == run_dir / "analyses" / f"{name}.csv"
        assert r.sidecar == json.loads(r.path.with_suffix(".json").read_text())
        assert r.sidecar["command"] == f"probe something {name}"


def test_a_foreign_csv_without_a_sidecar_is_judged_by_its_columns(run_dir):
    root = run_dir / "analyses"
    (root / "coref").mkdir(parents=True)
    heads_table(effect=[1, 2, 3, 4], method="zero").to_csv(root / "whatever.csv", index=False)
    pd.DataFrame({"layer": [0, 1], "test_r2": [0.1, 0.2]}).to_csv(root / "ridge.csv", index=False)
    pd.DataFrame({"layer": [0, 1], "position": [0, 0], "normalized": [1, 0]}).to_csv(root / "patch.csv", index=False)
    heads_table(accuracy=[.5] * 4, ci_low=[.4] * 4, ci_high=[.6] * 4).to_csv(root / "coref" / "x.csv", index=False)
    heads_table(score=[1, 2, 3, 4]).to_csv(root / "scores.csv", index=False)  # any per-head numbers: metrics
    heads_table().to_csv(root / "head_metrics.csv", index=False)  # bare heads count under this name only
    heads_table().to_csv(root / "heads.csv", index=False)
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(root / "other.csv", index=False)
    (root / "broken.csv").write_bytes(b"")  # unreadable and no sidecar: not a result, quietly
    problems: list[str] = []
    results = load_results(run_dir, problems)
    assert {r.name: r.kind for r in results} == {
        "whatever": "ablation", "ridge": "probes", "patch": "patch_resid", "x": "coref", "scores": "head_metrics",
        "head_metrics": "head_metrics"}
    assert all(r.sidecar is None for r in results) and problems == []


def test_a_sidecars_kind_wins_over_the_columns(run_dir):
    # per-head effects that the columns alone would take for an ablation sweep
    save_result(run_dir, "sweep_scores", heads_table(effect=[0.1, 0.2, 0.3, 0.4]), kind="head_metrics")
    assert [(r.name, r.kind) for r in load_results(run_dir)] == [("sweep_scores", "head_metrics")]
    (run_dir / "analyses" / "sweep_scores.json").unlink()
    assert [(r.name, r.kind) for r in load_results(run_dir)] == [("sweep_scores", "ablation")]


def test_a_stale_sidecar_does_not_describe_a_rewritten_table(run_dir):
    save_result(run_dir, "sweep", heads_table(effect=[0.1, 0.2, 0.3, 0.4]), kind="head_metrics")
    # the CSV rewritten by a tool that writes no sidecar: the old sidecar's columns no longer match
    heads_table(normalized=[0.1, 0.2, 0.3, 0.4]).to_csv(run_dir / "analyses" / "sweep.csv", index=False)
    assert [(r.name, r.kind) for r in load_results(run_dir)] == [("sweep", "patch_heads")]


def test_bad_tables_are_named_not_fatal(run_dir):
    root = run_dir / "analyses"
    save_result(run_dir, "head_metrics", heads_table(entropy=[1.0, 2.0, 3.0, 4.0]))
    root.joinpath("foreign.csv").write_text("layer,head,score\nL0,H1,0.5\nL1,H0,0.25\n")
    save_result(run_dir, "ablation_float", heads_table(effect=[0.1, 0.2, 0.3, 0.4]).assign(layer=[0, 0, 1.5, 1]))
    save_result(run_dir, "ablation_future", heads_table(effect=[0.1, 0.2, 0.3, 0.4]))
    future = json.loads(root.joinpath("ablation_future.json").read_text())
    root.joinpath("ablation_future.json").write_text(json.dumps({**future, "kind": "circuit"}))
    save_result(run_dir, "ablation_newer", heads_table(effect=[0.1, 0.2, 0.3, 0.4]))
    newer = json.loads(root.joinpath("ablation_newer.json").read_text())
    root.joinpath("ablation_newer.json").write_text(json.dumps({**newer, "schema_version": SIDECAR_SCHEMA + 1}))
    save_result(run_dir, "ablation_lost", heads_table(effect=[0.1, 0.2, 0.3, 0.4]))
    root.joinpath("ablation_lost.csv").write_bytes(b"")  # a result (it has a sidecar) that cannot be read
    save_result(run_dir, "probes_damaged", pd.DataFrame({"layer": [0, 1], "test_acc": [0.5, 0.7]}))
    root.joinpath("probes_damaged.json").write_text('{"kind": "pro')
    problems: list[str] = []
    results = load_results(run_dir, problems)
    assert {r.name: r.kind for r in results} == {"head_metrics": "head_metrics", "probes_damaged": "probes"}
    assert next(r for r in results if r.name == "head_metrics").table["layer"].dtype.kind == "i"
    text = "\n".join(problems)
    assert "analyses/foreign.csv is not shown: its 'layer' column holds 'L0', not a whole number" in text
    assert "analyses/ablation_float.csv is not shown: its 'layer' column holds '1.5'" in text
    assert "analyses/ablation_future.csv is not shown: its sidecar names the kind 'circuit'" in text
    assert "analyses/ablation_newer.csv is not shown: its sidecar's schema 2" in text and "upgrade probe" in text
    assert "analyses/ablation_lost.csv is not shown: it cannot be read" in text
    assert "probes_damaged.json cannot be read" in text and "judged by its columns" in text
    assert len(problems) == 6


def test_the_dashboard_reads_results_without_loading_models_or_torch():
    code = ("import sys, analyses.results, dashboard.app, dashboard.views, dashboard.data; "
            "heavy = sorted(m for m in ('torch', 'models', 'transformers') if m in sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
