"""dashboard/data.py (Registry, RunData, LRU) on small real runs: a run still being
recorded, results saved while serving, a result's kind from its sidecar, refreshing a run
recorded again in place, the byte-bounded slice cache and the Q/K sample."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from helpers import figure_dict

from dashboard.data import Registry
from dashboard.state import ViewState
from dashboard.views import grid_figure, prompt_options, render_view
from probe.reader import Run


def test_a_run_being_recorded_shows_what_is_published_and_refreshes(coref_run, tmp_path):
    import shutil

    live = tmp_path / "live"
    shutil.copytree(coref_run, live)
    full = json.loads((live / "run.json").read_text())
    # what a recorder writes after its first shard of several: fewer prompts, not complete
    tiny = tmp_path / "tiny"
    import models
    import probe

    probe.record(models.load("toy-coref"), Run(coref_run).prompts, tiny, names=["blocks.*.attn.hook_pattern"],
                 shard_mb=0.001, batch_size=2, progress=False)
    manifest = json.loads((tiny / "run.json").read_text())
    assert len(manifest["shards"]) > 2
    partial = dict(manifest, shards=manifest["shards"][:2], complete=False)
    partial.pop("finished", None)
    (tiny / "run.json").write_text(json.dumps(partial))
    reg = Registry([tiny])
    data = reg.get("0")
    published = sum(s["n_prompts"] for s in partial["shards"])
    assert data.n_prompts == published and "still being recorded" in data.status()
    assert len(prompt_options(reg, "0", None, 0)) == published
    out, msg = render_view(reg, ViewState(prompt=published))  # clamped by next_state in the app; here: refused
    assert "out of range" in msg
    (tiny / "run.json").write_text(json.dumps(manifest))
    data.refresh()
    assert data.n_prompts == full["n_prompts"] and "complete" in data.status()
    assert render_view(reg, ViewState(prompt=published))[1] is None


def test_results_saved_while_serving_appear_without_a_restart(plain_run, tmp_path):
    import shutil

    from analyses.head_metrics import head_metrics
    from analyses.results import save_result

    run_dir = tmp_path / "seed"
    shutil.copytree(plain_run, run_dir)
    reg = Registry([run_dir])
    assert reg.get("0").head_columns() == {}
    assert "probe heads RUN" in str(render_view(reg, ViewState(view="metrics"))[0]["metrics-msg"])
    table = head_metrics(Run(run_dir))
    save_result(run_dir, "head_metrics", table)
    cols = reg.get("0").head_columns()
    assert set(cols) >= {"entropy", "prev_token", "induction"}
    assert np.isclose(reg.get("0").head_values(3, 1)["entropy"], table.set_index(["layer", "head"]).entropy[(3, 1)])


def test_a_result_is_shown_as_the_kind_its_sidecar_names(plain_run, tmp_path):
    import shutil

    from analyses.results import save_result

    run_dir = tmp_path / "seed"
    shutil.copytree(plain_run, run_dir)
    reg = Registry([run_dir])
    n_layers, n_heads = reg.get("0").n_layers, reg.get("0").n_heads
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    effect = np.linspace(-1, 1, n_layers * n_heads)
    # per-head "effect" numbers that the columns alone would take for an ablation sweep
    save_result(run_dir, "effect_scores", pd.DataFrame({"layer": layer, "head": head, "effect": effect}),
                kind="head_metrics", command="probe heads RUN")

    def shown() -> tuple[set[str], str]:
        results = render_view(reg, ViewState(view="results"))[0]["results"]
        return set(reg.get("0").head_columns()), str(results)

    columns, results = shown()
    assert columns == {"effect_scores.effect"}  # a head metric: it colours the grid by its column name
    assert "ablation" not in {t.kind for t in reg.get("0").tables()}
    assert "No ablation sweep" in results and "effect_scores" not in results
    z = figure_dict(grid_figure(reg, ViewState(metric="effect_scores.effect")))["data"][0]["z"]
    assert np.allclose(np.array(z, dtype=float), effect.reshape(n_layers, n_heads), atol=1e-4)
    # without its sidecar the same CSV is judged by its columns: an ablation sweep, drawn as one
    (run_dir / "analyses" / "effect_scores.json").unlink()
    columns, results = shown()
    assert columns == {"effect_scores"} and "effect_scores: effect of ablating each head" in results


def test_refresh_rereads_a_run_recorded_again_in_place(tmp_path):
    import models
    import probe

    model = models.load("toy-coref")
    texts = [p.text for p in probe.load_prompts("toy-coref-test")]
    first, second = texts[:2], [t for t in texts if len(t.split()) != len(texts[0].split())][:3]
    probe.record(model, first, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False)
    reg = Registry([tmp_path / "run"])
    data = reg.get("0")
    old_tokens = data.str_tokens(0)
    assert data.prompts() == first and old_tokens == Run(tmp_path / "run").str_tokens(0)
    probe.record(model, second, tmp_path / "run", names=["blocks.*.attn.hook_pattern"], progress=False,
                 overwrite=True)
    data.refresh()
    fresh = Run(tmp_path / "run")
    # the run's own caches are dropped: its prompt list and the shards it had open
    assert data.prompts() == second and data.str_tokens(0) == fresh.str_tokens(0) != old_tokens
    assert np.array_equal(data.pattern(1, 0, 0), fresh.pattern(1, 0, 0))


def test_the_slice_cache_is_bounded_by_bytes_not_entries(coref_run):
    from dashboard.data import LRU

    mib = 2**20
    cache = LRU(max_bytes=10 * mib)
    made = []

    def make(i, size=3 * mib):
        made.append(i)
        return np.zeros(size // 4, np.float32)

    for i in range(3):
        cache.get(i, lambda i=i: make(i))
    assert cache.bytes == 9 * mib and all(i in cache for i in range(3))
    cache.get(0, lambda: make("again"))  # a hit: not re-made, and now the most recent
    assert made == [0, 1, 2]
    cache.get(3, lambda: make(3))  # 12 MiB > 10: the least recently used (1) goes
    assert 1 not in cache and all(i in cache for i in (0, 2, 3)) and cache.bytes == 9 * mib
    big = cache.get("huge", lambda: make("huge", 11 * mib))  # bigger than the budget: returned, not kept
    assert big.nbytes == 11 * mib and "huge" not in cache and cache.bytes == 9 * mib
    # a run's cache stays under its budget while the grid reads every layer of every prompt
    run = Run(coref_run)
    per_layer = run.pattern(0, 0).nbytes
    reg = Registry([coref_run], cache_bytes=3 * per_layer)
    data = reg.get("0")
    for prompt in range(run.n_prompts):
        assert np.array_equal(data.all_patterns(prompt)[1], run.pattern(prompt, 1))
        assert data._cache.bytes <= 3 * per_layer
    assert ("layer", run.n_prompts - 1, run.config["n_layers"] - 1) in data._cache
    assert ("layer", 0, 0) not in data._cache


def test_qk_sample_is_cached_apart_from_the_selected_prompt_and_reads_one_head(coref_run, monkeypatch):
    run = Run(coref_run)
    data = Registry([coref_run]).get("0")
    reads = []
    real = type(data)._head_rows
    monkeypatch.setattr(type(data), "_head_rows", lambda self, name, p, h: reads.append((name, p)) or real(
        self, name, p, h))
    budget = 3 * run.n_tokens // run.n_prompts  # about three prompts' tokens: a sample of the run
    first = data.qk_vectors(1, 2, max_tokens=budget, include=0)
    sampled = sorted({p for _, p in reads})
    assert 2 <= len(sampled) < run.n_prompts and 0 in sampled
    outside = next(p for p in range(run.n_prompts) if p not in sampled)
    reads.clear()
    other = data.qk_vectors(1, 2, max_tokens=budget, include=outside)  # a prompt switch
    assert sorted({p for _, p in reads}) == [outside]  # the sample is not read again
    reads.clear()
    assert data.qk_vectors(1, 2, max_tokens=budget, include=sampled[1]) is first and reads == []
    # the vectors are the run's, one head's, with their prompts and tokens, in prompt order
    prompts = sorted({*sampled, outside})
    assert sorted(set(other["prompt"].tolist())) == prompts
    q = np.concatenate([run.prompt_activation("blocks.1.attn.hook_q", p)[:, 2] for p in prompts])
    k = np.concatenate([run.prompt_activation("blocks.1.attn.hook_k", p)[:, 2 * run.manifest["hooks"][
        "blocks.1.attn.hook_k"]["shape"][0] // run.config["n_heads"]] for p in prompts])
    assert np.allclose(other["q"], q) and np.allclose(other["k"], k)
    assert other["tokens"] == [t for p in prompts for t in run.str_tokens(p)]
    assert data._head_rows("blocks.1.attn.hook_q", 3, 2).shape == run.prompt_activation("blocks.1.attn.hook_q",
                                                                                         3)[:, 2].shape
    # and what h5py is asked for is that head's slice, not every head
    import h5py

    asked = []
    real_get = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: asked.append(key) or real_get(self, key))
    data._head_rows("blocks.1.attn.hook_q", 4, 3)
    rows = [key for key in asked if isinstance(key, tuple)]  # (the other read is the prompt's offsets)
    assert len(rows) == 1 and rows[0][1] == 3

