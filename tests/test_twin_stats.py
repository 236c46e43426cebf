"""Twin-aware statistics (analyses/twin_stats.py) on data built so that the prompt-level and the
group-level answers differ, checked against scipy's permutation test and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analyses.twin_stats import flip_test, group_bootstrap_ci, group_ids, holm, prompt_bootstrap_ci


def test_group_ids_in_order_of_first_appearance():
    assert group_ids(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


def test_group_bootstrap_is_a_bootstrap_over_groups():
    """The same draws made by hand: groups drawn with replacement, the mean over their prompts."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), rng.integers(1, 4, 30))  # uneven groups of 1-3 prompts
    values = rng.random((len(groups), 3))
    low, high = group_bootstrap_ci(values, groups, n_boot=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 30, (200, 30))
    means = np.array([np.concatenate([values[groups == g] for g in d]).mean(0) for d in draws])
    assert np.allclose(low, np.percentile(means, 2.5, axis=0))
    assert np.allclose(high, np.percentile(means, 97.5, axis=0))


def test_twins_that_agree_widen_the_interval_past_a_baseline():
    """40 twin pairs, each pair right or wrong together, 27 right (0.675): as 80 independent
    prompts the interval clears 0.55; as 40 pairs (the evidence there is) it does not."""
    correct = np.repeat([1.0] * 27 + [0.0] * 13, 2)
    groups = np.repeat(np.arange(40), 2)
    prompt_low, _ = prompt_bootstrap_ci(correct, n_boot=4000)
    group_low, _ = group_bootstrap_ci(correct, groups, n_boot=4000)
    assert prompt_low > 0.55 >= group_low


def test_twins_that_disagree_narrow_the_interval_to_a_real_signal():
    """A head right on exactly one twin of 90 pairs and on both of 10 (0.55): as prompts the
    interval includes chance; over pairs (whose means are 0.5 or 1) it lies above it."""
    correct = np.concatenate([np.tile([1.0, 0.0], 90), np.ones(20)])
    groups = np.repeat(np.arange(100), 2)
    prompt_low, _ = prompt_bootstrap_ci(correct, n_boot=4000)
    group_low, _ = group_bootstrap_ci(correct, groups, n_boot=4000)
    assert prompt_low <= 0.5 < group_low


def test_flip_test_equals_scipys_paired_permutation_test_on_group_sums():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(11), 2)
    a = rng.integers(0, 2, (22, 4)).astype(float)  # four heads
    b = rng.integers(0, 2, 22).astype(float)  # a baseline
    p = flip_test(a, b, groups)
    for cell in range(4):
        sums_a = np.bincount(groups, a[:, cell])
        sums_b = np.bincount(groups, b)
        ref = stats.permutation_test((sums_a, sums_b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                     alternative="greater", n_resamples=np.inf).pvalue
        assert p[cell] == pytest.approx(ref)


def test_flip_test_counts_twins_once():
    """A head beating a baseline on the first twin of every pair, the baseline on none: 20
    pairs that agree (both twins right) give 20 units, not 40; the same difference spread over
    40 single prompts is judged on 40 units, so the twin-aware p-value is the larger."""
    head = np.tile([1.0, 1.0], 20)
    baseline = np.tile([0.0, 0.0], 20)
    baseline[::4] = 1.0  # the baseline right on one twin of every other pair
    baseline[1::4] = 1.0
    paired = flip_test(head[:, None], baseline, np.repeat(np.arange(20), 2), n_perm=20000)[0]
    single = flip_test(head[:, None], baseline, np.arange(40), n_perm=20000)[0]
    assert single < paired
    assert paired == pytest.approx(2 ** -10, abs=5e-4)  # 10 groups differ, all in the head's favour


def test_flip_test_with_a_constant_baseline():
    """Against chance (0.5 for every prompt): 9 of 10 single prompts right."""
    a = np.array([1.0] * 9 + [0.0])
    p = flip_test(a[:, None], 0.5, np.arange(10))[0]
    assert p == pytest.approx(11 / 1024)  # sign patterns with at most one of the ten +-0.5 negative, or all


def test_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04, made monotone
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert holm(np.array([[0.5, 0.9]])).shape == (1, 2) and holm(np.array([0.5, 0.9])).max() == 1.0


def test_group_ids_with_gaps_are_the_same_groups():
    """A subset keeps its prompts' group ids, with gaps (groups 3 and 7 only): the interval and
    the test are those of the same groups numbered 0 and 1, never of empty groups."""
    values = np.array([1.0, 0.0, 1.0, 1.0])
    gapped, packed = np.array([3, 3, 7, 7]), np.array([0, 0, 1, 1])
    assert group_bootstrap_ci(values, gapped, n_boot=300) == group_bootstrap_ci(values, packed, n_boot=300)
    assert flip_test(values[:, None], 0.5, gapped) == flip_test(values[:, None], 0.5, packed)
