"""Probes on a recorded run, as `probe probes` asks for them: a prompt-level label (logistic
or, for real-valued targets, ridge), part of speech per word, or the antecedent of a pronoun.

`probe_study` chooses the features, labels, split units and control task for the request,
decides whether rows must stream from disk, fits one probe per layer and returns the table
with what it describes; the caller saves and prints it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from probe.errors import InputError

from .probe_features import (
    FeatureRows,
    antecedent_features,
    control_types,
    prompt_features,
    split_groups,
    word_features,
)
from .probes import layer_probes, online_codelength
from .ridge_probes import layer_ridge_probes, prompt_targets
from .run_checks import require_layer_hooks


@dataclass(frozen=True)
class ProbeStudy:
    table: pd.DataFrame  # one row per layer
    name: str  # the result's name next to the run (probes_<what>)
    what: str  # what was probed, for a one-line summary
    ridge: bool  # a ridge regression on a real-valued target (R^2), else a classifier (accuracy)
    n_rows: int  # feature rows (prompts, words or pronouns) the probes were fitted on
    streamed_bytes: int | None  # the feature rows' size bound when they were streamed from disk, else None


def antecedent_probes_name(query: str) -> str:
    """The antecedent probes' result name: probes_antecedent, or probes_antecedent_QUERY for
    another span than the pronoun's."""
    return "probes_antecedent" + ("" if query == "pronoun_span" else f"_{query}")


def result_name_of(label: str) -> str:
    """probes_LABEL, refusing a label that cannot name a file next to the run."""
    if not label or any(c in label for c in "/\\") or label.startswith(".") or label.endswith(".csv"):
        raise InputError(f"label field {label!r} cannot name a result file (probes_{label}.csv); rename the field "
                         "in the prompt file (letters, digits, _ and -)")
    return f"probes_{label}"


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux), or a generous guess elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def probe_study(run, *, label: str | None = None, task: Literal["pos", "antecedent"] | None = None,
                control: str | None = None, target: Literal["auto", "class", "real"] = "auto",
                query: str = "pronoun_span", mdl: bool = False, stream: bool = False,
                hook: str = "hook_resid_post", pool: str = "mean", seed: int = 0,
                on_stream: Callable[[int, int], None] | None = None, workers: int | None = None,
                ray_address: str | None = None) -> ProbeStudy:
    """One probe per layer of ``run`` for a prompt-level ``label`` field or a ``task``.
    ``on_stream(rows, bytes)`` is told, before the fit, when the rows stream from disk.
    ``workers``: the features are read from the run's shards by that many Ray workers (the same
    rows; the fits run here)."""
    if task and target == "real":
        raise InputError(f"--task {task} probes classes; --target real is for a numeric --label field")
    if not task and not label:
        raise InputError("give --label FIELD (a prompt-level label) or --task pos|antecedent")
    L, d = run.config["n_layers"], run.config["d_model"]
    layers = range(L)
    require_layer_hooks(run, hook, "probes")
    fields = run.manifest.get("label_fields", [])
    # Rows go to a scratch file and are streamed through the fit when asked, or when the
    # features would not comfortably fit in memory (a quarter of what is available).
    need = (run.n_tokens if task == "pos" else run.n_prompts) * L * d * 4
    stream = stream or need > available_memory() // 4
    if stream and mdl:
        raise InputError("--mdl fits probes on growing prefixes in memory; these features are streamed from disk "
                         "(too large for RAM or --stream): leave out --mdl or probe fewer prompts")
    scratch = tempfile.TemporaryDirectory(prefix="probe-rows-") if stream else None
    out = FeatureRows(f"{scratch.name}/rows.f32", L, d) if scratch else None
    types, real = None, None  # real: the targets [n] when the probe is a ridge regression
    if task == "pos":
        if "upos" not in fields:
            raise InputError(f"{run.path} has no part-of-speech labels; record the bundled 'ud-ewt-dev' set")
        feats, labels, units, types = word_features(run, layers, hook=hook, out=out, workers=workers,
                                                    ray_address=ray_address)
        name, what = "probes_pos", f"UPOS of {len(labels)} words (first subword token)"
    elif task == "antecedent":
        if "answer" not in fields or query not in fields:
            raise InputError(f"{run.path} has no antecedent labels ('answer', {query!r}); record a set with "
                             "gold antecedents: seed, winobias-dev, toy-coref-test")
        feats, labels, units, types = antecedent_features(run, layers, query=query, hook=hook, out=out,
                                                          workers=workers, ray_address=ray_address)
        name = antecedent_probes_name(query)
        what = f"the antecedent (first or second mention) from {query}"
    else:
        if label not in fields:
            raise InputError(f"{run.path} has no label field {label!r}; its prompts carry {fields}")
        name = result_name_of(label)
        values = [run.labels(i).get(label) for i in range(run.n_prompts)]
        keep = np.flatnonzero([v is not None for v in values])  # prompts without the field are left out, not a class
        real = prompt_targets([values[i] for i in keep], target, label)
        if real is not None and mdl:
            raise InputError("--mdl is the online codelength of class labels; this target is real-valued "
                             "(a ridge probe): leave out --mdl, or give --target class")
        if control:
            types = control_types(run, keep, control)
        feats = prompt_features(run, layers, hook, pool, prompts=keep, out=out, workers=workers,
                                ray_address=ray_address)
        # twin prompts differ in a word or two: one split unit, so a probe is never tested on
        # the twin of a train prompt
        labels, units = np.array([str(values[i]) for i in keep]), split_groups(run, keep)
        what = f"{label!r} from {pool}-pooled {hook}"
        if control:
            what += f", control task: a random label per {control!r} value"
    if stream and on_stream is not None:
        on_stream(len(labels), need)
    if real is not None:
        table = layer_ridge_probes(feats, real, units, types=types, seed=seed, hook=hook)
    else:
        table = layer_probes(feats, labels, units, types=types, seed=seed, hook=hook)
    if mdl:
        table = table.merge(online_codelength(feats, labels, units, seed=seed), on="layer")
    return ProbeStudy(table, name, what, real is not None, len(labels), need if stream else None)
