"""The runs a dashboard serves, and the slices of them its views read.

The registry holds only the runs named on the command line. The browser refers to a run by
its id (its position on the command line, "0", "1", ...); an id that is not one of them is
refused, so no string from the browser ever reaches the file system. Each run opens lazily
(`probe.reader.Run` reads the manifest and prompt list only) and every view reads just the
slice it shows: one head's pattern, one layer's heads, one prompt's tokens.

A run that is missing, corrupt or of a newer schema does not stop the others: its entry
keeps the reader's message and the views show that message.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.results import ABLATION, COREF, HEAD_METRICS, PATCH_HEADS, Result, ResultKind, load_results, result_files
from probe.errors import RunUnavailable, StoreError, UnknownRun, one_line

# What a failed read can raise: the store's own errors, h5py's OSError on a damaged file,
# KeyError for a hook the run lacks, IndexError for a prompt/head out of range, and
# ValueError from a truncated JSON or CSV file.
READ_ERRORS = (StoreError, OSError, KeyError, IndexError, ValueError)
ENCODER_DECODER_ATTENTIONS = ("cross", "encoder", "decoder")  # the first is what an encoder-decoder run opens on


def error_message(e: BaseException) -> str:
    """One line for the UI (the project's `one_line`: KeyError's str() would add quotes)."""
    return one_line(e)


# ----------------------------------------------------------------------- analysis tables
# What a saved table is (its kind) is analyses.results' to say (from the sidecar an analysis
# writes beside its CSV, or for a foreign CSV from its columns), never guessed here.
def head_columns(tables: list[Result]) -> dict[str, pd.Series]:
    """Every per-head number the analyses saved, as {metric name: Series indexed by
    (layer, head)}: head metrics by their column names, ablation effects and head
    patching by their file stems, coreference accuracy as "coref_accuracy"."""
    out: dict[str, pd.Series] = {}
    for t in tables:
        df = t.table.set_index(["layer", "head"]) if {"layer", "head"} <= set(t.table.columns) else None
        if df is None:
            continue
        if t.kind == HEAD_METRICS.name and "attention" in t.table.columns:
            # an encoder-decoder run's heads: one column per (attention, metric), e.g. "cross:alignment"
            for attention, part in t.table.groupby("attention", sort=False):
                part = part.set_index(["layer", "head"])
                for c in part.columns:
                    if pd.api.types.is_numeric_dtype(part[c]) and part[c].notna().any():
                        out[f"{attention}:{c}"] = part[c].astype(float)
        elif t.kind == HEAD_METRICS.name:
            for c in df.columns:
                if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
                    out[c if t.name == "head_metrics" else f"{t.name}.{c}"] = df[c].astype(float)
        elif t.kind == ABLATION.name:
            out[t.name] = _numbers(df["effect"])
        elif t.kind == PATCH_HEADS.name:
            out[t.name] = _numbers(df["normalized"])
        elif t.kind == COREF.name:
            out["coref_accuracy"] = _numbers(df["accuracy"])
    return out


def _numbers(column: pd.Series) -> pd.Series:
    """A column as floats; a cell that is not a number (a foreign CSV) becomes NaN."""
    return pd.to_numeric(column, errors="coerce").astype(float)


# ----------------------------------------------------------------------- one run
CACHE_BYTES = 256 * 2**20  # default budget of one run's cache of slices (--cache-mb sets it)


def nbytes(value: Any) -> int:
    """Rough size of a cached value: numpy arrays by their nbytes, containers by their
    items, strings by their length (what dominates is the arrays)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return 64 + sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 56 + 8 * len(value) + sum(nbytes(v) for v in value if not isinstance(v, int | float))
    if isinstance(value, str):
        return 50 + len(value)
    return 64


class LRU:
    """A thread-safe least-recently-used cache bounded by bytes (views are served from
    threads; a long prompt's patterns are megabytes, a token list is a few hundred bytes,
    so counting entries would bound nothing). A value bigger than the whole budget is
    returned but not kept."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes, self.bytes = max_bytes, 0
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key][0]
        value = make()
        size = nbytes(value)
        with self._lock:
            if size > self.max_bytes:
                return value
            if key in self._data:  # another thread made it meanwhile
                self.bytes -= self._data.pop(key)[1]
            self._data[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= self._data.popitem(last=False)[1][1]
        return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0


@dataclass
class RunData:
    """One served run: opened on first use, with small caches of what views re-read."""

    id: str
    path: Path
    _run: Any = None
    _error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tables: tuple | None = None  # (signature of the CSV files, tables)
    cache_bytes: int = CACHE_BYTES
    _cache: LRU = field(init=False)

    def __post_init__(self) -> None:
        self._cache = LRU(self.cache_bytes)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    # -------------------------------------------------------------- opening
    @property
    def run(self):
        """The opened `probe.reader.Run`; raises `RunUnavailable` with the reason."""
        with self._lock:
            if self._run is None and self._error is None:
                from probe.reader import Run

                try:
                    self._run = Run(self.path)
                    self._run.prompt_records  # noqa: B018  (fail now on a broken prompts.jsonl)
                except READ_ERRORS as e:
                    self._run, self._error = None, error_message(e)
            if self._error is not None:
                raise RunUnavailable(f"run {self.label} cannot be shown: {self._error}")
            return self._run

    @property
    def error(self) -> str | None:
        try:
            _ = self.run
        except RunUnavailable as e:
            return str(e)
        return None

    def refresh(self) -> None:
        """Re-read the manifest (a run still being recorded publishes more shards), or try
        again to open a run that failed; drop cached slices and tables."""
        with self._lock:
            if self._run is not None:
                try:
                    self._run.refresh()  # drops the run's own caches (the prompt list among them)
                except READ_ERRORS as e:
                    self._run.close()
                    self._run, self._error = None, error_message(e)
            else:
                self._error = None
            self._tables = None
            self._cache.clear()

    def status(self) -> str:
        """One line: model, size, and whether recording is finished."""
        err = self.error
        if err:
            return err
        run = self.run
        cfg = run.config
        state = "complete" if run.complete else \
            f"still being recorded: {run.n_prompts} of {run.n_prompts_total} prompts published (Refresh to see more)"
        kv = f" ({run.n_kv_heads} key/value heads)" if run.n_kv_heads != run.n_heads else ""
        return (f"{self.label}: {run.model_name}, {cfg['n_layers']} layers x {cfg['n_heads']} heads{kv}, "
                f"{run.n_prompts} prompts, {run.n_tokens} tokens; {state}")

    # -------------------------------------------------------------- small things, cached
    @property
    def n_layers(self) -> int:
        return int(self.run.config["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.run.config["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than `n_heads` under grouped-query attention)."""
        return self.run.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` attends with (`probe.reader.Run.kv_head`)."""
        return self.run.kv_head(head)

    def query_heads(self, kv_head: int) -> range:
        """The query heads sharing key/value head ``kv_head``."""
        return self.run.query_heads(kv_head)

    @property
    def rotary(self) -> bool:
        """Whether the model applies rotary positions to queries and keys (after hook_q/hook_k)."""
        return self.run.config.get("positional") == "rotary"

    @property
    def n_prompts(self) -> int:
        return self.run.n_prompts

    def prompts(self) -> list[str]:
        return self._cache.get("prompts", lambda: self.run.prompts)

    def search_prompts(self, text: str | None, limit: int = 50, include: int | None = None) -> list[int]:
        """Indices of prompts containing ``text`` (case-insensitive), at most ``limit``;
        ``include`` (the current prompt) is always among them."""
        prompts = self.prompts()
        needle = (text or "").strip().lower()
        hits = [i for i, p in enumerate(prompts) if needle in p.lower()] if needle else list(range(len(prompts)))
        hits = hits[:limit]
        if include is not None and 0 <= include < len(prompts) and include not in hits:
            hits.insert(0, include)
        return hits

    def check_prompt(self, prompt: int) -> int:
        n = self.n_prompts
        if not 0 <= prompt < n:
            raise IndexError(f"prompt {prompt} is out of range: run {self.label} has {n} published prompts")
        return prompt

    def str_tokens(self, prompt: int) -> list[str]:
        self.check_prompt(prompt)
        return self._cache.get(("tokens", prompt), lambda: self.run.str_tokens(prompt))

    def labels(self, prompt: int) -> dict[str, Any]:
        return self.run.labels(self.check_prompt(prompt))

    def twin(self, prompt: int) -> int | None:
        """Another published prompt with the same ``pair_id`` label (the tired/wide twin),
        or None when the prompt has no pair_id or no published twin."""
        self.check_prompt(prompt)
        from probe.prompts import twin_key

        pairs = self._cache.get("pairs", self._pairs)
        return next((p for p in pairs.get(twin_key(self.labels(prompt), prompt), []) if p != prompt), None)

    def _pairs(self) -> dict[str, list[int]]:
        from probe.prompts import twin_groups

        return twin_groups((i, self.labels(i)) for i in range(self.n_prompts))

    def has_hook(self, name: str) -> bool:
        return name in self.run.manifest["hooks"]

    # -------------------------------------------------------------- encoder-decoder runs
    # A run of an encoder-decoder model has three attentions: the encoder's self-attention over
    # the source, the decoder's over the target, and cross-attention (target queries, source
    # keys). The view state's ``attention`` picks one; "" is the only attention of other runs.
    @property
    def attentions(self) -> tuple[str, ...]:
        return ENCODER_DECODER_ATTENTIONS if self.run.is_encoder_decoder else ()

    def attention_of(self, attention: str) -> str:
        """``attention`` if this run has it, else the run's default ("cross", or "")."""
        return attention if attention in self.attentions else (self.attentions[0] if self.attentions else "")

    def n_layers_of(self, attention: str = "") -> int:
        if self.attention_of(attention) in ("decoder", "cross"):
            return int(self.run.config["n_decoder_layers"])
        return self.n_layers

    def pattern_hook(self, layer: int, attention: str = "") -> str:
        attention = self.attention_of(attention)
        return {"": f"blocks.{layer}.attn.hook_pattern", "encoder": f"encoder.{layer}.attn.hook_pattern",
                "decoder": f"decoder.{layer}.attn.hook_pattern",
                "cross": f"decoder.{layer}.cross_attn.hook_pattern"}[attention]

    def query_tokens(self, prompt: int, attention: str = "") -> list[str]:
        """The tokens the attention's queries sit on: the target's for the decoder and cross-attention."""
        if self.attention_of(attention) in ("decoder", "cross"):
            self.check_prompt(prompt)
            return self._cache.get(("target", prompt), lambda: self.run.str_tokens(prompt, "target"))
        return self.str_tokens(prompt)

    def key_tokens(self, prompt: int, attention: str = "") -> list[str]:
        """The tokens the attention's keys sit on: the source's except for the decoder's self-attention."""
        return self.query_tokens(prompt, "decoder") if self.attention_of(attention) == "decoder" \
            else self.str_tokens(prompt)

    def missing_patterns(self, attention: str = "") -> str | None:
        """Why attention views are empty, or None when patterns were recorded."""
        if all(self.has_hook(self.pattern_hook(layer, attention)) for layer in range(self.n_layers_of(attention))):
            return None
        return (f"run {self.label} has no attention patterns{' of ' + attention if attention else ''}; record "
                f"them with `probe record ... --names '{self.pattern_hook(0, attention).replace('.0.', '.*.')}'`")

    # -------------------------------------------------------------- slices
    def pattern(self, prompt: int, layer: int, head: int, attention: str = "") -> np.ndarray:
        """[query, key] of one head: one contiguous read."""
        self.check_prompt(prompt)
        self._check_head(layer, head, attention)
        name, key = self.pattern_hook(layer, attention), self._which(attention)
        return self._cache.get(("pattern", prompt, layer, head, *key),
                               lambda: self.run.prompt_activation(name, prompt, head))

    def layer_patterns(self, prompt: int, layer: int, attention: str = "") -> np.ndarray:
        """[head, query, key] of one layer."""
        self.check_prompt(prompt)
        self._check_head(layer, 0, attention)
        name, key = self.pattern_hook(layer, attention), self._which(attention)
        return self._cache.get(("layer", prompt, layer, *key), lambda: self.run.prompt_activation(name, prompt))

    def _which(self, attention: str) -> tuple[str, ...]:
        """The attention's part of a slice's cache key (none for a run with one attention)."""
        attention = self.attention_of(attention)
        return (attention,) if attention else ()

    def all_patterns(self, prompt: int, attention: str = "") -> np.ndarray:
        """[layer, head, query, key] of one prompt (for the grid's thumbnails)."""
        return np.stack([self.layer_patterns(prompt, layer, attention) for layer in range(self.n_layers_of(attention))])

    def residual_norms(self, prompt: int) -> tuple[np.ndarray, str] | None:
        """[layer, position] L2 norm of the residual stream, from the first kind of residual
        hook the run recorded for every layer; None when it has none."""
        self.check_prompt(prompt)
        for kind in ("hook_resid_post", "hook_resid_pre", "hook_resid_mid"):
            names = [f"blocks.{layer}.{kind}" for layer in range(self.n_layers)]
            if all(self.has_hook(n) for n in names):
                return self._cache.get(("resid", prompt, kind), lambda names=names, kind=kind: (
                    np.stack([np.linalg.norm(self.run.prompt_activation(n, prompt).astype(np.float32), axis=-1)
                              for n in names]), kind))
        return None

    def qk_vectors(self, layer: int, head: int, max_tokens: int = 3000, include: int | None = None
                   ) -> dict[str, Any] | None:
        """Query vectors of query head ``head`` and key vectors of the key/value head it attends
        with (`kv_head`: under grouped-query attention several query heads share it) over the
        run's prompts (all of them, or prompts spread evenly over the run up to about
        ``max_tokens`` tokens, ``include`` among them), with each token's string and prompt.
        None when the run lacks hook_q/hook_k for the layer. The spread-out sample is cached
        apart from ``include`` (the selected prompt), so switching prompt reads that one
        prompt at most."""
        self._check_head(layer, head)
        if not (self.has_hook(f"blocks.{layer}.attn.hook_q") and self.has_hook(f"blocks.{layer}.attn.hook_k")):
            return None
        n = self.n_prompts
        k = max(1, min(n, int(max_tokens * n / max(self.run.n_tokens, 1))))
        chosen = tuple(sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist())))
        sample = self._cache.get(("qk", layer, head, chosen), lambda: self._qk_of(layer, head, chosen))
        if include is None or not 0 <= include < n or include in chosen:
            return sample
        extra = self._cache.get(("qk", layer, head, (include,)), lambda: self._qk_of(layer, head, (include,)))
        order = np.argsort(np.concatenate([sample["prompt"], extra["prompt"]]), kind="stable")  # prompt order
        return {key: (np.concatenate([sample[key], extra[key]])[order] if key != "tokens" else
                      [[*sample[key], *extra[key]][i] for i in order]) for key in sample}

    def _qk_of(self, layer: int, head: int, prompts: tuple[int, ...]) -> dict[str, Any]:
        """One head's query and key vectors over ``prompts``, with tokens and prompt ids."""
        q_name, k_name = f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"
        kv_head = self.kv_head(head)  # never the query head's own index: k has n_kv_heads heads
        qs, ks, toks, prompt_of = [], [], [], []
        for p in prompts:
            qs.append(self._head_rows(q_name, p, head))
            ks.append(self._head_rows(k_name, p, kv_head))
            t = self.str_tokens(p)
            toks += t
            prompt_of += [p] * len(t)
        return {"q": np.concatenate(qs).astype(np.float32), "k": np.concatenate(ks).astype(np.float32),
                "tokens": toks, "prompt": np.asarray(prompt_of)}

    def _head_rows(self, name: str, prompt: int, head: int) -> np.ndarray:
        """[tokens, d_head] of one head of a per-token [n, head, d_head] hook; the reader
        reads only that head's hyperslab, not every head's vectors."""
        return self.run.prompt_activation(name, prompt, head)

    def _check_head(self, layer: int, head: int, attention: str = "") -> None:
        n_layers = self.n_layers_of(attention)
        if not 0 <= layer < n_layers:
            raise IndexError(f"layer {layer} is out of range: the model has {n_layers} layers"
                             + (f" of {self.attention_of(attention)} attention" if attention else ""))
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} is out of range: the model has {self.n_heads} heads")

    # -------------------------------------------------------------- analysis results
    def _analyses(self) -> tuple:
        """(results, per-head columns, per-head values by (layer, head), problems), re-read
        when a table or sidecar under RUN/analyses appears or changes."""
        sig = self._results_signature()
        cached = self._tables
        if cached is None or cached[0] != sig:
            problems: list[str] = []
            tables = load_results(self.path, problems)
            cols = head_columns(tables)
            by_head = {name: {(int(k[0]), int(k[1])): float(v) for k, v in series.items()} for name, series in
                       cols.items()}
            cached = (sig, tables, cols, by_head, problems)
            self._tables = cached
        return cached[1:]

    def _results_signature(self) -> list[tuple[str, int, int]]:
        """(path, mtime, size) of every result file: a sidecar written just after its table
        changes it too, so a table first seen without its sidecar is re-read with it."""
        sig = []
        for f in result_files(self.path):
            try:
                st = f.stat()
            except OSError:
                continue
            sig.append((str(f), st.st_mtime_ns, st.st_size))
        return sig

    def table_problems(self) -> list[str]:
        """Analysis CSVs left out because they cannot be shown, with why."""
        return self._analyses()[3]

    def tables(self) -> list[Result]:
        return self._analyses()[0]

    def tables_of(self, kind: ResultKind) -> list[Result]:
        return [t for t in self.tables() if t.kind == kind.name]

    def head_columns(self) -> dict[str, pd.Series]:
        """Every per-head number of the analyses: {name: Series over (layer, head)}."""
        return self._analyses()[1]

    def head_values(self, layer: int, head: int) -> dict[str, float]:
        """The selected head's number in every per-head table."""
        return {name: values[(layer, head)] for name, values in self._analyses()[2].items()
                if (layer, head) in values}

    # -------------------------------------------------------------- a circuit (probe circuit)
    def circuit_table(self, kind: ResultKind) -> Result | None:
        """The run's table of one circuit kind (circuit_heads, circuit_edges,
        circuit_attribution): the one named after the kind, else the first found; None when
        the run has none."""
        tables = self.tables_of(kind)
        return next((t for t in tables if t.name == kind.name), tables[0] if tables else None)

    def circuit_summary(self) -> tuple[dict[str, Any] | None, str | None]:
        """RUN/circuit/summary.json (the circuit's task, model, metric, clean metric,
        faithfulness) and why it cannot be read: (None, None) when there is none, (None, why)
        when it is damaged or not a JSON object. Re-read when the file changes."""
        path = self.path / CIRCUIT_DIR / CIRCUIT_SUMMARY
        try:
            st = path.stat()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"{CIRCUIT_DIR}/{CIRCUIT_SUMMARY} cannot be read ({error_message(e)})"
        return self._cache.get(("circuit-summary", st.st_mtime_ns, st.st_size), lambda: _read_summary(path))


CIRCUIT_DIR, CIRCUIT_SUMMARY = "circuit", "summary.json"  # what `probe circuit ... -o RUN` writes beside its tables


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    shown = f"{CIRCUIT_DIR}/{CIRCUIT_SUMMARY}"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"{shown} cannot be read ({type(e).__name__})"
    if not isinstance(summary, dict):
        return None, f"{shown} is not a JSON object"
    return summary, None


class Registry:
    """The runs given on the command line, by id ("0", "1", ...)."""

    def __init__(self, run_paths: list[str | Path], cache_bytes: int = CACHE_BYTES):
        if not run_paths:
            raise StoreError("give at least one run directory to serve")
        # each run gets the budget: a run's cache holds only what views of it re-read
        self.runs = {str(i): RunData(str(i), Path(p), cache_bytes=cache_bytes) for i, p in enumerate(run_paths)}

    def ids(self) -> list[str]:
        return list(self.runs)

    def get(self, run_id: Any) -> RunData:
        """The run with this id. Anything else (a path, a name, a number out of range) is
        refused before it could reach the file system."""
        key = str(run_id) if run_id is not None else ""
        if key not in self.runs:
            raise UnknownRun(f"no run {key[:80]!r} is served here; this dashboard serves runs "
                             f"{', '.join(f'{i} ({r.label})' for i, r in self.runs.items())}")
        return self.runs[key]

    def options(self) -> list[dict[str, str]]:
        return [{"label": f"{r.label}" + (" (unavailable)" if r.error else ""), "value": i}
                for i, r in self.runs.items()]
