"""The store's binding behaviours (probe/store.py, probe/recorder.py; test_store.py has the
rest), tested with real processes: SIGKILL at several points,
resume, reading while recording, bounded memory, disk full, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_command, run_cli, word_prompts

import models
import probe
from probe.errors import StoreError
from probe.store import read_manifest

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--batch-size", "4", "--shard-mb", "0.05"]


def cli(*args, limit_fsize: int | None = None, wait: bool = True):
    """`probe ARGS` (helpers.run_cli), or, with ``wait=False``, the running process."""
    pre = ""
    if limit_fsize is not None:  # a real "disk full": writes past the limit fail with EFBIG
        pre = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_fsize}, {limit_fsize})); ")
    if not wait:
        return subprocess.Popen(cli_command(*args, env_code=pre), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return run_cli(*args, timeout=600, env_code=pre)


@pytest.fixture(scope="module")
def setup(hf_checkpoints, tmp_path_factory):
    """A tiny model, 200 prompts, and the uninterrupted reference run recorded by the CLI."""
    tmp = tmp_path_factory.mktemp("robust")
    model_dir = hf_checkpoints["gpt2"][0]
    prompts = tmp / "prompts.txt"
    # Short prompts first, then long ones: later shards are larger (the disk-full test uses that).
    texts = word_prompts(160, seed=5) + word_prompts(40, seed=6, lo=40, hi=50)
    prompts.write_text("\n".join(texts) + "\n")
    ref = tmp / "reference"
    r = cli("record", "--model", model_dir, "--prompts", prompts, "-o", ref, *SETTINGS)
    assert r.returncode == 0, r.stderr
    return model_dir, prompts, probe.open(ref)


def assert_published_equal(run, ref, names=("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern",
                                            "blocks.1.mlp.hook_post")):
    for i in range(run.n_prompts):
        assert run.str_tokens(i) == ref.str_tokens(i)
        for name in names:
            assert np.array_equal(run.prompt_activation(name, i), ref.prompt_activation(name, i)), (i, name)


def assert_whole_run_equal(run, ref):
    assert run.complete and run.n_prompts == ref.n_prompts and run.hooks == ref.hooks
    for name in run.hooks:
        for i in range(run.n_prompts):
            assert np.array_equal(run.prompt_activation(name, i), ref.prompt_activation(name, i)), (i, name)


def kill_when(proc, run_dir: Path, ready, timeout=120.0):
    """SIGKILL the recorder as soon as ``ready(run_dir)`` holds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"recorder finished before the kill point: {proc.stderr.read()}")
        try:
            if ready(run_dir):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def n_shards(run_dir: Path) -> int:
    return len(json.loads((run_dir / "run.json").read_text())["shards"])


KILL_POINTS = {
    "before_first_shard": lambda d: (d / "run.json").exists(),
    "mid_shard_write": lambda d: any(p.suffix == ".tmp" for p in (d / "shards").iterdir()) and n_shards(d) >= 2,
    "after_3_shards": lambda d: n_shards(d) >= 3,
    "late": lambda d: n_shards(d) >= 35,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume(setup, tmp_path, point):
    model_dir, prompts, ref = setup
    out = tmp_path / "run"
    proc = cli("record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, wait=False)
    kill_when(proc, out, KILL_POINTS[point])

    # 1. Never reads as complete; 2. what is published is intact and correct.
    run = probe.open(out)
    assert not run.complete
    assert run.n_prompts < 200
    assert_published_equal(run, ref)
    run.close()

    # 3. --resume finishes to exactly the uninterrupted run.
    r = cli("record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert not [p for p in (out / "shards").iterdir() if p.suffix == ".tmp"]
    assert_whole_run_equal(probe.open(out), ref)


def test_reading_while_recording(setup, tmp_path):
    model_dir, prompts, ref = setup
    out = tmp_path / "live"
    proc = cli("record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, wait=False)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "run.json").exists() and n_shards(out) >= 2:
                break
            time.sleep(0.005)
        run = probe.open(out)  # this process reads while the other one writes
        seen_partial = not run.complete
        first = run.n_prompts
        assert first > 0
        assert_published_equal(run, ref)
        assert proc.wait(timeout=300) == 0
        run.refresh()
        assert run.complete and run.n_prompts == 200 > first
        assert_published_equal(run, ref)
        assert seen_partial
    finally:
        if proc.poll() is None:
            proc.kill()


def peak_rss_mib(model_dir: Path, prompt_file: Path, out: Path) -> float:
    code = (f"import resource, models, probe; m = models.load({str(model_dir)!r}); "
            f"probe.record(m, {str(prompt_file)!r}, {str(out)!r}, batch_size=8, shard_mb=1, progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]) / 1024


def test_memory_is_bounded(hf_checkpoints, tmp_path):
    """Peak RSS recording 2,000 prompts is within a small constant of recording 100.
    Kept in memory, the 2,000-prompt run's activations alone would be ~70 MiB here."""
    model_dir = hf_checkpoints["gpt2"][0]
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("\n".join(word_prompts(100, seed=7)))
    large.write_text("\n".join(word_prompts(2000, seed=7)))
    rss_small = peak_rss_mib(model_dir, small, tmp_path / "s")
    rss_large = peak_rss_mib(model_dir, large, tmp_path / "l")
    data_mib = sum(f.stat().st_size for f in (tmp_path / "l").rglob("*.h5")) / 2**20
    assert data_mib > 50  # the comparison means something only if the data would not fit the margin
    assert rss_large - rss_small < 20, (rss_small, rss_large, data_mib)


def test_disk_full_keeps_published_shards_and_resumes(setup, tmp_path):
    model_dir, prompts, ref = setup
    out = tmp_path / "full"
    r = cli("record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, limit_fsize=1_000_000)
    assert r.returncode == 2, r.stderr
    assert "failed" in r.stderr and "--resume" in r.stderr and "Traceback" not in r.stderr
    run = probe.open(out)
    assert not run.complete and run.n_prompts > 0
    assert_published_equal(run, ref)
    assert not [p for p in (out / "shards").iterdir() if p.suffix == ".tmp"]
    r = cli("record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert_whole_run_equal(probe.open(out), ref)


def test_existing_output_and_resume_mismatch(setup, tmp_path):
    model_dir, prompts, ref = setup
    small = tmp_path / "p.txt"
    small.write_text("the cat sat\na dog ran\n")
    out = tmp_path / "run"
    assert cli("record", "--model", model_dir, "--prompts", small, "-o", out).returncode == 0
    before = (out / "run.json").read_text()
    r = cli("record", "--model", model_dir, "--prompts", small, "-o", out)
    assert r.returncode == 2 and "already exists" in r.stderr and "--resume" in r.stderr
    r = cli("record", "--model", model_dir, "--prompts", small, "-o", out, "--resume", "--dtype", "float16")
    assert r.returncode == 2 and "dtype differs" in r.stderr
    assert (out / "run.json").read_text() == before  # nothing already written was lost
    r = cli("record", "--model", model_dir, "--prompts", small, "-o", out, "--overwrite", "--dtype", "float16")
    assert r.returncode == 0 and probe.open(out).manifest["dtype"] == "float16"
    r = cli("record", "--model", model_dir, "--prompts", small, "-o", tmp_path / "p.txt" / "sub")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_not_a_run_and_newer_schema(tmp_path, setup):
    with pytest.raises(StoreError, match="does not exist"):
        probe.open(tmp_path / "nothing")
    (tmp_path / "file.h5").write_bytes(b"junk")
    with pytest.raises(StoreError, match="not a probe run"):
        probe.open(tmp_path / "file.h5")
    run_dir = tmp_path / "newer"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StoreError, match="schema 99, newer"):
        read_manifest(run_dir)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        probe.open(run_dir)


def test_bad_prompt_files_and_long_prompts(minilm, tmp_path, setup):
    model_dir = setup[0]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = cli("record", "--model", model_dir, "--prompts", empty, "-o", tmp_path / "x")
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"fine line\nbad \xff\xfe line\n")
    r = cli("record", "--model", model_dir, "--prompts", binary, "-o", tmp_path / "y")
    assert r.returncode == 2 and "line 2" in r.stderr and "UTF-8" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

    long_text = "word " * 600
    with pytest.raises(StoreError, match="prompt 1 .*at most 512"):
        probe.record(minilm, ["short one", long_text], tmp_path / "long", progress=False)
    run = probe.record(minilm, ["short one", long_text], tmp_path / "cut", truncate=True, progress=False)
    assert run.manifest["truncated_prompts"] == [1]
    assert len(run.tokens(1)) == 512


def test_progress_lines_when_not_a_terminal(setup, tmp_path):
    model_dir = setup[0]
    small = tmp_path / "p.txt"
    small.write_text("the cat sat\na dog ran\n")
    r = cli("record", "--model", model_dir, "--prompts", small, "-o", tmp_path / "run")
    assert r.returncode == 0
    assert "recording run: 2/2 prompts" in r.stderr and "tokens/s" in r.stderr
    assert "recorded 2 prompts" in r.stdout


def test_python_api_matches_models_api(setup):
    """probe.load / probe.open are the same objects the submodules define."""
    assert probe.load is models.load
    from probe.reader import open_run

    assert probe.open is open_run
