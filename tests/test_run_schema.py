"""probe/run_schema.py: a run is checked against docs/cache-format.md when it is read. Each
damaged manifest or prompts.jsonl is one StoreError naming what is wrong (exit 2 from every
command), and the dashboard shows such a run as a message while serving the others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
import probe
from probe.errors import StoreError
from probe.store import read_manifest


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("schema") / "good"
    probe.record(models.load("toy-coref"), probe.load_prompts("toy-coref-test")[:6], out,
                 names=["blocks.*.attn.hook_pattern"], progress=False)
    return out


def damaged(good: Path, out: Path, manifest=None, prompts: bytes | None = None) -> Path:
    shutil.copytree(good, out)
    if manifest is not None:
        m = json.loads((out / "run.json").read_text())
        (out / "run.json").write_text(json.dumps(manifest(m) if callable(manifest) else manifest))
    if prompts is not None:
        (out / "prompts.jsonl").write_bytes(prompts)
    return out


MANIFEST_DEFECTS = {
    "not an object": ([1, 2, 3], "not an object"),
    "shards null": (lambda m: {**m, "shards": None}, "'shards' is null, not a list"),
    "shard not an object": (lambda m: {**m, "shards": [5]}, "shard 0 is a JSON int"),
    "shard outside the run": (lambda m: {**m, "shards": [{**m["shards"][0], "file": "../../etc/passwd"}]},
                              "shard files are named shards/NNNNN.h5"),
    "shards overlap": (lambda m: {**m, "shards": [m["shards"][0], m["shards"][0]]}, "shard 1 starts at prompt 0"),
    "falsely complete": (lambda m: {**m, "shards": m["shards"][:0]}, "it says complete"),
    "hooks a list": (lambda m: {**m, "hooks": ["x"]}, "'hooks' must be an object"),
    "model a string": (lambda m: {**m, "model": "gpt2"}, "'model' must be an object"),
    "n_prompts text": (lambda m: {**m, "n_prompts": "6"}, "'n_prompts' is '6'"),
    "key/value heads not dividing the heads": (
        lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "n_kv_heads": 3}}},
        "model config 'n_heads' (4) is not a multiple of 'n_kv_heads' (3)"),
    "key/value heads zero": (
        lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "n_kv_heads": 0}}},
        "model config 'n_kv_heads' is 0, not a positive whole number"),
}


@pytest.mark.parametrize("defect", list(MANIFEST_DEFECTS))
def test_damaged_manifests_are_one_clear_error(good_run, tmp_path, defect):
    change, message = MANIFEST_DEFECTS[defect]
    run = damaged(good_run, tmp_path / "run", manifest=change)
    with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe.open(run)
    r = run_cli("heads", run, "--no-model")
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


@pytest.mark.parametrize("content, message", [
    (b'["an", "array"]\n', "must be an object with a \"text\" string"),
    (b'{"text": "caf\xe9"}\n', "is not valid UTF-8"),
    (b'{"text": 5}\n', "must be an object with a \"text\" string"),
    (b"{not json\n", "not valid JSON"),
    (b'{"text": "only one"}\n', "holds 1 prompts, the manifest 6"),
])
def test_damaged_prompt_files_are_one_clear_error(good_run, tmp_path, content, message):
    run = damaged(good_run, tmp_path / "run", prompts=content)
    with pytest.raises(StoreError, match=message.replace("(", r"\(")):
        probe.open(run).labels(0)
    r = run_cli("coref", run, "--no-interventions")
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_the_dashboard_serves_the_good_runs_beside_a_broken_one(good_run, tmp_path):
    """A broken run named on the command line is a message in its view, not a failed start."""
    from dashboard.app import create_app
    from dashboard.data import Registry

    broken = damaged(good_run, tmp_path / "broken", manifest=lambda m: {**m, "shards": None})
    app = create_app([broken, good_run])
    assert app.registry.get("1").n_prompts == 6
    reg = Registry([broken, good_run])
    assert "'shards' is null" in (reg.get("0").error or "")
    client = app.server.test_client()
    assert client.get("/").status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["model", "hooks", "n_prompts", "complete", "shards", "file",
                                                      "first_prompt", "name", "config", "kind", "shape"]),
                                      children, max_size=6), max_leaves=20))
def test_any_manifest_is_read_or_refused_in_our_words(tmp_path_factory, value):
    """Hypothesis: whatever run.json holds, reading it gives a manifest or a StoreError."""
    run = tmp_path_factory.mktemp("fuzz")
    (run / "run.json").write_text(json.dumps({"schema_version": 1, **value} if isinstance(value, dict) else value))
    try:
        read_manifest(run)
    except StoreError:
        pass
