"""probe/reader.py's views and `Run.activations`: ``run[name]`` indexes like numpy.

The reference is the fully materialised array, built through `prompt_activation` (another
read path): the flat [tokens, ...] array of a per-token hook, and for an attention hook the
run's prompts as a 1-D object array of [head, n, n] blocks (prompts differ in length, so a
selection of several prompts is a list of arrays). Each view is compared with numpy indexing
of that reference on hand-picked keys and on random ones (Hypothesis); the run is recorded in
shards of three prompts so that selections cross shard boundaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

RESID = "blocks.0.hook_resid_post"  # [tokens, d_model]
Q = "blocks.1.attn.hook_q"  # [tokens, head, d_head]
PATTERN = "blocks.0.attn.hook_pattern"  # per prompt [head, n, n]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """toy-coref on 10 prompts of different lengths, in shards of 3 prompts (a shard is
    published once it passes a tiny size budget, so every batch is one)."""
    import models
    import probe

    torch.set_num_threads(1)
    prompts = [p.text for p in probe.load_prompts("toy-coref-test")][:10]
    path = Path(tmp_path_factory.mktemp("reader")) / "run"
    out = probe.record(models.load("toy-coref"), prompts, path, names=[RESID, Q, PATTERN], progress=False,
                       batch_size=3, shard_mb=1e-6)
    assert len(out.manifest["shards"]) == 4 and len({len(out.tokens(i)) for i in range(out.n_prompts)}) > 1
    return out


def token_reference(run, name: str) -> np.ndarray:
    return np.concatenate([run.prompt_activation(name, p) for p in range(run.n_prompts)])


def prompt_reference(run, name: str) -> np.ndarray:
    ref = np.empty(run.n_prompts, dtype=object)
    for p in range(run.n_prompts):
        ref[p] = run.prompt_activation(name, p)
    return ref


def split(key: Any) -> tuple[Any, tuple]:
    return (key[0], key[1:]) if isinstance(key, tuple) else (key, ())


def assert_token_key(view, full: np.ndarray, key: Any) -> None:
    """``view[key]`` is ``full[key]``: same values, shape and dtype (or the same error)."""
    try:
        want = full[key]
    except IndexError:
        with pytest.raises(IndexError):
            view[key]
        return
    got = view[key]
    assert type(got) is type(want), key  # an array, or numpy's scalar when every axis is an int
    assert got.shape == want.shape and got.dtype == want.dtype, key
    np.testing.assert_array_equal(got, want)


def assert_prompt_key(view, ref: np.ndarray, key: Any) -> None:
    """``view[p, *rest]`` is ``ref[p][rest]``; ``view[selection, *rest]`` is the list of
    ``ref[p][rest]`` over the prompts numpy's ``ref[selection]`` picks."""
    first, rest = split(key)
    try:
        picked = ref[first]
        several = isinstance(picked, np.ndarray) and picked.dtype == object
        want = [block[rest] for block in picked] if several else picked[rest]
    except IndexError:
        with pytest.raises(IndexError):
            view[key]
        return
    got = view[key]
    if several:
        assert isinstance(got, list) and len(got) == len(want), key
    for g, w in zip(got, want) if several else [(got, want)]:
        assert type(g) is type(w) and g.shape == w.shape and g.dtype == w.dtype, key
        np.testing.assert_array_equal(g, w)


# Keys numpy accepts on the token axis (and after it), the cases first.
TOKEN_KEYS = [slice(None, None, -1), slice(10, 2, -1), np.int64(3), np.int32(-2), np.array(4), 0, -1,
              slice(None), slice(5, 40), slice(None, None, 3), slice(-5, None), slice(40, 5, -7), slice(5, 5),
              slice(1000, 2000), slice(-1000, 3), slice(None, -1000, -1), slice(2, None, 1000),
              [], np.array([], dtype=np.int64), [3, 1, 3], [40, 0, 20, 0], [-1, 0], np.array([5, -1, 0]), np.array([[0, 1], [60, 2]]),
              (slice(None, None, -2), 1), (3, slice(1, 4)), ([1, 2], [0, 1]), (slice(2, 9, 2), [0, 3]),
              (np.int64(7), -1), 10_000, -10_000, [0, 10_000]]


@pytest.mark.parametrize("name", [RESID, Q])
def test_token_view_indexes_like_numpy(run, name):
    view, full = run[name], token_reference(run, name)
    assert view.shape == full.shape and len(view) == len(full)
    np.testing.assert_array_equal(np.asarray(view), full)
    mask = np.arange(len(full)) % 3 == 0
    for key in [*TOKEN_KEYS, mask, (mask, 0), (slice(None, 5), Ellipsis)]:
        assert_token_key(view, full, key)
    if name == Q:  # the trailing axes too: one head, one head of a few tokens, broadcast pairs
        for key in [(slice(3, 30, 4), 1), (slice(None), slice(None), [0, 2]), ([4, 9], 0, [1, 2]),
                    (slice(20, 3, -3), Ellipsis, 0)]:
            assert_token_key(view, full, key)


def test_prompt_view_indexes_like_numpy(run):
    view, ref = run[PATTERN], prompt_reference(run, PATTERN)
    assert len(view) == len(ref)
    for key in [3, np.int64(3), np.int16(-1), np.array(2), -10, slice(None, None, -1), slice(8, 2, -2), slice(None),
                slice(100, 200), [], [4, 1, 4], np.array([-1, 0]), (3, 1), (np.int64(3), -1, 2), (5, slice(None), 0),
                (slice(2, 6), 1), ([0, 9], 2, slice(1, 3)), (4, [0, 3]), (4, 0, [1, 2]), (2, Ellipsis, 0),
                10, -11, [0, 10], (1, 4), (1, 0, 99)]:
        assert_prompt_key(view, ref, key)


@pytest.mark.parametrize("key", [1.5, "3", None, True, np.bool_(False), [1.5], np.array([1.0]), ["a"], [[1, 2], [3]],
                                 {1: 2}, slice(1.5, 3), (None, 0)])
def test_views_refuse_other_keys_as_type_errors(run, key):
    for name in (RESID, PATTERN):
        with pytest.raises(TypeError, match="index|slice"):
            run[name][key]


def index_strategy(n: int) -> st.SearchStrategy:
    """Ints (numpy's too), slices with any step and bounds past either end, index lists."""
    bound = st.none() | st.integers(-2 * n, 2 * n)
    step = st.none() | st.integers(-2 * n, 2 * n).filter(bool)
    ints = st.integers(-n - 2, n + 1)
    return (ints | ints.map(np.int64) | st.builds(slice, bound, bound, step)
            | st.lists(st.integers(-n, n - 1), max_size=8) | st.lists(st.integers(-n, n - 1), max_size=8).map(lambda xs: np.array(xs, dtype=np.int64)))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_token_view_matches_numpy_on_random_keys(run, data):
    name = data.draw(st.sampled_from([RESID, Q]))
    view, full = run[name], _cached_reference(run, name)
    first = data.draw(index_strategy(len(full)))
    trailing = data.draw(st.none() | index_strategy(full.shape[1]))
    assert_token_key(view, full, first if trailing is None else (first, trailing))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_prompt_view_matches_numpy_on_random_keys(run, data):
    view, ref = run[PATTERN], _cached_reference(run, PATTERN)
    first = data.draw(index_strategy(len(ref)))
    head = data.draw(st.none() | index_strategy(run.config["n_heads"]))
    assert_prompt_key(view, ref, first if head is None else (first, head))


_REFERENCES: dict[tuple[str, str], np.ndarray] = {}


def _cached_reference(run, name: str) -> np.ndarray:
    # Hypothesis calls the test body many times; build each reference once per run.
    key = (str(run.path), name)
    if key not in _REFERENCES:
        _REFERENCES[key] = prompt_reference(run, name) if name == PATTERN else token_reference(run, name)
    return _REFERENCES[key]


def rows_read(monkeypatch, run, name: str, key: Any) -> int:
    """How many token rows ``run[name][key]`` reads from the shards (h5py reads spied on)."""
    seen: list[int] = []
    real = h5py.Dataset.__getitem__

    def spy(self, sel):
        out = real(self, sel)
        if self.name == f"/act/{name}":
            seen.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    run[name][key]
    monkeypatch.setattr(h5py.Dataset, "__getitem__", real)
    return sum(seen)


def test_token_view_reads_only_what_a_key_needs(run, monkeypatch):
    """A small slice reads its range, not the run; a sparse list reads its rows."""
    n = run.n_tokens
    assert rows_read(monkeypatch, run, RESID, slice(12, 2, -3)) <= 10
    assert rows_read(monkeypatch, run, RESID, slice(30, 40, 2)) <= 10
    assert rows_read(monkeypatch, run, RESID, [0, n - 1, 1]) <= 3
    assert rows_read(monkeypatch, run, RESID, [40, 0, 20, 0]) == 3  # one shard, rows far apart
    assert rows_read(monkeypatch, run, RESID, slice(None, None, 50)) <= 4
    assert rows_read(monkeypatch, run, RESID, []) == 0


def test_activations_of_any_prompt_selection(run):
    full = token_reference(run, RESID)
    offsets = run.token_offsets()
    rows = lambda ps: np.concatenate([full[offsets[p]:offsets[p + 1]] for p in ps])  # noqa: E731
    np.testing.assert_array_equal(run.activations(RESID), full)
    for prompts in ([2, 0], np.array([5, 1]), [np.int64(4)], range(3, 6)):
        np.testing.assert_array_equal(run.activations(RESID, prompts), rows(prompts))
    for none in ([], np.array([], dtype=np.int64), ()):
        empty = run.activations(RESID, none)
        assert empty.shape == (0, *full.shape[1:]) and empty.dtype == full.dtype
