"""The `probe` command. Each subcommand imports what it needs inside its function so
`probe --help` stays fast (DESIGN.md, "Layout")."""

from __future__ import annotations

import argparse
import sys

from probe.errors import StoreError

SEED = "The animal didn't cross the street because it was tired."


def cmd_attend(args: argparse.Namespace) -> int:
    import models
    from analyses.word_attention import top_heads, word_to_word_attention

    model = models.load(args.model)
    print(f"model: {args.model} ({model.cfg.family}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    print(f"text:  {args.text}")
    print(f"tokens: {model.to_str_tokens(args.text)}")
    for key in args.to:
        scores = word_to_word_attention(model, args.text, args.from_word, key)
        print(f"\nheads attending most from {args.from_word!r} to {key!r}:")
        for h in top_heads(scores, args.top):
            print(f"  {h.label:<6} {h.score:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The seed question, then the pipeline: record -> head metrics -> coreference study ->
    probe, on the default model."""
    args.text, args.from_word, args.to, args.top = SEED, "it", ["animal", "street"], 3
    cmd_attend(args)
    if args.no_record:
        return 0
    import numpy as np

    import models
    from analyses.coref import write_report
    from analyses.head_metrics import head_metrics
    from analyses.probes import layer_probes, prompt_features
    from analyses.results import save_result
    from probe.prompts import load_prompts
    from probe.recorder import record

    prompts = load_prompts("seed") + load_prompts("winobias-dev")[: args.n]
    print(f"\nrecording {len(prompts)} prompts (the seed pair + WinoBias dev) to {args.output} ...")
    model = models.load(args.model)
    run = record(model, prompts, args.output, names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"],
                 batch_size=32, overwrite=True)
    metrics = head_metrics(run, model=model)
    save_result(run.path, "head_metrics", metrics)
    print("\nhead metrics (saved to analyses/head_metrics.csv): strongest previous-token heads:",
          ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.prev_token:.2f}"
                    for _, r in metrics.sort_values("prev_token", ascending=False).head(3).iterrows()))
    report = write_report(run, model=model)
    print("\n" + report.read_text())
    from probe.cli_probes import control_types, split_units_of

    labels = np.array([str(run.labels(i).get("gender")) for i in range(run.n_prompts)])
    keep = np.flatnonzero(labels != "None")
    # control task: a random label per pronoun word; a probe that only memorises the pronoun
    # scores as well on it, so selectivity says what the representation adds
    table = layer_probes(prompt_features(run, range(run.config["n_layers"]))[:, keep], labels[keep],
                         split_units_of(run, keep), types=control_types(run, keep, "pronoun", run.manifest.get("label_fields", [])))
    save_result(run.path, "probes_gender", table)
    print("linear probe, pronoun gender from mean-pooled resid_post (test accuracy / selectivity over a control "
          "task keyed by the pronoun): " + ", ".join(f"L{int(r.layer)} {r.test_acc:.2f}/{r.selectivity:.2f}"
                                                     for _, r in table.iterrows())
          + f" (majority {table.majority_baseline.iloc[0]:.2f})")
    from analyses.probes import word_features

    pos_prompts = load_prompts("ud-ewt-dev")[: args.n // 2]
    print(f"\nrecording {len(pos_prompts)} UD English-EWT sentences for a part-of-speech probe ...")
    pos_run = record(model, pos_prompts, str(args.output) + "-pos", names=["blocks.*.hook_resid_post"],
                     batch_size=32, overwrite=True)
    feats, labels, prompt_of, types = word_features(pos_run, range(run.config["n_layers"]))
    pos = layer_probes(feats, labels, prompt_of, types=types)
    save_result(pos_run.path, "probes_pos", pos)
    print("part-of-speech probe per layer (test accuracy / selectivity over a control task): "
          + ", ".join(f"L{int(r.layer)} {r.test_acc:.2f}/{r.selectivity:.2f}" for _, r in pos.iterrows())
          + f" (majority {pos.majority_baseline.iloc[0]:.2f})")
    print(f"\nreport: {report}")
    runs = [str(args.output), str(pos_run.path)]
    if args.no_serve:
        print(f"dashboard: probe dashboard {' '.join(runs)}")
        return 0
    from dashboard.cli import serve

    print()
    serve(runs, port=args.port)  # prints its URL; Ctrl-C stops it
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    import models
    from probe.recorder import record

    if args.resume and args.overwrite:
        raise StoreError("--resume and --overwrite contradict each other; pick one")
    from pathlib import Path

    if Path(args.output).exists() and not (args.resume or args.overwrite):
        raise StoreError(f"{args.output} already exists; pass --resume to continue it or --overwrite to replace it")
    from probe.prompts import load_prompts

    prompts = load_prompts(args.prompts)  # before loading the model: bad prompt files fail fast
    model = models.load(args.model, dtype=args.model_dtype)
    run = record(model, prompts, args.output, names=args.names, batch_size=args.batch_size, dtype=args.dtype,
                 compression=args.compression, resume=args.resume, overwrite=args.overwrite,
                 truncate=args.truncate, shard_mb=args.shard_mb)
    size = sum(f.stat().st_size for f in Path(args.output).rglob("*") if f.is_file())
    print(f"recorded {run.n_prompts} prompts, {run.n_tokens} tokens, {len(run.hooks)} hooks "
          f"({size / 2**20:.1f} MiB) to {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from models.training import describe, train
    from probe.progress import StepProgress

    if Path(args.output).exists() and any(Path(args.output).iterdir()) and not args.overwrite:
        raise StoreError(f"{args.output} already exists and is not empty; pass --overwrite to replace its checkpoint")
    command = "probe " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    from models.tasks import get_task

    steps = args.steps or get_task(args.task).training_defaults["steps"]
    bar = StepProgress(steps, f"training {args.task}")
    try:
        out = train(args.task, args.output, steps=steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                    command=command, on_step=bar)
    finally:
        bar.close()
    metrics = describe(out)["final_metrics"]
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def model_for_induction(run, name: str | None):
    """The run's own model for ``induction_random``, or None (with a note) when it cannot be
    loaded or cannot take repeated random tokens: the cache alone answers every other metric.
    A model named with --model must be the run's (an InputError otherwise)."""
    import models
    from analyses.coref_interventions import check_model_matches
    from analyses.head_metrics import random_repeat_tokens

    try:
        model = models.load(name or run.model_name)
        if name:
            check_model_matches(model, run)
        random_repeat_tokens(model, 1)
        return model
    except (models.ModelNotFound, models.UnsupportedArchitecture, models.CheckpointMismatch, OSError,
            models.InputError) as e:
        if name:  # asked for explicitly: a mistake to report
            raise
        print(f"note: induction_random left out: the run's model {run.model_name!r} cannot provide it ({e})",
              file=sys.stderr)
        return None


def cmd_heads(args: argparse.Namespace) -> int:
    from analyses.head_metrics import METRICS, head_metrics
    from analyses.results import save_result
    from probe.reader import open_run

    run = open_run(args.run)
    if not run.complete:
        print(f"note: {args.run} is still being recorded; using the {run.n_prompts} prompts published so far",
              file=sys.stderr)
    model = None
    if not args.no_model:  # for induction_random, the detector's score on repeated random tokens
        model = model_for_induction(run, args.model)
    table = head_metrics(run, model=model)
    out = save_result(args.run, "head_metrics", table)
    print(f"head metrics over {run.n_prompts} prompts -> {out}")
    extra = [m for m in ("induction_random", "antecedent") if m in table.columns]
    for metric in [*METRICS, *extra]:
        top = table.sort_values(metric, ascending=metric == "entropy").head(args.top)
        heads = ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r[metric]:.3f}" for _, r in top.iterrows())
        print(f"  {metric:<16} {'lowest' if metric == 'entropy' else 'highest'}: {heads}")
    return 0


def cmd_coref(args: argparse.Namespace) -> int:
    import models
    from analyses.coref import write_report
    from probe.reader import open_run

    run = open_run(args.run)
    model = None
    if not args.no_interventions:
        name = args.model or run.model_name
        try:
            model = models.load(name)
        except (models.ModelNotFound, OSError) as e:
            if args.model:  # asked for explicitly: a mistake to report
                raise
            print(f"note: cannot load the run's model {name!r} ({e}); give --model to ablate and patch its heads",
                  file=sys.stderr)
    report = write_report(run, seed=args.seed, top=args.top, query=args.query, model=model)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description="Mechanistic-interpretability workbench.")
    from probe import __version__

    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the seed sentence through the default model and show its heads")
    demo.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    demo.add_argument("-o", "--output", default="runs/demo", help="run directory to (re)create (default runs/demo)")
    demo.add_argument("-n", type=int, default=400, help="WinoBias dev prompts to record (default 400)")
    demo.add_argument("--no-record", action="store_true", help="only print the seed sentence's heads")
    demo.add_argument("--no-serve", action="store_true",
                      help="do not open the dashboard at the end (for scripts; it prints the command instead)")
    demo.add_argument("--port", type=int, default=8050, help="dashboard port (default 8050)")
    demo.set_defaults(func=cmd_demo)

    attend = sub.add_parser("attend", help="heads that attend most from one word to others in a text")
    attend.add_argument("text")
    attend.add_argument("--from", dest="from_word", required=True, help="query word, e.g. it")
    attend.add_argument("--to", nargs="+", required=True, help="key word(s), e.g. animal street")
    attend.add_argument("--top", type=int, default=3)
    attend.add_argument("--model", default="minilm")
    attend.set_defaults(func=cmd_attend)

    rec = sub.add_parser("record", help="record activations of a model on a prompt set into an HDF5 run")
    rec.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    rec.add_argument("--prompts", required=True,
                     help="a .txt file (one prompt per line), a .jsonl file ({\"text\": ...}), or a bundled set: "
                          "seed, winobias, winobias-dev, winobias-test, winogender, ud-ewt-dev, ud-ewt-test, toy-coref-test")
    rec.add_argument("-o", "--output", required=True, help="run directory to create")
    rec.add_argument("--names", nargs="+", metavar="GLOB",
                     help="hook names or globs to record (default: all but hook_result)")
    rec.add_argument("--batch-size", type=int, default=16)
    rec.add_argument("--dtype", choices=["float16", "float32"], default="float32", help="stored dtype")
    rec.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    rec.add_argument("--compression", choices=["none", "gzip", "lz4"], default="none",
                     help="lz4 = blosc-lz4 through hdf5plugin (readers need hdf5plugin too)")
    rec.add_argument("--shard-mb", type=float, default=64.0,
                     help="publish a shard every this many MiB (also the bound on buffered data)")
    rec.add_argument("--truncate", action="store_true",
                     help="cut prompts longer than the context (recorded in the run's metadata) instead of failing")
    rec.add_argument("--resume", action="store_true", help="continue an interrupted run")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing run")
    rec.set_defaults(func=cmd_record)

    tr = sub.add_parser("train", help="train a toy model with known ground truth (induction, coref)")
    tr.add_argument("task", help="induction or coref")
    tr.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    tr.add_argument("--steps", type=int, help="optimisation steps (default: the task's)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    tr.set_defaults(func=cmd_train)

    heads = sub.add_parser("heads", help="per-head attention metrics of a recorded run (saved next to it)")
    heads.add_argument("run", help="run directory written by `probe record`")
    heads.add_argument("--top", type=int, default=3, help="heads to print per metric")
    heads.add_argument("--model", help="model for induction_random (default: the one the run was recorded with)")
    heads.add_argument("--no-model", action="store_true",
                       help="leave out induction_random (TransformerLens's induction score on repeated random tokens), "
                            "which runs the model")
    heads.set_defaults(func=cmd_heads)

    from probe import cli_ablate, cli_patch, cli_probes

    for command in (cli_ablate, cli_probes, cli_patch):
        command.add_subcommand(sub)

    from dashboard.cli import add_subcommand as add_dashboard

    add_dashboard(sub)

    co = sub.add_parser("coref", help="coreference study: which heads attend from the pronoun to its antecedent")
    co.add_argument("run", help="a run recorded on prompts with gold antecedents (seed, winobias, or JSONL)")
    co.add_argument("--top", type=int, default=5)
    co.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    co.add_argument("--model", help="the model the run was recorded with, for the ablation and patching tests "
                                    "(default: the name recorded in the run)")
    co.add_argument("--no-interventions", action="store_true", help="attention and probes only; no model runs")
    co.add_argument("--query", default="pronoun_span",
                    help="label field of the span that attends (default pronoun_span; the toy task also has "
                         "question_span, where its model answers)")
    co.set_defaults(func=cmd_coref)
    return parser


def main(argv: list[str] | None = None) -> int:
    from probe.errors import is_user_error, one_line

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes become one clear line; real bugs keep their traceback
        if is_user_error(e):
            print(f"probe {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
