"""probe/distributed.py: one run recorded by several Ray workers on a local 2-worker cluster
equals the single-process run of the same prompts bit for bit; a worker killed mid-run has its
unit re-queued; a driver stopped mid-run leaves a run that --resume completes; an unreachable
cluster, a worker that cannot load the model (or loads other weights) are refused before anything
is written; a disk that fills under the workers stops the run with every published shard intact
and nothing else in shards/, and --resume then completes it."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
import ray

from probe.errors import InputError, StoreError
from probe.recorder import record
from probe.store import read_manifest

HUB_NAME = "probe-tests/tiny-gpt2"  # a hub name, found offline in a Hugging Face cache

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [f"the {a} {b} sat on the mat and ran to the house" [: 20 + 3 * i] for i, (a, b) in
           enumerate([(a, b) for a in ("big", "small", "red") for b in ("cat", "dog", "man", "woman")])]
NAMES = ["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post", "blocks.*.attn.hook_z"]


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def gpt2_dir(hf_checkpoints):
    return str(hf_checkpoints["gpt2"][0])


@pytest.fixture(scope="module")
def single(tmp_path_factory, gpt2_dir):
    return record(gpt2_dir, PROMPTS, tmp_path_factory.mktemp("one") / "run", names=NAMES, batch_size=1,
                  progress=False, shard_mb=0.01)  # several shards, for the analyses mapped over them


def assert_same_run(a, b) -> None:
    """Every token and every recorded value of every prompt, bit for bit."""
    assert a.complete and b.complete and a.n_prompts == b.n_prompts == len(PROMPTS)
    assert a.hooks == b.hooks
    for i in range(a.n_prompts):
        assert np.array_equal(a.tokens(i), b.tokens(i)) and a.str_tokens(i) == b.str_tokens(i)
        for name in a.hooks:
            assert np.array_equal(a.prompt_activation(name, i), b.prompt_activation(name, i)), (name, i)


def test_an_unreachable_cluster_is_refused_before_the_run_is_made(tmp_path, gpt2_dir):
    with pytest.raises(InputError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        record(gpt2_dir, PROMPTS, tmp_path / "run", names=NAMES, workers=2, ray_address="127.0.0.1:1",
               progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="give the model by name"):
        record(object(), PROMPTS, tmp_path / "run", workers=2, progress=False)
    with pytest.raises(InputError, match="--workers must be"):
        record(gpt2_dir, PROMPTS, tmp_path / "run", workers=0, progress=False)


def test_two_workers_record_the_single_process_run_bit_for_bit(tmp_path, gpt2_dir, single):
    two = record(gpt2_dir, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, progress=False)
    assert_same_run(single, two)
    files = [s["file"] for s in read_manifest(two.path)["shards"]]
    assert len(files) > 2 and all(f.startswith("shards/p") for f in files)  # one per unit, named by first prompt
    firsts = [s["first_prompt"] for s in read_manifest(two.path)["shards"]]
    assert firsts == sorted(firsts) and firsts[0] == 0  # listed in prompt order, no gap


def test_a_killed_worker_has_its_unit_recorded_by_a_new_one(tmp_path, gpt2_dir, single, capfd):
    killed = []

    def kill_one(unit, actors):
        if not killed:  # after the first unit is listed, SIGKILL a worker's process
            pid = ray.get(actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = record(gpt2_dir, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, progress=False,
                 _on_unit=kill_one)
    assert killed
    assert "a Ray worker died" in capfd.readouterr().err
    assert_same_run(single, run)


def test_a_driver_stopped_mid_run_leaves_a_run_that_resume_completes(tmp_path, gpt2_dir, single):
    class Stop(Exception):
        pass

    def stop(unit, actors):
        if unit == 1:
            raise Stop

    with pytest.raises(Stop):
        record(gpt2_dir, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, progress=False,
               _on_unit=stop)
    manifest = read_manifest(tmp_path / "run")
    assert not manifest["complete"] and 0 < sum(s["n_prompts"] for s in manifest["shards"]) < len(PROMPTS)
    run = record(gpt2_dir, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, resume=True,
                 progress=False)
    assert_same_run(single, run)
    # and a single process resumes a run the workers began
    with pytest.raises(Stop):
        record(gpt2_dir, PROMPTS, tmp_path / "mixed", names=NAMES, batch_size=1, workers=2, progress=False,
               _on_unit=stop)
    assert_same_run(single, record(gpt2_dir, PROMPTS, tmp_path / "mixed", names=NAMES, batch_size=1, resume=True,
                                   progress=False))


def test_probe_record_workers_from_the_command_line(tmp_path, gpt2_dir):
    from helpers import run_cli

    from probe.reader import open_run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    r = run_cli("record", "--model", gpt2_dir, "--prompts", str(prompts), "-o", str(out), "--batch-size", "1",
                "--workers", "2", "--names", *NAMES, timeout=600)
    assert r.returncode == 0, r.stderr
    # the reference from the command line too: the same thread count as the workers, so the same bits
    r = run_cli("record", "--model", gpt2_dir, "--prompts", str(prompts), "-o", str(tmp_path / "one"),
                "--batch-size", "1", "--names", *NAMES, timeout=600)
    assert r.returncode == 0, r.stderr
    assert_same_run(open_run(tmp_path / "one"), open_run(out))
    r = run_cli("record", "--model", gpt2_dir, "--prompts", str(prompts), "-o", str(tmp_path / "x"),
                "--ray-address", "127.0.0.1:1")
    assert r.returncode == 2 and "add --workers N" in r.stderr and not (tmp_path / "x").exists()


def test_head_metrics_over_shards_on_workers_equal_the_single_process_ones(single):
    import pandas as pd

    from analyses.head_metrics import head_metrics

    assert len(single.manifest["shards"]) >= 2
    here = head_metrics(single)
    there = head_metrics(single, workers=2)
    pd.testing.assert_frame_equal(here, there, check_exact=True)
    some = [0, 5, 11]
    pd.testing.assert_frame_equal(head_metrics(single, some), head_metrics(single, some, workers=2), check_exact=True)



def test_probe_features_read_on_workers_equal_the_ones_read_here(tmp_path, single):
    """Prompt vectors from the gpt2 run, and the antecedent features of a toy-coref run, with
    and without workers: the same rows, in the order asked."""
    from analyses.probe_features import antecedent_features, prompt_features
    from probe.prompts import load_prompts

    order = [11, 0, 5, 3, 7]
    for prompts in (None, order):
        here = prompt_features(single, range(2), prompts=prompts)
        assert np.array_equal(here, prompt_features(single, range(2), prompts=prompts, workers=2))
    coref = record("toy-coref", load_prompts("toy-coref-test")[:24], tmp_path / "coref", names=["blocks.*.hook_resid_post"],
                   batch_size=4, shard_mb=0.02, progress=False)
    assert len(coref.manifest["shards"]) >= 2
    here, there = antecedent_features(coref, range(2)), antecedent_features(coref, range(2), workers=2)
    assert np.array_equal(here[0], there[0]) and np.array_equal(here[1], there[1])
    assert np.array_equal(here[2], there[2]) and here[3] == there[3]


# ------------------------------------------------------------------ faults
def hub_cache(root, checkpoint) -> str:
    """A Hugging Face cache holding ``checkpoint`` as the hub model HUB_NAME, where
    ``snapshot_download`` finds it offline."""
    org, name = HUB_NAME.split("/")
    repo, commit = root / f"models--{org}--{name}", "0" * 40
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return str(root)


@pytest.fixture
def workers_hub(tmp_path):
    """A local 2-worker cluster whose workers look for hub models in their own cache
    (tmp_path/worker-hub, empty until the test fills it): a machine that lacks the driver's."""
    cache = tmp_path / "worker-hub"
    cache.mkdir()
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}})
    yield cache
    ray.shutdown()  # the next test starts a plain cluster


def test_a_worker_that_cannot_load_the_model_or_loads_other_weights_stops_the_run_before_it_is_made(
        tmp_path, gpt2_dir, workers_hub, monkeypatch):
    import huggingface_hub.constants
    import safetensors.torch

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hub_cache(tmp_path / "driver-hub", gpt2_dir))
    with pytest.raises(StoreError, match=f"a Ray worker could not load the model '{HUB_NAME}': .*not a zoo name"):
        record(HUB_NAME, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, progress=False)
    assert not (tmp_path / "run").exists()
    # the workers' machine holds a checkpoint of that name with other weights: refused, not mixed into the run
    other = tmp_path / "other"
    shutil.copytree(gpt2_dir, other)
    weights = safetensors.torch.load_file(other / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    safetensors.torch.save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    hub_cache(workers_hub, other)
    with pytest.raises(StoreError, match="other weights than the driver's; give every worker the same checkpoint"):
        record(HUB_NAME, PROMPTS, tmp_path / "run", names=NAMES, batch_size=1, workers=2, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_under_the_workers_stops_the_run_cleanly_and_resume_completes_it(
        tmp_path, small_disk, gpt2_dir, single):
    from helpers import fill

    # how big a worker's shards are: the same recording on an ordinary disk
    ref = record(gpt2_dir, PROMPTS, tmp_path / "ref", names=NAMES, batch_size=1, workers=2, progress=False)
    shards = [ref.path / s["file"] for s in ref.manifest["shards"]]
    small = sum(p.stat().st_size for p in ref.path.iterdir() if p.is_file())  # prompts, manifest, lock
    run = small_disk / "run"

    def fails(leave: int) -> tuple[str, dict]:
        filler = fill(small_disk, leave=leave)
        with pytest.raises(StoreError) as failed:
            record(gpt2_dir, PROMPTS, run, names=NAMES, batch_size=1, workers=2, progress=False, resume=run.exists())
        message, manifest = str(failed.value), read_manifest(run)
        assert message.startswith(f"writing {run} failed: no space left on device ("), message
        assert "--resume" in message and "free space" in message
        assert not manifest["complete"] and len(manifest["shards"]) < len(shards)
        assert set((run / "shards").iterdir()) == {run / s["file"] for s in manifest["shards"]}  # nothing partial
        published = sum(s["n_prompts"] for s in manifest["shards"])
        assert (f"prompts 0..{published - 1} are published intact" if published else "no prompt was published yet") \
            in message
        assert manifest["shards"] == ref.manifest["shards"][:len(manifest["shards"])]  # what the full run lists first
        filler.unlink()
        return message, manifest

    # room for the small files but for no shard: the workers' first writes fail, each in its worker
    message, manifest = fails(leave=2 * small + 8 * 1024)
    assert "(shards/p" in message and not manifest["shards"], message
    # room for about two of the six shards: whichever write comes next (a worker's shard or the
    # driver's manifest) fails, and what was listed before stays intact
    fails(leave=2 * small + 8 * 1024 + sum(p.stat().st_size for p in shards[:2]) + shards[2].stat().st_size // 2)
    assert_same_run(single, record(gpt2_dir, PROMPTS, run, names=NAMES, batch_size=1, workers=2, resume=True,
                                   progress=False))
