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
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError

SCHEMA_VERSION = 2  # the newest layout this version reads and writes
# Version 2 adds the target sequence of encoder-decoder runs (docs/cache-format.md); runs of the
# other models stay version 1, so every reader that read them still does, and a version-1
# reader refuses an encoder-decoder run rather than reading its decoder hooks at the wrong offsets.
TWO_SEQUENCES = 2


def schema_version(manifest: dict[str, Any]) -> int:
    """The layout version a run with this manifest is written in."""
    return TWO_SEQUENCES if manifest.get("model", {}).get("config", {}).get("encoder_decoder") else 1
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
    """Write, fsync, rename, fsync the directory: the file is either old or new, never torn.
    A failed write (a full disk) raises one OSError naming ``path`` and leaves no temp file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    fsync_dir(path.parent)


def shard_name(index: int) -> str:
    return f"{index:05d}.h5"


class ShardWriter:
    """Collects the batches of one shard in memory (bounded by ``--shard-mb``); `publish`
    writes them to ``NNNNN.h5.PID.tmp``, fsyncs and renames it into place.

    Uncompressed shards use contiguous datasets written straight from the batch arrays:
    one copy from the model's tensors to numpy, one into the file, and every read this
    format serves (a prompt's rows, a whole layer, one head's pattern) is a contiguous
    range. Compressed shards are chunked (`TOKEN_CHUNK`, `ATTN_CHUNK`).
    """

    def __init__(self, run_dir: Path, index: int, first_prompt: int, hooks: dict[str, dict], dtype: str,
                 compression: str, name: str | None = None):
        # ``name``: a Ray worker's shards are named by their first prompt, so that workers writing at
        # once, and a later single-process resume (which numbers by count), can never collide
        self.final = run_dir / SHARD_DIR / (name or shard_name(index))
        # a name of this writer's own: a second process can never write into the same file
        self.tmp = self.final.with_name(f"{self.final.name}.{os.getpid()}.tmp")
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
        # encoder-decoder runs: the target side (the decoder's tokens) of each prompt
        self.target_lengths: list[int] = []
        self.target_ids: list[np.ndarray] = []
        self.target_str: list[str] = []

    @property
    def n_prompts(self) -> int:
        return len(self.lengths)

    def add(self, lengths: list[int], n_heads: int, token_ids: np.ndarray, token_str: list[str],
            acts: dict[str, np.ndarray], token_spans: np.ndarray | None = None,
            target: tuple[list[int], np.ndarray, list[str]] | None = None) -> None:
        """Add a batch: ``acts[name]`` is [tokens, ...] for per-token hooks and the flat
        concatenation of each prompt's [head, n, n] block for attention hooks. Encoder-decoder
        runs give ``target`` (lengths, ids, strings of the decoder's tokens); their hooks'
        positions run over the sequence their manifest entry's ``sequence`` names."""
        if target is not None:
            self.target_lengths += target[0]
            self.target_ids.append(target[1].astype(np.int32))
            self.target_str += target[2]
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

    def _write(self, sink: _ShardFile) -> None:
        import h5py

        lengths = np.asarray(self.lengths, np.int64)
        with h5py.File(sink, "w", libver="latest") as f:
            f.attrs["schema_version"] = TWO_SEQUENCES if self.target_lengths else 1
            f.attrs["first_prompt"] = self.first_prompt
            f.attrs["n_prompts"] = self.n_prompts
            f.attrs["n_tokens"] = self.n_tokens
            f["offsets"] = np.concatenate([[0], np.cumsum(lengths)])
            f["attn_offsets"] = np.concatenate([[0], np.cumsum(self.n_heads * lengths * lengths)])
            f["token_ids"] = np.concatenate(self.token_ids)
            f.create_dataset("token_str", data=np.array(self.token_str, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f["token_spans"] = np.concatenate(self.token_spans)
            sizes = {"source": (self.n_tokens, self.n_attn)}
            if self.target_lengths:
                target = np.asarray(self.target_lengths, np.int64)
                f.attrs["n_target_tokens"] = int(target.sum())
                f["target_offsets"] = np.concatenate([[0], np.cumsum(target)])
                f["target_attn_offsets"] = np.concatenate([[0], np.cumsum(self.n_heads * target * target)])
                f["cross_attn_offsets"] = np.concatenate([[0], np.cumsum(self.n_heads * target * lengths)])
                f["target_token_ids"] = np.concatenate(self.target_ids)
                f.create_dataset("target_token_str", data=np.array(self.target_str, dtype=object),
                                 dtype=h5py.string_dtype("utf-8"))
                sizes["target"] = (int(target.sum()), int(f["target_attn_offsets"][-1]))
                sizes["cross"] = (0, int(f["cross_attn_offsets"][-1]))
            act, attn = f.create_group("act"), f.create_group("attn")
            for name, parts in self.batches.items():
                info = self.hooks[name]
                rest = tuple(info["shape"])
                n_tokens, n_attn = sizes[info.get("sequence", "source")]
                if info["kind"] == "attention":
                    shape, chunks, group = (n_attn,), (min(ATTN_CHUNK, n_attn),), attn
                else:
                    shape, chunks, group = (n_tokens, *rest), (min(TOKEN_CHUNK, n_tokens), *rest), act
                ds = group.create_dataset(name, shape, self.dtype, chunks=chunks if self.comp else None,
                                          **self.comp)
                at = 0
                for part in parts:
                    ds[at:at + len(part)] = part
                    at += len(part)
                parts.clear()  # free each batch as soon as it is on disk

    def publish(self) -> dict[str, Any]:
        """Write, fsync and rename into place. Returns the manifest entry. A failed write
        (disk full, quota, I/O error) raises one plain OSError naming the file and leaves
        no file behind."""
        sink = _ShardFile(self.tmp, self.final)
        try:
            self._write(sink)
            sink.sync()  # raises the first write error HDF5 was shielded from, or fsync's own
            os.replace(self.tmp, self.final)
        except BaseException:
            sink.close()
            self.discard()
            raise
        sink.close()
        fsync_dir(self.final.parent)
        entry = {"file": f"{SHARD_DIR}/{self.final.name}", "first_prompt": self.first_prompt,
                 "n_prompts": self.n_prompts, "n_tokens": self.n_tokens}
        if self.target_lengths:
            entry["n_target_tokens"] = sum(self.target_lengths)
        return entry

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class _ShardFile:
    """The file a shard is written through: HDF5 writes it via h5py's file-object driver,
    and never sees a write fail.

    Why: HDF5's own handling of a failed write is not safe. On a full disk a dataset whose
    chunks cannot be flushed is left half freed by its failed close, and the file close that
    follows (or the garbage collection of the dataset object, even after the error has been
    reported) crashes the process in ``H5D_close`` / ``H5D__flush_all_cb`` (HDF5 2.0, h5py
    3.16, compressed shards on a full tmpfs). So the first failed write is remembered and the
    rest of the shard goes to memory, over an image of what is on disk so that HDF5 reads back
    what it wrote; HDF5 finishes and closes normally, and `sync` raises the remembered error.
    The memory is only spent on that failure path, and at most one shard of it.
    """

    def __init__(self, path: Path, name: Path):
        self.name = name  # the shard's published name, for the error (the temp name means nothing to a user)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0
        self.error: OSError | None = None
        self.memory: bytearray | None = None  # the whole file, once a write has failed

    # the file-object interface h5py's driver calls: seek, tell, readinto, write, truncate, flush
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self._size()}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if self.memory is None:
            try:
                n = _pread_into(self.fd, view, self.pos)
            except OSError as e:
                self._fail(e)
        if self.memory is not None:
            chunk = self.memory[self.pos:self.pos + len(view)]
            n = len(chunk)
            view[:n] = chunk
        view[n:] = bytes(len(view) - n)  # h5py ignores a short read: past the end reads as zeros
        self.pos += len(view)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(max(0, self._size() - self.pos) if size < 0 else size)
        self.readinto(buf)
        return bytes(buf)

    def write(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if self.memory is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as e:
                self._fail(e)
        if self.memory is not None:
            end = self.pos + len(view)
            if end > len(self.memory):
                self.memory.extend(bytes(end - len(self.memory)))
            self.memory[self.pos:end] = view
        self.pos += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.memory is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self._fail(e)
        if self.memory is not None:
            del self.memory[size:]
            self.memory.extend(bytes(size - len(self.memory)))
        return size

    def flush(self) -> None:
        pass  # every write is already the kernel's; `sync` makes it durable

    # the shard's own use
    def sync(self) -> None:
        """fsync, or raise the first write error (a fresh OSError, so that no traceback into
        the HDF5 calls that met it stays alive)."""
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as e:
                self._fail(e)
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, str(self.name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _size(self) -> int:
        return len(self.memory) if self.memory is not None else os.fstat(self.fd).st_size

    def _fail(self, e: OSError) -> None:
        import errno

        if self.error is None:
            self.error = e if e.errno else OSError(errno.EIO, os.strerror(errno.EIO))
        if self.memory is None:
            self.memory = bytearray(os.fstat(self.fd).st_size)
            with contextlib.suppress(OSError):  # what cannot be read back stays zeros: the shard is lost anyway
                _pread_into(self.fd, memoryview(self.memory), 0)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or the file ends; the bytes read."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def write_failure(path: Path, e: OSError, published: int) -> StoreError:
    """The one-line error for a recording whose write failed: the run, what failed, what
    survived, and the fix."""
    import errno

    reason = e.strerror or str(e) or type(e).__name__
    reason = reason[0].lower() + reason[1:]
    where = ""
    if e.filename:
        file = Path(e.filename)
        where = f" ({file.relative_to(path) if file.is_relative_to(path) else file})"
    kept = f"prompts 0..{published - 1} are published intact" if published else "no prompt was published yet"
    fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the quota",
           errno.EFBIG: "raise the file-size limit", errno.EACCES: "make it writable",
           errno.EPERM: "make it writable", errno.EROFS: "make it writable"}.get(e.errno, "fix the disk")
    return StoreError(f"writing {path} failed: {reason}{where}; {kept}. To continue, {fix} and run "
                      f"`probe record ... --resume` with the same arguments")


LOCK = "writer.lock"
# What a run directory holds before its first manifest is written (a writer killed between
# mkdir and the manifest leaves exactly this): recognised as ours, so --resume and
# --overwrite accept it.
UNSTARTED_ENTRIES = {SHARD_DIR, PROMPTS, PROMPTS + ".tmp", MANIFEST + ".tmp", LOCK}


def run_state(path: Path) -> str | None:
    """"run" (a manifest), "unstarted" (the project's layout before its first manifest),
    "empty" (an empty directory), or None: not a run, never to be replaced or deleted."""
    if not path.is_dir() or path.is_symlink():
        return None
    if (path / MANIFEST).is_file():
        return "run"
    names = {p.name for p in path.iterdir()}
    if not names:
        return "empty"
    shards = path / SHARD_DIR
    if names <= UNSTARTED_ENTRIES and (not shards.exists() or (
            shards.is_dir() and all(f.name.endswith(".tmp") for f in shards.iterdir()))):
        return "unstarted"
    return None


def _abandoned_asides(path: Path) -> list[Path]:
    """Runs an earlier --overwrite of ``path`` moved aside and, killed, never removed: their
    writer's process no longer exists. (The user asked for them to be replaced.)"""
    stale = []
    for p in path.parent.glob(f".{path.name}.replaced-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except ValueError:
            continue  # not a name this module made
        except ProcessLookupError:
            stale.append(p)
        except PermissionError:  # alive, another user's
            continue
    return stale


class RunLock:
    """An exclusive lock on RUN/writer.lock (flock), held by the one writer of a run for its
    whole write and released by the OS when the process dies, however it dies. The file
    holds who holds it, for the message a second writer gets."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        import fcntl
        import socket

        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            try:
                who = json.loads(holder)
                who = f"process {who['pid']} on {who['host']} (since {who['started']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise StoreError(f"{run_dir} is being written by {who}; wait for it to finish or stop it, then "
                             "rerun (with --resume to continue the run)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        return cls(fd)

    def release(self) -> None:
        # The file stays: unlinking it would let a writer that opened it lock a file no one
        # else can find.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _already_exists(path: str | os.PathLike) -> StoreError:
    return StoreError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")


def check_run_target(path: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse a request that contradicts itself or would replace a run nobody named as one to
    replace; called before anything is loaded or touched."""
    if resume and overwrite:
        raise StoreError("--resume and --overwrite contradict each other; pick one")
    path = Path(path)
    if path.exists() and not (resume or overwrite):
        raise _already_exists(path)
    if overwrite and (path.exists() or path.is_symlink()):
        _refuse_if_not_a_run(path)


def _refuse_if_not_a_run(path: Path) -> None:
    """An --overwrite replaces runs only: anything else at ``path`` is refused, untouched."""
    if run_state(path) is None:
        what = "a directory holding other files" if path.is_dir() else "a file"
        raise StoreError(f"{path} is not a run directory ({what}); refusing to overwrite it: choose another "
                         "-o, or remove it yourself")


class RunWriter:
    """Creates or resumes a run directory and publishes shards into it."""

    def __init__(self, path: Path, manifest: dict[str, Any], lock: RunLock | None = None):
        self.path = path
        self.manifest = manifest
        self.lock = lock  # held from create/resume until close(): one writer per run

    # -------------------------------------------------------------- create / resume
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: dict[str, Any], prompts_jsonl: str,
               overwrite: bool = False) -> RunWriter:
        """Start a run at ``path``. With ``overwrite``, an existing run (or a run directory
        whose manifest was never written, or an empty directory) is replaced, and nothing
        else is: the old run is locked, moved aside, and removed only once the new one has
        its manifest, so no moment leaves a manifest naming shards that are gone."""
        path = Path(path)
        aside, old_lock = None, None
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise _already_exists(path)
            _refuse_if_not_a_run(path)
            old_lock = RunLock.acquire(path)  # refuses a run another writer is writing
            aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.rename(path, aside)
        try:
            writer = cls._start(path, manifest, prompts_jsonl)
        except BaseException:
            if aside is not None and not path.exists():
                os.rename(aside, path)  # the new run could not start: the old one stays as it was
            raise
        finally:
            if old_lock is not None:
                old_lock.release()
        import shutil

        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        for stale in _abandoned_asides(path):  # an overwrite killed midway left the run it replaced
            shutil.rmtree(stale, ignore_errors=True)
        return writer

    @classmethod
    def _start(cls, path: Path, manifest: dict[str, Any], prompts_jsonl: str) -> RunWriter:
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise StoreError(f"{path} was created by another writer just now; pass --resume to continue it or "
                             "--overwrite to replace it") from None
        except OSError as e:
            raise StoreError(f"cannot create {path}: {e.strerror}; choose a writable location") from None
        lock = None
        try:
            lock = RunLock.acquire(path)
            (path / SHARD_DIR).mkdir()
            manifest = {**manifest, "schema_version": schema_version(manifest),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": False, "shards": []}
            writer = cls(path, manifest, lock)
            atomic_write_text(path / PROMPTS, prompts_jsonl)
            writer.write_manifest()
        except BaseException:
            # The directory is this call's own and holds nothing published: remove it, so a
            # run it was replacing can come back (create) and nothing half-made is left.
            import shutil

            if lock is not None:
                lock.release()
            shutil.rmtree(path, ignore_errors=True)
            raise
        return writer

    @classmethod
    def resume(cls, path: str | os.PathLike, expected: dict[str, Any]) -> RunWriter:
        """Reopen an incomplete run. ``expected`` holds the settings that must match (model
        digest, prompts fingerprint, hooks, dtype...) so a resumed run equals a fresh one."""
        path = Path(path)
        read_manifest(path)  # a clear error for what is not a run, before taking its lock
        lock = RunLock.acquire(path)
        try:
            manifest = read_manifest(path)  # again, under the lock: the last writer may have just finished
            for key, value in expected.items():
                if manifest.get(key) != value:
                    raise StoreError(f"cannot resume {path}: its {key} differs from this invocation's "
                                     f"({_short(manifest.get(key))} vs {_short(value)}); use the same settings, "
                                     "or --overwrite to start again")
            # Anything not named by the manifest is debris from a crash: a half-written .tmp,
            # or a shard renamed into place just before the manifest could list it. (Under
            # the lock no other writer can be writing one.)
            writer = cls(path, manifest, lock)
            writer.remove_unlisted()
            with contextlib.suppress(FileNotFoundError):
                (path / (MANIFEST + ".tmp")).unlink()
        except BaseException:
            lock.release()
            raise
        return writer

    def remove_unlisted(self) -> None:
        """Delete what ``shards/`` holds that the manifest does not list: debris of a crash (a
        half-written .tmp, or a shard renamed into place just before the manifest could list it).
        Only the writer may: under the lock no one else is writing one."""
        listed = {s["file"] for s in self.manifest["shards"]}
        for f in (self.path / SHARD_DIR).iterdir():
            if f"{SHARD_DIR}/{f.name}" not in listed:
                f.unlink(missing_ok=True)

    def close(self) -> None:
        """Let other writers in (the OS does it too if this process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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
        self.close()

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
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, absurdly nested
        raise StoreError(f"{path / MANIFEST} is corrupt ({str(e)[:80]}); the run cannot be read") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path / MANIFEST} holds a JSON {type(manifest).__name__}, not an object; it is not a "
                         "probe run")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise StoreError(f"{path / MANIFEST} has no schema_version; it is not a probe run")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written with cache schema {version}, newer than this probe reads "
                         f"({SCHEMA_VERSION}); upgrade probe")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{path / MANIFEST} lacks {', '.join(missing)}; the run is damaged and cannot be read")
    from .run_schema import validate_manifest

    return validate_manifest(manifest, path / MANIFEST)


def _short(x: Any) -> str:
    s = json.dumps(x, default=str)
    return s if len(s) < 60 else s[:57] + "..."
