"""`probe circuit TASK --model MODEL -o RUN`: find a task's circuit in a model (IOI: Wang et al.'s
classes, AtP* checked by exact patching, path patching, faithfulness) and save it next to a new
run of its prompts, for the report and the dashboard."""

from __future__ import annotations

import argparse

from probe.cli.shared import nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("circuit", help="find a task's circuit (IOI in SmolLM2; induction in the toy) and check it")
    p.add_argument("task", choices=["ioi", "induction"], help="ioi: indirect object identification (Wang et al. 2022); "
                                                              "induction: repeated random tokens (toy-induction)")
    p.add_argument("--model", required=True, help="a model name or checkpoint directory (smollm2, toy-induction, ...)")
    p.add_argument("-o", "--out", metavar="RUN",
                   help="the run to create: its prompts' activations, then the circuit in RUN/analyses and RUN/circuit "
                        "(default runs/circuit-TASK-MODEL)")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it is a run")
    p.add_argument("--prompts", type=positive_int, help="how many prompts (ioi: default 64, at most 256; induction: "
                                                        "sequences, default 32)")
    p.add_argument("--candidates", type=positive_int, default=40,
                   help="heads AtP* ranks highest that are patched exactly (ioi; default 40)")
    p.add_argument("--controls", type=nonnegative_int, default=10,
                   help="random other heads patched exactly, to see what AtP* left out (ioi; default 10)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the bootstrap, controls and random sets")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.circuit_studies import circuit_study, default_run
    from probe.cli.shared import command_line, stage_printer

    out = args.out or default_run(args.task, args.model)
    report = circuit_study(args.task, args.model, out, n_prompts=args.prompts, n_candidates=args.candidates,
                           n_controls=args.controls, seed=args.seed, overwrite=args.overwrite,
                           command=command_line(), progress=stage_printer("circuit"))
    print(report.read_text())
    print(f"report: {report}")
    print(f"dashboard: probe dashboard {out}")
    return 0
