"""Probes: agree with scikit-learn's LogisticRegression on the same features and split,
control tasks and baselines computed right on hand-made cases, and a real probe on MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_cli

import probe
from analyses.probe_features import prompt_features
from analyses.probes import (
    control_labels,
    fit_logistic,
    layer_probes,
    predict,
    split_prompts,
    split_units,
)


def test_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, C = 600, 20, 3
    centers = rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    X = centers[y] * 0.6 + rng.normal(size=(n, d))
    train, test = slice(0, 400), slice(400, None)
    for lam in (1e-3, 1e-1):
        W, b = fit_logistic(torch.tensor(X[train][None], dtype=torch.float32), torch.tensor(y[train]), C, [lam])
        ours = predict(torch.tensor(X[None], dtype=torch.float32), W, b)[0, 0].numpy()
        sk = LogisticRegression(C=1 / (2 * lam * 400), max_iter=5000).fit(X[train], y[train])
        ours_acc = (ours[test] == y[test]).mean()
        sk_acc = sk.score(X[test], y[test])
        assert abs(ours_acc - sk_acc) <= 0.01, (lam, ours_acc, sk_acc)
        agree = (ours[test] == sk.predict(X[test])).mean()
        assert agree > 0.97
        assert np.allclose(W[0, 0].numpy() - W[0, 0].numpy().mean(-1, keepdims=True),
                           sk.coef_.T - sk.coef_.T.mean(-1, keepdims=True), atol=0.05)


def test_control_labels_follow_types_and_distribution():
    types = ["the", "cat", "the", "dog", "cat", "the"] * 50
    labels = np.array([0, 1, 0, 1, 1, 0] * 50)
    ctrl = control_labels(types, labels, seed=1)
    by_type = {}
    for t, c in zip(types, ctrl):
        by_type.setdefault(t, set()).add(c)
    assert all(len(v) == 1 for v in by_type.values())  # one label per type
    many = [control_labels([f"w{i}" for i in range(4000)], np.array([0] * 3000 + [1] * 1000), seed=s)
            for s in range(2)]
    assert all(abs((m == 0).mean() - 0.75) < 0.03 for m in many)  # same label distribution


def test_splits_are_by_prompt_and_baselines_are_right():
    split = split_prompts(100, seed=3)
    assert (split == 0).sum() == 70 and (split == 1).sum() == 15 and (split == 2).sum() == 15
    assert np.array_equal(split, split_prompts(100, seed=3))
    # 40 prompts x 5 tokens of types t0..t4; the label is "b" for type t3
    prompt_of = np.repeat(np.arange(40), 5)
    types = [f"t{j}" for j in range(5)] * 40
    labels = np.array(["a", "a", "a", "b", "a"] * 40)
    feats = np.random.default_rng(0).normal(size=(2, 200, 8)).astype(np.float32)
    feats[0, :, 0] += np.where(labels == "b", 3.0, -3.0)  # layer 0 encodes the label only
    feats[1, np.arange(200), np.arange(200) % 5] += 4.0  # layer 1 encodes the word type (one-hot)
    table = layer_probes(feats, labels, prompt_of, types=types)
    assert np.allclose(table.majority_baseline, 0.8)
    assert table.test_acc[0] == 1.0 and table.test_acc[1] > 0.9
    # A type-encoding layer learns any type-level labelling, so the control task is as easy
    # (selectivity ~0); the label-only layer cannot learn the control labels (high selectivity).
    assert abs(table.selectivity[1]) < 0.05
    assert table.selectivity[0] > table.selectivity[1] + 0.1


def test_rows_of_a_prompt_never_straddle_the_split():
    """Each prompt's tokens share a prompt-specific vector and one random label: memorisable
    per prompt, not learnable across prompts. Split by token, the test tokens would come from
    train prompts and score ~1; split by prompt, unseen prompts score near chance."""
    rng = np.random.default_rng(1)
    n_prompts, per, d = 80, 10, 64
    prompt_of = np.repeat(np.arange(n_prompts), per)
    split = split_units(prompt_of, seed=0)
    assert all(len(set(split[prompt_of == p])) == 1 for p in range(n_prompts))
    signature = rng.normal(size=(n_prompts, d)) * 3
    feats = (signature[prompt_of] + rng.normal(size=(n_prompts * per, d)))[None].astype(np.float32)
    labels = rng.choice(["a", "b"], n_prompts)[prompt_of]
    table = layer_probes(feats, labels, prompt_of)
    assert table.train_acc[0] > 0.9  # the train prompts are memorised
    assert table.test_acc[0] < 0.75  # the test prompts are new: chance level (0.5) within noise


@pytest.fixture(scope="module")
def winobias_run(tmp_path_factory, minilm):
    prompts = probe.load_prompts("winobias-dev")[:120]
    return probe.record(minilm, prompts, tmp_path_factory.mktemp("wb") / "run",
                        names=["blocks.*.hook_resid_post"], progress=False)


def test_pronoun_gender_probe_on_minilm(winobias_run):
    run = winobias_run
    feats = prompt_features(run, range(6))
    labels = np.array([run.labels(i)["gender"] for i in range(run.n_prompts)])
    table = layer_probes(feats, labels, np.arange(run.n_prompts))
    assert table.test_acc.max() > table.majority_baseline.iloc[0] + 0.2  # gender is linearly readable


def test_probes_cli_writes_next_to_the_run(winobias_run):
    import pandas as pd

    r = run_cli("probes", str(winobias_run.path), "--label", "gender")
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(winobias_run.path / "analyses" / "probes_gender.csv")
    assert list(table.layer) == list(range(6))
    assert {"train_acc", "dev_acc", "test_acc", "majority_baseline"} <= set(table.columns)
    r = run_cli("probes", str(winobias_run.path), "--label", "nope")
    assert r.returncode == 2 and "no label field 'nope'" in r.stderr
    # these 120 dev prompts are all pro-stereotypical: a one-class label is refused, not fitted
    r = run_cli("probes", str(winobias_run.path), "--label", "stereotype")
    assert r.returncode == 2 and "every row has the label 'pro'" in r.stderr, r.stderr


def test_pos_probe_on_ud_ewt(minilm, tmp_path):
    """Part of speech is linearly decodable from MiniLM far above the majority class, and
    more selective than a control task (Hewitt & Liang)."""
    from analyses.probe_features import word_features

    prompts = probe.load_prompts("ud-ewt-dev")[:120]
    run = probe.record(minilm, prompts, tmp_path / "ud", names=["blocks.*.hook_resid_post"], progress=False)
    feats, labels, prompt_of, types = word_features(run, range(6))
    first = prompts[0]
    (a, b), tag = first.labels["words"][1], first.labels["upos"][1]
    assert labels[1] == tag and types[1] == first.text[a:b].lower()
    table = layer_probes(feats, labels, prompt_of, types=types)
    best = table.test_acc.max()
    assert best > 0.8 and best > table.majority_baseline.iloc[0] + 0.5
    assert table.selectivity.max() > 0.1


def test_streamed_probe_equals_in_memory(tmp_path):
    """Rows on disk, read back in small chunks, fit the same probes as the array in memory
    (the chunked loss and gradient are the full-batch ones)."""
    from analyses.probe_features import FeatureRows

    rng = np.random.default_rng(1)
    prompt_of = np.repeat(np.arange(60), 7)
    labels = rng.integers(0, 3, len(prompt_of))
    feats = rng.normal(size=(3, len(labels), 16)).astype(np.float32)
    feats[1, :, :3] += 3.0 * np.eye(3)[labels]  # layer 1 encodes the label, layer 0 and 2 do not
    feats[2, :, :3] += 0.5 * np.eye(3)[labels]
    rows = FeatureRows(tmp_path / "rows.f32", 3, 16)
    for p in range(60):  # appended prompt by prompt, as span_features does
        rows.append(feats[:, prompt_of == p])
    rows.close()
    assert np.array_equal(rows.read(5, 50), feats[:, 5:50])
    types = [f"w{t}" for t in rng.integers(0, 30, len(labels))]
    memory = layer_probes(feats, labels, prompt_of, types=types)
    streamed = layer_probes(rows, labels, prompt_of, types=types, chunk_rows=37)
    assert np.array_equal(memory["lambda"], streamed["lambda"])
    for col in ("train_acc", "dev_acc", "test_acc", "control_test_acc"):
        assert np.allclose(memory[col], streamed[col], atol=1 / 60), col  # at most a row or so flips
    assert streamed.test_acc[1] > 0.9 and streamed.test_acc[1] > streamed.test_acc[0] + 0.3


STREAM_SCRIPT = """
import resource, sys, numpy as np
from analyses.probe_features import FeatureRows
from analyses.probes import layer_probes
L, n, d = 4, 16000, 320  # 82 MB of features
rng = np.random.default_rng(0)
prompt_of = np.repeat(np.arange(n // 8), 8)
labels = rng.integers(0, 2, n)
rows = FeatureRows(sys.argv[1], L, d)
for start in range(0, n, 1000):
    block = rng.normal(size=(L, 1000, d)).astype(np.float32)
    block[:, :, 0] += 2.0 * labels[start:start + 1000]
    rows.append(block)
rows.close()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
table = layer_probes(rows, labels, prompt_of, lambdas=[1e-2], chunk_rows=1000)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, table.test_acc.min())
"""


def test_streamed_probe_memory_stays_bounded(tmp_path):
    """Probing 82 MB of on-disk rows in 1.3 MB chunks raises peak memory by far less than the data."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(tmp_path / "rows.f32")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    grew_mb, acc = map(float, r.stdout.split())
    assert acc > 0.8  # it learned: the label is in feature 0
    assert grew_mb < 40, grew_mb


def test_antecedent_probe_on_toy_coref(tmp_path):
    """In the causal toy model the pronoun comes before the adjective that decides the
    antecedent, so it cannot encode it; the question position, which answers, does."""
    import models
    from analyses.probe_features import antecedent_features

    toy = models.load("toy-coref")
    prompts = probe.load_prompts("toy-coref-test")[::12][:240]
    run = probe.record(toy, prompts, tmp_path / "toy", names=["blocks.*.hook_resid_post"], progress=False)
    tables = {}
    for query in ("pronoun_span", "question_span"):
        feats, labels, prompt_of, types = antecedent_features(run, range(2), query=query)
        assert len(labels) == run.n_prompts and set(labels) == {0, 1}
        tables[query] = layer_probes(feats, labels, prompt_of, types=types)
    assert tables["question_span"].test_acc.iloc[-1] > 0.9
    assert tables["pronoun_span"].test_acc.max() < 0.75


def test_batched_lbfgs_solves_each_problem_to_its_own_optimum():
    """Independent quadratics of very different conditioning, solved together: each reaches
    its exact minimiser A^-1 c, and easy ones stop early (their own iteration count)."""
    from analyses.lbfgs import batched_lbfgs

    g = torch.Generator().manual_seed(0)
    P, n = 5, 30
    Q = torch.linalg.qr(torch.randn(P, n, n, generator=g, dtype=torch.float64))[0]
    spectra = torch.stack([torch.logspace(0, k, n, dtype=torch.float64) for k in (0, 1, 2, 2.5, 0.5)])
    A = Q @ torch.diag_embed(spectra) @ Q.transpose(1, 2)
    c = torch.randn(P, n, generator=g, dtype=torch.float64)

    def fun(x, rows):  # only the problems still being solved are asked for
        Ax = torch.einsum("pij,pj->pi", A[rows], x)
        return 0.5 * (x * Ax).sum(1) - (c[rows] * x).sum(1), Ax - c[rows]

    x, iters = batched_lbfgs(fun, torch.zeros(P, n, dtype=torch.float64), max_iter=1000, gtol=1e-9)
    assert torch.allclose(x, torch.linalg.solve(A, c), atol=1e-7)
    assert iters[0] <= 2 < iters[3]  # the identity needs one step; the ill-conditioned one many


def test_online_codelength_separates_signal_from_noise():
    """Voita & Titov's online code: a layer that encodes the label compresses it several
    times; a noise layer does not (compression about 1 or below, the price of early blocks)."""
    from analyses.probes import online_codelength

    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 3, n)
    feats = rng.normal(size=(2, n, 16)).astype(np.float32)
    feats[0, :, :3] += 3 * np.eye(3)[y]
    table = online_codelength(feats, y, np.repeat(np.arange(400), 5))
    assert np.allclose(table.uniform_bits, n * np.log2(3))
    assert table.compression[0] > 4 and table.compression[1] < 1.1
    assert np.allclose(table.compression, table.uniform_bits / table.mdl_bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_features_that_are_not_finite_are_refused_naming_the_layer_and_hook(tmp_path, bad):
    """Not a crash inside eigh (or NaN scores): the layer, its hook and the row, before the fit."""
    from analyses.probe_features import FeatureRows
    from analyses.probes import LinearProbe
    from probe.errors import InputError

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 60, 4)).astype(np.float32)
    labels, prompt_of = np.arange(60) % 2, np.arange(60)
    feats[1, 17, 2] = bad
    problem = r"layer 1 \(blocks\.1\.hook_resid_post\): feature row 17 \(prompt 17\) holds NaN or infinite values"
    with pytest.raises(InputError, match=problem):
        layer_probes(feats, labels, prompt_of, hook="hook_resid_post")
    rows = FeatureRows(tmp_path / "rows.f32", 3, 4)
    rows.append(feats)
    with pytest.raises(InputError, match=r"layer 1: feature row 17 \(prompt 17\) holds NaN or infinite values"):
        layer_probes(rows.close(), labels, prompt_of, chunk_rows=7)
    with pytest.raises(InputError, match="feature row 17 holds NaN or infinite values"):
        LinearProbe().fit(feats[1], labels)


def test_probe_study_names_the_hook_of_features_that_are_not_finite(tmp_path, monkeypatch):
    """A run whose recorded activations hold an inf (as float16 overflow leaves) is refused by
    probe_study with the hook named, before any fit."""
    import models
    from analyses.probe_studies import probe_study
    from probe.errors import InputError

    prompts = probe.load_prompts("toy-coref-test")[:40]
    run = probe.record(models.load("toy-coref"), prompts, tmp_path / "run", names=["blocks.*.hook_resid_post"],
                       progress=False)
    recorded = run.prompt_activation

    def overflowed(name, prompt, *args, **kwargs):
        x = recorded(name, prompt, *args, **kwargs).copy()
        if name == "blocks.1.hook_resid_post" and prompt == 3:
            x[0, 0] = np.inf
        return x

    monkeypatch.setattr(run, "prompt_activation", overflowed)
    twin = run.labels(3)["pair_id"]
    with pytest.raises(InputError, match=rf"layer 1 \(blocks\.1\.hook_resid_post\): feature row 3 \(pair:{twin}\)"):
        probe_study(run, label="adjective")
