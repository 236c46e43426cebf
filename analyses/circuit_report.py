"""Writing an IOI circuit (`analyses.ioi_circuit.IOICircuit`) next to its run, and the report
that says what was found: pure text from the dataclass (`render_ioi_report`), and
`save_ioi_circuit`, which writes RUN/analyses/circuit_{heads,edges,attribution}.csv (through
`analyses.results.save_result`, for the dashboard), RUN/circuit/summary.json and
RUN/circuit/report.md, each crash-safely.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from probe.errors import StoreError
from probe.paths import output_path_problem

from .ioi_circuit import CLASSES, GPT2_LAYERS, GPT2_SMALL, IOICircuit, label


def _heads_text(heads) -> str:
    return ", ".join(label(lyr, h) for lyr, h in sorted(heads)) or "none"


def _depth(layer: int, n_layers: int) -> float:
    return layer / max(n_layers - 1, 1)


def attribution_check(c: IOICircuit) -> dict[str, float]:
    """AtP* against exact patching on the heads measured exactly: Spearman of |exact| with AtP*,
    the same for AtP's |estimate|, and the largest |exact| among the random non-candidates against
    the median among the candidates (what AtP* left out)."""
    m = c.heads.dropna(subset=["exact"])
    out = {"measured": float(len(m))}
    if len(m) >= 3:
        out["spearman_atp_star"] = float(spearmanr(m.atp_star, m.exact.abs()).statistic)
        out["spearman_atp"] = float(spearmanr(m.atp.abs(), m.exact.abs()).statistic)
    controls = m[~m.candidate]
    if len(controls):
        out["controls_max_abs_exact"] = float(controls.exact.abs().max())
        out["candidates_median_abs_exact"] = float(m[m.candidate].exact.abs().median())
        out["controls_above_median"] = float((controls.exact.abs() > out["candidates_median_abs_exact"]).sum())
    return out


def summary(c: IOICircuit, command: str | None = None) -> dict:
    checks = c.checks

    def fin(x):
        return None if x is None or not math.isfinite(x) else float(x)

    return {
        "task": "ioi", "model": c.model, "n_prompts": c.n_prompts, "command": command,
        "metric": "logit difference IO - S at END", "clean_metric": fin(c.clean),
        "clean_ci": list(c.baseline.logit_diff_ci), "accuracy": fin(c.baseline.accuracy),
        "abc_metric": fin(c.baseline.abc_logit_diff), "swap_metric": fin(c.baseline.swap_logit_diff),
        "faithfulness": fin(checks.faithfulness) if checks else None,
        "f_circuit": fin(checks.circuit) if checks else None, "f_empty": fin(checks.empty) if checks else None,
        "f_random_circuits": [fin(x) for x in checks.random] if checks else [],
        "faithfulness_top_k": {int(r.kept): fin(r.fraction) for r in c.curve.itertuples()},
        "classes": {cls: [label(*h) for h in sorted(h for h, k in c.classes.items() if k == cls)] for cls in CLASSES},
        "attribution_check": attribution_check(c), "thresholds": c.thresholds,
        "seconds": {k: round(v, 1) for k, v in c.seconds.items()}, "notes": list(c.notes),
    }


def _row(c: IOICircuit, key) -> pd.Series:
    h = c.heads
    return h[(h.layer == key[0]) & (h["head"] == key[1])].iloc[0]


def _f(x, fmt="+.2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def render_ioi_report(c: IOICircuit, command: str | None = None) -> str:
    b, ld, cfg_heads = c.baseline, c.clean, c.heads
    n_layers = int(cfg_heads.layer.max()) + 1
    lines = [f"# The IOI circuit of {c.model}", ""]
    if command:
        lines += [f"Produced by `{command}` in {sum(c.seconds.values()) / 60:.1f} min.", ""]
    lines += ["## How to read this", "",
              f"On {c.n_prompts} IOI prompts the model's logit difference IO - S at the last token (LD) is "
              f"{ld:+.2f} [{b.logit_diff_ci[0]:+.2f}, {b.logit_diff_ci[1]:+.2f}] (95% bootstrap over prompts), "
              f"positive on {b.accuracy:.1%}; on the ABC prompts (three fresh names) {b.abc_logit_diff:+.2f}, "
              f"on the IO/S-swapped prompts {b.swap_logit_diff:+.2f}. Every effect below is a change of the mean "
              "LD, mostly as a fraction of LD; every class rests on the interventions listed with it.", ""]
    if c.checks:
        ch = c.checks
        rnd = np.array(ch.random)
        verdict = ""
        if len(rnd):
            better = int((rnd >= ch.circuit).sum())
            verdict = (f" Random circuits with as many heads in the same layers keep {rnd.mean() / ch.full:.0%} on "
                       f"average (range {rnd.min() / ch.full:.0%} to {rnd.max() / ch.full:.0%}); "
                       + ("the circuit keeps more than every one of them." if better == 0 else
                          f"{better} of {len(rnd)} keep as much as the circuit or more, so the circuit is not "
                          "shown to be more faithful than chance heads of its layers."))
        lines += [f"**Faithfulness**: with every head outside the circuit's {len(c.classes)} heads mean-ablated over "
                  f"the ABC prompts, LD is {ch.circuit:+.2f} of the full model's {ch.full:+.2f}: "
                  f"**{ch.faithfulness:.0%}** (every head ablated: {ch.empty:+.2f}, {ch.empty / ch.full:.0%})."
                  + verdict + " (Wang et al. report 87% for GPT-2 small.)", ""]
    if len(c.curve):
        lines += ["How many heads it takes: every head mean-ablated but the top k candidates by |exact effect| "
                  "(whatever their class): " + "; ".join(f"k = {int(r.kept)}: {r.fraction:.0%}"
                                                          for r in c.curve.itertuples()) + ".", ""]
    lines += ["## The circuit", "", "| class | heads | evidence (means over prompts) |", "|---|---|---|"]
    for cls in CLASSES:
        members = sorted(h for h, k in c.classes.items() if k == cls)
        if not members:
            continue
        ev = []
        for key in members:
            r = _row(c, key)
            ev.append(_evidence(cls, r, ld))
        lines.append(f"| {cls} | {_heads_text(members)} | {'; '.join(ev)} |")
    lines.append("")
    strong = cfg_heads.dropna(subset=["exact"])
    strong = strong[~strong.in_circuit & (strong.exact.abs() >= 0.1 * abs(ld))].sort_values("exact")
    if len(strong):
        lines += ["Heads with a whole-head patching effect of at least 10% of LD that no rule classes: "
                  + "; ".join(f"{label(int(r.layer), int(r['head']))} {r.exact / ld:+.0%} (direct {r.dla:+.2f}, "
                              f"END->IO {r.attn_end_io:.2f}, END->S2 {r.attn_end_s2:.2f})"
                              for _, r in strong.iterrows()) + ".", ""]
    lines += ["## Compared with GPT-2 small (Wang et al. 2022)", "",
              "Depth = layer / (layers - 1), so 0 is the first layer and 1 the last.", "",
              f"| class | GPT-2 small (12 layers) | depth | {c.model} ({n_layers} layers) | depth |", "|---|---|---|---|---|"]
    for cls in CLASSES:
        gpt2 = GPT2_SMALL.get(cls, [])
        ours = sorted(h for h, k in c.classes.items() if k == cls)
        g_depth = [int(x[1:x.index("H")]) / (GPT2_LAYERS - 1) for x in gpt2]
        o_depth = [_depth(lyr, n_layers) for lyr, _ in ours]
        lines.append(f"| {cls} | {', '.join(gpt2) or 'not a class there'} | "
                     f"{_range(g_depth)} | {_heads_text(ours) if ours else 'absent'} | {_range(o_depth)} |")
    absent = [cls for cls in CLASSES if cls in GPT2_SMALL and not any(k == cls for k in c.classes.values())]
    if absent:
        lines += ["", "Absent here (no head met the class's rule): " + ", ".join(absent) + "."]
    extra = [cls for cls in CLASSES if cls not in GPT2_SMALL and any(k == cls for k in c.classes.values())]
    if extra:
        lines += ["", "Not among Wang et al.'s GPT-2 classes: " + ", ".join(extra) + "."]
    lines += ["", "## Path patching", "",
              "Sender -> receiver input: the change of LD (as a fraction of LD) when only the sender's corrupted "
              "output reaches that one receiver's input (every other head frozen at its clean output).", ""]
    if len(c.edges):
        lines += ["| sender | receiver | input | effect |", "|---|---|---|---|"]
        for r in c.edges.sort_values("effect").itertuples():
            lines.append(f"| {label(r.sender_layer, r.sender_head)} | {label(r.receiver_layer, r.receiver_head)} | "
                         f"{r.receiver_input} | {r.effect:+.1%} |")
    else:
        lines.append("No paths were measured (no receivers were found).")
    chk = attribution_check(c)
    lines += ["", "## AtP* against exact patching (this run)", "",
              f"Heads patched exactly: {int(chk['measured'])} (the AtP* candidates and random others). Spearman "
              f"correlation with |exact|: AtP* {_f(chk.get('spearman_atp_star'))}, AtP {_f(chk.get('spearman_atp'))}."]
    if "controls_max_abs_exact" in chk:
        lines.append(f"The random non-candidates' largest |exact| is {chk['controls_max_abs_exact']:.3f} (the "
                     f"candidates' median {chk['candidates_median_abs_exact']:.3f}; "
                     f"{int(chk['controls_above_median'])} control(s) above it).")
    lines.append("AtP's whole-head value is its per-position estimates summed (exactly its estimate of patching the "
                 "whole head); AtP*'s is the sum of its per-position magnitudes, an upper bound, so its correlation "
                 "with whole-head exact patching understates how well it ranks nodes. The verification over every "
                 "head x position is `bench/attribution.py` (README).")
    if c.checks:
        lines += ["", "## Completeness", "",
                  "|F(C \\ K) - F(M \\ K)| for subsets K of the circuit (fraction of F(M)); small is complete.", "",
                  "| K | heads | F(C\\K) | F(M\\K) | incompleteness |", "|---|---|---|---|---|"]
        for r in c.checks.completeness.itertuples():
            lines.append(f"| {r.subset} | {r.heads or '-'} | {r.f_circuit:+.2f} | {r.f_model:+.2f} | {r.fraction:.0%} |")
        lines += ["", "## Minimality", "",
                  "|F(C \\ (K u {v})) - F(C \\ K)| with K the head's class-mates (fraction of F(M)).", "",
                  "| head | class | K | score |", "|---|---|---|---|"]
        for r in c.checks.minimality.itertuples():
            lines.append(f"| {label(r.layer, r.head)} | {r.head_class} | {r.k or '-'} | {r.fraction:.1%} |")
    lines += ["", "## Choices", "",
              "- Corruption: the ABC prompts (same template, place and object; three fresh names). Patching is "
              "noising: the clean run with the corrupted activation put in.",
              "- Heads are patched and ablated at every position; mean ablation uses the mean over the ABC prompts "
              "of the same template, order and length (aligned positions).",
              "- AtP* ranks head x position nodes on groups of aligned prompts; its positions are summed into IO, S1, "
              "S1+1, S2, END and other. Candidates: the heads owning the top nodes.",
              "- Thresholds (fractions of LD, attention, copying score): "
              + ", ".join(f"{k} {v}" for k, v in c.thresholds.items()) + "."]
    lines += [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def _range(depths: list[float]) -> str:
    return "-" if not depths else (f"{depths[0]:.2f}" if len(depths) == 1 else f"{min(depths):.2f}-{max(depths):.2f}")


def _evidence(cls: str, r: pd.Series, ld: float) -> str:
    name = label(int(r.layer), int(r["head"]))
    exact = f", exact {r.exact / ld:+.0%}" if pd.notna(r.get("exact")) else ""
    if cls in ("name mover", "negative name mover", "S suppressor", "backup name mover"):
        extra = (f", direct after name movers ablated {r.dla_movers_ablated:+.2f}"
                 if cls == "backup name mover" and "dla_movers_ablated" in r else "")
        return (f"{name}: direct {r.dla:+.2f}, END->IO {r.attn_end_io:.2f} / END->S2 {r.attn_end_s2:.2f}, "
                f"copy {r['copy']:.2f} / -copy {r.neg_copy:.2f}{extra}{exact}")
    if cls == "S-inhibition":
        return (f"{name}: path to name-mover queries {r.path_to_movers / ld:+.0%}, END->S2 {r.attn_end_s2:.2f} / "
                f"END->IO {r.attn_end_io:.2f}{exact}")
    if cls in ("induction", "duplicate token"):
        return (f"{name}: path to S-inhibition values {r.path_to_s_inhibition / ld:+.0%}, S2->S1+1 "
                f"{r.attn_s2_s1p1:.2f} / S2->S1 {r.attn_s2_s1:.2f}{_detector(r, 'induction_random', 'induction')}"
                f"{exact}")
    return (f"{name}: path to induction keys {r.path_to_induction_keys / ld:+.0%}, S1+1->S1 {r.attn_s1p1_s1:.2f}"
            f"{_detector(r, 'prev_token_random', 'previous-token')}{exact}")


def _detector(r: pd.Series, column: str, name: str) -> str:
    return f", {name} detector (random tokens) {r[column]:.2f}" if column in r and pd.notna(r[column]) else ""


def save_ioi_circuit(c: IOICircuit, run_path: str | Path, command: str | None = None) -> Path:
    """The circuit's tables next to the run (for the dashboard), its summary and report; returns
    the report's path."""
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
    if c.checks:
        atomic_write_text(out / "completeness.csv", c.checks.completeness.to_csv(index=False, lineterminator="\n"))
        atomic_write_text(out / "minimality.csv", c.checks.minimality.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "summary.json", json.dumps(summary(c, command), indent=1) + "\n")
    atomic_write_text(out / "report.md", render_ioi_report(c, command))
    return out / "report.md"
