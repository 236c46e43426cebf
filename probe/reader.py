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
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, MissingHook, StoreError
from .hook_names import is_attention_hook
from .store import PROMPTS, SCHEMA_VERSION, iter_jsonl, read_manifest


class Run:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: dict[str, Any] = {}
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
        self._first_token = list(np.cumsum([0] + [s["n_tokens"] for s in shards[:-1]])) if shards else []
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
        return list(iter_jsonl((self.path / PROMPTS).read_text(encoding="utf-8")))

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
        f = self._files.get(entry["file"])
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
            self._files[entry["file"]] = f
        return f

    def _locate(self, prompt: int) -> tuple[int, int]:
        if not 0 <= prompt < self.n_prompts:
            raise IndexError(f"prompt {prompt} is out of range: {self.n_prompts} prompts are published")
        shard = bisect.bisect_right(self._first_prompt, prompt) - 1
        return shard, prompt - self._first_prompt[shard]

    def _span(self, prompt: int) -> tuple[int, int, int]:
        shard, local = self._locate(prompt)
        off = self._file(shard)["offsets"]
        a, b = off[local:local + 2]
        return shard, int(a), int(b)

    def _check(self, name: str) -> None:
        if name not in self.manifest["hooks"]:
            raise MissingHook(f"{name!r} was not recorded in this run; recorded hooks: {self.hooks[:8]}... "
                           f"({len(self.hooks)} in all). Record it with `probe record --names {name}`")

    # ------------------------------------------------------------------ access
    def tokens(self, prompt: int) -> np.ndarray:
        shard, a, b = self._span(prompt)
        return self._file(shard)["token_ids"][a:b]

    def str_tokens(self, prompt: int) -> list[str]:
        shard, a, b = self._span(prompt)
        return [s.decode() if isinstance(s, bytes) else s for s in self._file(shard)["token_str"][a:b]]

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
        self._check(name)
        shard, local = self._locate(prompt)
        f = self._file(shard)
        a, b = (int(x) for x in f["offsets"][local:local + 2])
        n = b - a
        if is_attention_hook(name):
            return self._attention_slice(f, name, local, n, index)
        pick = self._trailing(name, index, tuple(self.manifest["hooks"][name]["shape"]))
        return f["act"][name][(slice(a, b), *pick)]

    def _attention_slice(self, f, name: str, local: int, n: int, index: int | tuple[int, ...] | None) -> np.ndarray:
        """The prompt's [head, n, n] attention block, or the part ``index`` picks. The block
        is stored row-major on a flat axis, so any leading selection is one contiguous range."""
        n_heads = self.manifest["hooks"][name]["shape"][0]
        pick = self._trailing(name, index, (n_heads, n, n))
        strides = (n * n, n, 1)  # values per head, per query row, per key
        start = int(f["attn_offsets"][local]) + sum(i * st for i, st in zip(pick, strides))
        shape = (n_heads, n, n)[len(pick):]
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
        if head is not None and not 0 <= head < self.config["n_heads"]:
            raise IndexError(f"head {head} out of range: the model has {self.config['n_heads']} heads")
        return self.prompt_activation(name, prompt, head)

    def activations(self, name: str, prompts: list[int] | None = None) -> np.ndarray:
        """The flat [tokens, ...] matrix of a per-token hook over the given prompts (all
        published prompts by default), in prompt order: what a probe trains on."""
        self._check(name)
        if is_attention_hook(name):
            raise InputError(f"{name} is per prompt [head, n, n]; use prompt_activation or pattern")
        if prompts is None:
            return np.concatenate([self._file(s)["act"][name][:] for s in range(len(self.manifest["shards"]))]) \
                if self.manifest["shards"] else np.zeros((0, *self.manifest["hooks"][name]["shape"]))
        return np.concatenate([self.prompt_activation(name, p) for p in prompts])

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


def _run_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest says about the run itself, leaving out what recording it changes."""
    return {k: v for k, v in manifest.items() if k not in ("shards", "complete", "finished")}


class TokenView:
    """``run[name]``: a per-token hook over the run's flat token axis, sliced lazily."""

    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.run.n_tokens, *self.run.manifest["hooks"][self.name]["shape"])

    def __len__(self) -> int:
        return self.run.n_tokens

    def __getitem__(self, key) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = self.run.n_tokens
        if isinstance(first, int):
            i = first + n if first < 0 else first
            if not 0 <= i < n:
                raise IndexError(f"token {first} out of range ({n} tokens)")
            return self._rows(i, i + 1)[0][rest] if rest else self._rows(i, i + 1)[0]
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            out = self._rows(start, max(start, stop))
            out = out[::step] if step != 1 else out
            return out[(slice(None), *rest)] if rest else out
        idx = np.asarray(first)
        order = np.argsort(idx)
        rows = np.stack([self[int(i)] for i in idx[order]]) if len(idx) else np.zeros((0, *self.shape[1:]))
        out = np.empty_like(rows)
        out[order] = rows
        return out[(slice(None), *rest)] if rest else out

    def _rows(self, start: int, stop: int) -> np.ndarray:
        run, parts = self.run, []
        for s, first in enumerate(run._first_token):
            count = run.manifest["shards"][s]["n_tokens"]
            a, b = max(start, first), min(stop, first + count)
            if a < b:
                parts.append(run._file(s)["act"][self.name][a - first:b - first])
        if not parts:
            return np.zeros((0, *self.shape[1:]))
        return np.concatenate(parts)


class PromptView:
    """``run[name]`` for attention hooks: ``view[prompt]`` -> [head, n, n],
    ``view[prompt, head]`` -> [n, n]."""

    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name

    def __len__(self) -> int:
        return self.run.n_prompts

    def __getitem__(self, key) -> np.ndarray:
        prompt, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        x = self.run.prompt_activation(self.name, int(prompt))
        return x[rest] if rest else x


def open_run(path: str | os.PathLike) -> Run:
    """Open a recorded run lazily (see `Run`)."""
    return Run(path)
