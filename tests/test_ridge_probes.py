"""Ridge probes: agree with scikit-learn's Ridge on the same standardised rows, find the layer
that carries a planted linear target, stream from disk to the same answer, and refuse targets
that cannot be probed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.probes import split_units, standardizer
from analyses.ridge_probes import fit_ridge, is_real_valued, layer_ridge_probes, prompt_targets, ridge_predict
from models import InputError


def planted(n_prompts: int = 80, per_prompt: int = 5, d: int = 12, noise: float = 0.3, seed: int = 0):
    """Layer 0: y = X w + noise; layer 1: features independent of y; layer 2: y weakly."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    feats = rng.normal(size=(3, n, d)) * rng.uniform(0.5, 3.0, size=(3, 1, d)) + rng.normal(size=(3, 1, d))
    w = rng.normal(size=d)
    y = feats[0] @ w + noise * rng.normal(size=n) + 5.0
    feats[2] += 0.05 * y[:, None] * rng.normal(size=d)
    return feats.astype(np.float32), y, np.repeat(np.arange(n_prompts), per_prompt)


def test_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    feats, y, prompt_of = planted(noise=2.0)
    split = split_units(prompt_of, 0)
    mu, sd = standardizer(feats, split == 0)
    Xs = ((torch.from_numpy(feats) - mu) / sd).numpy()  # the same standardised rows for both
    train, n_train = split == 0, int((split == 0).sum())
    lambdas = [1e-3, 1e-1, 10.0]
    W, b = fit_ridge(torch.from_numpy(Xs[:, train]), torch.from_numpy(y[train]), lambdas)
    pred = ridge_predict(torch.from_numpy(Xs), W, b).numpy()  # [L, K, n, 1]
    worst = 0.0
    for layer in range(3):
        for k, lam in enumerate(lambdas):
            sk = Ridge(alpha=lam * n_train).fit(Xs[layer, train], y[train])
            assert np.allclose(W[layer, k, :, 0].numpy(), sk.coef_, rtol=1e-3, atol=1e-4), (layer, lam)
            assert abs(b[layer, k, 0].item() - sk.intercept_) < 1e-3
            diff = np.abs(pred[layer, k, :, 0] - sk.predict(Xs[layer])).max()
            worst = max(worst, diff)
            assert diff < 1e-3 * np.abs(y).max(), (layer, lam, diff)
    table = layer_ridge_probes(feats, y, prompt_of, lambdas=lambdas)
    test = split == 2
    for layer in range(3):
        sk = Ridge(alpha=table["lambda"][layer] * n_train).fit(Xs[layer, train], y[train])
        assert abs(table.test_r2[layer] - r2_score(y[test], sk.predict(Xs[layer, test]))) < 0.01
        assert np.isclose(table.test_mse[layer], np.mean((y[test] - sk.predict(Xs[layer, test])) ** 2), rtol=1e-3)
    # Raw (uncentred) features too: the intercept is fitted, not penalised, whatever the offsets.
    raw = feats[1, train].astype(np.float64) * 3 + 10
    W_raw, b_raw = fit_ridge(torch.from_numpy(raw[None]).float(), torch.from_numpy(y[train]), [0.5])
    sk = Ridge(alpha=0.5 * n_train).fit(raw, y[train])
    assert np.allclose(W_raw[0, 0, :, 0].numpy(), sk.coef_, rtol=1e-3, atol=1e-4)
    assert abs(b_raw[0, 0, 0].item() - sk.intercept_) < 1e-2
    # The baseline is the train mean's test R^2, computed by hand here.
    baseline = 1 - ((y[test] - y[train].mean()) ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()
    assert np.isclose(table.mean_baseline_r2[0], baseline) and baseline <= 0.0


def test_planted_linear_target_picks_the_right_layer():
    feats, y, prompt_of = planted()
    table = layer_ridge_probes(feats, y, prompt_of)
    assert table.test_r2[0] > 0.95
    assert table.test_r2[1] < 0.1  # noise only: no better than the mean predictor, give or take
    assert table.test_r2[0] > table.test_r2[1] + 0.8
    assert table.test_r2[0] > table.mean_baseline_r2[0] + 0.9
    # The noise layer wants the strongest shrinkage on dev; the clean one almost none.
    assert table["lambda"][1] > table["lambda"][0]
    assert table.test_mse[0] < 0.2 and table.test_mse[1] > 10 * table.test_mse[0]


def test_control_task_selectivity():
    """A layer that encodes the word type (one-hot) learns any type-level target, so control
    R^2 is as high as the real one (selectivity ~0); a layer that encodes only the target
    cannot fit the random per-type targets (high selectivity)."""
    rng = np.random.default_rng(0)
    n_types, n = 8, 800
    type_of = rng.integers(0, n_types, n)
    value_of_type = rng.normal(size=n_types)
    y = value_of_type[type_of] + 0.05 * rng.normal(size=n)
    feats = rng.normal(size=(2, n, 12)).astype(np.float32) * 0.1
    feats[0, :, 0] += y  # the target itself
    feats[1, np.arange(n), type_of] += 1.0  # the type, one-hot
    table = layer_ridge_probes(feats, y, np.repeat(np.arange(n // 4), 4), types=[f"w{t}" for t in type_of])
    assert table.test_r2.min() > 0.85  # both layers carry the target (1: through the type)
    assert abs(table.selectivity[1]) < 0.1
    assert table.selectivity[0] > table.selectivity[1] + 0.3
    assert np.allclose(table.selectivity, table.test_r2 - table.control_test_r2)


def test_streamed_ridge_equals_in_memory(tmp_path):
    from analyses.probe_features import FeatureRows

    feats, y, prompt_of = planted()
    rows = FeatureRows(tmp_path / "rows.f32", 3, feats.shape[2])
    for p in np.unique(prompt_of):  # appended prompt by prompt, as the feature readers do
        rows.append(feats[:, prompt_of == p])
    rows.close()
    types = [f"w{i % 23}" for i in range(len(y))]
    memory = layer_ridge_probes(feats, y, prompt_of, types=types)
    streamed = layer_ridge_probes(rows, y, prompt_of, types=types, chunk_rows=37)
    assert np.array_equal(memory["lambda"], streamed["lambda"])
    for col in ("train_r2", "dev_r2", "test_r2", "test_mse", "control_test_r2", "mean_baseline_r2"):
        assert np.allclose(memory[col], streamed[col], rtol=1e-4, atol=1e-5), col


def test_refuses_targets_it_cannot_probe():
    feats, y, prompt_of = planted()
    with pytest.raises(InputError, match="every row has the target value 3"):
        layer_ridge_probes(feats, np.full(len(y), 3.0), prompt_of)
    with pytest.raises(InputError, match="NaN or infinite"):
        layer_ridge_probes(feats, np.where(np.arange(len(y)) == 7, np.nan, y), prompt_of)
    with pytest.raises(InputError, match="numeric targets"):
        layer_ridge_probes(feats, np.array(["a", "b"] * (len(y) // 2)), prompt_of)
    with pytest.raises(InputError, match="too few prompts"):
        layer_ridge_probes(feats[:, :10], y[:10], np.zeros(10, int))


def test_real_valued_rule():
    assert is_real_valued([1, 2.5, 3]) and is_real_valued([np.int64(2), 0.5])
    assert not is_real_valued([True, False]) and not is_real_valued([1, "2"]) and not is_real_valued([])
    assert not is_real_valued([0, 1, 1, 0]) and is_real_valued([0, 1, 2]) and is_real_valued([0.5, 1.0])
    assert prompt_targets([0, 1, 1], "auto", "answer") is None
    assert np.array_equal(prompt_targets([0, 1, 1], "real", "answer"), [0.0, 1.0, 1.0])
    assert prompt_targets([1.5, 2.5], "class", "x") is None
    with pytest.raises(InputError, match="'size' has the value 'big'"):
        prompt_targets([1, "big"], "real", "size")


def test_ridge_probe_estimator_matches_sklearn():
    """RidgeProbe (fit / predict / score) against scikit-learn's Ridge on the probe's own
    standardisation, with alpha = lam * n, and score against r2_score."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    from analyses.ridge_probes import RidgeProbe

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 12)) * rng.uniform(0.5, 4, 12) + rng.normal(size=12)
    y = X @ rng.normal(size=12) + 5 + rng.normal(size=300)
    probe_ = RidgeProbe(lam=0.05).fit(X[:200], y[:200])
    Xs = (X - probe_.mean_.numpy()) / probe_.scale_.numpy()
    ref = Ridge(alpha=0.05 * 200).fit(Xs[:200], y[:200])
    assert np.allclose(probe_.coef_.numpy(), ref.coef_, atol=1e-4)
    assert np.allclose(probe_.predict(X[200:]).numpy(), ref.predict(Xs[200:]), atol=1e-3)
    assert abs(probe_.score(X[200:], y[200:]) - r2_score(y[200:], ref.predict(Xs[200:]))) < 1e-5
    with pytest.raises(InputError, match="constant target"):
        RidgeProbe().fit(X, np.full(300, 2.0))


def test_features_that_are_not_finite_are_refused_before_the_eigendecomposition():
    from analyses.ridge_probes import RidgeProbe

    feats, y, prompt_of = planted()
    feats[2, 33, 0] = np.nan
    with pytest.raises(InputError, match=r"layer 2 \(blocks\.2\.hook_mlp_out\): feature row 33 \(prompt 6\) holds NaN"):
        layer_ridge_probes(feats, y, prompt_of, hook="hook_mlp_out")
    with pytest.raises(InputError, match="feature row 33 holds NaN or infinite values"):
        RidgeProbe().fit(feats[2], y)
