"""The activation store: a run directory of immutable HDF5 shards plus a JSON manifest.

Layout (documented for other tools in docs/cache-format.md)::

    RUN/
      run.json        manifest, replaced atomically; lists the published shards
      prompts.jsonl   every prompt of the run with its label fields, written once
      shards/00000.h5 immutable once published (written as .tmp, fsynced, renamed)

Why this shape (docs/design.md, "The activation store"): an HDF5 writer killed without a
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

# Chunk shapes for compressed shards (uncompressed shards are contiguous), chosen by
# measurement (bench/store_reads.py, docs/cache-format.md): 128 tokens per chunk for
# per-token activations; attention is a flat per-layer array of every prompt's
# [head, query, key] block, in chunks of 32768 values, so one (prompt, head) pattern of a
# prompt up to ~180 tokens touches one or two chunks.
TOKEN_CHUNK = 128
ATTN_CHUNK = 32768
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
    """Collects the batches of one shard in memory (bounded by ``--shard-mb``); `publish`
    writes them to ``NNNNN.h5.tmp``, fsyncs and renames it into place.

    Uncompressed shards use contiguous datasets written straight from the batch arrays:
    one copy from the model's tensors to numpy, one into the file, and every read this
    format serves (a prompt's rows, a whole layer, one head's pattern) is a contiguous
    range. Compressed shards are chunked (`TOKEN_CHUNK`, `ATTN_CHUNK`).
    """

    def __init__(self, run_dir: Path, index: int, first_prompt: int, hooks: dict[str, dict], dtype: str,
                 compression: str):
        self.final = run_dir / SHARD_DIR / shard_name(index)
        self.tmp = self.final.with_name(self.final.name + ".tmp")
        self.index, self.first_prompt = index, first_prompt
        self.hooks, self.dtype, self.compression = hooks, np.dtype(dtype), compression
        self.comp = compression_options(compression)
        self.lengths: list[int] = []
        self.n_heads = 0
        self.token_ids: list[np.ndarray] = []
        self.token_str: list[str] = []
        self.token_spans: list[np.ndarray] = []
        self.batches: dict[str, list[np.ndarray]] = {name: [] for name in hooks}
        self.n_tokens = self.n_attn = self.nbytes = 0

    @property
    def n_prompts(self) -> int:
        return len(self.lengths)

    def add(self, lengths: list[int], n_heads: int, token_ids: np.ndarray, token_str: list[str],
            acts: dict[str, np.ndarray], token_spans: np.ndarray | None = None) -> None:
        """Add a batch: ``acts[name]`` is [tokens, ...] for per-token hooks and the flat
        concatenation of each prompt's [head, n, n] block for attention hooks."""
        self.lengths += lengths
        self.n_heads = n_heads
        self.token_ids.append(token_ids.astype(np.int32))
        self.token_str += token_str
        if token_spans is None:
            token_spans = np.full((len(token_ids), 2), -1, np.int32)
        self.token_spans.append(token_spans.astype(np.int32))
        for name, data in acts.items():
            self.batches[name].append(data)
            self.nbytes += data.nbytes
        self.n_tokens += sum(lengths)
        self.n_attn += sum(n_heads * n * n for n in lengths)

    def _write(self) -> None:
        import h5py

        lengths = np.asarray(self.lengths, np.int64)
        with h5py.File(self.tmp, "w", libver="latest") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["first_prompt"] = self.first_prompt
            f.attrs["n_prompts"] = self.n_prompts
            f.attrs["n_tokens"] = self.n_tokens
            f["offsets"] = np.concatenate([[0], np.cumsum(lengths)])
            f["attn_offsets"] = np.concatenate([[0], np.cumsum(self.n_heads * lengths * lengths)])
            f["token_ids"] = np.concatenate(self.token_ids)
            f.create_dataset("token_str", data=np.array(self.token_str, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f["token_spans"] = np.concatenate(self.token_spans)
            act, attn = f.create_group("act"), f.create_group("attn")
            for name, parts in self.batches.items():
                info = self.hooks[name]
                rest = tuple(info["shape"])
                if info["kind"] == "attention":
                    shape, chunks, group = (self.n_attn,), (min(ATTN_CHUNK, self.n_attn),), attn
                else:
                    shape, chunks, group = (self.n_tokens, *rest), (min(TOKEN_CHUNK, self.n_tokens), *rest), act
                ds = group.create_dataset(name, shape, self.dtype, chunks=chunks if self.comp else None,
                                          **self.comp)
                at = 0
                for part in parts:
                    ds[at:at + len(part)] = part
                    at += len(part)
                parts.clear()  # free each batch as soon as it is on disk

    def publish(self) -> dict[str, Any]:
        """Write, fsync and rename into place. Returns the manifest entry. A failed write
        raises OSError and leaves no file behind."""
        try:
            self._write()
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except (OSError, RuntimeError) as e:  # h5py reports some write failures as RuntimeError
            _collect_quietly()
            self.discard()
            raise OSError(_errno_of(e), _reason(e)) from None
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return {"file": f"{SHARD_DIR}/{self.final.name}", "first_prompt": self.first_prompt,
                "n_prompts": self.n_prompts, "n_tokens": self.n_tokens}

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _collect_quietly() -> None:
    """After a failed write h5py's object destructors report the same failure again as
    'Exception ignored' noise on stderr; collect them now with that report silenced (the
    error itself is raised once, with a clear message)."""
    import gc
    import sys

    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def _errno_of(e: BaseException) -> int:
    import errno

    if isinstance(e, OSError) and e.errno:
        return e.errno
    text = str(e)
    for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS):
        if f"errno = {code}" in text:
            return code
    return errno.EIO


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return os.strerror(_errno_of(e))


def check_run_target(path: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse a request that contradicts itself or would replace a run nobody named as one to
    replace; called before anything is loaded or touched."""
    if resume and overwrite:
        raise StoreError("--resume and --overwrite contradict each other; pick one")
    if Path(path).exists() and not (resume or overwrite):
        raise StoreError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")


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

    def open_shard(self, hooks: dict[str, dict], dtype: str, compression: str) -> ShardWriter:
        return ShardWriter(self.path, len(self.manifest["shards"]), self.next_prompt, hooks, dtype, compression)

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


# What a reader relies on in every manifest (docs/cache-format.md, "run.json").
MANIFEST_KEYS = ("model", "hooks", "n_prompts", "complete", "shards")


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
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{path / MANIFEST} lacks {', '.join(missing)}; the run is damaged and cannot be read")
    return manifest


def iter_jsonl(text: str) -> Iterator[dict]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def _short(x: Any) -> str:
    s = json.dumps(x, default=str)
    return s if len(s) < 60 else s[:57] + "..."
