"""Ridge probes for real-valued targets, fitted for every layer and every L2 strength at once.

The companion of the logistic probes in ``analyses.probes`` for targets that are numbers (a
prompt's length, a position, a score). Same protocol: splits by prompt (``split_units``),
features standardised with the train rows' mean and std (``standardizer``), an unpenalised
intercept, the strength chosen per layer on the dev split, fixed seeds, a Hewitt & Liang control
task when word types are given.

Objective for strength ``lam`` on the n_train standardised train rows::

    mean((y - X w - b)^2) + lam * ||w||^2

Multiplying by n_train gives scikit-learn's ``Ridge(alpha=lam * n_train)`` objective
(``||y - X w - b||^2 + alpha ||w||^2``, intercept unpenalised), so the two have the same
minimiser; the tests check they agree.

Closed form, not iterations: with the train rows centred, w = (S + lam I)^-1 c where S is the
covariance [d, d] and c the cross-covariance with y. Both are sums over rows, accumulated chunk
by chunk, so a ``FeatureRows`` file larger than RAM is read in one pass (plus one pass for the
standardiser and one to score). One eigendecomposition S = U diag(e) U^T per layer then gives
every strength for the price of one: w(lam) = U diag(1 / (e + lam)) U^T c.

Reported per layer: train/dev/test R^2 and MSE (R^2 against each split's own mean, as
``sklearn.metrics.r2_score``), the mean-predictor baseline (test R^2 of predicting the train
mean: 0 or a little below, the bar a probe must clear), the chosen lambda, and with types the
control-task test R^2 and selectivity = test R^2 - control R^2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from probe.errors import InputError

from .probe_features import FeatureRows
from .probes import DEFAULT_LAMBDAS, control_labels, require_finite, split_units, standardized_chunks, standardizer

# The logistic grid extended upwards: with standardised features the eigenvalues of S average
# 1, so strengths up to 100 reach "nearly the mean predictor", which noisy layers need. Extra
# strengths cost nothing once the eigendecomposition is done.
RIDGE_LAMBDAS = (1e-6, 1e-5) + tuple(DEFAULT_LAMBDAS) + (1.0, 10.0, 100.0)

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # () -> (X [L, r, d], Y [r, T]) chunks


def fit_ridge(X: torch.Tensor, Y: torch.Tensor, lambdas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """W [L, K, d, T], b [L, K, T] for features X [L, n, d] and targets Y [n, T] (or [n]:
    then T = 1), one probe per (layer, strength, target)."""
    Y = Y[:, None] if Y.dim() == 1 else Y
    return fit_ridge_streamed(lambda: [(X, Y)], lambdas)


def fit_ridge_streamed(batches: Batches, lambdas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_ridge`` over data given as chunks: ``batches()`` yields (X [L, r, d], Y [r, T])
    covering the training rows once. Only the sufficient statistics are kept (float64, so
    the centring by subtraction loses nothing that matters at these sizes)."""
    n, sx, sy, sxx, sxy = 0, 0.0, 0.0, 0.0, 0.0
    for Xc, Yc in batches():
        Xc, Yc = Xc.double(), Yc.double()
        n += Xc.shape[1]
        sx = sx + Xc.sum(1)  # [L, d]
        sy = sy + Yc.sum(0)  # [T]
        sxx = sxx + torch.einsum("lnd,lne->lde", Xc, Xc)  # [L, d, d]
        sxy = sxy + torch.einsum("lnd,nt->ldt", Xc, Yc)  # [L, d, T]
    if n == 0:
        raise InputError("no training rows to fit a ridge probe on")
    x_mean, y_mean = sx / n, sy / n  # [L, d], [T]
    # Centring the statistics is what leaves the intercept out of the penalty.
    cov = sxx / n - torch.einsum("ld,le->lde", x_mean, x_mean)  # [L, d, d]
    cross = sxy / n - torch.einsum("ld,t->ldt", x_mean, y_mean)  # [L, d, T]
    evals, U = torch.linalg.eigh(cov)  # [L, d], [L, d, d]
    evals = evals.clamp(min=0)  # round-off can make a null direction slightly negative
    lam = torch.tensor(list(lambdas), dtype=torch.float64)  # [K]
    proj = torch.einsum("lde,ldt->let", U, cross)  # U^T c: [L, d, T]
    shrunk = proj[:, None] / (evals[:, None, :, None] + lam[None, :, None, None])  # [L, K, d, T]
    W = torch.einsum("lde,lket->lkdt", U, shrunk)  # [L, K, d, T]
    b = y_mean - torch.einsum("ld,lkdt->lkt", x_mean, W)  # [L, K, T]
    return W.float(), b.float()


def ridge_predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Predictions [L, K, n, T] for features X [L, n, d]."""
    return torch.einsum("lnd,lkdt->lknt", X, W) + b[:, :, None, :]


def _targets(values: np.ndarray, n: int) -> np.ndarray:
    """The target as float64 [n], refused when a probe could not mean anything."""
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("a ridge probe needs numeric targets; these are not all numbers "
                         "(use the logistic probe, --target class, for categories)") from None
    if y.shape != (n,):
        raise InputError(f"{n} feature rows but targets of shape {y.shape}; they must align")
    if not np.isfinite(y).all():
        raise InputError(f"{int((~np.isfinite(y)).sum())} targets are NaN or infinite; drop those prompts")
    if np.ptp(y) == 0:
        raise InputError(f"every row has the target value {y[0]:g}: a constant target has nothing to predict; "
                         "pick another label field or more varied prompts")
    return y


def layer_ridge_probes(features: np.ndarray | FeatureRows, targets: np.ndarray, prompt_of: np.ndarray,
                       types: Sequence | None = None, lambdas: Sequence[float] = RIDGE_LAMBDAS, seed: int = 0,
                       standardize: bool = True, chunk_rows: int | None = None, hook: str | None = None
                       ) -> pd.DataFrame:
    """Ridge probe on every layer. features: [layers, n, d] array or a ``FeatureRows`` file
    streamed in chunks of ``chunk_rows``; targets: [n] numbers; prompt_of: [n] split unit of
    each row; types: [n] word types for the control task (default: none); hook: the per-layer
    hook of the features, named when they are refused (``require_finite``). One row per layer."""
    L, n, d = features.shape
    y = _targets(targets, n)
    if len(prompt_of) != n:
        raise InputError(f"{n} feature rows but {len(prompt_of)} prompt ids; they must align")
    require_finite(features, hook, prompt_of, chunk_rows)
    split = split_units(prompt_of, seed)  # [n] 0 train, 1 dev, 2 test
    if not all((split == s).any() for s in (0, 1, 2)):
        raise InputError("too few prompts to split into train, dev and test; give at least 10 prompts")
    columns = [y]
    if types is not None:
        columns.append(control_labels(types, y, seed).astype(np.float64))
    Y = torch.from_numpy(np.stack(columns, 1))  # [n, T]: the real target, then the control's
    mu, sd = standardizer(features, split == 0, chunk_rows) if standardize else (torch.zeros(L, 1, d),
                                                                                 torch.ones(L, 1, d))

    def blocks(rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        return standardized_chunks(features, rows, mu, sd, chunk_rows)

    W, b = fit_ridge_streamed(lambda: ((X, Y[idx]) for idx, X in blocks(split == 0)), lambdas)
    sse = _split_errors(blocks(np.ones(n, bool)), Y, split, W, b)  # [3, L, K, T]
    table = _per_layer(sse, Y.numpy(), split, np.asarray(lambdas, dtype=np.float64))
    if types is not None and np.ptp(Y[split == 0, 1].numpy()) == 0:
        # Too few types: the control target is constant on train, trivially "learned". Report
        # it as missing rather than as a perfect (or meaningless) control.
        table["control_test_r2"] = np.nan
        table["selectivity"] = np.nan
    return table


def _split_errors(blocks: Iterator[tuple[np.ndarray, torch.Tensor]], Y: torch.Tensor, split: np.ndarray,
                  W: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Sum of squared errors [3 splits, L, K, T] of every probe, in one pass over the rows."""
    L, K, _, T = W.shape
    sse = np.zeros((3, L, K, T))
    for idx, X in blocks:
        err = (ridge_predict(X, W, b) - Y[idx].float()).double().pow(2).numpy()  # [L, K, r, T]
        for s in range(3):
            sse[s] += err[:, :, split[idx] == s].sum(2)
    return sse


def _per_layer(sse: np.ndarray, Y: np.ndarray, split: np.ndarray, lambdas: np.ndarray) -> pd.DataFrame:
    """The table: for each target the strength with the best dev R^2, and its scores."""
    L = sse.shape[1]
    names = ("train", "dev", "test")
    counts = np.array([(split == s).sum() for s in range(3)])
    # Each split's own total sum of squares [3, T], as r2_score defines R^2.
    sst = np.stack([((Y[split == s] - Y[split == s].mean(0)) ** 2).sum(0) for s in range(3)])
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1 - sse / sst[:, None, None, :]  # [3, L, K, T]; NaN where a split's target is constant
    best = np.nan_to_num(r2[1], nan=-np.inf).argmax(1)  # [L, T] strength chosen on dev
    layer = np.arange(L)[:, None]
    target = np.arange(Y.shape[1])[None, :]
    chosen_r2 = r2[:, layer, best, target]  # [3, L, T]
    chosen_mse = sse[:, layer, best, target] / counts[:, None, None]
    y_test, train_mean = Y[split == 2, 0], Y[split == 0, 0].mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        baseline = 1 - ((y_test - train_mean) ** 2).sum() / sst[2, 0]
    rows: dict[str, np.ndarray | float] = {"layer": np.arange(L)}
    for s, name in enumerate(names):
        rows[f"{name}_r2"] = chosen_r2[s, :, 0]
    for s, name in enumerate(names):
        rows[f"{name}_mse"] = chosen_mse[s, :, 0]
    rows["mean_baseline_r2"] = float(baseline)
    rows["mean_baseline_mse"] = float(((y_test - train_mean) ** 2).mean())
    rows["lambda"] = lambdas[best[:, 0]]
    if Y.shape[1] > 1:
        rows["control_test_r2"] = chosen_r2[2, :, 1]
        rows["selectivity"] = chosen_r2[2, :, 0] - chosen_r2[2, :, 1]
    return pd.DataFrame(rows)


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_real_valued(values: Sequence) -> bool:
    """True when every value is a number (int or float, not bool), except integer fields
    with at most two values: those are class indices or indicators (``answer`` is 0 or 1,
    the index of the antecedent), which a logistic probe reports as accuracy. The CLI's rule
    for choosing a ridge probe over a logistic one when not told."""
    if not values or not all(is_number(v) for v in values):
        return False
    return not (all(float(v).is_integer() for v in values) and len(set(values)) <= 2)


def prompt_targets(values: Sequence, target: str, field: str) -> np.ndarray | None:
    """A prompt-level label field as a ridge target [n] (float64), or None when it is to be
    probed as classes. ``target``: "auto" (``is_real_valued``), "class" or "real"."""
    if target == "class" or (target == "auto" and not is_real_valued(values)):
        return None
    bad = next((v for v in values if not is_number(v)), None) if target == "real" else None
    if bad is not None:
        raise InputError(f"--target real needs numbers, but {field!r} has the value {bad!r}; "
                         "probe it as classes (--target class) or give the prompts numeric values")
    return np.asarray([float(v) for v in values])


class RidgeProbe:
    """One ridge probe with scikit-learn's estimator contract (``fit``, ``predict``, ``score``
    as R^2; fitted state in trailing-underscore attributes), the real-valued companion of
    ``analyses.probes.LinearProbe``: a probe as a measuring device, e.g. inside a hook.
    ``lam`` is the strength of ``mean squared error + lam ||w||^2`` (``Ridge(alpha=lam * n)``)."""

    def __init__(self, lam: float = 1e-3, standardize: bool = True):
        self.lam, self.standardize = lam, standardize

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeProbe:
        X = np.asarray(X, dtype=np.float32)
        require_finite(X[None], by_layer=False)
        X = torch.as_tensor(X)
        y = _targets(y, X.shape[0])
        self.mean_ = X.mean(0) if self.standardize else torch.zeros(X.shape[1])
        self.scale_ = X.std(0).clamp(min=1e-6) if self.standardize else torch.ones(X.shape[1])
        W, b = fit_ridge(((X - self.mean_) / self.scale_)[None], torch.as_tensor(y), [self.lam])
        self.coef_, self.intercept_ = W[0, 0, :, 0], b[0, 0, 0]  # [d], scalar
        return self

    def predict(self, X: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Predictions [n] (torch in, torch out: usable inside a forward hook)."""
        X = torch.as_tensor(X, dtype=torch.float32)
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def score(self, X: torch.Tensor | np.ndarray, y: np.ndarray) -> float:
        """R^2 of the predictions, as ``sklearn.metrics.r2_score``."""
        y = np.asarray(y, dtype=np.float64)
        residual = ((y - self.predict(X).double().numpy()) ** 2).sum()
        return float(1 - residual / ((y - y.mean()) ** 2).sum())
