"""The activation store: a run directory of immutable HDF5 shards plus a JSON manifest.

Layout (documented for other tools in docs/cache-format.md)::

    RUN/
      run.json        manifest, replaced atomically; lists the published shards
      prompts.jsonl   every prompt of the run with its label fields, written once
      shards/00000.h5 immutable once published (written as .tmp, fsynced, renamed)

Why this shape (DESIGN.md, "The activation store"): an HDF5 writer killed without a
flush leaves an unreadable file, while a file written under a temporary name, fsynced and
renamed survives. So nothing is ever modified after it is published: a crash can only
lose the shard being written, a reader sees exactly the shards the manifest names, and
``--resume`` restarts after the last published shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError

SCHEMA_VERSION = 1
MANIFEST = "run.json"
PROMPTS = "prompts.jsonl"
SHARD_DIR = "shards"

# Chunk shapes, chosen by measurement (bench/record.py, docs/cache-format.md): 128 tokens
# per chunk for per-token activations; attention is a flat per-layer array of every
# prompt's [head, query, key] block, in chunks of 32768 values, so one (prompt, head)
# pattern of a prompt up to ~180 tokens touches one or two chunks.
TOKEN_CHUNK = 128
ATTN_CHUNK = 32768
ATTENTION_HOOKS = ("hook_attn_scores", "hook_pattern")


def is_attention(name: str) -> bool:
    return name.endswith(ATTENTION_HOOKS)


def compression_options(name: str) -> dict[str, Any]:
    """h5py dataset keywords for a compression choice: none, gzip (gzip-1), lz4 (blosc-lz4
    through hdf5plugin, which readers then need too)."""
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if name == "lz4":
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise StoreError(f"unknown compression {name!r}; use none, gzip or lz4")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the directory: the file is either old or new, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def shard_name(index: int) -> str:
    return f"{index:05d}.h5"


class ShardWriter:
    """Builds one shard as an in-memory HDF5 image; `publish` writes it to a temporary
    name with plain file writes, fsyncs and renames it. Memory is bounded by the shard size
    (``--shard-mb``); a failed write (disk full, permissions) is a plain OSError and leaves
    nothing published half-written."""

    def __init__(self, run_dir: Path, index: int, first_prompt: int, hooks: dict[str, dict], dtype: str,
                 compression: str, expected_tokens: int = TOKEN_CHUNK, expected_attn: int = ATTN_CHUNK):
        import h5py

        self.final = run_dir / SHARD_DIR / shard_name(index)
        self.tmp = self.final.with_name(self.final.name + ".tmp")
        self.index, self.first_prompt = index, first_prompt
        self.n_prompts = self.n_tokens = self.n_attn = 0
        self.f = h5py.File(f"shard-{index}", "w", driver="core", backing_store=False, libver="latest")
        self.f.attrs["schema_version"] = SCHEMA_VERSION
        self.f.attrs["first_prompt"] = first_prompt
        comp = compression_options(compression)
        # A shard expected to be small gets smaller chunks: HDF5 allocates whole chunks.
        token_chunk = max(1, min(TOKEN_CHUNK, expected_tokens))
        attn_chunk = max(1, min(ATTN_CHUNK, expected_attn))
        np_dtype = np.dtype(dtype)
        str_dtype = h5py.string_dtype("utf-8")
        self.ds: dict[str, Any] = {
            "offsets": self.f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,)),
            "attn_offsets": self.f.create_dataset("attn_offsets", data=np.zeros(1, np.int64), maxshape=(None,),
                                                  chunks=(1024,)),
            "token_ids": self.f.create_dataset("token_ids", (0,), np.int32, maxshape=(None,), chunks=(4096,)),
            "token_str": self.f.create_dataset("token_str", (0,), str_dtype, maxshape=(None,), chunks=(4096,)),
        }
        act, attn = self.f.create_group("act"), self.f.create_group("attn")
        for name, info in hooks.items():
            rest = tuple(info["shape"])
            if info["kind"] == "attention":
                self.ds[name] = attn.create_dataset(name, (0,), np_dtype, maxshape=(None,), chunks=(attn_chunk,),
                                                    **comp)
            else:
                self.ds[name] = act.create_dataset(name, (0, *rest), np_dtype, maxshape=(None, *rest),
                                                   chunks=(token_chunk, *rest), **comp)

    @staticmethod
    def _append(ds, data: np.ndarray) -> None:
        n = ds.shape[0]
        ds.resize(n + data.shape[0], axis=0)
        ds[n:] = data

    def add(self, lengths: list[int], n_heads: int, token_ids: np.ndarray, token_str: list[str],
            acts: dict[str, np.ndarray]) -> None:
        """Append a batch: ``acts[name]`` is [tokens, ...] for per-token hooks and the flat
        concatenation of each prompt's [head, n, n] block for attention hooks."""
        ends = self.n_tokens + np.cumsum(lengths)
        attn_ends = self.n_attn + np.cumsum([n_heads * n * n for n in lengths])
        self._append(self.ds["offsets"], ends)
        self._append(self.ds["attn_offsets"], attn_ends)
        self._append(self.ds["token_ids"], token_ids.astype(np.int32))
        self._append(self.ds["token_str"], np.array(token_str, dtype=object))
        for name, data in acts.items():
            self._append(self.ds[name], data)
        self.n_prompts += len(lengths)
        self.n_tokens = int(ends[-1])
        self.n_attn = int(attn_ends[-1])

    def publish(self) -> dict[str, Any]:
        """Close, fsync and rename into place. Returns the manifest entry."""
        self.f.attrs["n_prompts"] = self.n_prompts
        self.f.attrs["n_tokens"] = self.n_tokens
        self.f.flush()
        image = self.f.id.get_file_image()
        self.f.close()
        try:
            with open(self.tmp, "wb") as fh:
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            self.discard()
            raise
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return {"file": f"{SHARD_DIR}/{self.final.name}", "first_prompt": self.first_prompt,
                "n_prompts": self.n_prompts, "n_tokens": self.n_tokens}

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class RunWriter:
    """Creates or resumes a run directory and publishes shards into it."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    # -------------------------------------------------------------- create / resume
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: dict[str, Any], prompts_jsonl: str,
               overwrite: bool = False) -> RunWriter:
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")
            if path.is_dir() and not (path / MANIFEST).exists() and any(path.iterdir()):
                raise StoreError(f"{path} is a non-empty directory that is not a run; refusing to overwrite it")
            import shutil

            shutil.rmtree(path) if path.is_dir() else path.unlink()
        try:
            (path / SHARD_DIR).mkdir(parents=True)
        except OSError as e:
            raise StoreError(f"cannot create {path}: {e.strerror}; choose a writable location") from None
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "complete": False, "shards": []}
        writer = cls(path, manifest)
        atomic_write_text(path / PROMPTS, prompts_jsonl)
        writer.write_manifest()
        return writer

    @classmethod
    def resume(cls, path: str | os.PathLike, expected: dict[str, Any]) -> RunWriter:
        """Reopen an incomplete run. ``expected`` holds the settings that must match (model
        digest, prompts fingerprint, hooks, dtype...) so a resumed run equals a fresh one."""
        path = Path(path)
        manifest = read_manifest(path)
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise StoreError(f"cannot resume {path}: its {key} differs from this invocation's "
                                 f"({_short(manifest.get(key))} vs {_short(value)}); use the same settings, "
                                 "or --overwrite to start again")
        # Anything not named by the manifest is debris from a crash: a half-written .tmp,
        # or a shard renamed into place just before the manifest could list it.
        listed = {s["file"] for s in manifest["shards"]}
        for f in (path / SHARD_DIR).iterdir():
            if f"{SHARD_DIR}/{f.name}" not in listed:
                f.unlink()
        with contextlib.suppress(FileNotFoundError):
            (path / (MANIFEST + ".tmp")).unlink()
        return cls(path, manifest)

    # -------------------------------------------------------------- shards
    @property
    def next_prompt(self) -> int:
        return sum(s["n_prompts"] for s in self.manifest["shards"])

    def open_shard(self, hooks: dict[str, dict], dtype: str, compression: str, expected_tokens: int,
                   expected_attn: int) -> ShardWriter:
        return ShardWriter(self.path, len(self.manifest["shards"]), self.next_prompt, hooks, dtype, compression,
                           expected_tokens, expected_attn)

    def publish(self, shard: ShardWriter) -> None:
        entry = shard.publish()
        self.manifest["shards"].append(entry)
        self.write_manifest()

    def finish(self) -> None:
        self.manifest["complete"] = True
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write_manifest()

    def write_manifest(self) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=1))


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a run directory, with clear errors for what is not a run."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist; record a run first with `probe record`")
    if not path.is_dir() or not (path / MANIFEST).exists():
        raise StoreError(f"{path} is not a probe run (a directory with {MANIFEST}); record one with `probe record`")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path / MANIFEST} is corrupt ({e}); the run cannot be read") from None
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise StoreError(f"{path / MANIFEST} has no schema_version; it is not a probe run")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written with cache schema {version}, newer than this probe reads "
                         f"({SCHEMA_VERSION}); upgrade probe")
    return manifest


def iter_jsonl(text: str) -> Iterator[dict]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def _short(x: Any) -> str:
    s = json.dumps(x, default=str)
    return s if len(s) < 60 else s[:57] + "..."
