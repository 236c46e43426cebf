"""`probe coref RUN`: the coreference study (attention, antecedent probes, a decoder's own
answer, ablation, patching)."""

from __future__ import annotations

import argparse
import sys

from probe.cli.shared import nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("coref", help="coreference study: which heads attend from the pronoun to its antecedent")
    p.add_argument("run", help="a run recorded on prompts with gold antecedents (seed, winobias, or JSONL)")
    p.add_argument("--top", type=positive_int, default=5, help="heads the report lists and intervenes on")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="bootstrap seed")
    p.add_argument("--query", default="pronoun_span",
                   help="label field of the span that attends (default pronoun_span; the toy task also has "
                        "question_span, where its model answers)")
    p.add_argument("--question", metavar="TEMPLATE",
                   help="what a decoder language model is asked after each prompt, {pronoun} its pronoun; it answers "
                        "the candidate whose continuation it finds more probable, and that answer measures the "
                        "ablation and patching (default \" The pronoun '{pronoun}' refers to\")")
    p.add_argument("--mention", choices=["span", "head"], default="span",
                   help="what a candidate's attention is summed over: its annotated span (\"The developer\", the "
                        "default) or its head word (\"developer\"); the report gives the other's result beside it")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="the model the run was recorded with, for the ablation and patching tests "
                                       "(default: the name recorded in the run)")
    which.add_argument("--no-interventions", action="store_true", help="attention and probes only; no model runs")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.coref import write_report
    from analyses.results import check_results_dir
    from analyses.run_inputs import load_run_model
    from probe.cli.shared import command_line, stage_printer
    from probe.errors import ModelNotFound
    from probe.reader import open_run

    run = open_run(args.run)
    check_results_dir(run.path)
    model = None
    if not args.no_interventions:
        # a run whose model is not here (another machine's checkpoint) still gets its attention study
        model, why = load_run_model(run, args.model, fallback=(ModelNotFound, OSError))
        if why is not None:
            print(f"note: cannot load the run's model {run.model_name!r} ({why}); give --model to ablate and patch "
                  "its heads", file=sys.stderr)
    report = write_report(run, seed=args.seed, top=args.top, query=args.query, model=model, command=command_line(),
                          question=args.question, mention=args.mention, progress=stage_printer("coref"))
    print(report.read_text())
    print(f"report: {report}")
    return 0
