"""Statistics that respect a prompt set's design: twins (prompts sharing a ``pair_id``) are one
unit of evidence, not two.

Twin sentences share all their words but one, so a head that is right on one is usually right
(or, on a stereotype-flipping pair, wrong) on the other: treating them as independent draws
makes an interval too narrow where twins agree and too wide where they disagree. Both
procedures here resample whole twin groups:

- `group_bootstrap_ci`: the 95% percentile interval of a mean, from a bootstrap that draws
  twin groups with replacement (the mean is over the prompts of the drawn groups, so a set of
  uneven groups is weighted by prompt as the point estimate is);
- `flip_test`: a paired permutation test of "A beats B" (a head's correctness against a
  baseline's, prompt by prompt): under the null hypothesis A and B are exchangeable within
  each twin group, so each group's summed difference keeps or flips its sign at random; the
  one-sided p-value is the share of sign assignments whose mean difference is at least the
  observed one (exact enumeration when the groups are few, else ``n_perm`` random draws, with
  the +1 of Phipson & Smyth 2010 so no p-value is 0);
- `holm`: Holm's (1979) step-down correction for testing every head, which bounds the chance
  of any false claim (family-wise error) at the level, under any dependence between heads.

`prompt_bootstrap_ci` is the prompt-level bootstrap, kept for comparison (and for sets without
twins, where both agree).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

MAX_EXACT_GROUPS = 13  # 2**13 = 8192 sign assignments: enumerated, not sampled


def group_ids(keys: Sequence[Hashable]) -> np.ndarray:
    """[n] int: the twin group of each prompt (0, 1, ... in order of first appearance)."""
    seen: dict[Hashable, int] = {}
    return np.asarray([seen.setdefault(k, len(seen)) for k in keys], dtype=int)


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sums [G, ...] of values per group, sizes [G])."""
    n_groups = int(groups.max()) + 1
    sums = np.zeros((n_groups, *values.shape[1:]))
    np.add.at(sums, groups, values)
    return sums, np.bincount(groups, minlength=n_groups).astype(float)


def _check(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, groups = np.asarray(values, dtype=float), np.asarray(groups)
    if values.ndim == 0 or len(values) == 0 or groups.shape != values.shape[:1]:
        raise ValueError(f"values {values.shape} need one group per row, got groups {groups.shape}")
    # numbered 0..G-1 over the groups present: a subset's group ids have gaps, and an empty group
    # must not be drawn (it would change how many groups a bootstrap sample holds)
    return values, np.unique(groups, return_inverse=True)[1].reshape(-1)


def group_bootstrap_ci(values: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over axis 0 (prompts) for every trailing cell, from a
    bootstrap over twin groups. values [n, ...], groups [n] -> (low, high), each [...]."""
    values, groups = _check(values, groups)
    sums, sizes = _group_sums(values, groups)
    rng = np.random.default_rng(seed)
    n_groups = len(sizes)
    draws = rng.integers(0, n_groups, (n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)  # how often each group is drawn
    flat = sums.reshape(n_groups, -1)
    means = (counts @ flat) / (counts @ sizes)[:, None]  # [boot, cells]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


def prompt_bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The same interval with every prompt its own group (what ignores the twins)."""
    values = np.asarray(values, dtype=float)
    return group_bootstrap_ci(values, np.arange(len(values)), n_boot, seed, level)


def _signs(n_groups: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[assignments, G] of +-1: every assignment when there are few groups, else random ones."""
    if n_groups <= MAX_EXACT_GROUPS and 2 ** n_groups <= n_perm:
        bits = (np.arange(2 ** n_groups)[:, None] >> np.arange(n_groups)) & 1
        return 1.0 - 2.0 * bits
    return rng.choice([-1.0, 1.0], size=(n_perm, n_groups))


def flip_test(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_perm: int = 10000, seed: int = 0) -> np.ndarray:
    """One-sided p-value that A's mean exceeds B's, exchanging A and B within twin groups.
    a [n, ...] (e.g. a head's correctness per prompt), b broadcastable to it (a baseline's),
    groups [n] -> p [...]. Exact over all 2**G sign assignments when G <= MAX_EXACT_GROUPS."""
    a, groups = _check(a, groups)
    diff = a - np.broadcast_to(np.asarray(b, dtype=float).reshape(
        np.shape(b) + (1,) * (a.ndim - np.ndim(b))), a.shape)
    sums, _ = _group_sums(diff, groups)
    flat = sums.reshape(len(sums), -1)  # [G, cells]
    observed = flat.sum(0)
    exact = len(flat) <= MAX_EXACT_GROUPS and 2 ** len(flat) <= n_perm
    signs = _signs(len(flat), n_perm, np.random.default_rng(seed))
    null = signs @ flat  # [assignments, cells]
    tol = 1e-9 * (1 + np.abs(observed))  # sums of 0/1 differences: equal ones must count as equal
    hits = (null >= observed - tol).sum(0)
    p = hits / len(signs) if exact else (hits + 1) / (len(signs) + 1)
    return p.reshape(a.shape[1:])


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (same shape): reject where adjusted < level controls the
    family-wise error at that level over all the tests given."""
    p = np.asarray(p, dtype=float)
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    m = len(flat)
    stepped = np.maximum.accumulate((m - np.arange(m)) * flat[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.reshape(p.shape)
