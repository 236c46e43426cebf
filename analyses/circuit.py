"""The interventions a circuit is found and checked with, over a task of clean and corrupted
prompts: exact patching of heads, path patching (Wang et al. 2022), mean ablation of everything
outside a set of heads, and the faithfulness, completeness and minimality checks built on it.

A task (`CircuitTask`) is batches of clean token rows with a corrupted twin of each (the same
length, e.g. IOI's ABC prompts: the grammar kept, the information the task needs removed), the
named token positions of each prompt (IOI's ``IO``, ``S1``, ``S1+1``, ``S2``, ``END``) and a
metric per prompt (IOI's logit difference IO - S at ``END``). Batches hold prompts of one token
length; positions are per prompt, so prompts of different templates share a batch. Every effect
below is a change of the mean metric over the task's prompts.

Conventions (each a choice a circuits paper makes; written down here and in the report):

* **Patching direction: noising.** A component's effect is the clean run with that component's
  output taken from the corrupted run, minus the clean run (Wang et al.'s path patching, and
  `analyses.attribution`'s default).
* **Heads at every position.** A head is patched or ablated at all positions at once; a circuit
  is a set of heads, not of (head, position) pairs.
* **Path patching** from a sender head to receiver inputs (Wang et al. section 3.1): (1) run the
  clean prompts with the sender's output taken from the corrupted run and every other head frozen
  at its clean output (MLPs and norms recomputed), and record the receivers' inputs; (2) run the
  clean prompts with only those receiver inputs replaced. Receiver inputs: ``q`` (the head's query,
  at the given positions), ``v`` (its values at the given key positions: the head's output is
  corrected by its own attention times the change of the value) and ``k`` (its keys at the given
  key positions: its attention scores recomputed against the recorded keys, after rotary where the
  model has it, then its softmax as usual). Both change the receiving head alone, so on a
  grouped-query model the key/value head it shares with others is changed for it only.
* **Mean ablation** replaces a head's output by its mean over the corrupted prompts of the same
  group (same template, order and length, so the mean is taken over aligned positions), as Wang
  et al. do with their ABC distribution; ``group`` in a batch says which prompts share a mean.
* **Faithfulness** (Wang et al. section 4.1): F(C) / F(M), the mean metric with every head outside
  the circuit C mean-ablated, over that of the whole model M.
* **Completeness** (section 4.2): for subsets K of C, |F(C \\ K) - F(M \\ K)|; K = the empty set,
  each class, and random halves of C.
* **Minimality** (section 4.3): for each head v of C, |F(C \\ (K u {v})) - F(C \\ K)| with K the
  other heads of v's class (Wang et al. choose K per head by hand; the class-mates are the choice
  here, so a head whose class-mates can replace it still shows its own contribution).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer, act_name
from probe.errors import InputError

Head = tuple[int, int]


@dataclass(frozen=True)
class TaskBatch:
    """Prompts of one token length: ``clean`` and ``corrupt`` token ids [b, p], named positions
    ``positions[name]`` [b] (per prompt), ``answer`` and ``wrong`` token ids [b] the metric reads,
    and ``group`` [b] (prompts of one group share a mean for mean ablation)."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: dict[str, torch.Tensor]
    answer: torch.Tensor
    wrong: torch.Tensor
    group: torch.Tensor


MetricFn = Callable[[torch.Tensor, TaskBatch], torch.Tensor]  # logits [b, p, vocab], batch -> [b]


def logit_diff_at(position: str = "END") -> MetricFn:
    """logit[answer] - logit[wrong] at the named position of each prompt."""

    def metric(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        at = logits[rows, batch.positions[position].to(logits.device)]  # [b, vocab]
        return at[rows, batch.answer.to(logits.device)] - at[rows, batch.wrong.to(logits.device)]

    return metric


@dataclass(frozen=True)
class CircuitTask:
    name: str
    batches: tuple[TaskBatch, ...]
    metric: MetricFn
    metric_name: str

    @property
    def n(self) -> int:
        return sum(len(b.clean) for b in self.batches)


# ------------------------------------------------------------------------------ running a task
def _repeat(batch: TaskBatch, copies: int) -> TaskBatch:
    return TaskBatch(batch.clean.repeat(copies, 1), batch.corrupt.repeat(copies, 1),
                     {k: v.repeat(copies) for k, v in batch.positions.items()}, batch.answer.repeat(copies),
                     batch.wrong.repeat(copies), batch.group.repeat(copies))


def _z_names(model: HookedTransformer) -> list[str]:
    return [act_name("z", layer) for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def clean_metric(model: HookedTransformer, task: CircuitTask, version: str = "clean") -> torch.Tensor:
    """The metric of every prompt [n] on the clean (or ``"corrupt"``) tokens."""
    out = [task.metric(model(getattr(b, version).to(model.device)), b).float().cpu() for b in task.batches]
    return torch.cat(out)


@torch.no_grad()
def _caches(model: HookedTransformer, batch: TaskBatch, names: list[str], version: str) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(getattr(batch, version).to(model.device), names_filter=names)
    return {n: cache[n] for n in names}


def _check_heads(model: HookedTransformer, heads: Iterable[Head]) -> list[Head]:
    heads = [(int(layer), int(head)) for layer, head in heads]
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise InputError(f"head L{layer}H{head} is not in the model ({model.cfg.n_layers} layers x "
                             f"{model.cfg.n_heads} heads)")
    return heads


# ------------------------------------------------------------------------- exact head patching
@torch.no_grad()
def head_patching(model: HookedTransformer, task: CircuitTask, heads: Sequence[Head]) -> pd.DataFrame:
    """The measured effect of patching each head (every position) with its corrupted output:
    one row per head, ``effect`` = mean metric patched - clean. One forward pass per layer of the
    given heads (its heads as copies of the batch), starting at that layer from the clean stream."""
    heads = _check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    sums = {h: 0.0 for h in heads}
    base_total = 0.0
    for batch in task.batches:
        b = len(batch.clean)
        names = sorted({act_name("resid_pre", layer) for layer in by_layer})
        clean = _caches(model, batch, names, "clean")
        corrupt = _caches(model, batch, [act_name("z", layer) for layer in by_layer], "corrupt")
        base = task.metric(model(batch.clean.to(model.device)), batch).float()
        base_total += base.sum().item()
        for layer, members in by_layer.items():
            source = corrupt[act_name("z", layer)]

            def patch(z, hook, members=members, source=source, b=b):
                z = z.clone()
                for i, head in enumerate(members):
                    z[i * b:(i + 1) * b, :, head] = source[:, :, head]
                return z

            copies = len(members)
            logits = model.run_with_hooks(clean[act_name("resid_pre", layer)].repeat(copies, 1, 1),
                                          start_at_layer=layer, fwd_hooks=[(act_name("z", layer), patch)])
            values = task.metric(logits, _repeat(batch, copies)).float().reshape(copies, b)
            for i, head in enumerate(members):
                sums[(layer, head)] += values[i].sum().item()
    n = task.n
    return pd.DataFrame([{"layer": layer, "head": head, "effect": (sums[(layer, head)] - base_total) / n}
                         for layer, head in heads], columns=["layer", "head", "effect"])


# ------------------------------------------------------------------------------ path patching
@dataclass(frozen=True)
class Receiver:
    """A receiver of path patching: head ``head`` of ``layer``, its input ``kind`` ("q", "k", "v")
    at the named positions (query positions for q; key positions for k and v); None: every one."""

    layer: int
    head: int
    kind: str
    position: str | None = None


def _check_receivers(model: HookedTransformer, receivers: Sequence[Receiver]) -> None:
    _check_heads(model, [(r.layer, r.head) for r in receivers])
    for r in receivers:
        if r.kind not in ("q", "k", "v"):
            raise InputError(f"a receiver's input is q, k or v, got {r.kind!r}")


def _position_mask(batch: TaskBatch, position: str | None, p: int) -> torch.Tensor:
    """[b, p] bool: the receiver's positions in each prompt."""
    b = len(batch.clean)
    if position is None:
        return torch.ones(b, p, dtype=torch.bool)
    if position not in batch.positions:
        raise InputError(f"no position {position!r} in the task; it has {', '.join(batch.positions)}")
    mask = torch.zeros(b, p, dtype=torch.bool)
    mask[torch.arange(b), batch.positions[position]] = True
    return mask


@torch.no_grad()
def path_patching(model: HookedTransformer, task: CircuitTask, senders: Sequence[Head],
                  receivers: Sequence[Receiver], max_copies: int = 16) -> pd.DataFrame:
    """The effect of each sender head on the mean metric through the receivers' inputs only (the
    module docstring's two steps). One row per sender: ``effect`` (mean metric after - clean). A
    sender at or above every receiver's layer has no path to them: effect 0."""
    senders = _check_heads(model, senders)
    _check_receivers(model, receivers)
    cfg = model.cfg
    rec_layers = sorted({r.layer for r in receivers})
    first_receiver = rec_layers[0]
    kv_of = cfg.n_heads // cfg.n_kv_heads  # query heads per key/value head
    totals = {s: 0.0 for s in senders}
    base_total = 0.0
    live = [s for s in senders if s[0] < rec_layers[-1]]
    for batch in task.batches:
        b, p = batch.clean.shape
        zs = _z_names(model)
        rec_inputs = sorted({_input_name(model, r) for r in receivers})
        clean = _caches(model, batch, zs + [act_name("resid_pre", layer) for layer in range(cfg.n_layers)], "clean")
        corrupt = _caches(model, batch, zs, "corrupt")
        base = task.metric(model(batch.clean.to(model.device)), batch).float()
        base_total += base.sum().item()
        masks = {r: _position_mask(batch, r.position, p).to(model.device) for r in receivers}
        for first in range(0, len(live), max_copies):
            chunk = live[first:first + max_copies]
            copies = len(chunk)
            start = min(layer for layer, _ in chunk)
            seen: dict[str, torch.Tensor] = {}

            def freeze(z, hook, chunk=chunk, clean=clean, corrupt=corrupt, copies=copies, b=b):  # step 1: all clean but the sender
                layer = int(hook.name.split(".")[1])
                z = clean[hook.name].repeat(copies, 1, 1, 1)
                for i, (s_layer, s_head) in enumerate(chunk):
                    if s_layer == layer:
                        z[i * b:(i + 1) * b, :, s_head] = corrupt[hook.name][:, :, s_head]
                return z

            def record(x, hook, seen=seen):
                seen[hook.name] = x.clone()
                return x

            model.run_with_hooks(clean[act_name("resid_pre", start)].repeat(copies, 1, 1), start_at_layer=start,
                                 stop_at_layer=rec_layers[-1] + 1, return_type=None,
                                 fwd_hooks=[(name, record) for name in rec_inputs]
                                 + [(zs[layer], freeze) for layer in range(start, rec_layers[-1] + 1)])
            hooks = _receiver_hooks(model, receivers, masks, seen, copies, kv_of)
            logits = model.run_with_hooks(clean[act_name("resid_pre", first_receiver)].repeat(copies, 1, 1),
                                          start_at_layer=first_receiver, fwd_hooks=hooks)
            values = task.metric(logits, _repeat(batch, copies)).float().reshape(copies, b)
            for i, sender in enumerate(chunk):
                totals[sender] += values[i].sum().item()
    n = task.n
    return pd.DataFrame([{"layer": layer, "head": head,
                          "effect": (totals[(layer, head)] - base_total) / n if (layer, head) in live else 0.0}
                         for layer, head in senders], columns=["layer", "head", "effect"])


def _input_name(model: HookedTransformer, r: Receiver) -> str:
    """The hook whose value step 1 records for a receiver: the query (pre-rotary, as it is put back
    there), the value, or the key as the score reads it (after rotary, where the model has it)."""
    if r.kind == "k" and model.cfg.positional == "rotary":
        return f"blocks.{r.layer}.attn.hook_rot_k"
    return act_name(r.kind, r.layer)


def _receiver_hooks(model, receivers, masks, seen, copies, kv_of):
    """Step 2's hooks, each changing the receiving head alone: a q receiver takes the recorded
    query at its positions; a k receiver gets its scores against the recorded keys at its key
    positions recomputed (so a key head shared by several query heads changes for this one only;
    the softmax and everything after it run as usual); a v receiver gets its output corrected by its
    own (live) attention times the value change there."""
    hooks = []
    live: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        live[hook.name] = x
        return x

    for r in receivers:
        name = _input_name(model, r)
        mask = masks[r].repeat(copies, 1)  # [copies * b, p]
        if r.kind == "q":
            def put(x, hook, r=r, name=name, mask=mask):
                x = x.clone()
                x[:, :, r.head] = torch.where(mask[:, :, None], seen[name][:, :, r.head], x[:, :, r.head])
                return x

            hooks.append((name, put))
        elif r.kind == "k":
            q_name = name.replace("rot_k", "rot_q") if name.endswith("rot_k") else act_name("q", r.layer)
            scale = model.blocks[r.layer].attn.scale

            def rescore(scores, hook, r=r, name=name, q_name=q_name, mask=mask, scale=scale):
                kv = r.head // kv_of
                new = torch.einsum("bqd,bkd->bqk", live[q_name][:, :, r.head], seen[name][:, :, kv]) * scale
                old = scores[:, r.head]
                scores = scores.clone()
                scores[:, r.head] = torch.where(mask[:, None, :] & torch.isfinite(old), new.to(old.dtype), old)
                return scores

            hooks += [(q_name, keep), (act_name("attn_scores", r.layer), rescore)]
        else:
            pattern = act_name("pattern", r.layer)

            def correct(z, hook, r=r, name=name, pattern=pattern, mask=mask):
                kv = r.head // kv_of
                dv = (seen[name][:, :, kv] - live[name][:, :, kv]) * mask[:, :, None]  # [b, k, d]
                z = z.clone()
                z[:, :, r.head] = z[:, :, r.head] + torch.einsum("bqk,bkd->bqd", live[pattern][:, r.head], dv)
                return z

            hooks += [(name, keep), (pattern, keep), (act_name("z", r.layer), correct)]
    return hooks


# ------------------------------------------------------------------------------ mean ablation
@torch.no_grad()
def group_means(model: HookedTransformer, task: CircuitTask) -> list[dict[str, torch.Tensor]]:
    """Per batch, per layer: the head outputs ``hook_z`` [b, p, h, d] of the corrupted prompts,
    each prompt's row replaced by the mean over the prompts of its group."""
    out = []
    for batch in task.batches:
        z = _caches(model, batch, _z_names(model), "corrupt")
        means = {}
        for name, value in z.items():
            mean = torch.empty_like(value)
            for g in batch.group.unique():
                rows = (batch.group == g).to(value.device)
                mean[rows] = value[rows].mean(0, keepdim=True)
            means[name] = mean
        out.append(means)
    return out


@torch.no_grad()
def ablated_metric(model: HookedTransformer, task: CircuitTask, keep: Iterable[Head] | None,
                   means: list[dict[str, torch.Tensor]]) -> float:
    """The mean metric with every head outside ``keep`` mean-ablated (``keep=None``: nothing is)."""
    if keep is None:
        return float(clean_metric(model, task).mean())
    keep = set(_check_heads(model, keep))
    cfg = model.cfg
    ablated = {layer: [h for h in range(cfg.n_heads) if (layer, h) not in keep] for layer in range(cfg.n_layers)}
    total = 0.0
    for batch, mean in zip(task.batches, means):
        def ablate(z, hook, mean=mean):
            heads = ablated[int(hook.name.split(".")[1])]
            if not heads:
                return z
            z = z.clone()
            z[:, :, heads] = mean[hook.name][:, :, heads]
            return z

        logits = model.run_with_hooks(batch.clean.to(model.device), fwd_hooks=[(n, ablate) for n in _z_names(model)])
        total += task.metric(logits, batch).float().sum().item()
    return total / task.n


def all_heads(model: HookedTransformer) -> list[Head]:
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


@dataclass(frozen=True)
class CircuitChecks:
    """Faithfulness, completeness and minimality of a circuit (the module docstring's
    definitions); every F is a mean metric, every score also as a fraction of F(M)."""

    full: float  # F(M)
    circuit: float  # F(C)
    empty: float  # F(empty set): every head mean-ablated
    faithfulness: float  # F(C) / F(M)
    random: tuple[float, ...]  # F of random head sets with as many heads per layer as C
    completeness: pd.DataFrame  # subset, size, f_circuit, f_model, incompleteness, fraction
    minimality: pd.DataFrame  # layer, head, head_class, f_without_k, f_without_kv, minimality, fraction
    notes: tuple[str, ...] = field(default=())


def circuit_checks(model: HookedTransformer, task: CircuitTask, classes: dict[Head, str], n_random_subsets: int = 6,
                   n_random_circuits: int = 5, seed: int = 0) -> CircuitChecks:
    """Faithfulness, completeness and minimality of the circuit ``classes`` (head -> class)."""
    from .ablation import same_layer_random_heads

    circuit = sorted(classes)
    if not circuit:
        raise InputError("the circuit has no heads; nothing to check")
    heads = all_heads(model)
    means = group_means(model, task)
    rng = np.random.default_rng(seed)
    f_full = ablated_metric(model, task, None, means)
    f_circuit = ablated_metric(model, task, circuit, means)
    f_empty = ablated_metric(model, task, [], means)
    notes = []
    randoms = []
    for _ in range(n_random_circuits):
        try:
            randoms.append(ablated_metric(model, task, same_layer_random_heads(circuit, model.cfg.n_heads, rng), means))
        except InputError as e:  # a layer of the circuit holds more than half its heads
            notes.append(f"random same-layer circuits not drawn: {e}")
            break

    subsets: list[tuple[str, list[Head]]] = [("empty set", [])]
    for name in sorted(set(classes.values())):
        subsets.append((f"class: {name}", [h for h in circuit if classes[h] == name]))
    for i in range(n_random_subsets):
        pick = rng.random(len(circuit)) < 0.5
        subsets.append((f"random half {i + 1}", [h for h, p in zip(circuit, pick) if p]))
    rows = []
    for label, k in subsets:
        k_set = set(k)
        f_c = ablated_metric(model, task, [h for h in circuit if h not in k_set], means)
        f_m = ablated_metric(model, task, [h for h in heads if h not in k_set], means)
        rows.append({"subset": label, "size": len(k), "heads": " ".join(f"L{a}H{b}" for a, b in k),
                     "f_circuit": f_c, "f_model": f_m, "incompleteness": abs(f_c - f_m),
                     "fraction": abs(f_c - f_m) / abs(f_full)})
    completeness = pd.DataFrame(rows)

    rows = []
    for head in circuit:
        mates = [h for h in circuit if classes[h] == classes[head] and h != head]
        f_k = ablated_metric(model, task, [h for h in circuit if h not in set(mates)], means) if mates else f_circuit
        f_kv = ablated_metric(model, task, [h for h in circuit if h not in set(mates) | {head}], means)
        rows.append({"layer": head[0], "head": head[1], "head_class": classes[head], "k": " ".join(
            f"L{a}H{b}" for a, b in mates), "f_without_k": f_k, "f_without_kv": f_kv, "minimality": abs(f_k - f_kv),
            "fraction": abs(f_k - f_kv) / abs(f_full)})
    return CircuitChecks(f_full, f_circuit, f_empty, f_circuit / f_full, tuple(randoms), completeness,
                         pd.DataFrame(rows), tuple(notes))
