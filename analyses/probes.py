"""Linear probes on recorded activations, fitted for every layer at once.

Multinomial logistic regression trained in torch, batched over layers (one vectorised
L-BFGS run solves every layer's problem, each with its own step and stopping test:
``analyses.lbfgs``), over a grid of L2 strengths walked from strong to weak with warm starts,
not a loop of scikit-learn fits. The strength is chosen per layer on a dev split; splits are by prompt,
never by token; seeds are fixed.

Reported per layer, as the literature asks (Hewitt & Liang 2019, "Designing and
Interpreting Probes with Control Tasks"): train/dev/test accuracy, the majority-class
baseline, and the accuracy of the same probe on a control task (each word type gets a random
label drawn from the real label distribution) with selectivity = accuracy - control accuracy.

The objective for strength ``lam`` is mean cross-entropy + lam * ||W||^2, which is
scikit-learn's ``LogisticRegression(C=1 / (2 * lam * n_train))`` (tests check the two agree).

Larger than RAM: features may be a ``FeatureRows`` file (``analyses.probe_features``). The
optimisation is still full-batch L-BFGS, with every loss evaluation streaming the rows in
chunks and accumulating the gradient, so it reaches the same optimum as in memory while
holding one chunk at a time (L-BFGS needs ~1 pass over the data per evaluation; the OS page
cache makes the passes cheap when the file fits there). The rows are standardised and rotated
into the preconditioner's basis once, into a second scratch file of the same size, so a pass
is the two products of the loss and its gradient, not the rotation again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from probe.errors import InputError

from .lbfgs import batched_lbfgs
from .probe_features import FeatureRows, chunks

DEFAULT_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


def split_prompts(n_prompts: int, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)) -> np.ndarray:
    """0 = train, 1 = dev, 2 = test for each prompt (shuffled with ``seed``)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_prompts)
    split = np.full(n_prompts, 2)
    n_train = int(round(fractions[0] * n_prompts))
    n_dev = int(round(fractions[1] * n_prompts))
    split[order[:n_train]] = 0
    split[order[n_train:n_train + n_dev]] = 1
    return split


def split_units(units: Sequence, seed: int = 0) -> np.ndarray:
    """Split of each row when rows are grouped into units (prompts, or twin pairs of prompts)
    that must not straddle train and test: every unit lands whole in one split."""
    unique, index = np.unique(np.asarray(units), return_inverse=True)
    return split_prompts(len(unique), seed)[index]


def control_labels(types: Sequence, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: every type (word) gets one random label, drawn from
    the empirical label distribution, and all its occurrences carry it."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    probs = counts / counts.sum()
    mapping = {t: rng.choice(values, p=probs) for t in dict.fromkeys(types)}
    return np.array([mapping[t] for t in types])


Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # () -> (X [L, r, d], y [r]) chunks


def fit_logistic(X: torch.Tensor, y: torch.Tensor, n_classes: int, lambdas: Sequence[float],
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit W [L, K, d, C], b [L, K, C] for features X [L, n, d] and labels y [n], one
    probe per (layer, strength)."""
    return fit_logistic_streamed(lambda: [(X, y)], X.shape[0], X.shape[1], X.shape[2], n_classes, lambdas, max_iter,
                                 in_memory=True)


def fit_logistic_streamed(batches: Batches, L: int, n: int, d: int, n_classes: int, lambdas: Sequence[float],
                          max_iter: int = 200, gtol: float = 1e-4, in_memory: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_logistic`` over data given as chunks: ``batches()`` yields (X [L, r, d], y [r])
    covering the n training rows once per call; loss and gradient are accumulated chunk by
    chunk (``in_memory``: the chunks may be transformed once and kept).

    Each layer is its own problem for ``batched_lbfgs`` (stopping at scikit-learn's ``gtol``).
    Preconditioning, exact (a change of variables, same optimum): in the eigenbasis U of the
    features' covariance, with eigenvalues e, the weights are W = U diag((e + 8 lam)^-1/2) V and
    L-BFGS works on V, whose Hessian is close to a multiple of the identity (the softmax
    curvature is at most 1/4, so 8 lam = 2 lam / (1/4)). Strengths are solved from the strongest
    down, each warm-started from the previous solution (the regularisation path)."""
    C = n_classes
    cov = torch.zeros(L, d, d)
    for Xc, _ in batches():
        cov += torch.einsum("lnd,lne->lde", Xc, Xc) / n
    evals, U = torch.linalg.eigh(cov)  # [L, d], [L, d, d]
    evals = evals.clamp(min=0)
    def rotate(Xc: torch.Tensor, yc: torch.Tensor, keep: bool):
        Q = torch.einsum("lnd,lde->lne", Xc, U)  # [L, r, d]
        # kept in memory: also Q^T laid out contiguously, which makes the gradient's product ~1.7x faster
        QT = Q.transpose(1, 2).contiguous() if keep else Q.transpose(1, 2)
        return Q, QT, torch.nn.functional.one_hot(yc, C).to(Q.dtype)

    # Rotated once, not once per evaluation (the d x d rotation costs more than the loss itself):
    # kept in memory, or else written chunk by chunk to a scratch file read back on every pass.
    scratch = None if in_memory else RotatedChunks(L, d)
    rotated = [rotate(Xc, yc, True) for Xc, yc in batches()] if in_memory else None
    if scratch is not None:
        for Xc, yc in batches():
            scratch.append(torch.einsum("lnd,lde->lne", Xc, U), yc)

    def rotated_batches():
        if rotated is not None:
            return rotated
        return ((Q, Q.transpose(1, 2), torch.nn.functional.one_hot(yc, C).to(Q.dtype)) for Q, yc in scratch)

    W_out = torch.zeros(L, len(lambdas), d, C)
    b_out = torch.zeros(L, len(lambdas), C)
    G, b = torch.zeros(L, d, C), torch.zeros(L, C)  # G = diag(scale) V: the weights in the eigenbasis
    for k in sorted(range(len(lambdas)), key=lambda k: -lambdas[k]):
        lam = float(lambdas[k])
        scale = (evals + 8 * lam).rsqrt()  # [L, d]

        def objective(x: torch.Tensor, rows: torch.Tensor, lam: float = lam, scale: torch.Tensor = scale):
            # only the layers still being optimised (rows), each with its own two products per chunk
            sc = scale[rows]  # [k, d]
            V, b = x[:, :d * C].view(-1, d, C), x[:, d * C:]
            G = sc[:, :, None] * V
            loss = lam * G.pow(2).sum((1, 2))
            gG, gb = 2 * lam * G, torch.zeros_like(b)
            for Q, QT, onehot in rotated_batches():
                for j, layer in enumerate(rows.tolist()):
                    logp = torch.log_softmax(torch.addmm(b[j], Q[layer], G[j]), -1)  # [r, C]
                    loss[j] -= (logp * onehot).sum() / n
                    resid = logp.exp_().sub_(onehot)  # p - onehot
                    gG[j] += QT[layer] @ resid / n
                    gb[j] += resid.sum(0) / n
            return loss, torch.cat(((sc[:, :, None] * gG).flatten(1), gb), 1)

        x0 = torch.cat(((G / scale[:, :, None]).flatten(1), b), 1)
        x, _ = batched_lbfgs(objective, x0, max_iter=max_iter, gtol=gtol)
        G, b = scale[:, :, None] * x[:, :d * C].view(L, d, C), x[:, d * C:]
        W_out[:, k], b_out[:, k] = U @ G, b
    if scratch is not None:
        scratch.close()
    return W_out, b_out


class RotatedChunks:
    """Rotated feature chunks ([L, r, d] float32 each, contiguous) and their labels, in an
    unnamed scratch file (gone when closed or when the process ends); iterating reads them back
    one chunk at a time with plain reads, so memory holds one chunk."""

    def __init__(self, n_layers: int, d: int):
        import tempfile

        self.n_layers, self.d = n_layers, d
        self._file = tempfile.TemporaryFile(prefix="probe-rotated-")  # noqa: SIM115 - closed by close()
        self._chunks: list[tuple[int, int, torch.Tensor]] = []  # (offset, rows, labels)

    def append(self, Q: torch.Tensor, y: torch.Tensor) -> None:
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(np.ascontiguousarray(Q.numpy(), dtype=np.float32).tobytes())
        self._chunks.append((offset, Q.shape[1], y))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each chunk in turn, read into one reused buffer (a fresh allocation per read would
        cost page faults on every pass): a chunk is valid until the next one is read."""
        self._file.flush()
        buffer = np.empty(self.n_layers * max((r for _, r, _ in self._chunks), default=0) * self.d, np.float32)
        for offset, r, y in self._chunks:
            self._file.seek(offset)
            flat = buffer[:self.n_layers * r * self.d]
            if self._file.readinto(memoryview(flat).cast("B")) != flat.nbytes:
                raise OSError(f"the probe's scratch file {self._file.name} was cut short")
            yield torch.from_numpy(flat.reshape(self.n_layers, r, self.d)), y

    def close(self) -> None:
        self._file.close()


def predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Class predictions [L, K, n]."""
    return (torch.einsum("lnd,lkdc->lknc", X, W) + b[:, :, None, :]).argmax(-1)


NOT_FINITE_FIX = ("a probe cannot be fitted on them; re-record the run with --dtype float32 (float16 overflows "
                  "past 65504), or probe another hook")


def require_finite(features: np.ndarray | FeatureRows, hook: str | None = None, units: Sequence | None = None,
                   chunk_rows: int | None = None, by_layer: bool = True) -> None:
    """Refuse features that hold NaN or inf before a fit, which would otherwise fail inside
    eigh or score NaN: InputError naming the first such layer (with its hook,
    ``blocks.{layer}.{hook}``, when given) and row (with its split unit when given). One
    streamed pass, one layer at a time, so memory stays at one chunk."""
    for start, block in chunks(features, chunk_rows):
        for layer in range(block.shape[0]):
            finite = np.isfinite(block[layer]).all(axis=1)
            if finite.all():
                continue
            row = start + int(np.flatnonzero(~finite)[0])
            where = "" if not by_layer else f"layer {layer}" + (f" (blocks.{layer}.{hook})" if hook else "") + ": "
            unit = "" if units is None else f" ({_unit_text(units[row])})"
            raise InputError(f"{where}feature row {row}{unit} holds NaN or infinite values; {NOT_FINITE_FIX}")


def _unit_text(unit) -> str:
    """A split unit as the user knows it: an index is a prompt, a twin key speaks for itself."""
    return f"prompt {int(unit)}" if isinstance(unit, (int, np.integer)) else str(unit)


def standardizer(features: np.ndarray | FeatureRows, rows: np.ndarray, chunk_rows: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [L, 1, d] of the selected rows, in one streamed pass."""
    L, _, d = features.shape
    s = np.zeros((L, d)), np.zeros((L, d))
    count = 0
    for start, block in chunks(features, chunk_rows):
        x = block[:, rows[start:start + block.shape[1]]].astype(np.float64)
        s[0][:] += x.sum(1)
        s[1][:] += (x * x).sum(1)
        count += x.shape[1]
    mu = s[0] / count
    var = (s[1] - count * mu * mu) / max(1, count - 1)
    sd = np.sqrt(np.clip(var, 0, None)).clip(min=1e-6)
    return torch.tensor(mu, dtype=torch.float32)[:, None], torch.tensor(sd, dtype=torch.float32)[:, None]


def standardized_chunks(features: np.ndarray | FeatureRows, rows: np.ndarray, mu: torch.Tensor, sd: torch.Tensor,
                        chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, standardised X [L, r, d]) of the selected rows [n] (a mask), chunk by chunk."""
    for start, block in chunks(features, chunk_rows):
        idx = np.flatnonzero(rows[start:start + block.shape[1]])
        if len(idx):
            yield start + idx, (torch.from_numpy(np.ascontiguousarray(block[:, idx])) - mu) / sd


def layer_probes(features: np.ndarray | FeatureRows, labels: np.ndarray, prompt_of: np.ndarray,
                 types: Sequence | None = None, lambdas: Sequence[float] = DEFAULT_LAMBDAS, seed: int = 0,
                 standardize: bool = True, chunk_rows: int | None = None, hook: str | None = None) -> pd.DataFrame:
    """Probe every layer. features: [layers, n, d] array, or a ``FeatureRows`` file
    streamed in chunks of ``chunk_rows``; labels: [n] (any hashable values); prompt_of: [n]
    the split unit of each row (its prompt, or a group of prompts such as a twin pair); types: [n] word types for the control task
    (default: no control task); hook: the per-layer hook the features come from, named when
    they are refused (``require_finite``). Returns one row per layer."""
    classes, y_all = np.unique(labels, return_inverse=True)
    C = len(classes)
    if C < 2:
        raise InputError(f"every row has the label {str(classes[0])!r}: a probe needs at least two classes; "
                         "pick another label field or more varied prompts")
    L, n, d = features.shape
    if len(labels) != n or len(prompt_of) != n:
        raise InputError(f"{n} feature rows but {len(labels)} labels and {len(prompt_of)} prompt ids; they must align")
    require_finite(features, hook, prompt_of, chunk_rows)
    split = split_units(prompt_of, seed)
    if not all((split == s).any() for s in (0, 1, 2)):
        raise InputError("too few prompts to split into train, dev and test; give at least 10 prompts")
    if standardize:
        mu, sd = standardizer(features, split == 0, chunk_rows)
    else:
        mu, sd = torch.zeros(L, 1, d), torch.ones(L, 1, d)

    def blocks(rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        return standardized_chunks(features, rows, mu, sd, chunk_rows)

    train = split == 0
    in_memory = isinstance(features, np.ndarray) and chunk_rows is None
    cached = list(blocks(train)) if in_memory else None  # in memory: standardise once, not per evaluation

    def run(y_: np.ndarray) -> dict[str, np.ndarray]:
        yt = torch.as_tensor(y_)

        def batches():
            for idx, X in cached if cached is not None else blocks(train):
                yield X, yt[idx]

        W, b = fit_logistic_streamed(batches, L, int(train.sum()), d, C, lambdas, in_memory=cached is not None)
        correct = np.zeros((3, L, len(lambdas)))
        for idx, X in blocks(np.ones(n, bool)):
            hit = (predict(X, W, b) == yt[idx]).numpy()  # [L, K, r]
            for s in range(3):
                correct[s] += hit[:, :, split[idx] == s].sum(-1)
        acc = {name: correct[s] / (split == s).sum() for s, name in enumerate(("train", "dev", "test"))}
        best = acc["dev"].argmax(1)  # per layer
        pick = np.arange(L)
        return {name: a[pick, best] for name, a in acc.items()} | {"lambda": np.asarray(lambdas)[best]}

    real = run(y_all)
    majority_class = np.bincount(y_all[split == 0], minlength=C).argmax()
    majority = float((y_all[split == 2] == majority_class).mean())
    rows = {"layer": np.arange(L), "train_acc": real["train"], "dev_acc": real["dev"],
            "test_acc": real["test"], "majority_baseline": majority, "lambda": real["lambda"]}
    if types is not None:
        control = np.unique(control_labels(types, y_all, seed), return_inverse=True)[1]
        # With too few types the control task degenerates to one class (trivially "learned");
        # report it as missing rather than as a perfect control.
        ctrl = run(control) if len(np.unique(control[split == 0])) > 1 else {"test": np.full(L, np.nan)}
        rows["control_test_acc"] = ctrl["test"]
        rows["selectivity"] = real["test"] - ctrl["test"]
    return pd.DataFrame(rows)


class LinearProbe:
    """One logistic-regression probe with scikit-learn's estimator contract (``fit``,
    ``predict``, ``score``; fitted state in trailing-underscore attributes), for using a probe
    as a measuring device, e.g. probe accuracy under ablation (``analyses.ablation``)."""

    def __init__(self, lam: float = 1e-3, standardize: bool = True, max_iter: int = 200):
        self.lam, self.standardize, self.max_iter = lam, standardize, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputError(f"every row has the label {str(self.classes_[0])!r}: a probe needs at least two classes")
        X = np.asarray(X, dtype=np.float32)
        require_finite(X[None], by_layer=False)
        X = torch.as_tensor(X)
        self.mean_ = X.mean(0) if self.standardize else torch.zeros(X.shape[1])
        self.scale_ = X.std(0).clamp(min=1e-6) if self.standardize else torch.ones(X.shape[1])
        W, b = fit_logistic(((X - self.mean_) / self.scale_)[None], torch.as_tensor(yi), len(self.classes_),
                            [self.lam], self.max_iter)
        self.coef_, self.intercept_ = W[0, 0], b[0, 0]  # [d, C], [C]
        return self

    def decision_function(self, X: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits [n, C] (torch in, torch out: usable inside a forward hook)."""
        X = torch.as_tensor(X, dtype=torch.float32)
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def predict(self, X: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(-1).numpy()]

    def score(self, X: torch.Tensor | np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


MDL_PORTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)  # Voita & Titov's blocks


def online_codelength(features: np.ndarray, labels: np.ndarray, prompt_of: np.ndarray, lam: float = 1e-3,
                      seed: int = 0, portions: Sequence[float] = MDL_PORTIONS) -> pd.DataFrame:
    """Minimum description length of the labels given the features, online code (Voita &
    Titov 2020, "Information-Theoretic Probing with Minimum Description Length"): the first
    block is sent with the uniform code, every later block with a probe trained on all blocks
    before it. Rows are ordered by shuffled prompt, so a block never splits a prompt's rows
    between training and coding. Returns per layer the codelength in bits, the uniform
    codelength, and the compression uniform / online (1 = the features do not help)."""
    classes, y = np.unique(labels, return_inverse=True)
    C = len(classes)
    require_finite(np.asarray(features), units=prompt_of)
    order_of_unit = {u: i for i, u in enumerate(np.random.default_rng(seed).permutation(np.unique(prompt_of)))}
    order = np.argsort([order_of_unit[u] for u in prompt_of], kind="stable")
    X = torch.as_tensor(np.asarray(features, dtype=np.float32)[:, order])
    y_t = torch.as_tensor(y[order])
    L, n, _ = X.shape
    ends = sorted({max(1, int(round(p * n))) for p in portions} | {n})
    bits = torch.full((L,), float(ends[0] * np.log2(C)))
    for start, stop in zip(ends[:-1], ends[1:]):
        mu, sd = X[:, :start].mean(1, keepdim=True), X[:, :start].std(1, keepdim=True).nan_to_num(1.0).clamp(min=1e-6)
        W, b = fit_logistic((X[:, :start] - mu) / sd, y_t[:start], C, [lam])
        logits = torch.einsum("lnd,ldc->lnc", (X[:, start:stop] - mu) / sd, W[:, 0]) + b[:, 0, None]
        nll = -torch.log_softmax(logits, -1).gather(-1, y_t[start:stop][None, :, None].expand(L, -1, 1))[..., 0]
        bits += nll.sum(1) / np.log(2)
    uniform = n * np.log2(C)
    return pd.DataFrame({"layer": np.arange(L), "mdl_bits": bits.numpy(), "uniform_bits": uniform,
                         "compression": uniform / bits.numpy()})
