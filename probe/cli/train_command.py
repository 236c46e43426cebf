"""`probe train TASK -o DIR`: train a toy model whose ground truth is known."""

from __future__ import annotations

import argparse
import sys

from probe.cli.shared import finite_positive_float, nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a toy model with known ground truth (induction, coref, translate)")
    p.add_argument("task", help="induction, coref or translate")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=positive_int, help="optimisation steps (default: the task's)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, help="examples per step (default: the task's)")
    p.add_argument("--lr", type=finite_positive_float, help="peak learning rate (default: the task's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    return p


def run(args: argparse.Namespace) -> int:
    from models.training import check_output, default_steps, describe, train
    from probe.cli.shared import command_line
    from probe.progress import StepProgress

    check_output(args.output, args.overwrite)
    command = command_line() if sys.argv[1:] else None
    steps = args.steps if args.steps is not None else default_steps(args.task)
    bar = StepProgress(steps, f"training {args.task}")
    try:
        out = train(args.task, args.output, steps=steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                    command=command, on_step=bar)
    finally:
        bar.close()
    metrics = describe(out)["final_metrics"]
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0
