"""A write that fails while recording (probe/store.py's shard publishing, probe/recorder.py's
failure path), on a real small filesystem: a tmpfs the test mounts (root only; the tests say
why they skip otherwise, and CI runs them as root) with a filler file that leaves room for a
couple of shards. The disk fills mid-run; the recorder must say so in one line and exit 2,
keep every published shard intact and leave no partial one, and ``--resume`` after the
filler is removed must give exactly the uninterrupted run.

test_store_crash_safety.py simulates a full disk with a file-size limit (EFBIG) on an
uncompressed run; that never reached the crash this file guards against: with compressed
(chunked) shards HDF5's own failure path segfaulted (H5D_close / H5D__flush_all_cb after a
chunk flush failed). The EFBIG case with compression is here too, as it needs no mount."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import fill, run_cli

import probe
from probe.store import RunWriter, ShardWriter, read_manifest, write_failure

N_PROMPTS = 96  # six batches of 16 (the default): six shards of ~3.3 MB uncompressed
SETTINGS = ["--model", "toy-coref", "--shard-mb", "0.05"]  # --shard-mb this small: one shard per batch
COMPRESSIONS = ["none", "gzip"]  # gzip: chunked shards, where the crash was


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The first prompts of toy-coref-test as a JSONL file, and the uninterrupted reference
    run of each compression, recorded by the CLI on an ordinary disk."""
    tmp = tmp_path_factory.mktemp("full_disk")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p.text, **p.labels}) + "\n"
                               for p in probe.load_prompts("toy-coref-test")[:N_PROMPTS]))
    refs = {}
    for compression in COMPRESSIONS:
        refs[compression] = tmp / f"reference-{compression}"
        r = record(prompts, refs[compression], compression)
        assert r.returncode == 0, r.stderr
    return prompts, refs


def record(prompts: Path, out: Path, compression: str, *extra: str, env_code: str = ""):
    return run_cli("record", *SETTINGS, "--prompts", prompts, "-o", out, "--compression", compression, *extra,
                   timeout=300, env_code=env_code)


def shard_contents(path: Path) -> dict:
    """Every attribute and dataset of a shard, as bytes (bit-for-bit comparable)."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/attrs"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = [bytes(s) for s in data] if data.dtype == object else (data.dtype.str, data.shape,
                                                                                   data.tobytes())
        f.visititems(visit)
    return out


def assert_shards_equal(run: Path, ref: Path, n: int | None = None) -> None:
    """The first ``n`` shards of ``run`` (all, by default) are those of ``ref``: the same
    manifest entries and the same bytes in every dataset and attribute."""
    shards, ref_shards = read_manifest(run)["shards"], read_manifest(ref)["shards"]
    assert shards == ref_shards[:len(shards) if n is None else n]
    for entry in shards:
        assert shard_contents(run / entry["file"]) == shard_contents(ref / entry["file"]), entry["file"]


def assert_clean_failure(r: subprocess.CompletedProcess, run: Path, reason: str, published: bool = True) -> None:
    """Exit 2 with one error line naming the run, what failed and the fix; published shards
    intact and readable, nothing partial left behind."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])  # a segfault is -11
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("recording ")]
    assert len(lines) == 1, r.stderr[-3000:]  # progress lines aside, only the error
    error = lines[0]
    assert error.startswith(f"probe record: error: writing {run} failed: {reason}"), error
    assert "--resume" in error and "published" in error
    manifest = read_manifest(run)
    assert not manifest["complete"] and len(manifest["shards"]) < N_PROMPTS // 16
    assert bool(manifest["shards"]) == published
    listed = {run / s["file"] for s in manifest["shards"]}
    assert set((run / "shards").iterdir()) == listed  # no partial shard, no temp file
    assert not list(run.rglob("*.tmp"))
    for entry in manifest["shards"]:
        with h5py.File(run / entry["file"], "r") as f:
            assert f.attrs["n_prompts"] == entry["n_prompts"] and len(f["offsets"]) == entry["n_prompts"] + 1


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_full_disk_fails_cleanly_and_resumes(setup, small_disk, compression):
    prompts, refs = setup
    ref = refs[compression]
    shard_bytes = max(p.stat().st_size for p in (ref / "shards").iterdir())
    small = sum(p.stat().st_size for p in ref.iterdir() if p.is_file())  # prompts, manifest, lock
    # room for the run's small files (a manifest twice while it is replaced) and two and a
    # half shards: the third shard fills the disk
    filler = fill(small_disk, leave=2 * small + 64 * 1024 + int(2.5 * shard_bytes))
    run = small_disk / "run"

    r = record(prompts, run, compression)
    assert_clean_failure(r, run, "no space left on device")
    assert_shards_equal(run, ref, n=len(read_manifest(run)["shards"]))

    filler.unlink()  # free the space, as the message asks
    r = record(prompts, run, compression, "--resume")
    assert r.returncode == 0, r.stderr
    assert probe.open(run).complete
    assert_shards_equal(run, ref)


def test_file_size_limit_with_compression_fails_cleanly_and_resumes(setup, tmp_path):
    """EFBIG (a file-size limit, smaller than one shard) on chunked shards: the same failure
    path, no mount needed."""
    prompts, refs = setup
    run = tmp_path / "run"
    limit = min(p.stat().st_size for p in (refs["gzip"] / "shards").iterdir()) // 2
    r = record(prompts, run, "gzip", env_code="import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))")
    assert_clean_failure(r, run, "file too large", published=False)
    r = record(prompts, run, "gzip", "--resume")
    assert r.returncode == 0, r.stderr
    assert_shards_equal(run, refs["gzip"])


def test_full_disk_during_the_manifest_write(small_disk):
    """A shard that fits exactly, then no room for run.json: the manifest keeps listing only
    what it listed, its temp file is gone, and the error names run.json."""
    hooks = {"blocks.0.hook_resid_post": {"kind": "token", "shape": [64]}}
    writer = RunWriter.create(small_disk / "run", {"model": {}, "hooks": hooks, "n_prompts": 32}, "{}\n")
    rng = np.random.default_rng(0)

    def shard() -> ShardWriter:
        s = writer.open_shard(hooks, "float32", "none")
        s.add([10] * 16, 4, np.zeros(160, np.int32), ["x"] * 160,
              {"blocks.0.hook_resid_post": rng.standard_normal((160, 64), dtype=np.float32)})
        return s

    writer.publish(shard())
    first = small_disk / "run" / "shards" / "00000.h5"
    fill(small_disk, leave=first.stat().st_blocks * 512)  # room for one more shard of the same size
    with pytest.raises(OSError) as failed:
        writer.publish(shard())
    writer.close()
    assert Path(failed.value.filename).name == "run.json"
    run = small_disk / "run"
    listed = json.loads((run / "run.json").read_text())["shards"]  # read as is: this manifest is a minimal one
    assert [s["file"] for s in listed] == ["shards/00000.h5"]
    assert not list(run.rglob("*.tmp"))
    message = str(write_failure(run, failed.value, 16))
    assert message == (f"writing {run} failed: no space left on device (run.json); prompts 0..15 are published "
                       "intact. To continue, free space and run `probe record ... --resume` with the same arguments")


def test_a_disk_full_before_the_first_manifest_keeps_the_run_being_replaced(setup, small_disk):
    """No room even for prompts.jsonl: one line, exit 2; a fresh run leaves nothing behind, and
    an --overwrite leaves the run it was replacing exactly as it was."""
    prompts, refs = setup
    fresh = small_disk / "fresh"
    old = small_disk / "old"
    r = record(prompts, old, "none", "--shard-mb", "1000")  # one shard
    assert r.returncode == 0, r.stderr

    def contents() -> dict:  # the run's files; writer.lock says who last held it, so it may change
        return {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file() and p.name != "writer.lock"}

    before = contents()
    fill(small_disk, leave=0)
    r = record(prompts, fresh, "none")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no space left on device" in r.stderr, r.stderr
    assert "no prompt was published yet" in r.stderr and not fresh.exists()
    r = record(prompts, old, "none", "--overwrite")
    assert r.returncode == 2 and "no space left on device" in r.stderr, r.stderr
    assert contents() == before
    assert not list(small_disk.glob(".old.replaced-*"))
