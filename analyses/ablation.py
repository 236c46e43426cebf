"""Head (and MLP) ablation through the hook API, and the per-head ablation sweep.

Methods (as the literature names them):
- ``zero``: the head's output z is set to 0;
- ``mean``: z is replaced by its mean over a reference set, per position;
- ``resample``: z is replaced by z of another example of the reference set (a fixed random
  pairing, ``resample_pairing``), which keeps it on-distribution (Chan et al. 2022, causal
  scrubbing). When the reference set has as many examples as the inputs (above all when it
  *is* the inputs, as on the CLI) the pairing is a derangement: example i never gets its own
  activation back, which would be no ablation at all.

A set of heads ablated together is judged against random sets of as many heads *of the same
layers* (``same_layer_random_heads``, ``ablate_against_random``): as many heads in each layer as
the set has there, drawn from that layer's other heads, several draws. Ablating any k heads of
layers 17-23 of a 30-layer model does something; the question is whether these k do more.

A sweep ablates each head in turn and reports the change in a metric as a [layer, head]
table. It is batched: one forward pass per layer runs the batch once per head of that layer,
each copy with a different head ablated, so a full sweep costs n_layers passes (times
``n_heads`` in batch size), not n_layers * n_heads.

Metrics are per-example callables ``metric(out, tokens, cache) -> [b]``. Those on the output
(next-token loss, logit difference) ignore ``cache``; those on internal activations (probe
accuracy, antecedent score: what an encoder without an LM head offers) name the hooks they
read in ``metric.reads`` and get them in ``cache``. Inputs of different lengths are padded and
given with ``attention_mask``; mean ablation then averages each position over the reference
examples that have a real token there.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer
from models.loss import next_token_nll
from probe.errors import InputError
from probe.head_labels import head_label, heads_text
from probe.hook_names import block_of

Method = Literal["zero", "mean", "resample"]
Metric = Callable[..., torch.Tensor]  # (out [b,p,v|m], tokens [b,p], cache {hook: [b,...]}) -> [b]


def next_token_loss(positions: slice | None = None, attention_mask: torch.Tensor | None = None) -> Metric:
    """Per-example mean next-token cross-entropy, optionally over a slice of the
    [p-1] prediction positions (e.g. only the repeated half of an induction sequence).
    With ``attention_mask`` [b, p] (right-padded prompts) only real next tokens count."""

    def metric(logits: torch.Tensor, tokens: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        nll = next_token_nll(logits, tokens)
        real = torch.ones_like(nll) if attention_mask is None else attention_mask[:, 1:].to(nll.dtype)
        if positions is not None:
            nll, real = nll[:, positions], real[:, positions]
        return (nll * real).sum(-1) / real.sum(-1).clamp(min=1)

    return metric


def logit_difference(answer: torch.Tensor, wrong: torch.Tensor, position: int = -1) -> Metric:
    """logit[answer] - logit[wrong] at ``position`` (per example token ids [b])."""

    def metric(logits: torch.Tensor, tokens: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        last = logits[:, position].float()
        return last.gather(-1, answer[:, None])[:, 0] - last.gather(-1, wrong[:, None])[:, 0]

    return metric


def probe_accuracy(probe, hook: str, weights: torch.Tensor, labels) -> Metric:
    """Per-example accuracy of a fitted ``LinearProbe`` on the activation at ``hook``, pooled
    over each example's query tokens with ``weights`` [b, p] (e.g. 1/n on the pronoun's n
    tokens): does the representation still carry what the probe reads?"""
    target = torch.as_tensor(np.searchsorted(probe.classes_, np.asarray(labels)))

    def metric(out: torch.Tensor, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        pooled = torch.einsum("bpm,bp->bm", cache[hook].float(), weights)
        return (probe.decision_function(pooled).argmax(-1) == target).float()

    metric.reads, metric.uses_output = (hook,), False
    return metric


def probe_margin(probe, hook: str, weights: torch.Tensor, labels) -> Metric:
    """Per-example log-odds the probe gives the true class over the best other one: a
    continuous version of ``probe_accuracy`` (what activation patching normalises)."""
    target = torch.as_tensor(np.searchsorted(probe.classes_, np.asarray(labels)))

    def metric(out: torch.Tensor, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        logits = probe.decision_function(torch.einsum("bpm,bp->bm", cache[hook].float(), weights))
        true = logits.gather(-1, target[:, None])[:, 0]
        return true - logits.scatter(-1, target[:, None], float("-inf")).max(-1).values

    metric.reads, metric.uses_output = (hook,), False
    return metric


def antecedent_score(heads: list[tuple[int, int]], query: torch.Tensor, candidates: torch.Tensor,
                     gold: torch.Tensor) -> Metric:
    """Per-example attention from the query (pronoun) to its gold antecedent minus to the
    other candidate, averaged over ``heads`` (Clark et al. 2019 aggregation: ``query`` [b, p]
    weights average over the pronoun's tokens, ``candidates`` [b, 2, p] indicators sum over
    each mention's tokens). Ablating a head changes the score of heads in later layers only."""
    reads = tuple(dict.fromkeys(f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads))
    sign = torch.where(torch.arange(2)[None] == gold[:, None], 1.0, -1.0)  # [b, 2]: +gold, -other

    def metric(out: torch.Tensor, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        score = torch.zeros(tokens.shape[0])
        for layer, head in heads:
            from_query = torch.einsum("bqk,bq->bk", cache[f"blocks.{layer}.attn.hook_pattern"][:, head].float(), query)
            score += (torch.einsum("bk,bck->bc", from_query, candidates) * sign).sum(-1)
        return score / len(heads)

    metric.reads, metric.uses_output = reads, False
    return metric


def last_layer_read(metric: Metric, n_layers: int) -> int:
    """The last block whose activations can change the metric: the final one for metrics on
    the output, else the deepest block among the hooks it reads."""
    if getattr(metric, "uses_output", True):
        return n_layers - 1
    return max(n_layers - 1 if (layer := block_of(name)) is None else layer for name in metric.reads)


def evaluate(model: HookedTransformer, tokens: torch.Tensor, metric: Metric, fwd_hooks: list = (),
             attention_mask: torch.Tensor | None = None, copies: int = 1,
             resume: tuple[int, torch.Tensor] | None = None, known: dict[str, torch.Tensor] | None = None
             ) -> list[torch.Tensor]:
    """Run ``copies`` stacked copies of the batch with ``fwd_hooks`` and return the metric of
    each copy ([b] each), capturing the activations the metric reads. ``resume`` = (layer,
    resid_pre [b, p, m]) starts at that block (the earlier ones are unchanged by what the
    hooks do there); activations the metric reads from earlier blocks come from ``known``.
    A metric that does not read the output stops after the last block it reads."""
    known = known or {}
    reads = [name for name in getattr(metric, "reads", ()) if name not in known]
    seen: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        seen[hook.name] = x

    mask = attention_mask.repeat(copies, 1) if attention_mask is not None else None
    kwargs = {} if getattr(metric, "uses_output", True) else {"stop_at_layer": last_layer_read(metric, 10**9) + 1}
    if resume is not None:
        kwargs["start_at_layer"], resid = resume
        batch = resid.repeat(copies, 1, 1)
    else:
        batch = tokens.repeat(copies, 1)
    out = model.run_with_hooks(batch, list(fwd_hooks) + [(name, keep) for name in reads], attention_mask=mask,
                               **kwargs)
    b = tokens.shape[0]
    return [metric(out[i * b:(i + 1) * b] if out is not None else None, tokens,
                   {k: v[i * b:(i + 1) * b] for k, v in seen.items()} | known) for i in range(copies)]


@torch.no_grad()
def reference_activations(model: HookedTransformer, reference: torch.Tensor, hook: str,
                          reference_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """``blocks.{layer}.{hook}`` of every layer on the reference tokens: {layer: [n_ref, pos,
    ...]}; padded positions are NaN, so means skip them."""
    _, cache = model.run_with_cache(reference, names_filter=f"blocks.*.{hook}", attention_mask=reference_mask)
    acts = {layer: cache[f"blocks.{layer}.{hook}"] for layer in range(model.cfg.n_layers)}
    if reference_mask is not None and not bool(reference_mask.all()):
        pad = ~reference_mask.bool()
        acts = {layer: x.masked_fill(pad.reshape(*pad.shape, *[1] * (x.dim() - 2)), float("nan"))
                for layer, x in acts.items()}
    return acts


def reference_z(model: HookedTransformer, reference: torch.Tensor,
                reference_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """z of every layer on the reference tokens: {layer: [n_ref, pos, head, d_head]}; padded
    positions are NaN, so means skip them."""
    return reference_activations(model, reference, "attn.hook_z", reference_mask)


def check_heads(model: HookedTransformer, heads: list[tuple[int, int]]) -> None:
    cfg = model.cfg
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise InputError(f"head {head_label(layer, head)} is not in {cfg.model_name} ({cfg.n_layers} layers x "
                             f"{cfg.n_heads} heads: L0H0 .. {head_label(cfg.n_layers - 1, cfg.n_heads - 1)})")


def check_mlp_layers(model: HookedTransformer, layers: list[int]) -> None:
    if model.cfg.attn_only:
        raise InputError(f"{model.cfg.model_name} is attention-only: it has no MLP layers to ablate")
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise InputError(f"MLP layer {layer} is not in {model.cfg.model_name} (layers 0 .. "
                             f"{model.cfg.n_layers - 1})")


def replacement(method: Method, z: torch.Tensor, ref: torch.Tensor | None, seed: int = 0) -> torch.Tensor:
    """What an ablated head's z becomes: [b, pos, d_head] for one head."""
    if method == "zero":
        return torch.zeros_like(z)
    if ref is None:
        raise InputError(f"{method} ablation needs a reference set of examples (reference=...)")
    if ref.shape[1] != z.shape[1]:
        raise InputError(f"{method} ablation replaces per position: reference sequences have {ref.shape[1]} "
                         f"positions but the inputs have {z.shape[1]}; pad inputs and references to one length")
    if method == "mean":
        mean = ref.nanmean(0, keepdim=True)  # per position, over references with a real token there
        if mean.isnan().any():  # positions past every reference: the mean over all real positions
            mean = torch.where(mean.isnan(), ref.flatten(0, 1).nanmean(0), mean)
        return mean.expand_as(z)
    if method == "resample":
        if ref.isnan().any():
            raise InputError("resample ablation needs unpadded references of the inputs' length; use mean or zero "
                             "ablation for prompts of different lengths")
        return ref[resample_pairing(z.shape[0], ref.shape[0], seed)]
    raise InputError(f"unknown ablation method {method!r}; use zero, mean or resample")


def resample_pairing(n_inputs: int, n_reference: int, seed: int = 0) -> torch.Tensor:
    """The reference example each input takes its activation from ([n_inputs] indices).
    Equal sizes: a uniformly random derangement (no i -> i), since the reference is then
    usually the inputs themselves; otherwise independent uniform draws (give a reference set
    disjoint from the inputs then)."""
    g = torch.Generator().manual_seed(seed)
    if n_inputs != n_reference:
        return torch.randint(0, n_reference, (n_inputs,), generator=g)
    if n_inputs < 2:
        raise InputError("resample ablation with the inputs as their own reference needs at least 2 examples, so "
                         "each can take another's activation; give more prompts or use mean or zero ablation")
    while True:  # rejection sampling: about e tries on average, uniform over derangements
        pick = torch.randperm(n_inputs, generator=g)
        if not bool((pick == torch.arange(n_inputs)).any()):
            return pick


def ablate_heads_hooks(model: HookedTransformer, heads: list[tuple[int, int]], method: Method = "zero",
                       reference: torch.Tensor | dict[int, torch.Tensor] | None = None, seed: int = 0,
                       reference_mask: torch.Tensor | None = None) -> list:
    """Forward hooks that ablate the given (layer, head) pairs; pass to run_with_hooks.
    ``reference``: token ids, or their ``reference_z`` computed once for many calls."""
    check_heads(model, heads)
    if isinstance(reference, dict) or reference is None or method == "zero":
        refs = reference if isinstance(reference, dict) else {}
    else:
        refs = reference_z(model, reference, reference_mask)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in by_layer.items():
        def hook(z, hook, hs=hs, layer=layer):
            z = z.clone()
            for h in hs:
                ref = refs.get(layer)
                z[:, :, h] = replacement(method, z[:, :, h], ref[:, :, h] if ref is not None else None, seed)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks


def ablate_mlp_hooks(model: HookedTransformer, layers: list[int], method: Method = "zero",
                     reference: torch.Tensor | None = None, seed: int = 0,
                     reference_mask: torch.Tensor | None = None) -> list:
    """Forward hooks that ablate the MLP output (``hook_mlp_out``, [b, pos, d_model]) of the
    given layers, by the same methods as heads."""
    check_mlp_layers(model, layers)
    refs = {}
    if method != "zero":
        if reference is None:
            raise InputError(f"{method} ablation needs a reference set of examples (reference=...)")
        refs = reference_activations(model, reference, "hook_mlp_out", reference_mask)
    return [(f"blocks.{layer}.hook_mlp_out",
             lambda x, hook, layer=layer: replacement(method, x, refs.get(layer), seed)) for layer in layers]


@torch.no_grad()
def ablate_together(model: HookedTransformer, tokens: torch.Tensor, metric: Metric,
                    heads: list[tuple[int, int]] = (), mlp_layers: list[int] = (), method: Method = "mean",
                    reference: torch.Tensor | None = None, seed: int = 0,
                    attention_mask: torch.Tensor | None = None,
                    reference_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """The metric (mean over examples) clean and with ``heads`` and ``mlp_layers`` all ablated
    at once: one row with clean, ablated and effect (ablated - clean)."""
    if not heads and not mlp_layers:
        raise InputError("nothing to ablate: name heads (e.g. L1H0) and/or MLP layers")
    hooks = ablate_heads_hooks(model, list(heads), method, reference, seed, reference_mask) if heads else []
    if mlp_layers:
        hooks += ablate_mlp_hooks(model, list(mlp_layers), method, reference, seed, reference_mask)
    clean = evaluate(model, tokens, metric, attention_mask=attention_mask)[0].mean().item()
    ablated = evaluate(model, tokens, metric, hooks, attention_mask)[0].mean().item()
    return pd.DataFrame([{"method": method, "heads": heads_text(heads, " "),
                          "mlp": " ".join(str(layer) for layer in mlp_layers), "clean": clean, "ablated": ablated,
                          "effect": ablated - clean}])


def same_layer_random_heads(heads: list[tuple[int, int]], n_heads: int, rng: np.random.Generator
                            ) -> list[tuple[int, int]]:
    """As many heads in each layer as ``heads`` has there, drawn uniformly without replacement
    from that layer's heads outside ``heads``."""
    chosen = set(heads)
    out = []
    for layer, k in sorted(Counter(layer for layer, _ in heads).items()):
        pool = [h for h in range(n_heads) if (layer, h) not in chosen]
        if len(pool) < k:
            raise InputError(f"layer {layer} has {len(pool)} head(s) besides the {k} of the set there, too few for "
                             f"a random set of as many heads of the same layers; ablate fewer heads")
        out += [(layer, pool[i]) for i in sorted(rng.choice(len(pool), size=k, replace=False))]
    return out


def same_layer_sets(heads: list[tuple[int, int]], n_heads: int) -> int:
    """How many distinct sets ``same_layer_random_heads`` can draw."""
    counts = Counter(layer for layer, _ in set(heads))
    return math.prod(math.comb(n_heads - k, k) for k in counts.values())


@torch.no_grad()
def ablate_against_random(model: HookedTransformer, tokens: torch.Tensor, metrics: dict[str, Metric],
                          heads: list[tuple[int, int]], draws: int = 20, method: Method = "mean",
                          reference: torch.Tensor | dict[int, torch.Tensor] | None = None, seed: int = 0,
                          attention_mask: torch.Tensor | None = None,
                          reference_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """Each metric (mean over examples) clean, with ``heads`` ablated together, and with each of
    ``draws`` independent random sets of as many heads of the same layers
    (``same_layer_random_heads``, numpy generator seeded ``seed``) ablated together. One row per
    condition: ``condition`` (clean, heads, random), ``draw`` (the random set's index, -1
    otherwise), ``heads``, then per metric its value and ``effect_<metric>`` (value - clean).

    The metrics must read only the output. Exact shortcut: every ablated forward pass starts
    at the first layer of ``heads`` from the clean residual stream (nothing earlier changes)."""
    if not heads:
        raise InputError("nothing to ablate: name heads (e.g. L1H0)")
    if draws < 1:
        raise InputError(f"draws must be at least 1 (random sets to compare with), not {draws}")
    for name, metric in metrics.items():
        if getattr(metric, "reads", ()) or not getattr(metric, "uses_output", True):
            raise InputError(f"ablate_against_random compares metrics of the output; {name} reads activations")
    heads = [(int(layer), int(h)) for layer, h in heads]
    check_heads(model, heads)
    first = min(layer for layer, _ in heads)
    names = list(metrics)

    def joint(out, tokens, cache=None):  # [b, n_metrics]
        return torch.stack([metrics[name](out, tokens, cache) for name in names], -1)

    keep: dict[str, torch.Tensor] = {}
    start = f"blocks.{first}.hook_resid_pre"
    clean = evaluate(model, tokens, _Capturing(joint, [start], keep), attention_mask=attention_mask)[0].mean(0)
    if isinstance(reference, dict) or method == "zero" or reference is None:
        refs = reference if isinstance(reference, dict) else {}
    else:
        refs = reference_z(model, reference, reference_mask)

    def measure(ablated: list[tuple[int, int]]) -> torch.Tensor:
        hooks = ablate_heads_hooks(model, ablated, method, refs, seed)
        return evaluate(model, tokens, joint, hooks, attention_mask, resume=(first, keep[start]))[0].mean(0)

    rng = np.random.default_rng(seed)
    conditions = [("clean", -1, [], clean), ("heads", -1, heads, measure(heads))]
    for draw in range(draws):
        other = same_layer_random_heads(heads, model.cfg.n_heads, rng)
        conditions.append(("random", draw, other, measure(other)))
    rows = []
    for condition, draw, ablated, values in conditions:
        row = {"condition": condition, "draw": draw, "method": method, "heads": heads_text(ablated, " ")}
        row |= {name: float(v) for name, v in zip(names, values)}
        row |= {f"effect_{name}": float(v - c) for name, v, c in zip(names, values, clean)}
        rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def head_ablation_sweep(model: HookedTransformer, tokens: torch.Tensor, metric: Metric, method: Method = "zero",
                        reference: torch.Tensor | dict[int, torch.Tensor] | None = None, seed: int = 0,
                        max_batch: int = 512, attention_mask: torch.Tensor | None = None,
                        reference_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """Effect on ``metric`` of ablating each head alone: one row per (layer, head) with the
    clean value, the ablated value and their difference (ablated - clean), averaged over
    the examples in ``tokens`` (padded, with ``attention_mask``, when lengths differ).

    Exact shortcuts, since ablating a head in block l changes nothing before block l: the
    copies for block l start from the clean ``resid_pre`` of block l, and heads after the
    last block a metric reads (one that does not read the output) have effect 0 without a run."""
    cfg = model.cfg
    last = last_layer_read(metric, cfg.n_layers)
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(last + 1)]
    keep = {}
    clean_metric = evaluate(model, tokens, _Capturing(metric, resid_names, keep), attention_mask=attention_mask)[0]
    clean = clean_metric.mean().item()
    if isinstance(reference, dict):
        refs = reference
    else:
        refs = reference_z(model, reference, reference_mask) if method != "zero" and reference is not None else {}
    b = tokens.shape[0]
    heads_per_pass = max(1, max_batch // b)
    rows = []
    for layer in range(cfg.n_layers):
        if layer > last:
            rows += [{"layer": layer, "head": h, "method": method, "clean": clean, "ablated": clean, "effect": 0.0}
                     for h in range(cfg.n_heads)]
            continue
        known = {name: keep[name] for name in getattr(metric, "reads", ()) if _block_of(name) < layer}
        for h0 in range(0, cfg.n_heads, heads_per_pass):
            heads = list(range(h0, min(cfg.n_heads, h0 + heads_per_pass)))

            def hook(z, hook, heads=heads, layer=layer):  # copy i of the batch ablates heads[i]
                z = z.clone()
                for i, h in enumerate(heads):
                    part = z[i * b:(i + 1) * b, :, h]
                    ref = refs.get(layer)
                    z[i * b:(i + 1) * b, :, h] = replacement(method, part, ref[:, :, h] if ref is not None else None,
                                                             seed)
                return z

            values = evaluate(model, tokens, metric, [(f"blocks.{layer}.attn.hook_z", hook)], attention_mask,
                              copies=len(heads), resume=(layer, keep[f"blocks.{layer}.hook_resid_pre"]),
                              known=known)
            for h, value in zip(heads, values):
                ablated = value.mean().item()
                rows.append({"layer": layer, "head": h, "method": method, "clean": clean, "ablated": ablated,
                             "effect": ablated - clean})
    return pd.DataFrame(rows)


def _block_of(name: str) -> int:
    """The block a hook is in, for ordering; hooks outside the blocks sort last."""
    layer = block_of(name)
    return 10**9 if layer is None else layer


class _Capturing:
    """The metric, also keeping the clean activations the sweep reuses (``resid_pre`` to
    resume from, and what the metric reads)."""

    def __init__(self, metric: Metric, extra: list[str], keep: dict):
        self.metric, self.keep = metric, keep
        self.reads = tuple(dict.fromkeys([*getattr(metric, "reads", ()), *extra]))
        self.uses_output = getattr(metric, "uses_output", True)

    def __call__(self, out, tokens, cache):
        self.keep.update(cache)
        return self.metric(out, tokens, cache)
