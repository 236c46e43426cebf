"""The induction circuit on repeated random tokens (Olsson et al. 2022), found with the same
interventions as the IOI circuit (`analyses.circuit`), so the method can be held to ground truth
on the shipped toy-induction model, whose previous-token and induction heads are known
(models/zoo/README.md).

* Task: ``n`` sequences of ``half`` random tokens repeated once (`analyses.head_metrics.
  random_repeat_tokens`); corrupted: the first half replaced by other random tokens, so the second
  half repeats nothing. Metric per sequence: the mean over the repeated half (the positions whose
  next token is a repeat of an earlier one) of log p(next token) + log(V), V the number of tokens
  drawn from: 0 at chance, so faithfulness F(C) / F(M) reads as for IOI's logit difference.
* Every head is patched exactly (whole head, corrupted output); AtP and AtP* of every head
  (``hook_z``, every position at once) beside it, for the dashboard's maps.
* Classes (thresholds as fractions of the clean-minus-corrupted metric gap G):
  induction: exact effect <= -10% of G and an induction score (attention from a repeated token to
  the token after its first occurrence, `random_repeat_scores`) >= 0.2 and above its
  previous-token score; previous token: path patching to the induction heads' keys lowers the
  metric by >= 10% of G and a previous-token score >= 0.2 and above its induction score (0.2: twice
  what uniform attention over the prefix gives either target on these sequences); value input (not
  one of Olsson et al.'s classes): any other head whose path to the induction heads' values lowers
  the metric by >= 10% of G (V-composition: what the induction heads copy passes through it).
* Checks: faithfulness, completeness, minimality (`analyses.circuit.circuit_checks`), the means over
  all corrupted sequences (aligned by construction).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from models import HookedTransformer
from probe.errors import InputError, StoreError
from probe.paths import output_path_problem

from .attribution import attribution_patching
from .circuit import CircuitChecks, CircuitTask, Receiver, TaskBatch, circuit_checks, head_patching, path_patching
from .head_metrics import random_repeat_scores, random_repeat_tokens

# detector scores: at least twice what uniform attention over the prefix gives the target (about 0.1 on
# the 41-token sequences), and the larger of a head's two scores (a previous-token head also puts
# some attention where the induction detector looks, and the reverse)
THRESHOLDS = {"induction": 0.10, "previous": 0.10, "score": 0.2}
CLASSES = ("induction", "previous token", "value input")


def induction_task(model: HookedTransformer, n: int = 32, half: int = 20, seed: int = 0) -> CircuitTask:
    clean = random_repeat_tokens(model, n, half, seed)
    other = random_repeat_tokens(model, n, clean.half, seed + 1)
    start, half = clean.start, clean.half
    corrupt = clean.ids.clone()
    corrupt[:, start:start + half] = other.ids[:, start:start + half]
    specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    n_drawn = model.cfg.d_vocab - len([i for i in specials if i < model.cfg.d_vocab])
    queries = torch.arange(start + half, start + 2 * half - 1)  # their next token repeats an earlier one

    def metric(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        logp = logits[:, queries].float().log_softmax(-1)  # [b, q, vocab]
        target = batch.clean[:, queries + 1].to(logp.device)
        return logp.gather(-1, target[..., None])[..., 0].mean(-1) + math.log(n_drawn)

    zeros = torch.zeros(n, dtype=torch.long)
    batch = TaskBatch(clean.ids, corrupt, {"END": torch.full((n,), clean.ids.shape[1] - 1)}, zeros, zeros, zeros)
    return CircuitTask("induction", (batch,), metric, f"mean log p(repeated token) + log {n_drawn}")


@dataclass(frozen=True)
class InductionCircuit:
    model: str
    n: int
    clean: float
    corrupt: float
    heads: pd.DataFrame
    attribution: pd.DataFrame
    edges: pd.DataFrame
    checks: CircuitChecks | None
    classes: dict[tuple[int, int], str]
    tokens: torch.Tensor
    seconds: float
    notes: tuple[str, ...] = field(default=())


def induction_circuit(model: HookedTransformer, n: int = 32, seed: int = 0, progress=None,
                      model_name: str | None = None) -> InductionCircuit:
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    cfg = model.cfg
    if not cfg.causal:
        raise InputError("induction asks a causal model for the next token")
    task = induction_task(model, n, seed=seed)
    batch = task.batches[0]
    with torch.no_grad():
        clean = float(task.metric(model(batch.clean), batch).mean())
        corrupt = float(task.metric(model(batch.corrupt), batch).mean())
    gap = clean - corrupt
    if gap <= 0:
        raise InputError(f"the model does not use the repeat (metric {clean:+.2f} clean, {corrupt:+.2f} corrupted): "
                         "there is no induction circuit to find")
    heads_all = [(lyr, h) for lyr in range(cfg.n_layers) for h in range(cfg.n_heads)]
    say(f"exact patching of all {len(heads_all)} heads; AtP and AtP*")
    heads = head_patching(model, task, heads_all).rename(columns={"effect": "exact"})

    def mean_metric(logits):
        return task.metric(logits, batch).mean()

    atp = {m: attribution_patching(model, batch.clean, batch.corrupt, mean_metric, nodes=("z",), method=m,
                                   per_position=False)["z"].values for m in ("atp", "atp*")}
    heads["atp"] = atp["atp"].reshape(-1).numpy()
    heads["atp_star"] = atp["atp*"].reshape(-1).numpy()
    scores = random_repeat_scores(model, n=n, seed=seed + 2)
    heads["induction_random"] = scores["induction_random"].reshape(-1)
    heads["prev_token_random"] = scores["prev_token_random"].reshape(-1)
    t = THRESHOLDS
    classes = {}
    for r in heads.itertuples():
        if r.exact <= -t["induction"] * gap and r.induction_random >= max(t["score"], r.prev_token_random):
            classes[(int(r.layer), int(r.head))] = "induction"
    edges = []
    notes = []
    inductions = sorted(h for h, c in classes.items() if c == "induction")
    if inductions:
        say(f"path patching: heads below -> the keys of {len(inductions)} induction heads")
        receivers = [Receiver(lyr, h, "k") for lyr, h in inductions]
        senders = [h for h in heads_all if h[0] < max(lyr for lyr, _ in inductions) and h not in classes]
        path = path_patching(model, task, senders, receivers)
        heads = heads.merge(path.rename(columns={"effect": "path_to_induction_keys"}), on=["layer", "head"], how="left")
        for r in path.itertuples():
            key = (int(r.layer), int(r.head))
            row = heads[(heads.layer == key[0]) & (heads["head"] == key[1])].iloc[0]
            if r.effect <= -t["previous"] * gap and row.prev_token_random >= max(t["score"], row.induction_random):
                classes[key] = "previous token"
        for kind in ("q", "v"):  # the other ways into the induction heads, as evidence for heads no rule classes
            other = path_patching(model, task, senders, [Receiver(lyr, h, kind) for lyr, h in inductions])
            heads = heads.merge(other.rename(columns={"effect": f"path_to_induction_{kind}"}), on=["layer", "head"],
                                how="left")
        for r in heads.itertuples():
            key = (int(r.layer), int(r.head))
            if key not in classes and pd.notna(r.path_to_induction_v) and r.path_to_induction_v <= -t["previous"] * gap:
                classes[key] = "value input"
        for rec in receivers:
            live = [s for s, c in classes.items() if c == "previous token" and s[0] < rec.layer]
            if live:
                for row in path_patching(model, task, live, [rec]).itertuples():
                    edges.append({"sender_layer": int(row.layer), "sender_head": int(row.head),
                                  "receiver_layer": rec.layer, "receiver_head": rec.head, "receiver_input": "k",
                                  "effect": row.effect / gap})
    else:
        notes.append("no head met the induction rule")
    heads["head_class"] = [classes.get((int(r.layer), int(r.head)), "") for r in heads.itertuples()]
    heads["in_circuit"] = heads.head_class != ""
    heads["candidate"] = True
    checks = circuit_checks(model, task, classes, seed=seed) if classes else None
    attribution = heads[["layer", "head", "atp", "atp_star", "exact"]].assign(position="all")
    edge_table = pd.DataFrame(edges, columns=["sender_layer", "sender_head", "receiver_layer", "receiver_head",
                                              "receiver_input", "effect"])
    return InductionCircuit(model_name or cfg.model_name, n, clean, corrupt, heads, attribution, edge_table, checks,
                            classes, batch.clean, time.perf_counter() - t0, tuple(notes))


def render_induction_report(c: InductionCircuit, command: str | None = None) -> str:
    gap = c.clean - c.corrupt
    lines = [f"# The induction circuit of {c.model}", ""]
    if command:
        lines += [f"Produced by `{command}` in {c.seconds:.0f} s.", ""]
    lines += [f"On {c.n} repeated random sequences the metric (mean log p of a repeated token, 0 = chance) is "
              f"{c.clean:+.2f}; with the first half replaced (nothing to repeat) {c.corrupt:+.2f}; gap G = {gap:.2f}.",
              "", "| class | heads | evidence |", "|---|---|---|"]
    for cls in CLASSES:
        members = sorted(h for h, k in c.classes.items() if k == cls)
        if not members:
            lines.append(f"| {cls} | none | - |")
            continue
        ev = []
        for lyr, h in members:
            r = c.heads[(c.heads.layer == lyr) & (c.heads["head"] == h)].iloc[0]
            if cls == "induction":
                ev.append(f"L{lyr}H{h}: exact {r.exact / gap:+.0%} of G, induction score {r.induction_random:.2f}")
            elif cls == "value input":
                ev.append(f"L{lyr}H{h}: path to induction values {r.path_to_induction_v / gap:+.0%} of G")
            else:
                ev.append(f"L{lyr}H{h}: path to induction keys {r.path_to_induction_keys / gap:+.0%} of G, "
                          f"previous-token score {r.prev_token_random:.2f}")
        lines.append(f"| {cls} | {', '.join(f'L{a}H{b}' for a, b in members)} | {'; '.join(ev)} |")
    rest = c.heads[~c.heads.in_circuit & (c.heads.exact <= -0.1 * gap)]
    if len(rest):
        lines += ["", "Heads outside the classes whose patching lowers the metric by >= 10% of G: " + "; ".join(
            f"L{int(r.layer)}H{int(r['head'])} exact {r.exact / gap:+.0%}"
            + "".join(f", path to induction {k} {r[f'path_to_induction_{k}'] / gap:+.0%}" for k in ("keys", "q", "v")
                      if f"path_to_induction_{k}" in r and pd.notna(r[f"path_to_induction_{k}"]))
            for _, r in rest.iterrows()) + "."]
    if c.checks:
        ch = c.checks
        lines += ["", f"Faithfulness: F(C) = {ch.circuit:+.2f} of F(M) = {ch.full:+.2f}: **{ch.faithfulness:.0%}** "
                      f"(every head mean-ablated: {ch.empty:+.2f}); random same-layer circuits: "
                      + (", ".join(f"{x / ch.full:.0%}" for x in ch.random) or "none drawn") + ".",
                  f"Completeness: largest |F(C\\K) - F(M\\K)| {ch.completeness.fraction.max():.0%} of F(M); "
                  f"minimality: smallest {ch.minimality.fraction.min():.1%}."]
    lines += [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def save_induction_circuit(c: InductionCircuit, run_path: str | Path, command: str | None = None) -> Path:
    from probe.store import atomic_write_text

    from .results import save_result

    run_path = Path(run_path)
    out = run_path / "circuit"
    if problem := output_path_problem(out, folder=True):
        raise StoreError(f"cannot write the circuit: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    save_result(run_path, "circuit_heads", c.heads, command=command)
    save_result(run_path, "circuit_edges", c.edges, command=command)
    save_result(run_path, "circuit_attribution", c.attribution, command=command)
    ch = c.checks
    summary = {"task": "induction", "model": c.model, "n_prompts": c.n, "command": command,
               "metric": "mean log p(repeated token) + log V", "clean_metric": c.clean, "corrupt_metric": c.corrupt,
               "faithfulness": ch.faithfulness if ch else None,
               "classes": {cls: [f"L{a}H{b}" for a, b in sorted(h for h, k in c.classes.items() if k == cls)]
                           for cls in CLASSES}, "thresholds": THRESHOLDS, "seconds": round(c.seconds, 1)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    atomic_write_text(out / "report.md", render_induction_report(c, command))
    return out / "report.md"



