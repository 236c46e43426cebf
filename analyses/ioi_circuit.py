"""The indirect-object-identification circuit of a model, found and checked end to end (Wang et
al. 2022's method, with AtP* to choose what to patch exactly): `ioi_circuit` returns an
`IOICircuit`, `save_ioi_circuit` writes it next to a recorded run for the dashboard,
`render_ioi_report` says what was found.

The steps and the choices made at each (the report repeats them):

1. **Task.** The bundled IOI prompts (`probe.ioi_prompts`), batched by token length; named
   positions per prompt found from the single-token names: ``IO``, ``S1``, ``S1+1``, ``S2``,
   ``END`` (the last token). Metric: logit(IO) - logit(S) at END. Corruption: the ABC version
   (three fresh names; Wang et al.'s reference distribution), patched in (noising).
2. **Baseline and direct effects**: the logit difference with a bootstrap interval, ABC and swap
   controls (`analyses.ioi.ioi_baseline`); each head's direct logit attribution at END.
3. **AtP\\***: every head x position node (``hook_z``) estimated on groups of prompts whose
   positions line up (same template, order and length); positions summed into the named ones and
   ``other``. The heads owning the top-ranked nodes (``n_candidates`` of them) are the candidates.
4. **Exact patching** of every candidate (whole head, every position), and of ``n_controls``
   random non-candidates as a check of what AtP* left out.
5. **Attention and copying evidence**: mean attention END->IO, END->S1, END->S2, S2->S1 (duplicate
   token), S2->S1+1 (induction), S1+1->S1 (previous token); the induction and previous-token
   detectors on repeated random tokens (`analyses.head_metrics.random_repeat_scores`, 8 sequences;
   evidence beside the rules, not part of them); the OV copying score (Wang et al.
   section 3.3: the residual stream after block 0 at the IO position, through the head's OV, the
   final norm and the unembedding; the share of prompts whose IO token is among the top 5
   logits) and its negative (the same with -OV).
6. **Classes**, in Wang et al.'s order, each with its rule (thresholds relative to the clean logit
   difference LD, in `THRESHOLDS`):
   Copying scores are computed for the candidates only (each head costs a product with the
   unembedding per prompt), so only candidates can be classed by the rules that use them.
   * name mover: direct effect >= 10% of LD, attends END->IO more than END->S2, copying score >= 0.5;
   * negative name mover: direct effect <= -10% of LD, attends END->IO more than END->S2, negative
     copying score >= 0.5;
   * S suppressor (no GPT-2 class of Wang et al.'s; the copy-suppression pattern of McDougall et
     al. 2023 pointed at S): direct effect >= 10% of LD, attends END->S2 more than END->IO, negative
     copying score >= 0.5 (it writes against the subject's name);
   * backup name mover: a candidate outside the classes above whose direct effect rises by >= 5% of
     LD when the name movers are mean-ablated, and which behaves as one (attends END->IO more than
     END->S2, copying score >= 0.5);
   * S-inhibition: path patching to the name movers' (and negative name movers') queries at END
     lowers the metric by >= 5% of LD, and it attends END->S2 more than END->IO;
   * induction / duplicate token: path patching to the S-inhibition heads' values (at S2) lowers
     the metric by >= 2% of LD; induction if its S2->S1+1 attention exceeds its S2->S1 attention,
     else duplicate token;
   * previous token: path patching to the induction heads' keys at S1+1 lowers the metric by >= 2%
     of LD, and it attends S1+1->S1 with >= 0.3.
7. **Checks** (`analyses.circuit.circuit_checks`): faithfulness against random circuits with as
   many heads per layer; completeness; minimality.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer, act_name
from probe.errors import InputError
from probe.prompts import Prompt

from .attribution import attribution_patching
from .circuit import (
    CircuitChecks,
    CircuitTask,
    Receiver,
    TaskBatch,
    ablated_metric,
    circuit_checks,
    group_means,
    head_patching,
    logit_diff_at,
    path_patching,
)
from .head_metrics import random_repeat_scores
from .ioi import IOIBaseline, ioi_baseline, ioi_batches

POSITIONS = ("IO", "S1", "S1+1", "S2", "END")
CLASSES = ("name mover", "negative name mover", "S suppressor", "backup name mover", "S-inhibition", "induction",
           "duplicate token", "previous token")
THRESHOLDS = {"direct": 0.10, "backup": 0.05, "s_inhibition": 0.05, "induction": 0.02, "previous": 0.02,
              "copy": 0.5, "prev_attention": 0.3}

# Wang et al. 2022's classes in GPT-2 small (12 layers x 12 heads), for the comparison in the report
GPT2_SMALL = {
    "name mover": ["L9H9", "L10H0", "L9H6"],
    "negative name mover": ["L10H7", "L11H10"],
    "backup name mover": ["L10H10", "L10H6", "L10H2", "L10H1", "L11H2", "L9H7", "L9H0", "L11H9"],
    "S-inhibition": ["L7H3", "L7H9", "L8H6", "L8H10"],
    "induction": ["L5H5", "L6H9"],
    "duplicate token": ["L0H1", "L3H0"],
    "previous token": ["L2H2", "L4H11"],
}
GPT2_LAYERS = 12


def label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


# ------------------------------------------------------------------------------------- the task
def ioi_task(model: HookedTransformer, prompts: Sequence[Prompt]) -> CircuitTask:
    """The prompts as a `CircuitTask`: clean and ABC tokens per token length, the named positions
    found from the names' token ids (IO once, S twice, both before END), groups of prompts whose
    template, order and length agree (for mean ablation)."""
    batches = []
    groups: dict[tuple, int] = {}
    for batch in ioi_batches(model, prompts):
        tokens = batch.tokens["text"]
        b, p = tokens.shape
        pos = {name: torch.empty(b, dtype=torch.long) for name in POSITIONS}
        group = torch.empty(b, dtype=torch.long)
        for i, prompt in enumerate(batch.prompts):
            io_at = (tokens[i] == batch.io[i]).nonzero().flatten().tolist()
            s_at = (tokens[i] == batch.s[i]).nonzero().flatten().tolist()
            if len(io_at) != 1 or len(s_at) != 2 or max(io_at + s_at) >= p - 1:
                raise InputError(f"prompt {prompt.text!r}: the indirect object should be one token that occurs once "
                                 "and the subject one that occurs twice, both before the last token; use the bundled "
                                 "'ioi' prompts or probe.ioi_prompts")
            pos["IO"][i], (pos["S1"][i], pos["S2"][i]), pos["END"][i] = io_at[0], s_at, p - 1
            pos["S1+1"][i] = s_at[0] + 1
            key = (p, prompt.labels.get("template"), prompt.labels.get("order"), io_at[0], *s_at)
            group[i] = groups.setdefault(key, len(groups))
        abc = batch.tokens["abc"]
        batches.append(TaskBatch(tokens, abc, pos, batch.io, batch.s, group))
    return CircuitTask("ioi", tuple(batches), logit_diff_at("END"), "logit difference IO - S at END")


# ----------------------------------------------------------------------------- the evidence
@torch.no_grad()
def attention_evidence(model: HookedTransformer, task: CircuitTask) -> pd.DataFrame:
    """Per head, mean attention over prompts between the named positions."""
    pairs = {"attn_end_io": ("END", "IO"), "attn_end_s1": ("END", "S1"), "attn_end_s2": ("END", "S2"),
             "attn_s2_s1": ("S2", "S1"), "attn_s2_s1p1": ("S2", "S1+1"), "attn_s1p1_s1": ("S1+1", "S1")}
    cfg = model.cfg
    sums = {k: torch.zeros(cfg.n_layers, cfg.n_heads) for k in pairs}
    names = [act_name("pattern", layer) for layer in range(cfg.n_layers)]
    for batch in task.batches:
        _, cache = model.run_with_cache(batch.clean.to(model.device), names_filter=names)
        rows = torch.arange(len(batch.clean))
        for layer, name in enumerate(names):
            pattern = cache[name].float().cpu()  # [b, h, q, k]
            for key, (q, k) in pairs.items():
                sums[key][layer] += pattern[rows, :, batch.positions[q], batch.positions[k]].sum(0)
    layers, heads = np.indices((cfg.n_layers, cfg.n_heads)).reshape(2, -1)
    return pd.DataFrame({"layer": layers, "head": heads, **{k: (v / task.n).reshape(-1).numpy() for k, v in sums.items()}})


@torch.no_grad()
def copying_scores(model: HookedTransformer, task: CircuitTask, heads: Sequence[tuple[int, int]],
                   top: int = 5) -> pd.DataFrame:
    """Per head of ``heads``: the share of prompts whose IO token is among the ``top`` logits of the
    head's OV applied to the stream after block 0 at IO (``copy``), and the same for -OV
    (``neg_copy``). Only for the given heads: each costs a [prompts, vocab] product per sign."""
    heads = list(heads)
    hits = torch.zeros(2, len(heads))
    W_V, W_O = model.W_V.float(), model.W_O.float()
    for batch in task.batches:
        _, cache = model.run_with_cache(batch.clean.to(model.device), names_filter=act_name("resid_post", 0))
        rows = torch.arange(len(batch.clean))
        x = cache[act_name("resid_post", 0)][rows, batch.positions["IO"]].float()  # [b, m]
        io = batch.answer.to(x.device)
        for i, (layer, head) in enumerate(heads):
            out = x @ W_V[layer, head] @ W_O[layer, head]  # [b, m]
            for idx, sign in enumerate((1, -1)):
                y = sign * out
                y = model.ln_final(y.to(model.W_U.dtype)) if model.ln_final is not None else y
                top_ids = (y.float() @ model.W_U.float()).topk(top, dim=-1).indices  # [b, top]
                hits[idx, i] += (top_ids == io[:, None]).any(-1).float().sum().cpu()
    hits /= task.n
    return pd.DataFrame({"layer": [h[0] for h in heads], "head": [h[1] for h in heads],
                         "copy": hits[0].numpy(), "neg_copy": hits[1].numpy()})


@torch.no_grad()
def direct_effects(model: HookedTransformer, task: CircuitTask, ablate: Sequence[tuple[int, int]] = (),
                   means: list[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """[layer, head] mean direct logit attribution at END (the head's output through W_O and the
    final norm's cached scale, on W_U[:, IO] - W_U[:, S]), with ``ablate`` mean-ablated first."""
    cfg = model.cfg
    total = torch.zeros(cfg.n_layers, cfg.n_heads)
    zs = [act_name("z", layer) for layer in range(cfg.n_layers)]
    for bi, batch in enumerate(task.batches):
        seen: dict[str, torch.Tensor] = {}

        def ablated(z, hook, bi=bi, seen=seen):
            layer = int(hook.name.split(".")[1])
            heads = [h for lyr, h in ablate if lyr == layer]
            if heads:
                z = z.clone()
                z[:, :, heads] = means[bi][hook.name][:, :, heads]
            seen[hook.name] = z
            return z

        def scale(x, hook, seen=seen):
            seen["scale"] = x
            return x

        model.run_with_hooks(batch.clean.to(model.device), return_type=None,
                             fwd_hooks=[(n, ablated) for n in zs] + [("ln_final.hook_scale", scale)])
        rows = torch.arange(len(batch.clean))
        end = batch.positions["END"]
        direction = (model.W_U[:, batch.answer] - model.W_U[:, batch.wrong]).T.float()  # [b, m]
        s = seen["scale"][rows, end].float()  # [b, 1]
        for layer, name in enumerate(zs):
            z = seen[name][rows, end].float()  # [b, h, d]
            out = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer].float()) / s[:, :, None]
            total[layer] += torch.einsum("bhm,bm->h", out, direction).cpu()
    return (total / task.n).numpy()


def _aligned_groups(task: CircuitTask) -> list[tuple[int, torch.Tensor]]:
    """(batch index, row indices) of each group: prompts whose positions line up."""
    out = []
    for bi, batch in enumerate(task.batches):
        for g in batch.group.unique():
            out.append((bi, (batch.group == g).nonzero().flatten()))
    return out


def attribution_by_position(model: HookedTransformer, task: CircuitTask, method: str) -> pd.DataFrame:
    """AtP or AtP* of every head x position (``hook_z``), per aligned group, the positions summed into
    the named ones and ``other``, groups weighted by their share of prompts; ``all`` = the sum over
    positions (for AtP exactly the whole-head estimate; for AtP*, magnitudes, an upper bound)."""
    cfg = model.cfg
    labels = POSITIONS + ("other",)
    total = torch.zeros(cfg.n_layers, cfg.n_heads, len(labels))
    for bi, rows in _aligned_groups(task):
        batch = task.batches[bi]
        sub = TaskBatch(batch.clean[rows], batch.corrupt[rows], {k: v[rows] for k, v in batch.positions.items()},
                        batch.answer[rows], batch.wrong[rows], batch.group[rows])

        def metric(logits, sub=sub):
            return task.metric(logits, sub).mean()

        est = attribution_patching(model, sub.clean, sub.corrupt, metric, nodes=("z",), method=method)["z"]
        values = est.values  # [layer, pos, head]
        p = values.shape[1]
        where = {name: int(sub.positions[name][0]) for name in POSITIONS}
        slot = torch.full((p,), len(labels) - 1, dtype=torch.long)
        for i, name in enumerate(POSITIONS):
            slot[where[name]] = i
        weight = len(rows) / task.n
        for t in range(p):
            total[:, :, slot[t]] += values[:, t, :] * weight
    rows = []
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            for i, name in enumerate(labels):
                rows.append({"layer": layer, "head": head, "position": name, "value": float(total[layer, head, i])})
            rows.append({"layer": layer, "head": head, "position": "all", "value": float(total[layer, head].sum())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class IOICircuit:
    model: str
    n_prompts: int
    baseline: IOIBaseline
    heads: pd.DataFrame  # one row per head: class, evidence
    attribution: pd.DataFrame  # layer, head, position, atp, atp_star, exact
    edges: pd.DataFrame  # sender -> receiver input, effect (fraction of LD)
    checks: CircuitChecks | None
    classes: dict[tuple[int, int], str]
    curve: pd.DataFrame  # kept (top-k candidates by |exact|), heads, f, fraction of F(M)
    thresholds: dict[str, float]
    seconds: dict[str, float]
    notes: tuple[str, ...] = field(default=())

    @property
    def clean(self) -> float:
        return self.baseline.logit_diff


def ioi_circuit(model: HookedTransformer, prompts: Sequence[Prompt], n_candidates: int = 40, n_controls: int = 10,
                seed: int = 0, progress=None, model_name: str | None = None) -> IOICircuit:
    """The IOI circuit of ``model`` on ``prompts`` (the module docstring's steps). ``progress``:
    a callable taking one line, told as each step starts."""
    say = progress or (lambda line: None)
    cfg = model.cfg
    if n_candidates < 1 or n_controls < 0:
        raise InputError(f"n_candidates must be >= 1 and n_controls >= 0, got {n_candidates} and {n_controls}")
    seconds: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    say("baseline: logit difference on clean, ABC and swapped prompts")
    baseline = ioi_baseline(model, prompts, seed=seed)
    task = ioi_task(model, prompts)
    ld = baseline.logit_diff
    if ld <= 0:
        raise InputError(f"the model does not do the task (mean logit difference {ld:+.2f} <= 0): there is no "
                         "circuit to find")
    lap("baseline")
    say("direct logit attribution, attention and copying scores")
    heads = attention_evidence(model, task)
    heads["dla"] = direct_effects(model, task).reshape(-1)
    lap("evidence")
    say(f"AtP and AtP* over {cfg.n_layers * cfg.n_heads} heads x positions")
    atp = attribution_by_position(model, task, "atp").rename(columns={"value": "atp"})
    lap("atp")
    atp_star = attribution_by_position(model, task, "atp*").rename(columns={"value": "atp_star"})
    lap("atp*")
    attribution = atp.merge(atp_star, on=["layer", "head", "position"])
    nodes = attribution[attribution.position != "all"].sort_values("atp_star", ascending=False)
    candidates: list[tuple[int, int]] = []
    for row in nodes.itertuples():
        if (row.layer, row.head) not in candidates:
            candidates.append((int(row.layer), int(row.head)))
        if len(candidates) == n_candidates:
            break
    rng = np.random.default_rng(seed)
    others = [(lyr, h) for lyr in range(cfg.n_layers) for h in range(cfg.n_heads) if (lyr, h) not in candidates]
    controls = [others[i] for i in sorted(rng.choice(len(others), size=min(n_controls, len(others)), replace=False))]
    say(f"exact patching of {len(candidates)} candidates and {len(controls)} random other heads")
    exact = head_patching(model, task, candidates + controls)
    lap("exact")
    exact["candidate"] = [(r.layer, r.head) in candidates for r in exact.itertuples()]
    heads = heads.merge(exact.rename(columns={"effect": "exact"}), on=["layer", "head"], how="left")
    heads["candidate"] = heads.candidate.fillna(False).astype(bool)
    whole = attribution[attribution.position == "all"][["layer", "head", "atp", "atp_star"]]
    heads = heads.merge(whole, on=["layer", "head"])
    say("induction and previous-token detectors on repeated random tokens")
    detectors = random_repeat_scores(model, n=8, seed=seed)
    heads["induction_random"] = detectors["induction_random"].reshape(-1)
    heads["prev_token_random"] = detectors["prev_token_random"].reshape(-1)
    say(f"OV copying scores of the {len(candidates)} candidates")
    heads = heads.merge(copying_scores(model, task, candidates), on=["layer", "head"], how="left")
    attribution = attribution.merge(exact[["layer", "head", "effect"]].assign(position="all").rename(
        columns={"effect": "exact"}), on=["layer", "head", "position"], how="left")

    classes: dict[tuple[int, int], str] = {}
    t = THRESHOLDS
    idx = {(int(r.layer), int(r.head)): r for r in heads.itertuples()}
    for key, r in idx.items():
        to_io = r.attn_end_io > r.attn_end_s2
        if r.dla >= t["direct"] * ld and to_io and r.copy >= t["copy"]:
            classes[key] = "name mover"
        elif r.dla <= -t["direct"] * ld and to_io and r.neg_copy >= t["copy"]:
            classes[key] = "negative name mover"
        elif r.dla >= t["direct"] * ld and not to_io and r.neg_copy >= t["copy"]:
            classes[key] = "S suppressor"
    movers = [h for h, c in classes.items() if c == "name mover"]
    means = group_means(model, task)
    if movers:
        say(f"direct effects with the {len(movers)} name movers mean-ablated (backup name movers)")
        heads["dla_movers_ablated"] = direct_effects(model, task, movers, means).reshape(-1)
        for key, r in zip(idx, heads.itertuples()):
            if key not in classes and r.dla_movers_ablated - r.dla >= t["backup"] * ld and \
                    r.attn_end_io > r.attn_end_s2 and r.copy >= t["copy"]:
                classes[key] = "backup name mover"
    else:
        notes.append("no head met the name-mover rule, so no backup name movers, S-inhibition, induction or "
                     "duplicate-token heads could be looked for by path patching")
    lap("name movers")
    edges = []
    receivers_a = [h for h, c in classes.items() if c in ("name mover", "negative name mover")]
    if receivers_a:
        say(f"path patching: candidates -> the queries of {len(receivers_a)} name movers at END")
        rec = [Receiver(lyr, h, "q", "END") for lyr, h in receivers_a]
        senders = [h for h in candidates if h[0] < max(lyr for lyr, _ in receivers_a) and h not in classes]
        path = path_patching(model, task, senders, rec)
        heads = heads.merge(path.rename(columns={"effect": "path_to_movers"}), on=["layer", "head"], how="left")
        for r in path.itertuples():
            key = (int(r.layer), int(r.head))
            a = idx[key]
            if r.effect <= -t["s_inhibition"] * ld and a.attn_end_s2 > a.attn_end_io:
                classes[key] = "S-inhibition"
        edges += _edges(model, task, [h for h, c in classes.items() if c == "S-inhibition"], rec, ld)
    lap("path to name movers")
    s_inhibition = [h for h, c in classes.items() if c == "S-inhibition"]
    if s_inhibition:
        say(f"path patching: candidates -> the values of {len(s_inhibition)} S-inhibition heads at S2")
        rec = [Receiver(lyr, h, "v", "S2") for lyr, h in s_inhibition]
        senders = [h for h in candidates if h[0] < max(lyr for lyr, _ in s_inhibition) and h not in classes]
        path = path_patching(model, task, senders, rec)
        heads = heads.merge(path.rename(columns={"effect": "path_to_s_inhibition"}), on=["layer", "head"], how="left")
        for r in path.itertuples():
            key = (int(r.layer), int(r.head))
            a = idx[key]
            if r.effect <= -t["induction"] * ld:
                classes[key] = "induction" if a.attn_s2_s1p1 > a.attn_s2_s1 else "duplicate token"
        edges += _edges(model, task, [h for h, c in classes.items() if c in ("induction", "duplicate token")], rec,
                        ld)
    elif movers:
        notes.append("no S-inhibition head was found, so induction and duplicate-token heads were not looked for")
    lap("path to S-inhibition")
    inductions = [h for h, c in classes.items() if c == "induction"]
    if inductions:
        say(f"path patching: candidates -> the keys of {len(inductions)} induction heads at S1+1")
        rec = [Receiver(lyr, h, "k", "S1+1") for lyr, h in inductions]
        senders = [h for h in candidates if h[0] < max(lyr for lyr, _ in inductions) and h not in classes]
        path = path_patching(model, task, senders, rec)
        heads = heads.merge(path.rename(columns={"effect": "path_to_induction_keys"}), on=["layer", "head"], how="left")
        for r in path.itertuples():
            key = (int(r.layer), int(r.head))
            if r.effect <= -t["previous"] * ld and idx[key].attn_s1p1_s1 >= t["prev_attention"]:
                classes[key] = "previous token"
        edges += _edges(model, task, [h for h, c in classes.items() if c == "previous token"], rec, ld)
    lap("path to induction keys")
    heads["head_class"] = [classes.get((int(r.layer), int(r.head)), "") for r in heads.itertuples()]
    heads["in_circuit"] = heads.head_class != ""
    checks = None
    if classes:
        say(f"faithfulness, completeness and minimality of the {len(classes)} heads")
        checks = circuit_checks(model, task, classes, seed=seed)
    curve = []
    if checks:
        say("faithfulness of the candidates kept by |exact effect|: the top 5, 10, 20, ...")
        ranked = exact[exact.candidate].assign(size=lambda d: d.effect.abs()).sort_values("size", ascending=False)
        order = [(int(r.layer), int(r.head)) for r in ranked.itertuples()]
        for k in [k for k in (5, 10, 20, 40, 80) if k < len(order)] + [len(order)]:
            kept = order[:k]
            f = ablated_metric(model, task, kept, means)
            curve.append({"kept": k, "heads": " ".join(label(*h) for h in kept), "f": f, "fraction": f / checks.full})
    lap("checks")
    edge_table = pd.DataFrame(edges, columns=["sender_layer", "sender_head", "receiver_layer", "receiver_head",
                                              "receiver_input", "effect"])
    return IOICircuit(model_name or cfg.model_name, task.n, baseline, heads, attribution, edge_table, checks, classes,
                      pd.DataFrame(curve, columns=["kept", "heads", "f", "fraction"]), dict(THRESHOLDS), seconds,
                      tuple(notes))


def _edges(model, task, senders, receivers, clean: float) -> list[dict]:
    """Each sender's path-patching effect through each receiver alone, as a fraction of the clean metric."""
    if not senders:
        return []
    out = []
    for r in receivers:
        live = [s for s in senders if s[0] < r.layer]
        if not live:
            continue
        table = path_patching(model, task, live, [r])
        for row in table.itertuples():
            out.append({"sender_layer": int(row.layer), "sender_head": int(row.head), "receiver_layer": r.layer,
                        "receiver_head": r.head, "receiver_input": r.kind, "effect": row.effect / clean})
    return out
