"""Attribution patching: AtP and AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method
for localizing LLM behaviour to components").

Exact activation patching costs one forward pass per component. Attribution patching (AtP; Nanda
2023) estimates every component's patching effect at once from one forward pass of each input and
one backward pass: the effect of replacing a node's activation ``a`` by ``a'`` on the metric ``M``
is taken to first order, ``(a' - a) . dM/da``.

Direction. ``noise`` (the default, Kramár et al.'s): the gradient is taken on the clean run and the
corrupted activation patched in, estimating ``M(clean with n <- corrupt) - M(clean)``; ``denoise``:
the reverse (gradient on the corrupted run, clean activation patched in), as TransformerLens's
attribution-patching demo. Both are compared with exact patching in the same direction
(`exact_patching`).

Nodes (``nodes=``): per head ``z`` (``hook_z``: the head's output before W_O), ``q``, ``k``, ``v``
(the head's query, key, value; ``k``/``v`` at ``n_kv_heads`` heads on grouped-query models), and
``resid_pre``, ``attn_out``, ``mlp_out`` per layer, ``post`` per MLP neuron. Values are
``[layer, pos, head]`` (heads), ``[layer, pos]`` (stream-sized nodes) or ``[layer, pos, neuron]``,
summed over the batch, i.e. estimates of the effect on the batch-mean metric. With
``per_position=False`` a node is the component at every position at once (one value per head or
layer; AtP's linearity makes it the sum over positions, but AtP*'s corrections do not add up).

AtP*'s two fixes (``method="atp*"``):

* **QK fix** (saturated attention). A change in a query or key acts through the attention softmax,
  whose gradient vanishes where attention is saturated, so AtP misses it. For ``q`` and ``k`` nodes
  AtP* computes the changed attention scores exactly (they are bilinear in q and k: a changed query
  row t adds ``scale * dq_t . k_s`` to row t; a changed key s adds ``scale * q_t . dk_s`` to column
  s of every row), takes the softmax, and uses the first-order term only after it:
  ``(A' - A) . dM/dA``. (Nodes ``z`` and ``v`` need no fix: the head's own softmax is not between
  them and the metric.)
* **GradDrop** (cancellation of direct and indirect paths). For each layer l, the backward pass is
  repeated with the gradient through layer l's residual contributions (its attention and MLP
  outputs) set to zero, giving L estimates; AtP* reports ``sum_l |estimate_l| / (L - 1)`` (the node's
  own layer gives 0: its output is where its gradient was dropped). So AtP* values are magnitudes:
  rank by them; signs are AtP's. One-layer models have no other path to drop: GradDrop is skipped
  there (``grad_drop=False`` is implied) and the result says so in ``method``.

The absolute value is taken of the batch's summed estimate (the effect on the batch-mean metric,
the quantity exact patching of the batch measures), not per prompt.

Cost: one forward pass of each input and one backward pass for AtP; AtP* adds, per dropped layer
l, a backward pass from layer l down only (in a pre-norm block the stream just adds the layer's
outputs, so with them cut the gradient at its input is the one at its output, and only the layers
below need a new pass: L^2/2 block-backwards in all instead of L^2; post-norm models, where a norm
sits between, take L whole backward passes with the layer's gradient gated). Exact patching costs
one forward pass per component. ``batch_size`` bounds memory: the batch is processed
in chunks and the estimates summed (every estimate is linear in the prompts before the absolute
value, which is taken once at the end).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer, act_name
from probe.errors import InputError
from probe.hook_names import block_of

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [b, p, vocab] -> scalar (or [b], meaned)
Direction = Literal["noise", "denoise"]

HEAD_NODES = ("z", "q", "k", "v")
STREAM_NODES = ("resid_pre", "attn_out", "mlp_out")
NODES = HEAD_NODES + STREAM_NODES + ("post",)
_AXES = {**{n: ("layer", "pos", "head") for n in HEAD_NODES}, **{n: ("layer", "pos") for n in STREAM_NODES},
         "post": ("layer", "pos", "neuron")}


@dataclass(frozen=True)
class Attribution:
    """Estimated (or, from `exact_patching`, measured) patching effects of one kind of node.

    ``values``: ``[layer, pos, head]``, ``[layer, pos]`` or ``[layer, pos, neuron]`` (``pos``
    absent with ``per_position=False``), the change of the batch-mean metric when the node is
    patched; AtP* values are magnitudes (see the module docstring)."""

    node: str
    method: str  # "atp", "atp*", "atp+qk", "atp+graddrop", "exact"
    direction: Direction
    values: torch.Tensor
    axes: tuple[str, ...]
    base_metric: float  # the metric of the run that is patched (clean when noising)
    source_metric: float  # the metric of the run the patched activations come from
    notes: tuple[str, ...] = field(default=())

    def table(self) -> pd.DataFrame:
        """One row per node: its index columns (``layer``, ``pos``, ``head``/``neuron``) and
        ``value``."""
        grid = np.indices(tuple(self.values.shape)).reshape(len(self.axes), -1)
        data = {axis: grid[i] for i, axis in enumerate(self.axes)}
        return pd.DataFrame({**data, "value": self.values.reshape(-1).numpy()})


def logit_diff_metric(answer: torch.Tensor | Sequence[int], wrong: torch.Tensor | Sequence[int],
                      position: int = -1) -> Metric:
    """The mean over the batch of ``logit[answer] - logit[wrong]`` at ``position`` (the last by
    default; left-pad a batch of different lengths so it is every prompt's last token)."""
    answer, wrong = torch.as_tensor(answer), torch.as_tensor(wrong)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position]  # [b, vocab]
        rows = torch.arange(last.shape[0], device=last.device)
        return (last[rows, answer.to(last.device)] - last[rows, wrong.to(last.device)]).mean()

    return metric


# ------------------------------------------------------------------------------------------- AtP


def attribution_patching(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric,
                         nodes: Sequence[str] = ("z",), method: Literal["atp", "atp*"] = "atp*",
                         direction: Direction = "noise", per_position: bool = True,
                         attention_mask: torch.Tensor | None = None, batch_size: int | None = None,
                         qk_fix: bool | None = None, grad_drop: bool | None = None) -> dict[str, Attribution]:
    """AtP or AtP* estimates of the patching effect of every node of the kinds ``nodes``.

    ``clean``/``corrupt``: token ids [b, p] of equal shape (``attention_mask`` [b, p] shared by
    both); ``metric``: logits -> scalar, computed per chunk of ``batch_size`` prompts, so it should
    be a mean over the prompts it is given (as `logit_diff_metric`). ``qk_fix``/``grad_drop``
    override the method's defaults (both on for AtP*, off for AtP), e.g. to measure each fix alone.
    """
    nodes = _check(model, clean, corrupt, nodes, method, direction)
    qk_fix = (method == "atp*") if qk_fix is None else qk_fix
    grad_drop = (method == "atp*") if grad_drop is None else grad_drop
    notes = []
    if grad_drop and model.cfg.n_layers < 2:
        grad_drop = False
        notes.append("GradDrop skipped: a one-layer model has no other layer whose gradient could be dropped")
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    n = base.shape[0]
    step = batch_size or n
    drops: list[int | None] = [None] + (list(range(model.cfg.n_layers)) if grad_drop else [])
    totals: dict[tuple[str, int | None], torch.Tensor] = {}
    base_values, source_values = [], []
    for start in range(0, n, step):
        chunk = slice(start, min(start + step, n))
        mask = attention_mask[chunk] if attention_mask is not None else None
        estimates, m_base, m_source = _chunk_estimates(model, base[chunk], source[chunk], mask, metric, nodes,
                                                       drops, qk_fix, per_position)
        weight = (chunk.stop - chunk.start) / n  # the metric is a mean per chunk: weight to the batch mean
        base_values.append(m_base * weight)
        source_values.append(m_source * weight)
        for key, value in estimates.items():
            totals[key] = totals.get(key, 0) + value * weight
    label = _method_label(qk_fix, grad_drop)
    out = {}
    for node in nodes:
        if grad_drop:
            # GradDrop: sum over the dropped layers of |estimate|, over the L - 1 that can be nonzero
            values = sum(totals[(node, layer)].abs() for layer in range(model.cfg.n_layers)) / (model.cfg.n_layers - 1)
        else:
            values = totals[(node, None)]
        axes = _AXES[node] if per_position else tuple(a for a in _AXES[node] if a != "pos")
        out[node] = Attribution(node, label, direction, values.detach().cpu(), axes, sum(base_values),
                                sum(source_values), tuple(notes))
    return out


def _method_label(qk_fix: bool, grad_drop: bool) -> str:
    return {(True, True): "atp*", (False, False): "atp", (True, False): "atp+qk", (False, True): "atp+graddrop"}[
        (qk_fix, grad_drop)]


def _check(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, nodes: Sequence[str],
           method: str, direction: str) -> list[str]:
    if clean.shape != corrupt.shape or clean.dim() != 2:
        raise InputError(f"clean and corrupted tokens must be [batch, pos] of one shape; got {tuple(clean.shape)} "
                         f"and {tuple(corrupt.shape)}")
    if method not in ("atp", "atp*"):
        raise InputError(f"method must be 'atp' or 'atp*', got {method!r}")
    if direction not in ("noise", "denoise"):
        raise InputError(f"direction must be 'noise' or 'denoise', got {direction!r}")
    nodes = list(dict.fromkeys(nodes))
    unknown = [n for n in nodes if n not in NODES]
    if unknown or not nodes:
        raise InputError(f"unknown node kind(s) {unknown}; choose from {', '.join(NODES)}")
    if model.cfg.attn_only and {"mlp_out", "post"} & set(nodes):
        raise InputError(f"{model.cfg.model_name} has no MLPs; drop mlp_out/post from nodes")
    return nodes


def _hook_names(model: HookedTransformer, nodes: Sequence[str], qk_fix: bool) -> dict[str, list[str]]:
    """{what: [hook name per layer]} of every activation the estimates read."""
    rotary = model.cfg.positional == "rotary"
    wanted = set(nodes)
    if qk_fix and {"q", "k"} & wanted:
        wanted |= {"attn_scores", "pattern", "rot_q" if rotary else "q", "rot_k" if rotary else "k"}
    return {what: [act_name(what, layer) for layer in range(model.cfg.n_layers)] for what in sorted(wanted)}


def _chunk_estimates(model: HookedTransformer, base: torch.Tensor, source: torch.Tensor,
                     mask: torch.Tensor | None, metric: Metric, nodes: Sequence[str], drops: list[int | None],
                     qk_fix: bool, per_position: bool):
    names = _hook_names(model, nodes, qk_fix)
    flat = [name for per_layer in names.values() for name in per_layer]
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=flat, attention_mask=mask)
        source_metric = _scalar(metric(source_logits)).item()

    seen: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        seen[hook.name] = x
        return x

    n_layers = model.cfg.n_layers
    fast = len(drops) > 1 and model.cfg.norm_position == "pre"
    state = {"drop": None}

    def gate(x, hook):  # GradDrop by hooks (post-norm models): no gradient back through the layer's output
        layer = int(hook.name.split(".")[1])
        x.register_hook(lambda g, layer=layer: torch.zeros_like(g) if state["drop"] == layer else g)
        return x

    gates = [(name, gate) for name in model.hook_dict if name.endswith(("hook_attn_out", "hook_mlp_out"))
             and name.startswith("blocks.")] if len(drops) > 1 and not fast else []
    streams = [act_name(kind, layer) for layer in range(n_layers) for kind in ("resid_pre", "resid_post")] if fast else []
    with torch.enable_grad():
        logits = model.run_with_hooks(base, fwd_hooks=[(name, keep) for name in dict.fromkeys(flat + streams)] + gates,
                                      attention_mask=mask)
        value = _scalar(metric(logits))
        estimates = {}

        def estimate(grad: dict[str, torch.Tensor], drop: int | None) -> None:
            for node in nodes:
                estimates[(node, drop)] = _node_estimate(model, node, names, seen, source_cache, grad, qk_fix,
                                                         per_position)

        if fast:
            full = _grads(value, flat + streams, seen, retain=True)
            estimate({name: full[name] for name in flat}, None)
            for drop in range(n_layers):
                estimate(_dropped_grads(seen, flat, full, drop, retain=drop < n_layers - 1), drop)
        else:
            for i, drop in enumerate(drops):
                state["drop"] = drop
                estimate(_grads(value, flat, seen, retain=i < len(drops) - 1), drop)
    return estimates, value.item(), source_metric


def _grads(value: torch.Tensor, names: list[str], seen: dict[str, torch.Tensor], retain: bool,
           grad_outputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """d value / d seen[name] for each name (zeros where value does not depend on it)."""
    if not names:
        return {}
    tensors = [seen[name] for name in names]
    grads = torch.autograd.grad(value, tensors, grad_outputs=grad_outputs, retain_graph=retain, allow_unused=True)
    return {name: (g if g is not None else torch.zeros_like(t)) for name, g, t in zip(names, grads, tensors)}


def _dropped_grads(seen: dict[str, torch.Tensor], names: list[str], full: dict[str, torch.Tensor], drop: int,
                   retain: bool) -> dict[str, torch.Tensor]:
    """The gradients with layer ``drop``'s attention and MLP outputs cut off, from one partial
    backward pass. In a pre-norm block the stream only adds those outputs, so with them cut the
    gradient reaching ``resid_pre`` of the layer is the one arriving at its ``resid_post``
    (unchanged by the cut); from there down it is an ordinary backward pass. Nodes above the layer
    keep their gradients; the layer's own nodes (its heads, MLP, outputs) get none, but its
    ``resid_pre`` gets that of ``resid_post``."""
    pre, post = act_name("resid_pre", drop), act_name("resid_post", drop)
    below = [name for name in names if (block_of(name) or 0) < drop]
    grad = _grads(seen[pre], below, seen, retain, grad_outputs=full[post])
    for name in names:
        layer = block_of(name)
        if layer is not None and layer > drop:
            grad[name] = full[name]
        elif layer == drop:
            grad[name] = full[post] if name == pre else torch.zeros_like(seen[name])
    return grad


def _scalar(value: torch.Tensor) -> torch.Tensor:
    return value.float().mean() if value.dim() else value.float()


def _node_estimate(model, node, names, base_acts, source_acts, grad, qk_fix, per_position) -> torch.Tensor:
    """[layer, pos, ...] (or [layer, ...]) estimate of one node kind, summed over the batch."""
    per_layer = []
    for layer in range(model.cfg.n_layers):
        if qk_fix and node in ("q", "k"):
            est = _qk_fixed(model, node, layer, names, base_acts, source_acts, grad, per_position)
        else:
            name = names[node][layer]
            delta = (source_acts[name] - base_acts[name].detach()) * grad[name]  # [b, p, ...]
            if node != "post":  # over d_head ([b, p, heads]) or d_model ([b, p]); neurons stay one each
                delta = delta.sum(-1)
            est = delta.sum(0) if per_position else delta.sum((0, 1))
        per_layer.append(est.detach())
    return torch.stack(per_layer)


def _qk_fixed(model, node, layer, names, base_acts, source_acts, grad, per_position) -> torch.Tensor:
    """AtP*'s estimate for the queries (``node="q"``, [pos, heads]) or keys ([pos, kv_heads]) of
    one layer: the scores changed exactly, the softmax recomputed, then ``(A' - A) . dM/dA``."""
    cfg = model.cfg
    rotary = cfg.positional == "rotary"
    q_name, k_name = names["rot_q" if rotary else "q"][layer], names["rot_k" if rotary else "k"][layer]
    group = cfg.n_heads // cfg.n_kv_heads
    scale = model.blocks[layer].attn.scale
    scores = base_acts[names["attn_scores"][layer]].detach()  # [b, h, t, s]; -inf where masked
    pattern = base_acts[names["pattern"][layer]].detach()
    g = grad[names["pattern"][layer]]  # [b, h, t, s]
    q, k = base_acts[q_name].detach(), base_acts[k_name].detach().repeat_interleave(group, dim=2)

    def change(new_scores: torch.Tensor) -> torch.Tensor:  # [..., t, s] -> (A' - A) . G summed over s
        return ((new_scores.softmax(-1) - pattern) * g).nan_to_num().sum(-1)

    if node == "q":
        dq = source_acts[q_name] - q  # [b, t, h, d]
        shift = torch.einsum("bthd,bshd->bhts", dq, k) * scale  # row t moves with query t only
        est = change(scores + shift)  # [b, h, t]: one value per query position
        est = est.transpose(1, 2)  # [b, t, h]
        return est.sum(0) if per_position else est.sum((0, 1))
    dk = (source_acts[k_name] - base_acts[k_name].detach()).repeat_interleave(group, dim=2)  # [b, s, h, d]
    shift = torch.einsum("bthd,bshd->bhts", q, dk) * scale  # column s moves with key s only
    if not per_position:
        est = change(scores + shift).sum(-1)  # every key changed at once: [b, h]
        return est.sum(0).reshape(cfg.n_kv_heads, group).sum(-1)
    p = scores.shape[-1]
    cols = []
    for s in range(p):  # key s alone: only column s of the scores changes
        one = torch.zeros_like(shift)
        one[..., s] = shift[..., s]
        cols.append(change(scores + one).sum(-1))  # [b, h]
    est = torch.stack(cols, 1)  # [b, s, h]
    return est.sum(0).reshape(p, cfg.n_kv_heads, group).sum(-1)  # a kv head's queries add up


# ---------------------------------------------------------------------------------------- exact


def exact_patching(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric,
                   node: str = "z", direction: Direction = "noise", per_position: bool = True,
                   attention_mask: torch.Tensor | None = None, max_copies: int = 64) -> Attribution:
    """The measured effect of patching each node of kind ``node`` alone: the base run (clean when
    noising) with that node's activation taken from the other run, minus the base run's metric.
    The same axes as `attribution_patching`'s estimates.

    Batched as `analyses.patching`: one forward pass runs up to ``max_copies`` copies of the batch,
    each with one node patched, starting at the node's block from the base run's cached
    ``resid_pre`` (earlier blocks cannot see the patch). ``metric`` must be a mean over the prompts
    it is given (it is applied to each copy's slice of the logits)."""
    _check(model, clean, corrupt, [node], "atp", direction)
    if max_copies < 1:
        raise InputError(f"max_copies must be >= 1, got {max_copies}")
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    hooks = [act_name(node, layer) for layer in range(model.cfg.n_layers)]
    resid_names = [act_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
    b = base.shape[0]
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=hooks, attention_mask=attention_mask)
        base_logits, base_cache = model.run_with_cache(base, names_filter=resid_names, attention_mask=attention_mask)
        base_value = _scalar(metric(base_logits)).item()
        source_value = _scalar(metric(source_logits)).item()
        sample = source_cache[hooks[0]]
        positions = list(range(sample.shape[1])) if per_position else [None]
        units = list(range(sample.shape[2])) if node in HEAD_NODES or node == "post" else [None]
        cells = [(pos, unit) for pos in positions for unit in units]
        values = torch.zeros(model.cfg.n_layers, len(cells))
        for layer, name in enumerate(hooks):
            src = source_cache[name]
            for first in range(0, len(cells), max_copies):
                chunk = cells[first:first + max_copies]

                def patch(x, hook, chunk=chunk, src=src):
                    x = x.clone()
                    for i, (pos, unit) in enumerate(chunk):
                        where = (slice(None) if pos is None else pos,) + (() if unit is None else (unit,))
                        x[(slice(i * b, (i + 1) * b), *where)] = src[(slice(None), *where)]
                    return x

                copies = len(chunk)
                mask = attention_mask.repeat(copies, 1) if attention_mask is not None else None
                logits = model.run_with_hooks(base_cache[resid_names[layer]].repeat(copies, 1, 1), start_at_layer=layer,
                                              fwd_hooks=[(name, patch)], attention_mask=mask)
                for i in range(copies):
                    values[layer, first + i] = _scalar(metric(logits[i * b:(i + 1) * b])).item() - base_value
    shape = [model.cfg.n_layers] + ([len(positions)] if per_position else []) + ([len(units)] if units != [None] else [])
    axes = _AXES[node] if per_position else tuple(a for a in _AXES[node] if a != "pos")
    return Attribution(node, "exact", direction, values.reshape(shape), axes, base_value, source_value)


# ------------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Agreement:
    """How well an estimate ranks nodes by the size of their exact effect."""

    method: str
    spearman: float  # rank correlation of |estimate| with |exact| over every node
    recall: dict[int, float]  # k -> share of the exact top-k (by |effect|) in the estimate's top-k


def agreement(estimate: Attribution, exact: Attribution, ks: Sequence[int] = (10, 20)) -> Agreement:
    """Spearman rank correlation of ``|estimate|`` with ``|exact|`` and top-k recall for each k."""
    if estimate.values.shape != exact.values.shape:
        raise InputError(f"estimate {tuple(estimate.values.shape)} and exact {tuple(exact.values.shape)} "
                         "cover different nodes")
    est, ex = estimate.values.abs().reshape(-1).double(), exact.values.abs().reshape(-1).double()
    rho = float(np.corrcoef(_ranks(est), _ranks(ex))[0, 1])
    recall = {}
    for k in ks:
        k_ = min(k, ex.numel())
        top_exact = set(torch.topk(ex, k_).indices.tolist())
        recall[k] = len(top_exact & set(torch.topk(est, k_).indices.tolist())) / k_
    return Agreement(estimate.method, rho, recall)


def recovered(atp: Attribution, atp_star: Attribution, exact: Attribution, k: int = 20) -> pd.DataFrame:
    """The nodes of the exact top-k that AtP's top-k misses, with whether AtP*'s top-k has them:
    one row per missed node (its index columns, the exact effect, both estimates, ``recovered``)."""
    ex = exact.values.abs().reshape(-1)
    k = min(k, ex.numel())
    top = torch.topk(ex, k).indices.tolist()
    in_atp = set(torch.topk(atp.values.abs().reshape(-1), k).indices.tolist())
    in_star = set(torch.topk(atp_star.values.abs().reshape(-1), k).indices.tolist())
    table = exact.table().rename(columns={"value": "exact"})
    table["atp"] = atp.values.reshape(-1).numpy()
    table["atp_star"] = atp_star.values.reshape(-1).numpy()
    missed = [i for i in top if i not in in_atp]
    out = table.iloc[missed].copy()
    out["recovered"] = [i in in_star for i in missed]
    return out.reset_index(drop=True)


def _ranks(x: torch.Tensor) -> np.ndarray:
    return pd.Series(x.numpy()).rank(method="average").to_numpy()
