"""Reading a run: lazy views over the shards a manifest publishes.

``run = probe.open(path)`` reads only the manifest and the prompt list. Activations are
read on demand, slice by slice, from the shards: ``run["blocks.3.hook_resid_post"][a:b]``,
``run.pattern(prompt, layer, head)``, ``run.prompt_activation(name, prompt, index=head)``
(one head's slice of one prompt), ``run.activations(name, prompts)``, ``run.cache(prompt)``.
A run still being recorded can be read: the reader sees the shards published when it opened
(or last called `refresh`).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, MissingHook, StoreError
from .hook_names import is_attention_hook
from .run_schema import read_prompt_records
from .store import PROMPTS, SCHEMA_VERSION, read_manifest

# Shards kept open at once. Each open shard holds HDF5 metadata for the datasets read through it
# (about 0.2-0.7 MiB for a SmolLM2 shard of every hook), so a reader of every shard of a large
# run would grow with the run; the least recently used are let go beyond this many. A shard is
# dropped, not closed: h5py closes a file only once no dataset of it is still in use, so a
# thread reading through it (the dashboard's views) is not cut off.
MAX_OPEN_SHARDS = 32


class Run:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: OrderedDict[str, Any] = OrderedDict()  # most recently used last
        self._files_lock = threading.Lock()
        self.refresh()

    # ------------------------------------------------------------------ metadata
    def refresh(self) -> Run:
        """Re-read the manifest to see shards published since the run was opened, and drop
        what was cached from the old one: the prompt list, and the open shards the new
        manifest does not list as they were (all of them when the run was re-recorded)."""
        old = getattr(self, "manifest", None)
        self.manifest = read_manifest(self.path)
        shards = self.manifest["shards"]
        self._first_prompt = [s["first_prompt"] for s in shards]
        # each shard's tokens on the run's flat token axis, per sequence (the target: encoder-decoder runs)
        self._shard_tokens = {"source": [s["n_tokens"] for s in shards],
                              "target": [s.get("n_target_tokens", 0) for s in shards]}
        self.__dict__.pop("prompt_records", None)  # the cached_property; re-read on next use
        self._close_stale_shards(old)
        return self

    def _close_stale_shards(self, old: dict[str, Any] | None) -> None:
        """Close the open shards the new manifest no longer lists as they were. A published
        shard never changes, so the others stay open: other threads (the dashboard's views)
        may be reading through them. A run re-recorded in place (--overwrite, other settings
        or another start time) makes every open shard stale."""
        replaced = old is None or _run_identity(old) != _run_identity(self.manifest)
        current = {s["file"]: s for s in self.manifest["shards"]}
        before = {s["file"]: s for s in old["shards"]} if old else {}
        for name in list(self._files):
            if replaced or current.get(name) != before.get(name):
                self._files.pop(name).close()

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model"]["config"]

    @property
    def n_heads(self) -> int:
        """Query heads per layer: the head axis of hook_q, hook_z and the attention hooks."""
        return int(self.config["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer: the head axis of hook_k, hook_v and hook_rot_k. Fewer than
        `n_heads` under grouped-query attention. From the model config; a manifest without it
        (another tool's) says it through the shape of a recorded key or value hook."""
        n = self.config.get("n_kv_heads")
        if n is None:
            shapes = [info["shape"] for name, info in self.manifest["hooks"].items()
                      if name.endswith(("attn.hook_k", "attn.hook_v")) and info["shape"]]
            n = shapes[0][0] if shapes else self.n_heads
        return int(n)

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` attends with: ``head // (n_heads // n_kv_heads)``
        (consecutive query heads share one, as the model's ``repeat_interleave`` of keys and
        values makes them, and as Hugging Face's ``repeat_kv`` does). The index of ``head``'s keys
        and values on the head axis of hook_k / hook_v / hook_rot_k; equal to ``head`` without
        grouped-query attention."""
        if isinstance(head, bool) or not isinstance(head, int | np.integer) or not 0 <= head < self.n_heads:
            raise IndexError(f"head {head!r} is out of range: the model has {self.n_heads} query heads")
        return int(head) // (self.n_heads // self.n_kv_heads)

    def query_heads(self, kv_head: int) -> range:
        """The query heads that share key/value head ``kv_head`` (the inverse of `kv_head`)."""
        if isinstance(kv_head, bool) or not isinstance(kv_head, int | np.integer) or \
                not 0 <= kv_head < self.n_kv_heads:
            raise IndexError(f"key/value head {kv_head!r} is out of range: the model has {self.n_kv_heads}")
        group = self.n_heads // self.n_kv_heads
        return range(int(kv_head) * group, (int(kv_head) + 1) * group)

    @property
    def n_prompts_total(self) -> int:
        """Prompts in the run's prompt set, recorded or not yet."""
        return self.manifest["n_prompts"]

    @property
    def n_prompts(self) -> int:
        """Prompts published so far (all of them once the run is complete)."""
        return sum(s["n_prompts"] for s in self.manifest["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    @cached_property
    def prompt_records(self) -> list[dict[str, Any]]:
        records = read_prompt_records(self.path / PROMPTS)
        if len(records) != self.n_prompts_total:
            raise StoreError(f"{self.path / PROMPTS} holds {len(records)} prompts, the manifest {self.n_prompts_total}; "
                             "the run is damaged")
        return records

    @property
    def prompts(self) -> list[str]:
        return [r["text"] for r in self.prompt_records[: self.n_prompts]]

    def labels(self, prompt: int) -> dict[str, Any]:
        return {k: v for k, v in self.prompt_records[prompt].items() if k != "text"}

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.n_prompts}/{self.n_prompts_total} prompts published"
        return f"Run({str(self.path)!r}, model={self.model_name!r}, {len(self.hooks)} hooks, {state})"

    # ------------------------------------------------------------------ shards
    def _file(self, shard: int):
        import h5py

        entry = self.manifest["shards"][shard]
        with self._files_lock:
            f = self._files.get(entry["file"])
            if f is not None:
                self._files.move_to_end(entry["file"])
        if f is None:
            try:
                import hdf5plugin  # noqa: F401  (registers the lz4 filter if a run uses it)
            except ImportError:
                pass
            try:
                f = h5py.File(self.path / entry["file"], "r")
            except OSError as e:
                raise StoreError(f"{self.path / entry['file']} cannot be read ({e}); the run is damaged") from None
            if f.attrs.get("schema_version", 0) > SCHEMA_VERSION:
                raise StoreError(f"{entry['file']} uses a newer cache schema; upgrade probe")
            with self._files_lock:
                self._files[entry["file"]] = f
                while len(self._files) > MAX_OPEN_SHARDS:
                    self._files.popitem(last=False)  # dropped, closed by h5py once unused (see MAX_OPEN_SHARDS)
        return f

    def _locate(self, prompt: int) -> tuple[int, int]:
        if not 0 <= prompt < self.n_prompts:
            raise IndexError(f"prompt {prompt} is out of range: {self.n_prompts} prompts are published")
        shard = bisect.bisect_right(self._first_prompt, prompt) - 1
        return shard, prompt - self._first_prompt[shard]

    def _span(self, prompt: int, sequence: str = "source") -> tuple[int, int, int]:
        shard, local = self._locate(prompt)
        off = self._file(shard)[_OFFSETS[self._sequence_checked(sequence)]]
        a, b = off[local:local + 2]
        return shard, int(a), int(b)

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether the run holds two sequences per prompt (an encoder-decoder model's source and target)."""
        return bool(self.config.get("encoder_decoder"))

    def _sequence_checked(self, sequence: str) -> str:
        if sequence not in ("source", "target"):
            raise InputError(f"sequence must be 'source' or 'target', not {sequence!r}")
        if sequence == "target" and not self.is_encoder_decoder:
            raise InputError(f"{self.model_name} is not an encoder-decoder model: its run has one sequence per "
                             "prompt, the source")
        return sequence

    def sequence(self, name: str) -> str:
        """Which sequence the hook's positions run over: "source", "target", or "cross" for
        cross-attention's [head, target, source] scores and pattern."""
        self._check(name)
        return self.manifest["hooks"][name].get("sequence", "source")

    def _check(self, name: str) -> None:
        if name not in self.manifest["hooks"]:
            raise MissingHook(f"{name!r} was not recorded in this run; recorded hooks: {self.hooks[:8]}... "
                           f"({len(self.hooks)} in all). Record it with `probe record --names {name}`")

    # ------------------------------------------------------------------ access
    def tokens(self, prompt: int, sequence: str = "source") -> np.ndarray:
        """The prompt's token ids; ``sequence="target"``: the decoder's, in encoder-decoder runs."""
        shard, a, b = self._span(prompt, sequence)
        return self._file(shard)[_PREFIX[sequence] + "token_ids"][a:b]

    def str_tokens(self, prompt: int, sequence: str = "source") -> list[str]:
        shard, a, b = self._span(prompt, sequence)
        return [s.decode() if isinstance(s, bytes) else s for s in self._file(shard)[_PREFIX[sequence] + "token_str"][a:b]]

    def token_spans(self, prompt: int) -> np.ndarray:
        """[n, 2] character offsets of the prompt's tokens in its text; (-1, -1) for
        special tokens."""
        shard, a, b = self._span(prompt)
        return self._file(shard)["token_spans"][a:b]

    def tokens_in(self, prompt: int, start: int, end: int) -> list[int]:
        """Positions of the prompt's tokens that overlap the characters [start, end)."""
        spans = self.token_spans(prompt)
        return [i for i, (a, b) in enumerate(spans) if a >= 0 and a < end and b > start]

    def token_offsets(self) -> np.ndarray:
        """[n_prompts + 1] start of each prompt on the run's flat token axis."""
        return np.concatenate([[0], np.cumsum([len(self.tokens(i)) for i in range(self.n_prompts)])]) \
            if self.n_prompts else np.zeros(1, np.int64)

    def prompt_activation(self, name: str, prompt: int, index: int | tuple[int, ...] | None = None) -> np.ndarray:
        """One prompt's activation: [n, ...] per-token, or [head, n, n] for attention.

        ``index`` selects along the trailing axes, one integer per axis from the first after
        the token axis: ``index=h`` on a [n, head, d_head] hook gives [n, d_head], equal to
        ``prompt_activation(name, prompt)[:, h]``. On attention hooks the axes are [head,
        query, key]: ``index=h`` gives the head's [query, key], ``index=(h, q)`` one query's
        row. Only that hyperslab is read from the shard, not the whole prompt (what a view
        of one head needs). Negative integers count from the end."""
        sequence = self.sequence(name)
        shard, local = self._locate(prompt)
        f = self._file(shard)

        def length(seq: str) -> tuple[int, int]:
            a, b = (int(x) for x in f[_OFFSETS[seq]][local:local + 2])
            return a, b - a

        if is_attention_hook(name):
            # [head, query, key]: queries and keys over the source, the target, or (cross) target x source
            queries = length("source" if sequence == "source" else "target")[1]
            keys = length("target" if sequence == "target" else "source")[1]
            return self._attention_slice(f, name, local, queries, keys, index, _ATTN_OFFSETS[sequence])
        a, n = length(sequence)
        pick = self._trailing(name, index, tuple(self.manifest["hooks"][name]["shape"]))
        return f["act"][name][(slice(a, a + n), *pick)]

    def _attention_slice(self, f, name: str, local: int, q: int, k: int, index: int | tuple[int, ...] | None,
                         offsets: str = "attn_offsets") -> np.ndarray:
        """The prompt's [head, q, k] attention block, or the part ``index`` picks. The block
        is stored row-major on a flat axis, so any leading selection is one contiguous range."""
        n_heads = self.manifest["hooks"][name]["shape"][0]
        pick = self._trailing(name, index, (n_heads, q, k))
        strides = (q * k, k, 1)  # values per head, per query row, per key
        start = int(f[offsets][local]) + sum(i * st for i, st in zip(pick, strides))
        shape = (n_heads, q, k)[len(pick):]
        return f["attn"][name][start:start + int(np.prod(shape))].reshape(shape)

    def _trailing(self, name: str, index: int | tuple[int, ...] | None, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """``index`` as non-negative integers checked against the trailing axes' ``sizes``
        (h5py refuses negative indices, and its message would not name the axis)."""
        if index is None:
            return ()
        picks = (index,) if isinstance(index, int | np.integer) else tuple(index)
        if len(picks) > len(sizes):
            raise IndexError(f"{name} has {len(sizes)} axes after the token axis; index {index!r} gives {len(picks)}")
        out = []
        for axis, (i, size) in enumerate(zip(picks, sizes)):
            if isinstance(i, bool) or not isinstance(i, int | np.integer):
                raise TypeError(f"index takes integers, one per trailing axis; got {i!r} for axis {axis}")
            if not -size <= i < size:
                raise IndexError(f"index {int(i)} on axis {axis} is out of range: {name} has {size} there "
                                 f"(trailing shape {list(sizes)})")
            out.append(int(i) % size)
        return tuple(out)

    def pattern(self, prompt: int, layer: int, head: int | None = None) -> np.ndarray:
        """Attention pattern [query, key] of one head (or [head, query, key]); reads only
        that head's values."""
        name = f"blocks.{layer}.attn.hook_pattern"
        self._check(name)
        if head is not None and not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range: the model has {self.n_heads} heads")
        return self.prompt_activation(name, prompt, head)

    def activations(self, name: str, prompts: list[int] | np.ndarray | range | None = None) -> np.ndarray:
        """The flat [tokens, ...] matrix of a per-token hook over the given prompts (all
        published prompts by default), in the order given: what a probe trains on. Prompts
        are ints (numpy's too); none gives an empty [0, ...] matrix of the stored dtype."""
        self._check(name)
        if is_attention_hook(name):
            raise InputError(f"{name} is per prompt [head, n, n]; use prompt_activation or pattern")
        if prompts is None:
            parts = [self._file(s)["act"][name][:] for s in range(len(self.manifest["shards"]))]
        else:
            parts = [self.prompt_activation(name, _prompt_number(p)) for p in prompts]
        return np.concatenate(parts) if parts else _empty(self, name)

    def __getitem__(self, name: str) -> TokenView | PromptView:
        self._check(name)
        return PromptView(self, name) if is_attention_hook(name) else TokenView(self, name)

    def cache(self, prompt: int):
        """The prompt's activations as an `ActivationCache` shaped like
        ``model.run_with_cache`` returns for that prompt alone ([1, ...])."""
        import torch

        from models.activation_cache import ActivationCache

        store = {name: torch.from_numpy(np.ascontiguousarray(self.prompt_activation(name, prompt)))[None]
                 for name in self.hooks}
        return ActivationCache(store)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Where each sequence's token ranges and attention blocks are in a shard (docs/cache-format.md).
_OFFSETS = {"source": "offsets", "target": "target_offsets"}
_PREFIX = {"source": "", "target": "target_"}
_ATTN_OFFSETS = {"source": "attn_offsets", "target": "target_attn_offsets", "cross": "cross_attn_offsets"}


def _run_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest says about the run itself, leaving out what recording it changes."""
    return {k: v for k, v in manifest.items() if k not in ("shards", "complete", "finished")}


class TokenView:
    """``run[name]``: a per-token hook over the run's flat token axis, read lazily and indexed
    like the [tokens, ...] array it stands for (``np.asarray(view)`` reads all of it).

    The token axis takes an int (numpy's too), a slice with any step, a list or array of
    ints of any shape, or a boolean mask; the other axes take whatever numpy takes. Only the
    rows a key needs are read: a slice's range (its step applied after), a selection's rows."""

    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name
        # a decoder hook of an encoder-decoder run lies on the target tokens' axis
        self.sequence = "target" if run.sequence(name) == "target" else "source"

    @property
    def n(self) -> int:  # read from the run each time: it grows with Run.refresh while being recorded
        return sum(self.run._shard_tokens[self.sequence])

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.run.manifest["hooks"][self.name]["shape"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.run.manifest["dtype"])

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = _split_key(key)
        if first is Ellipsis:  # "every axis": numpy reads the key against the whole array
            return self._take(np.arange(len(self)))[key]
        rows, pick = _rows_and_pick(_first_axis(first, len(self), "token"))
        # the key's rows are read once each, in order; `pick` puts them in the key's order and
        # shape, so numpy applies the rest of the key exactly as it would on the whole array
        return self._take(rows)[(pick, *rest)]

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at ``rows`` (sorted, distinct) of the flat token axis, shard by shard;
        only the shards holding some of them are opened."""
        run, parts = self.run, []
        sizes = run._shard_tokens[self.sequence]
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        for s, first in enumerate(starts):
            lo, hi = np.searchsorted(rows, [first, first + sizes[s]])
            if lo < hi:
                parts.append(_read_rows(run._file(s)["act"][self.name], rows[lo:hi] - first))
        return np.concatenate(parts) if parts else _empty(run, self.name)


class PromptView:
    """``run[name]`` for attention hooks: the run's prompts, each a [head, n, n] block.

    ``view[prompt]`` -> [head, n, n], ``view[prompt, head]`` -> [n, n], ``view[prompt, head,
    query]`` -> [n] (only that part is read). The prompt axis takes what a 1-D numpy array
    takes (ints, slices with any step, lists and arrays of ints, a boolean mask); prompts
    differ in length, so a selection of several is a list of blocks, each indexed by the rest
    of the key."""

    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name

    def __len__(self) -> int:
        return self.run.n_prompts

    def __getitem__(self, key: Any) -> np.ndarray | list[np.ndarray]:
        first, rest = _split_key(key)
        if first is Ellipsis:
            raise TypeError(f"{self.name} is indexed by prompt first (an int, a slice or a list); got {key!r}")
        picked = _first_axis(first, len(self), "prompt")
        if isinstance(picked, int):
            return self._prompt(picked, rest)
        if isinstance(picked, np.ndarray) and picked.ndim != 1:
            raise TypeError(f"a selection of prompts is one flat list; got an index of shape {picked.shape}")
        return [self._prompt(int(p), rest) for p in picked]

    def _prompt(self, prompt: int, rest: tuple) -> np.ndarray:
        # leading ints of a plain key (head, query) are read as a hyperslab, not the whole block
        lead = _leading_ints(rest, limit=2)
        x = self.run.prompt_activation(self.name, prompt, lead or None)
        more = rest[len(lead):]
        return x[more] if more else x


# ---------------------------------------------------------------------- indexing helpers
_KEY_FORMS = "an int, a slice, a list or array of ints, or a boolean mask"


def _split_key(key: Any) -> tuple[Any, tuple]:
    """(the key's first-axis part, the rest); ``()`` is numpy's "everything", like ``...``."""
    if isinstance(key, tuple):
        return (key[0], key[1:]) if key else (Ellipsis, ())
    return key, ()


def _first_axis(key: Any, n: int, axis: str) -> int | range | np.ndarray:
    """The positions a first-axis key selects among ``n``, as numpy would: an int (the axis
    dropped), a range (a slice), or an int array of the key's shape; negatives counted from
    the end. Out of range is an IndexError, anything but the forms numpy indexes by a TypeError."""
    if isinstance(key, slice):
        try:
            return range(*key.indices(n))
        except TypeError:
            raise TypeError(f"{axis} slice bounds must be ints or None; got {key!r}") from None
    if isinstance(key, (list, tuple, range, np.ndarray)):
        return _index_array(key, n, axis)
    if _plain_int(key):
        return _in_range(int(key), n, axis)
    raise TypeError(f"a {axis} index is {_KEY_FORMS}; got {key!r}")


def _index_array(key: Any, n: int, axis: str) -> int | np.ndarray:
    try:
        idx = np.asarray(key)
    except ValueError:  # ragged nesting
        raise TypeError(f"a {axis} index list must be rectangular; got {key!r}") from None
    if idx.size == 0 and not isinstance(key, np.ndarray):
        idx = idx.astype(np.intp)  # [] is float64 to numpy, yet an empty selection
    if idx.dtype == np.bool_ and idx.ndim:
        if idx.shape != (n,):
            raise IndexError(f"a boolean mask over {n} {axis}s has shape {idx.shape}")
        return np.flatnonzero(idx)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"a {axis} index is {_KEY_FORMS}; got {key!r}")
    if idx.ndim == 0:  # a 0-d integer array indexes like an int
        return _in_range(int(idx), n, axis)
    outside = (idx < -n) | (idx >= n)
    if outside.any():
        raise IndexError(f"{axis} {int(idx[outside].flat[0])} is out of range ({n} {axis}s)")
    return np.where(idx < 0, idx + n, idx)


def _in_range(i: int, n: int, axis: str) -> int:
    if not -n <= i < n:
        raise IndexError(f"{axis} {i} is out of range ({n} {axis}s)")
    return i % n


def _rows_and_pick(picked: int | range | np.ndarray) -> tuple[np.ndarray, Any]:
    """The sorted, distinct rows to read for a first-axis selection, and the index that
    takes the selection (its order, repeats and shape) from those rows."""
    if isinstance(picked, int):
        return np.array([picked]), 0
    if isinstance(picked, range):
        if not picked:
            return np.zeros(0, np.intp), slice(None)
        low, high = min(picked[0], picked[-1]), max(picked[0], picked[-1])
        return np.arange(low, high + 1, abs(picked.step)), slice(None, None, -1 if picked.step < 0 else 1)
    rows, inverse = np.unique(picked, return_inverse=True)
    return rows, inverse.reshape(picked.shape)


def _read_rows(dataset: Any, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` (sorted, distinct) of one shard's dataset: one range read when they are
    dense, h5py's point selection when they are sparse (a few rows far apart)."""
    span = int(local[-1] - local[0]) + 1
    if span <= 2 * len(local):
        block = dataset[int(local[0]):int(local[-1]) + 1]
        return block if span == len(local) else block[local - local[0]]
    return dataset[local]


def _leading_ints(rest: tuple, limit: int) -> tuple[int, ...]:
    """The leading plain ints of ``rest`` (at most ``limit``), when every part of ``rest`` is a
    basic index: with an array among them numpy's rules for mixing them with ints differ from
    indexing one axis at a time, so then none is taken and numpy reads the whole key."""
    basic = all(k is None or k is Ellipsis or isinstance(k, slice) or _plain_int(k) for k in rest)
    lead: list[int] = []
    for k in rest if basic else ():
        if not _plain_int(k) or len(lead) == limit:
            break
        lead.append(int(k))
    return tuple(lead)


def _plain_int(k: Any) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _prompt_number(p: Any) -> int:
    if not _plain_int(p):
        raise TypeError(f"prompts are given as ints; got {p!r}")
    return int(p)


def _empty(run: Run, name: str) -> np.ndarray:
    """An empty [0, ...] selection of a per-token hook, in the dtype the run stores."""
    return np.zeros((0, *run.manifest["hooks"][name]["shape"]), dtype=np.dtype(run.manifest["dtype"]))


def open_run(path: str | os.PathLike) -> Run:
    """Open a recorded run lazily (see `Run`)."""
    return Run(path)
