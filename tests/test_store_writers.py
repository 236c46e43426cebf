"""One writer per run, nothing deleted that is not a run, arguments checked before anything is
touched, and a run directory left at any crash point recoverable (probe/store.py `RunWriter`,
`RunLock`, `run_state`; probe/recorder.py `record`). Real processes, real SIGKILLs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_command, run_cli, word_prompts

import probe
from probe.errors import PromptSetError, StoreError

SETTINGS = ["--batch-size", "4", "--shard-mb", "0.02"]
# Makes the first manifest write of a new run wait, so a test can act in the moment between
# creating the run directory and its first manifest (a window of microseconds otherwise).
SLOW_FIRST_MANIFEST = (
    "import time, probe.store as s\n"
    "_write = s.RunWriter.write_manifest\n"
    "def slow(self):\n"
    "    if not (self.path / 'run.json').exists():\n"
    "        time.sleep(60)\n"
    "    _write(self)\n"
    "s.RunWriter.write_manifest = slow\n"
)
# Makes every shard publish wait a little, so a recording is still running when a second
# writer arrives.
SLOW_SHARDS = (
    "import time, probe.store as s\n"
    "_publish = s.RunWriter.publish\n"
    "def slow(self, shard):\n"
    "    time.sleep(0.3)\n"
    "    _publish(self, shard)\n"
    "s.RunWriter.publish = slow\n"
)


def gated_shards(gate: Path) -> str:
    """Code that makes the recorder wait after its first shard until ``gate`` exists: however
    loaded the machine, the recording is still running when the test's second writer arrives."""
    return ("import os, time, probe.store as s\n"
            "_publish = s.RunWriter.publish\n"
            "def gated(self, shard):\n"
            "    _publish(self, shard)\n"
            f"    while not os.path.exists({str(gate)!r}):\n"
            "        time.sleep(0.01)\n"
            "s.RunWriter.publish = gated\n")


@pytest.fixture(scope="module")
def setup(hf_checkpoints, tmp_path_factory):
    """A tiny model, 60 prompts, and the uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("writers")
    model_dir = hf_checkpoints["gpt2"][0]
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(word_prompts(60, seed=3)) + "\n")
    ref = tmp / "reference"
    r = run_cli("record", "--model", model_dir, "--prompts", prompts, "-o", ref, *SETTINGS)
    assert r.returncode == 0, r.stderr
    return model_dir, prompts, probe.open(ref)


def record_args(setup, out: Path, *extra: str) -> list:
    model_dir, prompts, _ = setup
    return ["record", "--model", model_dir, "--prompts", prompts, "-o", out, *SETTINGS, *extra]


def start(setup, out: Path, *extra: str, env_code: str = "") -> subprocess.Popen:
    return subprocess.Popen(cli_command(*record_args(setup, out, *extra), env_code=env_code),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the recorder ended first: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            pytest.fail("timed out")
        time.sleep(0.005)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_equal_to(out: Path, ref) -> None:
    run = probe.open(out)
    assert run.complete and run.n_prompts == ref.n_prompts and run.hooks == ref.hooks
    for name in run.hooks:
        for i in range(run.n_prompts):
            assert np.array_equal(run.prompt_activation(name, i), ref.prompt_activation(name, i)), (i, name)
    assert not [p for p in (out / "shards").iterdir() if p.suffix == ".tmp"]
    run.close()


def n_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "run.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_a_kill_before_the_first_manifest_leaves_a_run_resume_and_overwrite_accept(setup, tmp_path):
    _, _, ref = setup
    for flag in ("--resume", "--overwrite"):
        out = tmp_path / flag.strip("-")
        proc = start(setup, out, env_code=SLOW_FIRST_MANIFEST)
        wait_for(lambda out=out: (out / "shards").is_dir(), proc)
        kill(proc)
        assert not (out / "run.json").exists()
        assert probe.store.run_state(out) == "unstarted"
        r = run_cli(*record_args(setup, out, flag))
        assert r.returncode == 0, r.stderr
        assert_equal_to(out, ref)


def test_a_kill_during_an_overwrite_loses_nothing_but_the_run_it_replaces(setup, tmp_path):
    """Killed after the old run was moved aside and before the new one has a manifest: a
    --resume finishes the new run, and the old one's leftovers are cleaned up."""
    _, _, ref = setup
    out = tmp_path / "run"
    assert run_cli(*record_args(setup, out)).returncode == 0
    proc = start(setup, out, "--overwrite", env_code=SLOW_FIRST_MANIFEST)
    wait_for(lambda: (out / "shards").is_dir() and not (out / "run.json").exists(), proc)
    kill(proc)
    r = run_cli(*record_args(setup, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert_equal_to(out, ref)
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_two_resumes_at_once_never_damage_a_run(setup, tmp_path):
    """Two `--resume` of one interrupted run started together, several times: one writes, the
    other is refused with one line naming the holder; the run always ends equal to an
    uninterrupted one, never falsely complete."""
    _, _, ref = setup
    for attempt in range(4):
        out = tmp_path / f"run{attempt}"
        proc = start(setup, out)
        wait_for(lambda out=out: n_shards(out) >= 2, proc)
        kill(proc)
        pair = [start(setup, out, "--resume", env_code=SLOW_SHARDS) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in pair]
        codes = sorted(code for code, _ in results)
        assert codes in ([0, 0], [0, 2]), results  # both may succeed if the second came after the first ended
        for code, err in results:
            if code == 2:
                # the holder is named once it has written its pid (a few microseconds after locking)
                assert "is being written by" in err and "Traceback" not in err
                assert len(err.strip().splitlines()) == 1
        assert_equal_to(out, ref)


def test_an_overwrite_while_recording_is_refused_and_the_recording_finishes(setup, tmp_path):
    _, _, ref = setup
    out = tmp_path / "run"
    gate = tmp_path / "go-on"
    proc = start(setup, out, env_code=gated_shards(gate))
    wait_for(lambda: n_shards(out) >= 1, proc)
    r = run_cli(*record_args(setup, out, "--overwrite"))
    gate.touch()
    assert r.returncode == 2 and "is being written by process" in r.stderr and "Traceback" not in r.stderr
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_equal_to(out, ref)


def test_overwrite_never_deletes_what_is_not_a_run(setup, tmp_path, minilm):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    r = run_cli(*record_args(setup, a_file, "--overwrite"))
    assert r.returncode == 2 and "not a run directory (a file)" in r.stderr
    r = run_cli("demo", "-o", a_file, "-n", "4", "--no-serve")  # the demo overwrites its runs, never a file
    assert r.returncode == 2 and "not a run directory" in r.stderr, r.stderr
    assert a_file.read_text() == "precious"
    other = tmp_path / "project"
    (other / "shards").mkdir(parents=True)
    (other / "shards" / "data.h5").write_text("theirs")
    r = run_cli(*record_args(setup, other, "--overwrite"))
    assert r.returncode == 2 and "not a run directory (a directory holding other files)" in r.stderr
    assert (other / "shards" / "data.h5").read_text() == "theirs"


def test_every_argument_is_checked_before_a_run_is_touched(setup, tmp_path, minilm):
    _, _, ref = setup
    out = tmp_path / "run"
    assert run_cli(*record_args(setup, out)).returncode == 0
    before = sorted(p.name for p in (out / "shards").iterdir())
    bad = [dict(compression="zstd"), dict(shard_mb=-5), dict(shard_mb=float("nan")), dict(batch_size=0),
           dict(dtype="int8")]
    for kwargs in bad:
        with pytest.raises(StoreError):
            probe.record(minilm, ["a b c"], out, overwrite=True, progress=False, **kwargs)
        assert sorted(p.name for p in (out / "shards").iterdir()) == before, kwargs
    with pytest.raises(PromptSetError, match="item 0 is a int"):
        probe.record(minilm, [5, "t1"], out, overwrite=True, progress=False)
    assert_equal_to(out, ref)
    for flag in (["--shard-mb", "-5"], ["--shard-mb", "nan"]):
        r = run_cli("record", "--model", setup[0], "--prompts", setup[1], "-o", tmp_path / "new", *flag)
        assert r.returncode == 2 and "--shard-mb must be a positive number" in r.stderr
        assert not (tmp_path / "new").exists()


# Waits between renaming the second shard into place and listing it in the manifest.
SLOW_LISTING = (
    "import time, probe.store as s\n"
    "_publish = s.RunWriter.publish\n"
    "def slow(self, shard):\n"
    "    if len(self.manifest['shards']) == 1:\n"
    "        self.manifest['shards'].append(shard.publish())\n"
    "        time.sleep(60)\n"
    "        self.write_manifest()\n"
    "    else:\n"
    "        _publish(self, shard)\n"
    "s.RunWriter.publish = slow\n"
)


def test_a_kill_between_renaming_a_shard_and_listing_it(setup, tmp_path):
    """The shard is in place under its final name but the manifest does not list it yet:
    the run reads as one shard, and --resume removes the unlisted one and redoes it."""
    _, _, ref = setup
    out = tmp_path / "run"
    proc = start(setup, out, env_code=SLOW_LISTING)
    wait_for(lambda: (out / "shards" / "00001.h5").exists(), proc)
    kill(proc)
    run = probe.open(out)
    assert n_shards(out) == 1 and not run.complete and run.n_prompts < ref.n_prompts
    run.close()
    r = run_cli(*record_args(setup, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert_equal_to(out, ref)
