"""Recording one run with many workers on Ray (`probe record --workers N`).

The driver (the `probe record` process) does what a single-process recording does first: it
checks every argument, tokenizes every prompt, takes the run's writer lock and writes the
manifest. It then splits the prompts still to record into units of whole batches and hands them
to N Ray actors, each with its own copy of the model. A worker records its unit batch by batch
exactly as the single-process recorder does (`probe.recorder.add_batch`) and writes each shard
the same way (a temp name, fsync, rename), named by its first prompt so no two workers' files
can collide; it never touches the manifest. The driver lists a unit's shards in the manifest as
soon as every unit before it is listed too, so the manifest always describes a gap-free prefix
of the prompts, which is what every reader (and the dashboard, while the run grows) relies on.

Faults: a worker that dies (its process killed, its node lost) has its unit given to a new
worker; a unit whose workers die three times stops the run with a clear error. A shard renamed
into place but not yet listed when the driver dies is debris that `--resume` deletes, as for the
single-process recorder, and `--resume` (with or without workers) records what is missing.
A worker that cannot load the model, or loads other weights than the driver's, stops the run
before its directory is touched. A full disk on a worker stops the run with the recorder's
one-line error; every worker is stopped before the driver removes whatever shard the manifest
does not list, so what is published is exactly what `shards/` holds.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
from .store import RunWriter, ShardWriter, StoreError

MAX_TRIES = 3  # a unit is given to a fresh worker this many times before the run stops
UNITS_PER_WORKER = 4  # enough units that a slow or restarted worker does not hold the others up


def check_workers(workers: Any) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers must be a whole number of at least 1, not {workers!r}")
    return workers


def connect(address: str | None, workers: int) -> Any:
    """The `ray` module, connected: to the cluster at ``address``, or to a local cluster started
    for this recording with one CPU per worker. One line naming the problem when Ray is missing
    or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise InputError("--workers needs Ray: pip install 'probe-workbench[ray]' (make test installs it)") from None
    if ray.is_initialized():
        return ray
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise InputError(f"cannot reach {where}: {str(e).strip().splitlines()[0][:200]}; check --ray-address "
                         "(host:port of a running cluster's head, or leave it out to start one here)") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse, within seconds, an address nothing listens on (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address must be HOST:PORT (a Ray head, e.g. 10.0.0.5:6379), not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check --ray-address, or "
                         "leave it out to start a local cluster") from None


def units_of(start: int, n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[first, end) ranges of whole batches covering prompts start..n, about UNITS_PER_WORKER per worker."""
    batches = -(-(n - start) // batch_size)
    per_unit = max(1, -(-batches // (workers * UNITS_PER_WORKER)))
    size = per_unit * batch_size
    return [(b0, min(b0 + size, n)) for b0 in range(start, n, size)]


class Worker:
    """One Ray actor: a model, and the recording settings of the run."""

    def __init__(self, model_name: str, model_dtype: str, threads: int, settings: dict[str, Any],
                 weights_sha256: str):
        import torch

        import models

        from .recorder import weights_digest

        torch.set_num_threads(threads)  # as the driver's: the same arithmetic, so the same bits
        self.model = models.load(model_name, dtype=model_dtype)
        # The same name or path can hold other weights on another machine (or changed since the
        # driver loaded it): such a worker would write shards of another model into the run.
        if weights_digest(self.model) != weights_sha256:
            raise ValueError(f"the model {model_name!r} on this worker's machine has other weights than the "
                             "driver's; give every worker the same checkpoint")
        self.settings = settings

    def pid(self) -> int:
        return os.getpid()

    def record_unit(self, path: str, first: int, end: int, prompts: list, token_rows: list[list[int]],
                    target_rows: list[list[int]] | None) -> list[dict[str, Any]]:
        """Record prompts first..end-1 (``prompts`` and the rows are that slice) into shards of at
        most the run's shard budget; returns their manifest entries, in prompt order."""
        from .recorder import add_batch

        s = self.settings
        entries, shard = [], None
        for b0 in range(0, end - first, s["batch_size"]):
            if shard is None:
                shard = ShardWriter(Path(path), 0, first + b0, s["hooks"], s["dtype"], s["compression"],
                                    name=f"p{first + b0:09d}.h5")
            add_batch(shard, self.model, prompts, token_rows, target_rows, b0, s["batch_size"], s["hook_names"],
                      s["dtype"])
            if shard.nbytes >= s["budget"]:
                entries.append(shard.publish())
                shard = None
        if shard is not None:
            entries.append(shard.publish())
        return entries


class WorkerPool:
    """``workers`` Ray actors, each with the model loaded and checked against the driver's weights,
    and fresh ones for those that die. Started before the run's directory is touched, so a worker
    that cannot load the model stops the recording with nothing written."""

    def __init__(self, ray: Any, model_name: str, model_dtype: str, weights_sha256: str, workers: int,
                 settings: dict[str, Any]):
        import torch

        self.ray, self.model_name = ray, model_name
        actor_class = ray.remote(num_cpus=1, max_restarts=0)(Worker)
        self._new = lambda: actor_class.remote(model_name, model_dtype, torch.get_num_threads(), settings,
                                               weights_sha256)
        self.actors = [self._new() for _ in range(workers)]
        try:
            ray.get([a.pid.remote() for a in self.actors])  # every worker has loaded the model
        except ray.exceptions.RayError as e:
            self.close()
            raise StoreError(f"a Ray worker could not load the model {model_name!r}: {_first_line(e)}") from None

    def replace(self, actor: Any) -> Any:
        """A new worker in place of ``actor`` (which died)."""
        new = self._new()
        self.actors[self.actors.index(actor)] = new
        return new

    def close(self) -> None:
        """Kill every worker and wait until each is gone, so none is still writing a shard (a
        worker left running would also hold its CPU)."""
        for actor in self.actors:
            self.ray.kill(actor)
        for actor in self.actors:
            try:
                self.ray.get(actor.pid.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - dead, as asked (ActorDiedError), or unreachable
                pass


def record_on_ray(pool: WorkerPool, writer: RunWriter, prompts: list, token_rows: list[list[int]],
                  target_rows: list[list[int]] | None, batch_size: int, bar: Any = None, on_unit: Any = None) -> None:
    """Record prompts writer.next_prompt.. on the pool's workers and list their shards in order
    (see the module). ``on_unit(unit index, actors)`` is called after each unit is listed (the
    tests kill a worker there). However it ends, the workers are stopped and any shard they
    wrote that the manifest does not list is removed (a unit recorded past a gap, a temp file of
    a worker stopped mid-write): what the manifest lists is what is in ``shards/``."""
    try:
        _run_units(pool, writer, prompts, token_rows, target_rows, batch_size, bar, on_unit)
    finally:
        pool.close()
        writer.remove_unlisted()


def _run_units(pool, writer, prompts, token_rows, target_rows, batch_size, bar, on_unit) -> None:
    ray = pool.ray
    start, n = writer.next_prompt, len(prompts)
    units = units_of(start, n, batch_size, len(pool.actors))
    pending = deque(range(len(units)))
    tries = [0] * len(units)
    running: dict[Any, tuple[Any, int]] = {}
    finished: dict[int, list[dict[str, Any]]] = {}
    listed = 0
    idle = list(pool.actors)
    while pending or running:
        while pending and idle:
            actor, u = idle.pop(), pending.popleft()
            a, b = units[u]
            tries[u] += 1
            rows = target_rows[a:b] if target_rows is not None else None
            running[actor.record_unit.remote(str(writer.path), a, b, prompts[a:b], token_rows[a:b], rows)] = (actor, u)
        ready, _ = ray.wait(list(running), num_returns=1)
        actor, u = running.pop(ready[0])
        try:
            entries = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:  # the worker died: its unit goes to a new one
            if tries[u] >= MAX_TRIES:
                raise StoreError(f"prompts {units[u][0]}-{units[u][1] - 1}: {MAX_TRIES} workers died recording them "
                                 f"(last: {_first_line(e)}); the prompts before them are published, "
                                 "--resume continues") from None
            print(f"note: a Ray worker died on prompts {units[u][0]}-{units[u][1] - 1}; giving them to a new worker",
                  file=sys.stderr)
            pending.appendleft(u)
            idle.append(pool.replace(actor))
            continue
        except ray.exceptions.RayTaskError as e:  # the recording raised: a full disk, a bug
            cause = getattr(e, "cause", None)
            if isinstance(cause, OSError):
                raise cause from None
            raise
        idle.append(actor)
        finished[u] = entries
        while listed in finished:  # list the gap-free prefix, in prompt order
            writer.manifest["shards"] += finished.pop(listed)
            writer.write_manifest()
            a, b = units[listed]
            if bar:
                bar.advance(b - a, sum(len(r) for r in token_rows[a:b]))
            listed += 1
            if on_unit is not None:
                on_unit(listed - 1, pool.actors)


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


# ------------------------------------------------------------------ analyses over shards
def shard_groups(run: Any, prompts: list[int]) -> list[list[int]]:
    """``prompts`` grouped by the shard holding them, in shard order (each group one file's reads)."""
    starts = [s["first_prompt"] for s in run.manifest["shards"]]
    groups: dict[int, list[int]] = {}
    import bisect

    for p in prompts:
        groups.setdefault(bisect.bisect_right(starts, p) - 1, []).append(p)
    return [groups[k] for k in sorted(groups)]


def _on_shard(fn: Any, path: str, prompts: list[int]) -> Any:
    from .reader import open_run

    with open_run(path) as run:
        return fn(run, prompts)


def map_over_shards(run: Any, prompts: list[int], fn: Any, workers: int | None = None,
                    ray_address: str | None = None, by_shard: bool = False) -> Iterator[Any]:
    """``fn(run, prompts_of_one_shard)`` for each shard's share of ``prompts``, in shard order,
    as Ray tasks on ``workers`` that each open the run themselves (the run's directory must be
    where the workers can read it: this machine, or a shared file system). Without workers,
    ``fn(run, prompts)`` once here, or with ``by_shard`` the same per-shard calls here (for sums
    that must add up in the same order either way, and for reads that must not hold the whole
    run). Results are yielded one at a time, so a caller that consumes them as they come holds
    one shard's."""
    if workers is None and not by_shard:
        yield fn(run, list(prompts))
        return
    groups = shard_groups(run, prompts)
    if workers is None:
        for g in groups:
            yield fn(run, g)
        return
    ray = connect(ray_address, check_workers(workers))
    task = ray.remote(num_cpus=1)(_on_shard)
    refs = [task.remote(fn, str(run.path), g) for g in groups]
    for k in range(len(refs)):
        yield ray.get(refs[k])
        refs[k] = None  # let Ray free the result once it is here


def in_prompt_order(run: Any, prompts: list[int], fn: Any, workers: int | None = None,
                    ray_address: str | None = None) -> Iterator[tuple[int, Any]]:
    """(prompt, ``fn``'s entry for it, or None when it gave none) for each of ``prompts`` in the
    order given, ``fn(run, prompts_of_one_shard)`` returning {prompt: entry}. Read shard by shard
    (here or on ``workers``); only entries that arrive ahead of their turn are held, so for
    prompts in ascending order memory holds one shard's entries, whatever the run's size."""
    from collections import Counter

    left = Counter(prompts)  # a prompt asked twice is held until its last turn
    held: dict[int, Any] = {}
    done: set[int] = set()
    at = 0
    for group, part in zip(shard_groups(run, prompts), map_over_shards(run, prompts, fn, workers, ray_address,
                                                                         by_shard=True)):
        held.update(part)
        done.update(group)
        while at < len(prompts) and prompts[at] in done:
            p = prompts[at]
            left[p] -= 1
            yield p, (held.pop(p, None) if not left[p] else held.get(p))
            at += 1
