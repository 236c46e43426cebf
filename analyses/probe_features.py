"""Probe data read from a recorded run: one feature row per labelled unit (a prompt, a word,
a pronoun), for every layer at once, plus its label, its prompt (the split unit) and its type
(the word form, for Hewitt & Liang's control task).

Rows are read prompt by prompt from the run. They are either stacked in memory
(``[layers, rows, d]`` float32) or, for runs larger than RAM, appended to a ``FeatureRows``
file on disk and streamed back in chunks by the probe (``analyses.probes``), so memory stays
bounded by one chunk whatever the size of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from probe.errors import InputError
from probe.prompts import twin_key

from .run_checks import require_layer_hooks


class FeatureRows:
    """Feature rows on disk: a raw float32 file laid out [rows, layers, d], so a chunk of
    consecutive rows is one contiguous read. Read with plain file reads (not mmap), so the
    pages stay in the OS cache and out of this process's resident memory."""

    def __init__(self, path: str | os.PathLike, n_layers: int, d: int):
        self.path = Path(path)
        self.n_layers, self.d = n_layers, d
        self.n_rows = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open while rows are appended

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_layers, self.n_rows, self.d)

    def append(self, block: np.ndarray) -> None:
        """Add rows given as [layers, rows, d]."""
        if block.shape[0] != self.n_layers or block.shape[2] != self.d:
            raise ValueError(f"rows of shape {block.shape} do not fit [{self.n_layers}, rows, {self.d}]")
        self._file.write(np.ascontiguousarray(block.transpose(1, 0, 2), dtype=np.float32).tobytes())
        self.n_rows += block.shape[1]

    def close(self) -> FeatureRows:
        if not self._file.closed:
            self._file.close()
        return self

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as [layers, rows, d]."""
        self.close()
        row = self.n_layers * self.d
        with open(self.path, "rb") as f:
            f.seek(start * row * 4)
            flat = np.fromfile(f, dtype=np.float32, count=(stop - start) * row)
        return flat.reshape(stop - start, self.n_layers, self.d).transpose(1, 0, 2)


def chunks(features: np.ndarray | FeatureRows, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, [layers, r, d]) blocks of consecutive rows: one block for an in-memory array
    unless ``rows`` asks for smaller ones."""
    n = features.shape[1]
    if rows is None:
        rows = n if isinstance(features, np.ndarray) else default_chunk_rows(features.n_layers, features.d)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        yield start, (features[:, start:stop] if isinstance(features, np.ndarray) else features.read(start, stop))


def default_chunk_rows(n_layers: int, d: int, budget_bytes: int = 32 * 2**20) -> int:
    # A streamed fit holds a few arrays of a chunk's size at once (the rows, their float64 sums,
    # the rotated rows and the products): 32 MiB of rows keeps that to a few hundred MiB, and a
    # chunk (~500 rows of 30 x 576) still makes matrix products large enough to run at full speed.
    return max(1, budget_bytes // (n_layers * d * 4))


# How a span label is refused: the rule, and the fix for a label of the prompt file or for a
# field named by --query (which the user can simply name differently).
SPAN_RULE = ("a span is [start, end]: two whole numbers, character offsets into the prompt's \"text\" such that "
             "text[start:end] is the labelled string")
LABEL_FIX = "fix the prompt file"
QUERY_FIX = "give --query a field that holds one span, e.g. pronoun_span"


def is_span(value) -> bool:
    """Two whole numbers (not bools, not floats: text[4.0:10.0] is no slice)."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def label_span(value, field: str, where: str, fix: str = LABEL_FIX) -> tuple[int, int]:
    """The label ``field`` (``value``) as one (start, end) character span; InputError naming
    ``where`` (e.g. "prompt 3 of RUN") and ``fix`` otherwise. Whether the span lies inside
    its text is `aligned_tokens`' question."""
    if not is_span(value):
        raise InputError(f"{where}: {field!r} is {_shown(value)}, not a [start, end] character span ({SPAN_RULE}); "
                         f"{fix}")
    return value[0], value[1]


def label_spans(value, field: str, where: str, fix: str = LABEL_FIX) -> list[tuple[int, int]]:
    """The label ``field`` as a list of spans ([[start, end], ...]; one bare span is a list of one)."""
    if is_span(value):
        return [label_span(value, field, where, fix)]
    if not isinstance(value, list):
        raise InputError(f"{where}: {field!r} is {_shown(value)}, not a list of [start, end] character spans "
                         f"({SPAN_RULE}); {fix}")
    return [label_span(v, f"{field}[{k}]", where, fix) for k, v in enumerate(value)]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def span_features(run, layers: Sequence[int], span_field: str, label_field: str, hook: str = "hook_resid_post",
                  pool: str = "first", out: FeatureRows | None = None, prompts: Sequence[int] | None = None,
                  span_fix: str = LABEL_FIX, workers: int | None = None, ray_address: str | None = None):
    """One row per labelled span of each prompt: features [layers, rows, d] (the span's first
    token, or the mean over its tokens), labels [rows], prompt_of [rows] and types (the
    lower-cased span text). ``span_field`` holds one [start, end] character span per prompt
    (e.g. ``pronoun_span``, with a scalar ``label_field`` such as ``answer``) or a list of
    them (``words``, with a list ``upos``). Spans cut off by truncation at recording are
    skipped; any other span that does not align with the text's tokens is refused
    (``aligned_tokens``), never silently dropped, and so is a label that is no span
    (``label_span``; ``span_fix`` says how to fix it). With ``out`` the rows go to disk and
    ``out`` is returned in place of the array. ``workers``: the shards are read by that many
    Ray workers (`probe.distributed.map_over_shards`), their rows joined in prompt order: the
    same features to the bit."""
    from functools import partial

    from probe.distributed import in_prompt_order

    layers = list(layers)
    require_layer_hooks(run, hook, "span features", layers)
    feats: list[list[np.ndarray]] = [[] for _ in layers]
    labels, prompt_of, types = [], [], []
    todo = list(range(run.n_prompts) if prompts is None else prompts)
    read = partial(_span_rows, layers=layers, span_field=span_field, label_field=label_field, hook=hook, pool=pool,
                   span_fix=span_fix)
    for i, entry in in_prompt_order(run, todo, read, workers, ray_address):  # one shard's rows held at a time
        if entry is None:  # no labelled span in this prompt
            continue
        rows, tags, spans_text = entry
        if out is not None:
            out.append(rows)
        else:
            for j in range(len(layers)):
                feats[j].extend(rows[j])
        labels += tags
        prompt_of += [i] * len(tags)
        types += spans_text
    if not labels:
        raise InputError(f"no prompt of {run.path} carries the labels {span_field!r} and {label_field!r}")
    data = out.close() if out is not None else np.stack([np.stack(f) for f in feats]).astype(np.float32)
    return data, np.asarray(labels), np.asarray(prompt_of), types


def _span_rows(run, prompts: Sequence[int], layers: list[int], span_field: str, label_field: str, hook: str,
               pool: str, span_fix: str) -> dict[int, tuple[np.ndarray, list, list[str]]]:
    """{prompt: (rows [layers, spans, d], labels, span texts)} of each of ``prompts`` with the
    labels and at least one aligned span."""
    truncated = set(run.manifest.get("truncated_prompts", []))
    out = {}
    for i in prompts:
        lab = run.labels(i)
        if span_field not in lab or label_field not in lab:
            continue
        text = run.prompt_records[i]["text"]
        where = f"prompt {i} of {run.path}"
        # a list label (upos) tags a list of spans (words); a single label (answer), one span
        if isinstance(lab[label_field], list):
            spans, tags = label_spans(lab[span_field], span_field, where, span_fix), lab[label_field]
        else:
            spans, tags = [label_span(lab[span_field], span_field, where, span_fix)], [lab[label_field]]
        if len(tags) != len(spans):
            raise InputError(f"prompt {i} of {run.path} has {len(spans)} {span_field!r} spans but {len(tags)} "
                             f"{label_field!r} labels; each span needs exactly one label (fix the prompt file)")
        acts = [run.prompt_activation(f"blocks.{layer}.{hook}", i) for layer in layers]
        rows: list[list[np.ndarray]] = [[] for _ in layers]
        kept, texts = [], []
        for (start, end), tag in zip(spans, tags):
            toks = aligned_tokens(run, i, text, start, end, span_field, i in truncated)
            if not toks:
                continue
            for j, a in enumerate(acts):
                rows[j].append(a[toks[0]] if pool == "first" else a[toks].mean(0))
            kept.append(tag)
            texts.append(text[start:end].lower())
        if kept:
            out[i] = (np.stack([np.stack(r) for r in rows]), kept, texts)
    return out


def aligned_tokens(run, i: int, text: str, start, end, field: str, truncated: bool) -> list[int]:
    """The token positions of prompt ``i``'s span [start, end), refusing a span that cannot be
    what its label file meant: outside the text, empty, starting or ending on whitespace
    (an off-by-one: no bundled set has one), or covering no token. A prompt truncated at
    recording loses its tail, so there a span past the last token is an honest [] (skipped)."""
    where = f"prompt {i} of {run.path}: the {field!r} span {[start, end]}"
    fix = ("spans are [start, end) character offsets into the prompt's \"text\" so that text[start:end] is "
           "the labelled word; fix the prompt file (were the spans computed on another version of the text?)")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise InputError(f"{where} does not lie inside its text ({len(text)} characters); {fix}")
    piece = text[start:end]
    if piece != piece.strip():
        raise InputError(f"{where} is {piece!r}, which starts or ends with whitespace; {fix}")
    toks = run.tokens_in(i, start, end)
    if not toks:
        spans = run.token_spans(i)
        last = int(spans[:, 1].max()) if len(spans) else 0
        if truncated and start >= last:
            return []
        raise InputError(f"{where} ({piece!r}) covers none of the prompt's tokens; {fix}")
    return toks


def word_features(run, layers: Sequence[int], spans_field: str = "words", label_field: str = "upos",
                  hook: str = "hook_resid_post", pool: str = "first", out: FeatureRows | None = None,
                  workers: int | None = None, ray_address: str | None = None):
    """Word-level data for a token-level probe (part of speech by default): each word's
    first subword token, aligned by the character spans the store keeps."""
    return span_features(run, layers, spans_field, label_field, hook, pool, out, workers=workers,
                         ray_address=ray_address)


def antecedent_features(run, layers: Sequence[int], query: str = "pronoun_span", hook: str = "hook_resid_post",
                        out: FeatureRows | None = None, workers: int | None = None, ray_address: str | None = None):
    """Antecedent identification: from the pronoun's representation (mean over its tokens),
    which candidate mention is the antecedent (label ``answer``: 0 = the first mention, 1 =
    the second). The third value is the split unit (``split_groups``), not the prompt. The control task's type is the pronoun with the two candidate words
    ("he|physician|secretary"): a probe that only memorises which words are in the sentence
    learns the control task as well as the real one (selectivity ~0)."""
    feats, labels, prompt_of, spans = span_features(run, layers, query, "answer", hook, "mean", out,
                                                    span_fix=QUERY_FIX, workers=workers, ray_address=ray_address)
    types = []
    for i, pronoun in zip(prompt_of, spans):
        lab, text = run.labels(int(i)), run.prompt_records[int(i)]["text"]
        candidates = label_spans(lab.get("candidate_spans", []), "candidate_spans", f"prompt {int(i)} of {run.path}")
        types.append("|".join([pronoun] + [text[a:b].lower() for a, b in candidates]))
    return feats, labels, split_groups(run, prompt_of), types


def split_groups(run, prompts: Sequence[int]) -> np.ndarray:
    """The split unit of each prompt: its ``pair_id`` when it has one, so the variants of one
    sentence (WinoBias pro/anti, the tired/wide twins) never sit on both sides of a split
    (a probe would recognise the sentence and look better than it is), else the prompt."""
    return np.asarray([twin_key(run.labels(int(i)), int(i)) for i in prompts])


def control_types(run, prompts: Sequence[int], field: str) -> list[str]:
    """The word type of each prompt for a prompt-level label's control task (Hewitt & Liang:
    every type gets one random label): the value of another label field, e.g. the pronoun for
    a gender probe, so the control measures what a probe gets from memorising that field."""
    fields = run.manifest.get("label_fields", [])
    if field not in fields:
        raise InputError(f"--control {field!r}: the run's prompts have no such field; they carry {fields}")
    values = [run.labels(int(i)).get(field) for i in prompts]
    missing = [int(i) for i, v in zip(prompts, values) if v is None]
    if missing:
        raise InputError(f"--control {field!r}: prompts {missing[:5]} lack that field; every probed prompt needs it")
    return [str(v).lower() for v in values]


def prompt_features(run, layers: Sequence[int], hook: str = "hook_resid_post", pool: str = "mean",
                    prompts: Sequence[int] | None = None, out: FeatureRows | None = None,
                    workers: int | None = None, ray_address: str | None = None):
    """[layers, prompts, d] one vector per prompt: the mean over its tokens, or its first /
    last token (or ``out``, filled, when streaming to disk); ``workers`` as for `span_features`
    (prompts given out of order are read shard by shard and put back in the order given)."""
    from functools import partial

    from probe.distributed import in_prompt_order

    layers = list(layers)
    todo = list(range(run.n_prompts) if prompts is None else prompts)
    read = partial(_prompt_vectors, layers=layers, hook=hook, pool=pool)
    rows = []
    for _, vector in in_prompt_order(run, todo, read, workers, ray_address):
        if out is not None:
            out.append(vector[:, None])
        else:
            rows.append(vector)
    return out.close() if out is not None else np.stack(rows, 1).astype(np.float32)


def _prompt_vectors(run, prompts: Sequence[int], layers: list[int], hook: str, pool: str) -> dict[int, np.ndarray]:
    """{prompt: [layers, d]} pooled vectors of ``prompts``."""
    out = {}
    for i in prompts:
        vec = []
        for layer in layers:
            x = run.prompt_activation(f"blocks.{layer}.{hook}", i)
            vec.append(x.mean(0) if pool == "mean" else x[0] if pool == "first" else x[-1])
        out[i] = np.stack(vec)
    return out
