"""`probe ablate`: head and MLP ablation sweeps and sets, on built-in tasks, prompts or a run."""

from __future__ import annotations

import argparse

from probe.cli.shared import nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ablate", help="effect of ablating each head in turn ([layer, head] table), or a set together")
    p.add_argument("--model", help="model (default with --run: the one the run was recorded with)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--task", choices=["induction"], help="built-in data and metric (repeated random tokens)")
    data.add_argument("--prompts", help="equal-length prompts (txt/jsonl/bundled); metric: next-token loss, or with "
                                        "--metric logit-diff JSONL with one-token answer and wrong fields")
    data.add_argument("--run", help="a run with gold antecedents (seed, winobias, toy-coref-test): sweep on its "
                                    "held-out prompts with --metric; a decoder run without them: next-token loss on "
                                    "its prompts; saved next to the run")
    p.add_argument("--metric", choices=["loss", "logit-diff", "accuracy", "antecedent-score", "exact-match"],
                   help="loss (default for --task, --prompts and runs without gold antecedents): next-token loss; "
                        "logit-diff: logit[answer] - logit[wrong] at the last token (--prompts JSONL); with --run "
                        "(default accuracy): accuracy = the model's own answer where it gives one (toy-coref), else "
                        "an antecedent probe at --layer; antecedent-score = attention from the pronoun to the gold "
                        "minus the other candidate, averaged over --heads; exact-match (the default and only metric of an encoder-decoder run): greedy translations of the run's sources against its targets, the heads "
                        "named being cross-attention heads")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ablate-heads", nargs="+", metavar="LxHy",
                       help="instead of the sweep, ablate these heads together (e.g. L1H0 L1H2) and print the "
                            "metric clean vs ablated")
    which.add_argument("--top-induction", type=positive_int, metavar="K",
                       help="with --task induction: ablate the K heads with the highest induction score on repeated "
                            "random tokens together, against --draws random sets of K heads of the same layers; "
                            "next-token loss on the first and the repeated half")
    p.add_argument("--draws", type=positive_int, help="random head sets for --top-induction (default 20)")
    p.add_argument("--ablate-mlp", nargs="+", type=int, metavar="LAYER",
                   help="ablate these MLP layers (their hook_mlp_out) together, with --ablate-heads if given")
    p.add_argument("--layer", type=int, help="with --run: the probe's layer (default: the last)")
    p.add_argument("--heads", nargs="+", metavar="LxHy", help="heads the antecedent score averages (e.g. L1H3); "
                                                             "default: the coreference study's best")
    p.add_argument("--query", default="pronoun_span", help="with --run: the span that attends / is probed")
    p.add_argument("--method", choices=["zero", "mean", "resample"], default="mean")
    p.add_argument("-n", type=positive_int, default=64,
                   help="sequences for --task (with --top-induction: in each of the detection, reference and "
                        "measured sets)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--top", type=positive_int, default=5, help="heads to print (and, for antecedent-score, the "
                                                               "study's best heads it averages)")
    p.add_argument("-o", "--output", help="CSV file to write (default with --run: RUN/analyses/ablation_METRIC.csv; "
                                          "with --ablate-heads/--ablate-mlp: optional, one row)")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.ablation_studies import InductionAblation, ablation_study, render_induction_ablation
    from analyses.results import check_results_dir, save_result
    from probe.cli.shared import command_line, output_file, write_csv
    from probe.head_labels import head_label, heads_text
    from probe.reader import open_run

    if args.output:  # before the model loads and the sweep runs
        output_file(args.output)
    run = open_run(args.run) if args.run else None
    if run is not None and not args.output:
        check_results_dir(run.path)
    study = ablation_study(args.model, task=args.task, prompts=args.prompts, run=run, metric=args.metric,
                           ablate_heads=args.ablate_heads, ablate_mlp=args.ablate_mlp, heads=args.heads,
                           layer=args.layer, query=args.query, method=args.method, n=args.n, seed=args.seed,
                           top=args.top, has_output=bool(args.output), top_induction=args.top_induction,
                           draws=args.draws)
    if isinstance(study, InductionAblation):
        print(render_induction_ablation(study))
        if args.output:
            print(f"wrote {write_csv(study.table, args.output)}")
        return 0
    if study.heads_measured:
        print("heads measured (the coreference study's best): " + heads_text(study.heads_measured))
    table = study.table
    if study.together:
        r = table.iloc[0]
        parts = ([f"heads {r.heads}"] if r.heads else []) + ([f"MLP layer(s) {r.mlp}"] if r.mlp else [])
        print(f"{study.method}-ablating {' and '.join(parts)} of {study.model_name} together: {study.what}")
        print(f"  clean   {r.clean:.4f}\n  ablated {r.ablated:.4f}  (effect {r.effect:+.4f})")
        if args.output:
            print(f"wrote {write_csv(table, args.output)}")
        return 0
    if args.output:
        out = write_csv(table, args.output)
    else:  # a sweep on a run goes next to it, where the dashboard finds it
        out = save_result(run.path, study.result_name, table, kind="ablation", command=command_line())
    print(f"{study.method}-ablation sweep {study.subject}: {study.what}; clean {table.clean.iloc[0]:.3f}")
    for _, r in table.reindex(table.effect.abs().sort_values(ascending=False).index).head(args.top).iterrows():
        print(f"  {head_label(r.layer, r['head'])}  {r.effect:+.3f}")
    print(f"wrote {out}")
    return 0
