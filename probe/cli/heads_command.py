"""`probe heads RUN`: per-head attention metrics of a recorded run, saved next to it."""

from __future__ import annotations

import argparse
import sys

from probe.cli.shared import positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("heads", help="per-head attention metrics of a recorded run (saved next to it)")
    p.add_argument("run", help="run directory written by `probe record`")
    p.add_argument("--top", type=positive_int, default=3, help="heads to print per metric")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="model for induction_random and prev_token_random (default: the one the "
                                       "run was recorded with)")
    which.add_argument("--no-model", action="store_true",
                       help="leave out induction_random and prev_token_random (the induction and previous-token "
                            "scores on repeated random tokens, as TransformerLens's induction mosaic), which run "
                            "the model")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="read the run's shards on N Ray workers in parallel (the same numbers; needs the ray extra)")
    p.add_argument("--ray-address", metavar="HOST:PORT", help="with --workers: an existing Ray cluster's head")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.head_metrics import head_metrics, induction_model, ranked_metrics
    from analyses.results import check_results_dir, save_result
    from probe.cli.shared import command_line
    from probe.head_labels import top_heads_text
    from probe.reader import open_run

    run = open_run(args.run)
    check_results_dir(args.run)  # where save_result writes
    if not run.complete:
        print(f"note: {args.run} is still being recorded; using the {run.n_prompts} prompts published so far",
              file=sys.stderr)
    model = None
    if not args.no_model and not run.is_encoder_decoder:  # for the scores on repeated random tokens
        model, why = induction_model(run, args.model)
        if why is not None:
            print(f"note: induction_random and prev_token_random left out: the run's model {run.model_name!r} "
                  f"cannot provide them ({why})", file=sys.stderr)
    table = head_metrics(run, model=model, workers=args.workers, ray_address=args.ray_address)
    out = save_result(args.run, "head_metrics", table, kind="head_metrics", command=command_line())
    print(f"head metrics over {run.n_prompts} prompts -> {out}")
    if run.is_encoder_decoder:
        _print_encoder_decoder(table, args.top)
        return 0
    for metric, lowest in ranked_metrics(table):
        values = table[metric].dropna()
        if len(values) and values.min() == values.max():  # no ranking to print (e.g. no prompt repeats a token)
            print(f"  {metric:<17} {values.iloc[0]:.3f} for every head")
            continue
        print(f"  {metric:<17} {'lowest' if lowest else 'highest'}: "
              f"{top_heads_text(table, metric, args.top, ascending=lowest)}")
    return 0


def _print_encoder_decoder(table, top: int) -> None:
    """The top heads of each attention (encoder, decoder, cross) per metric it has; the
    cross-attention alignment score with its baselines."""
    from analyses.head_metrics import ranked_metrics
    from probe.head_labels import top_heads_text

    for attention in ("encoder", "decoder", "cross"):
        part = table[table["attention"] == attention]
        metrics = [(m, low) for m, low in ranked_metrics(part) if part[m].notna().any()]
        if attention == "cross" and "alignment" in part:
            metrics += [("alignment", False), ("gold_attention", False)]
        print(f"  {attention}:")
        for metric, lowest in metrics:
            print(f"    {metric:<17} {'lowest' if lowest else 'highest'}: "
                  f"{top_heads_text(part, metric, top, ascending=lowest)}")
        if attention == "cross" and "alignment" in part:
            print(f"    baselines: monotonic diagonal {part['diagonal'].iloc[0]:.3f}, "
                  f"uniform attention {part['uniform'].iloc[0]:.3f}")

