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
toy-coref run, a plain minilm run and a registry serving both."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
from helpers import FAMILIES, build_hf, record_coref_run, record_plain_run


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """{family: (directory, hf model)} built once per session."""
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(family)
        out[family] = (path, build_hf(family, path))
    return out


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
