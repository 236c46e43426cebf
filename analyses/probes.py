"""Linear probes on recorded activations, fitted for every layer at once.

Multinomial logistic regression trained in torch, batched over layers *and* over a grid of
L2 strengths (one L-BFGS optimisation for the whole [layer x strength] stack, not a loop of
scikit-learn fits). The strength is chosen per layer on a dev split; splits are by prompt,
never by token; seeds are fixed.

Reported per layer, as the literature asks (Hewitt & Liang 2019, "Designing and
Interpreting Probes with Control Tasks"): train/dev/test accuracy, the majority-class
baseline, and the accuracy of the same probe on a control task (each word type gets a random
label drawn from the real label distribution) with selectivity = accuracy - control accuracy.

The objective for strength ``lam`` is mean cross-entropy + lam * ||W||^2, which is
scikit-learn's ``LogisticRegression(C=1 / (2 * lam * n_train))`` (tests check the two agree).

Features are held in memory per call ([layers, tokens, d_model] float32: 6 x 50k x 384 is
0.5 GB); streaming larger-than-RAM runs through the probe is not implemented yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

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


def control_labels(types: Sequence, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: every type (word) gets one random label, drawn from
    the empirical label distribution, and all its occurrences carry it."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    probs = counts / counts.sum()
    mapping = {t: rng.choice(values, p=probs) for t in dict.fromkeys(types)}
    return np.array([mapping[t] for t in types])


def fit_logistic(X: torch.Tensor, y: torch.Tensor, n_classes: int, lambdas: Sequence[float],
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit W [L, K, d, C], b [L, K, C] for features X [L, n, d] and labels y [n], one
    probe per (layer, strength), all in one L-BFGS problem (the objectives are independent,
    so the joint optimum is every probe's optimum)."""
    L, n, d = X.shape
    K = len(lambdas)
    lam = torch.tensor(lambdas, dtype=X.dtype)[None, :, None, None]
    W = torch.zeros(L, K, d, n_classes, dtype=X.dtype, requires_grad=True)
    b = torch.zeros(L, K, n_classes, dtype=X.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")
    target = y[None, None, :].expand(L, K, n)

    def closure():
        opt.zero_grad()
        logits = torch.einsum("lnd,lkdc->lknc", X, W) + b[:, :, None, :]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), target.reshape(-1), reduction="none")
        loss = ce.view(L, K, n).mean(-1).sum() + (lam * W.pow(2)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Class predictions [L, K, n]."""
    return (torch.einsum("lnd,lkdc->lknc", X, W) + b[:, :, None, :]).argmax(-1)


def layer_probes(features: np.ndarray, labels: np.ndarray, prompt_of: np.ndarray, types: Sequence | None = None,
                 lambdas: Sequence[float] = DEFAULT_LAMBDAS, seed: int = 0, standardize: bool = True) -> pd.DataFrame:
    """Probe every layer. features: [layers, n, d]; labels: [n] (any hashable values);
    prompt_of: [n] prompt index of each row (the split unit); types: [n] word types for the
    control task (default: the labels' rows are their own types, i.e. no control task).
    Returns one row per layer."""
    classes, y_all = np.unique(labels, return_inverse=True)
    C = len(classes)
    prompts = np.unique(prompt_of)
    split_of_prompt = dict(zip(prompts, split_prompts(len(prompts), seed)))
    split = np.array([split_of_prompt[p] for p in prompt_of])
    if not all((split == s).any() for s in (0, 1, 2)):
        raise ValueError("too few prompts to split into train, dev and test; give at least 10 prompts")
    X = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if standardize:
        mu = X[:, split == 0].mean(1, keepdim=True)
        sd = X[:, split == 0].std(1, keepdim=True).clamp(min=1e-6)
        X = (X - mu) / sd
    tr, dv, te = (torch.as_tensor(split == s) for s in (0, 1, 2))
    y = torch.as_tensor(y_all)

    def run(y_: torch.Tensor) -> dict[str, np.ndarray]:
        W, b = fit_logistic(X[:, tr], y_[tr], C, lambdas)
        pred = predict(X, W, b)  # [L, K, n]
        acc = {name: (pred[:, :, m] == y_[m]).float().mean(-1).numpy() for name, m in
               (("train", tr), ("dev", dv), ("test", te))}
        best = acc["dev"].argmax(1)  # per layer
        pick = np.arange(X.shape[0])
        return {name: a[pick, best] for name, a in acc.items()} | {"lambda": np.asarray(lambdas)[best]}

    real = run(y)
    majority_class = np.bincount(y_all[split == 0], minlength=C).argmax()
    majority = float((y_all[split == 2] == majority_class).mean())
    rows = {"layer": np.arange(X.shape[0]), "train_acc": real["train"], "dev_acc": real["dev"],
            "test_acc": real["test"], "majority_baseline": majority, "lambda": real["lambda"]}
    if types is not None:
        ctrl = run(torch.as_tensor(np.unique(control_labels(types, y_all, seed), return_inverse=True)[1]))
        rows["control_test_acc"] = ctrl["test"]
        rows["selectivity"] = real["test"] - ctrl["test"]
    return pd.DataFrame(rows)


def prompt_features(run, layers: Sequence[int], hook: str = "hook_resid_post", pool: str = "mean") -> np.ndarray:
    """[layers, prompts, d] one vector per prompt: the mean over its tokens, or its
    first / last token."""
    out = []
    for layer in layers:
        name = f"blocks.{layer}.{hook}"
        vecs = []
        for i in range(run.n_prompts):
            x = run.prompt_activation(name, i)
            vecs.append(x.mean(0) if pool == "mean" else x[0] if pool == "first" else x[-1])
        out.append(np.stack(vecs))
    return np.stack(out).astype(np.float32)


def word_features(run, layers: Sequence[int], spans_field: str = "words", label_field: str = "upos",
                  hook: str = "hook_resid_post", pool: str = "first"):
    """Word-level data for a token-level probe: features [layers, words, d] (each word's
    first subword token, or the mean over its tokens), labels [words], prompt_of [words] and
    the lower-cased word forms (the control task's types). Words whose span covers no token
    (e.g. truncated) are skipped."""
    feats: list[list[np.ndarray]] = [[] for _ in layers]
    labels, prompt_of, types = [], [], []
    for i in range(run.n_prompts):
        lab = run.labels(i)
        if spans_field not in lab or label_field not in lab:
            continue
        text = run.prompt_records[i]["text"]
        acts = [run.prompt_activation(f"blocks.{layer}.{hook}", i) for layer in layers]
        for (start, end), tag in zip(lab[spans_field], lab[label_field]):
            toks = run.tokens_in(i, start, end)
            if not toks:
                continue
            for j, a in enumerate(acts):
                feats[j].append(a[toks[0]] if pool == "first" else a[toks].mean(0))
            labels.append(tag)
            prompt_of.append(i)
            types.append(text[start:end].lower())
    if not labels:
        raise ValueError(f"no prompt carries the word-level labels {spans_field!r} and {label_field!r}")
    return (np.stack([np.stack(f) for f in feats]).astype(np.float32), np.asarray(labels), np.asarray(prompt_of),
            types)
